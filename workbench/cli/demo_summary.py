"""Print a one-table overview of the bundles in a folder (what `make demo` shows after tracing)."""

from __future__ import annotations

import sys
from pathlib import Path


def summarise(folder: Path) -> None:
    from rich.table import Table

    import workbench
    from workbench.cli.printing import SafeConsole
    from workbench.traces.summary import stack_summary

    bundles = sorted(folder.glob("*.wbtrace"))
    if not bundles:
        raise workbench.WorkbenchError(f"no *.wbtrace bundles in {folder}; run `make demo` or `workbench trace` first")
    table = Table("bundle", "tokens", "generated", "layers whose top key is position 0",
                  "entropy first -> last layer", "healthy", title=f"Traces in {folder}")
    for path in bundles:
        trace = workbench.load(path)
        layers = stack_summary(trace, "text")
        sink_layers = sum(1 for layer in layers if layer["top_key"] == 0)
        table.add_row(path.name, str(len(trace.tokens)), repr(trace.generation["text"])[:48],
                      f"{sink_layers}/{len(layers)}",
                      f"{layers[0]['entropy_mean']:.2f} -> {layers[-1]['entropy_mean']:.2f}",
                      "yes" if trace.checks.get("healthy", True) else "NO")
    console = SafeConsole()
    console.print(table)
    console.print(f"Inspect one with `workbench info {bundles[0]}`; JSON exports sit beside the bundles' folder.")


if __name__ == "__main__":
    summarise(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo"))
