"""Rich progress bars shared by the long-running commands (on stderr, so stdout stays clean for JSON)."""

from __future__ import annotations


def progress_bars():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True, console=Console(stderr=True))
