"""Run the real `workbench` entry point in this process (no interpreter start-up): exit code, stdout, stderr."""

from __future__ import annotations

import contextlib
import io
import sys


def run_cli(*args) -> tuple[int, str, str]:
    from workbench.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["workbench", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()
