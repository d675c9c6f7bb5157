"""`workbench app`: serve the multi-scale attention explorer over a folder of trace bundles."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from workbench.errors import InputError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_command(
    traces: Path = typer.Option(Path("traces"), "--traces", "-t", help="Folder of NAME.wbtrace bundles (searched "
                                "recursively); new traces from the app are written here."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback exposes the "
                             "bundles and the trace form to the network."),
    port: int = typer.Option(8050, "--port", "-p", help="Port (0 picks a free one)."),
    images: list[Path] | None = typer.Option(None, "--images", help="Another folder where input images of VLM "
                                                "bundles may be found (repeatable)."),
    no_trace: bool = typer.Option(False, "--no-trace", help="Hide the form that traces new inputs."),
    no_recompute: bool = typer.Option(False, "--no-recompute", help="Never load a model to recompute the maps of "
                                      "statistics-only bundles."),
    allow_model_dir: list[Path] | None = typer.Option(None, "--allow-model-dir", help="A model folder, or a "
                                                         "folder of model folders, the server may load to recompute "
                                                         "maps and trace from the form (repeatable); otherwise only "
                                                         "registry models load, whatever a bundle names."),
    cache_mb: int = typer.Option(1536, "--cache-mb", help="Memory for cached maps and metrics (MB)."),
    debug: bool = typer.Option(False, "--debug", help="Dash debug mode (reloader and dev tools)."),
) -> None:
    """Open the Dash explorer: Runs, Model (layer x head), Head, Token, Image, Circuits and Hallucination views."""
    import socket
    import sys

    if not traces.is_dir():
        raise InputError(f"--traces {traces} is not a folder; trace something first (`make demo` writes out/demo) "
                         "or create the folder")
    from workbench.cli.paths import check_folders

    check_folders("--images", images)
    check_folders("--allow-model-dir", allow_model_dir)
    if not 0 <= port <= 65535:
        raise InputError("--port must be between 0 and 65535")
    from workbench import option_checks as options

    options.count("--cache-mb", cache_mb, low=1, high=1_000_000)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:  # a busy port or a bad address is a one-line error, not a traceback
        try:
            probe.bind((host, port))
        except OSError as error:
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port "
                             "(0 picks a free one) or --host") from None
        port = probe.getsockname()[1]
    if not _loopback(host):
        print(f"warning: binding {host} makes the bundles under {traces} and the trace form reachable from the "
              "network; there is no authentication", file=sys.stderr)
    from workbench.app import create_app

    app = create_app(traces, image_dirs=images or [], allow_trace=not no_trace, allow_recompute=not no_recompute,
                     allow_model_dirs=allow_model_dir or [], cache_mb=cache_mb)
    shown = f"[{host}]" if ":" in host else host
    print(f"Attention workbench: http://{shown}:{port}/  (bundles under {traces.resolve()}; Ctrl+C to stop)",
          flush=True)
    app.run(host=host, port=port, debug=debug, use_reloader=False)
