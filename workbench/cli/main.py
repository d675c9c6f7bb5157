"""The `workbench` command. Subcommands import their heavy dependencies lazily so `--help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from workbench.cli.app_command import app_command
from workbench.cli.basin_command import basin
from workbench.cli.blind_command import blind_command
from workbench.cli.causal_command import ablate, patch
from workbench.cli.circuits_command import circuits
from workbench.cli.export_command import export
from workbench.cli.inspect_commands import info, models
from workbench.cli.lens_command import importance, lens
from workbench.cli.probe_command import probe_app
from workbench.cli.opera_command import opera_command
from workbench.cli.rollout_command import funnel, rollout
from workbench.cli.routes_command import routes
from workbench.cli.sinks_command import sinks
from workbench.cli.sweep_command import sweep
from workbench.cli.trace_command import trace
from workbench.cli.vhd_command import vhd_command

app = typer.Typer(
    name="workbench",
    help="Capture, analyse and explore transformer attention (LLMs and LLaVA-style VLMs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Capture and inspection
app.command("trace")(trace)
app.command("models")(models)
app.command("info")(info)
app.command("sweep")(sweep)
# Analyses
app.command("sinks")(sinks)
app.command("vhd")(vhd_command)
app.command("routes")(routes)
app.command("circuits")(circuits)
app.command("rollout")(rollout)
app.command("funnel")(funnel)
app.command("opera")(opera_command)
app.command("blind")(blind_command)
app.command("basin")(basin)
app.command("lens")(lens)
# Causal tools
app.command("patch")(patch)
app.command("ablate")(ablate)
app.command("importance")(importance)
# Probes and the app
app.add_typer(probe_app, name="probe")
app.command("app")(app_command)
app.command("export")(export)


def _plain_help(typer_app) -> None:
    """Option help texts are plain text: typer renders them as rich markup, where a "[default: 16; ...]" reads
    as a style tag and vanishes ("Tokens to generate greedily ."). Escape every such bracket once, here."""
    import inspect

    from rich.markup import escape

    for command in typer_app.registered_commands:
        for parameter in inspect.signature(command.callback).parameters.values():
            info = parameter.default
            if isinstance(info, typer.models.ParameterInfo) and info.help and not getattr(info, "_escaped", False):
                info.help, info._escaped = escape(info.help), True
    for group in typer_app.registered_groups:
        _plain_help(group.typer_instance)


_plain_help(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    from workbench.cli import printing
    from workbench.cli.printing import one_line
    from workbench.errors import WorkbenchError

    printing.reset_streams()  # one invocation's `--json -` does not redirect the next one's reports (in-process runs)
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        app(standalone_mode=False)
    except WorkbenchError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `workbench info --json B | head`: the reader left, nothing is wrong
        sys.stderr.close()
        sys.exit(141)
    except OSError as error:  # the machine refused (disk full, permissions found late): not a bug, exit 2
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {one_line(error.strerror or str(error))}{one_line(str(where))}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        click_exception, abort = _click_exception_types()
        if isinstance(error, abort):
            sys.exit(1)
        if not isinstance(error, click_exception):
            _internal_error(error)
        # typer bundles its own click (typer._click) beside the installed one: both raise here.
        message = one_line(" ".join(error.format_message().split())).rstrip(".")
        if type(error).__name__ == "NoArgsIsHelpError" or not message:
            message = "missing command"
        print(f"error: {message}; run `workbench --help` (or `workbench COMMAND --help`)", file=sys.stderr)
        sys.exit(2 if error.exit_code in (0, 1, 2) else error.exit_code)


INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug of the workbench, not a mistake of the user (exit 2)


def _internal_error(error: BaseException) -> None:
    """An exception nobody expected is a bug: one line on stderr, the traceback in a file, exit 70."""
    import datetime
    import os
    import tempfile
    import traceback

    from workbench.cli.printing import one_line
    from workbench.models.packaged import cache_dir

    text = "".join(traceback.format_exception(error))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    where = "nowhere (no writable cache or temporary folder)"
    for folder in (cache_dir() / "errors", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"internal-error-{stamp}-{os.getpid()}.txt"
            path.write_text(f"workbench {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8", errors="replace")
            where = str(path)
            break
        except OSError:
            continue
    summary = one_line(f"{type(error).__name__}: {error}")[:300]
    print(f"internal error: {summary}; details in {where} (please report it)", file=sys.stderr)
    sys.exit(INTERNAL_ERROR)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException classes, Abort classes) of every click the CLI may raise from: typer's bundled one and
    the installed package."""
    import importlib

    exceptions, aborts = [], []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        exceptions.append(module.ClickException)
        if hasattr(module, "Abort"):  # typer's bundled click has none
            aborts.append(module.Abort)
    return tuple(exceptions), tuple(aborts)

if __name__ == "__main__":
    main()
