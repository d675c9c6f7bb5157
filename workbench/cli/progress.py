"""Progress display shared by the long-running commands (on stderr, so stdout stays clean for JSON).

progress_bars(): plain bars for short per-input steps. throughput_bars(): bars with items/s (and tokens/s)
and the time left for runs of many inputs; when stderr is not a terminal (a log, CI) it prints one line per
5 % or per 30 s instead, with the same numbers. Both take add_task(description, total=..., **fields) and
update(handle, completed=..., total=..., **fields); the fields `unit` (what is counted), `counted` (items
this run did itself, e.g. a resumed sweep's new inputs; default: completed) and `tokens` feed the rates.
"""

from __future__ import annotations

import time


def progress_bars():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    from workbench.cli.printing import SafeConsole, description_column

    return Progress(SpinnerColumn(), description_column(), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True, console=SafeConsole(stderr=True))


def _rate_text(counted: int, tokens: int, elapsed: float, unit: str) -> str:
    if not counted or elapsed <= 0:
        return f"-- {unit}/s"
    text = f"{counted / elapsed:.2f} {unit}/s"
    return text + (f" · {tokens / elapsed:,.0f} tok/s" if tokens else "")


def throughput_bars():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from workbench.cli.printing import SafeConsole, description_column

    class Throughput(ProgressColumn):
        def render(self, task) -> Text:
            fields = task.fields
            return Text(_rate_text(fields.get("counted", task.completed), fields.get("tokens", 0),
                                   task.elapsed or 0.0, fields.get("unit", "it")), style="progress.data.speed")

    console = SafeConsole(stderr=True, soft_wrap=True)
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(SpinnerColumn(), description_column(), BarColumn(), MofNCompleteColumn(),
                    Throughput(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)


class LineProgress:
    """throughput_bars() for logs: one line per 5 % (or 30 s) of progress with the same rates."""

    def __init__(self, console):
        self.console, self.tasks = console, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, *, total: int | None = None, **fields):
        handle = len(self.tasks)
        self.tasks[handle] = {"description": description, "total": total, "fields": dict(fields),
                              "start": time.monotonic(), "last": 0.0, "shown": -1}
        return handle

    def update(self, handle, *, completed: int, total: int | None = None, **fields) -> None:
        task = self.tasks[handle]
        task["fields"].update(fields)
        if total is not None:
            task["total"] = total
        now, total = time.monotonic(), task["total"]
        elapsed = max(now - task["start"], 1e-9)
        step = max(1, (total or 0) // 20)
        finished = total is not None and completed >= total
        if not finished and (completed == 0 or completed // step == task["shown"] and now - task["last"] < 30):
            return  # nothing done yet (an error may follow: it must stay the only line), or too soon
        task["shown"], task["last"] = completed // step, now
        fields = task["fields"]
        counted = fields.get("counted", completed)
        rate = _rate_text(counted, fields.get("tokens", 0), elapsed, fields.get("unit", "it"))
        left = ""
        if total and counted > 0:
            left = f", about {(total - completed) / (counted / elapsed):.0f} s left"
        self.console.print(f"{task['description']}: {completed}/{total if total is not None else '?'} ({rate}, "
                           f"{elapsed:.0f} s elapsed{left})", highlight=False)
