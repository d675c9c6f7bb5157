"""The one console the CLI prints through: whatever it is given is shown as text, never interpreted.

Paths, prompts, token text and manifest fields come from users or from bundles that may have been
edited by hand. Printed through a plain rich console they could crash it (an unbalanced `[/]` is read as
markup) or drive the terminal (escape sequences written raw). `SafeConsole` turns markup off and shows
every control character as a visible escape, in `print` and in table cells alike, so no caller has to
remember to escape. Styling is done with `rich.text.Text(..., style=...)`, which is not parsed.
"""

from __future__ import annotations

import re
import sys

from rich.console import Console

# C0 controls except tab and newline, DEL, and the C1 block (which some terminals also obey).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with each control character replaced by its `\\xNN` escape (tab and newline kept)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def one_line(text: str) -> str:
    """`visible(text)` on a single line: newlines and tabs become spaces (for error messages)."""
    return " ".join(visible(text).split("\n")).replace("\t", " ")


_stdout_carries_data = False


def stdout_carries_data() -> None:
    """Standard output is a data stream from now on (`--json -`): every report goes to standard error, so what a
    pipe reads is the JSON document alone, whichever command prints."""
    global _stdout_carries_data
    _stdout_carries_data = True


def reset_streams() -> None:
    """Reports go to standard output again (the start of each command)."""
    global _stdout_carries_data
    _stdout_carries_data = False


class SafeConsole(Console):
    """A rich Console with markup and emoji codes off and control characters made visible.

    When the stream is not a terminal (a pipe, a log file) lines and tables are not cut at 80 columns. Once
    `stdout_carries_data()` was called, a console asked for standard output writes to standard error.
    """

    def __init__(self, *, stderr: bool = False, **options) -> None:
        stderr = stderr or _stdout_carries_data
        stream = sys.stderr if stderr else sys.stdout
        options.setdefault("markup", False)
        options.setdefault("emoji", False)
        options.setdefault("highlight", False)
        if not getattr(stream, "isatty", lambda: False)():
            options.setdefault("width", 1000)
        super().__init__(stderr=stderr, **options)

    def print(self, *objects, **options) -> None:
        options["markup"] = False  # no caller may turn parsing back on for text it did not write
        super().print(*objects, **options)

    def render_str(self, text: str, **options):
        return super().render_str(visible(text), **options)

    def status(self, status, **options):
        from rich.text import Text

        # rich's spinner parses a plain string as markup, whatever the console's setting.
        return super().status(Text(one_line(status)) if isinstance(status, str) else status, **options)


def description_column():
    """A progress-bar column showing the task's description as text (rich's TextColumn parses markup)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class VisibleDescription(ProgressColumn):
        def render(self, task) -> Text:
            return Text(one_line(str(task.description)))

    return VisibleDescription()
