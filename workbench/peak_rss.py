"""Resident memory of this process from Linux /proc, for the benchmarks and the memory tests.

reset_peak() sets the peak (VmHWM) to the current resident size (VmRSS), so status_kib("VmHWM") read after a
call, minus status_kib("VmRSS") read before it, is the new resident memory the call needed at its peak.
"""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A /proc/self/status field in KiB, e.g. "VmRSS" (resident now) or "VmHWM" (peak since the last reset)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """VmHWM := VmRSS. Raises OSError where the kernel does not allow it (non-Linux, some containers)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
