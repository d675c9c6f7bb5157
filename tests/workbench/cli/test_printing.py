"""Text from users and bundles is printed as text: no markup parsing, no raw terminal control."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.table import Table

from workbench.cli.printing import SafeConsole, one_line, visible

HOSTILE = "dir [/] [bold]x \x1b[2J\x1b]0;title\x07 \x9b31m end"


def _printed(render) -> str:
    stream = io.StringIO()
    console = SafeConsole(file=stream, width=200)
    render(console)
    return stream.getvalue()


def test_markup_and_escapes_print_as_text():
    out = _printed(lambda console: console.print(HOSTILE))
    assert "[/] [bold]x" in out  # unbalanced markup neither crashes nor disappears
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b[2J" in out and "\\x07" in out and "\\x9b" in out


def test_table_cells_are_escaped_too():
    def render(console):
        table = Table()
        table.add_column("field")
        table.add_row(HOSTILE)
        console.print(table)

    out = _printed(render)
    assert "\x1b" not in out and "[/]" in out


def test_visible_keeps_tabs_and_newlines_one_line_folds_them():
    assert visible("a\tb\nc\x00") == "a\tb\nc\\x00"
    assert one_line("a\nb\tc\x1b") == "a b c\\x1b"


def test_the_cli_prints_only_through_the_safe_console():
    """A rich Console built anywhere else in the package would bring markup parsing back."""
    root = Path(__file__).resolve().parents[3]
    offenders = [
        str(path.relative_to(root))
        for folder in ("workbench", "probes", "app")
        for path in (root / folder).rglob("*.py")
        if path.name != "printing.py" and re.search(r"\bConsole\(|rich\.console import Console\b|rich import print",
                                                     path.read_text()) and "SafeConsole" not in path.read_text()
    ]
    assert not offenders, offenders
