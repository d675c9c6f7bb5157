"""Property test: whatever argument vector a user types, the CLI ends in exit 0 (it worked) or 2 (one line
saying what was wrong), never a traceback or an internal error, and leaves the user's files alone.

Argument vectors are drawn from the real commands and options, with values that are valid, out of range,
malformed, huge, hostile (markup, escape sequences) or paths onto the user's own files. Each run happens in
a fresh folder holding a user's file and folder; afterwards both must be byte-for-byte unchanged and
nothing may appear outside the declared outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.workbench.cli.cli_inprocess import run_cli

USER_FILE, USER_FOLDER = "notes.txt", "papers"

# Option values: sensible ones, and the mistakes a user (or a fuzzer) makes.
NUMBERS = st.sampled_from(["0", "1", "2", "-1", "-5", "1e3", "nan", "inf", "abc", "", "9" * 60, "3.5", "65536"])
SPECS = st.sampled_from(["all", "0", "0:0", "0-1:all", "99:0", "5-2", "0-30000000", "0:0-2000000", ":", "a:b",
                         ",", "0,,1", "-1", "0" * 2000, "all:" + ",".join(map(str, range(400)))])
TEXT = st.sampled_from(["hi", "", " ", "[/]", "[bold]x", "\x1b[2J", "x" * 5000, "caf\u00e9", "\u202e", "-"])
SIZES = st.sampled_from(["1KB", "0", "-3GB", "unlimited", "lots", "9" * 330, "1e9", "2GB"])
PATHS = st.sampled_from([USER_FILE, USER_FOLDER, f"{USER_FOLDER}/{USER_FILE}", "out.wbtrace", "out.json", "-",
                         "/proc/x", "/sys/x.json", "missing/dir/x.wbtrace", "[/].wbtrace", ".", ".."])
MODELS = st.sampled_from(["tiny-llama", "tiny-gpt2", "tiny-bert", "lama", "", "../x", "/etc", "[/]"])

TRACE_OPTIONS = {
    "--model": MODELS, "--prompt": TEXT, "--max-new-tokens": NUMBERS, "--out": PATHS, "--json": PATHS,
    "--maps": SPECS, "--vision-maps": SPECS, "--max-map-memory": SIZES, "--top-k": NUMBERS,
    "--head-outputs": st.sampled_from(["all", "last", "generated", "9999", "-1", "1,2", "x", "0" * 2000]),
    "--kernel": st.sampled_from(["auto", "torch", "dense", "triton", "bogus", ""]),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "bogus", "mps", ""]),
    "--dtype": st.sampled_from(["float32", "float8", ""]), "--max-length": NUMBERS,
    "--rope-scaling": st.sampled_from(["linear", "dynamic", "bogus"]),
    "--backend": st.sampled_from(["hf", "nnsight", "lens", "bogus"]),
    "--intervene": st.sampled_from(["act:beta=0.4", "var:rho=0.5,p=0.6", "act:beta=nan", "bogus", "var:"]),
    "--image": PATHS, "--prompt-file": PATHS, "--prompts": PATHS, "--system": TEXT,
}
TRACE_FLAGS = ["--force", "--raw", "--hidden", "--decomposition", "--remote"]


@st.composite
def trace_argv(draw) -> list[str]:
    """A working call (a tiny model, a prompt, one new token, an output) with 0-3 options drawn over it."""
    options = {"--model": draw(st.sampled_from(["tiny-llama", "tiny-gpt2"])), "--prompt": "hi",
               "--max-new-tokens": "1", "--out": "out.wbtrace"}
    for option in draw(st.lists(st.sampled_from(sorted(TRACE_OPTIONS)), max_size=3, unique=True)):
        options[option] = draw(TRACE_OPTIONS[option])
    for option in draw(st.lists(st.sampled_from(["--model", "--prompt", "--out"]), max_size=1)):
        del options[option]  # a missing required option, or the default output folder
    argv = ["trace"] + [part for option, value in options.items() for part in (option, value)]
    return argv + draw(st.lists(st.sampled_from(TRACE_FLAGS), max_size=2, unique=True))


OTHER_COMMANDS = st.one_of(
    # `app` comes only with an unusable port: a usable one would start the server (the app has its own tests).
    st.lists(st.sampled_from(["frobnicate", "--help", "-h", "info", "models", "sinks", "probe", "sweep",
                              "--bogus", "vhd", "routes", "circuits"]), min_size=0, max_size=3),
    st.tuples(st.sampled_from(["info", "sinks", "routes", "circuits"]), PATHS).map(list),
    st.tuples(st.just("info"), PATHS, st.just("--json")).map(list),
    st.tuples(st.just("sinks"), PATHS, st.just("--eps"), NUMBERS).map(list),
    st.tuples(st.just("app"), st.just("--port"), NUMBERS).map(list),
)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root (path -> sha256), folders as entries too: what a run must leave unchanged."""
    seen = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            seen[os.path.relpath(os.path.join(folder, name), root) + "/"] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            seen[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return seen


def _declared_outputs(argv: list[str]) -> list[str]:
    """Paths a successful run may create: --out / --json values and the default traces/ folder."""
    outputs = ["traces"]
    for flag in ("--out", "-o", "--json"):
        if flag in argv:
            index = argv.index(flag)
            if index + 1 < len(argv):
                outputs.append(argv[index + 1])
    return outputs


def _run_in_fresh_folder(tmp_path_factory, argv: list[str]) -> None:
    root = tmp_path_factory.mktemp("user")
    (root / USER_FILE).write_text("my own notes\n")
    (root / USER_FOLDER).mkdir()
    (root / USER_FOLDER / USER_FILE).write_text("a paper I am writing\n")
    user_before = {k: v for k, v in _snapshot(root).items()}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code, _out, err = run_cli(*argv)
    finally:
        os.chdir(cwd)
    assert code in (0, 2), f"{argv!r} -> exit {code}: {err[-2000:]}"
    assert "Traceback" not in err and "internal error" not in err, f"{argv!r}: {err[-2000:]}"
    if code == 2:
        error_lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1, f"{argv!r}: {err[-2000:]}"
        assert len(error_lines[0]) < 1000, f"{argv!r}: an error line of {len(error_lines[0])} characters"
    after = _snapshot(root)
    for path, digest in user_before.items():  # the user's files: never touched, with or without --force
        assert after.get(path) == digest, f"{argv!r} changed or removed {path}"
    declared = _declared_outputs(argv)
    for path in after.keys() - user_before.keys():
        assert any(path == d or path.startswith(d.rstrip("/") + "/") or path.rstrip("/") == d.rstrip("/")
                   for d in declared), f"{argv!r} wrote {path}, which it did not declare"


FUZZ = settings(max_examples=int(os.environ.get("WORKBENCH_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(argv=trace_argv())
def test_trace_argument_vectors_end_in_0_or_one_line_2(tmp_path_factory, argv):
    _run_in_fresh_folder(tmp_path_factory, argv)


@FUZZ
@given(argv=OTHER_COMMANDS)
def test_other_commands_end_in_0_or_one_line_2(tmp_path_factory, argv):
    assume(not (argv[:1] == ["app"] and argv[-1].isdigit() and 0 < int(argv[-1]) < 65536))
    _run_in_fresh_folder(tmp_path_factory, argv)


FORCE_ON_USER_THINGS = [
    ["--out", USER_FILE, "--force"],
    ["--out", USER_FOLDER, "--force"],
    ["--out", ".", "--force"],
    ["--out", "out.wbtrace", "--json", USER_FILE, "--force"],
    ["--out", "out.wbtrace", "--json", f"{USER_FOLDER}/{USER_FILE}", "--force"],
    ["--prompts", USER_FILE, "--out", USER_FOLDER, "--force"],
]


def test_force_never_replaces_what_the_user_has(tmp_path_factory):
    """--force replaces only what the workbench wrote: each of these is refused and changes nothing."""
    for extra in FORCE_ON_USER_THINGS:
        argv = ["trace", "--model", "tiny-gpt2", "--max-new-tokens", "1", *extra]
        if "--prompts" not in extra:
            argv += ["--prompt", "hi"]
        _run_in_fresh_folder(tmp_path_factory, argv)


def test_force_replaces_a_bundle_the_workbench_wrote(tmp_path_factory):
    root = tmp_path_factory.mktemp("again")
    argv = ["trace", "--model", "tiny-gpt2", "--prompt", "hi", "--max-new-tokens", "1", "--out",
            str(root / "run.wbtrace")]
    assert run_cli(*argv)[0] == 0
    code, _out, err = run_cli(*argv)
    assert code == 2 and "already exists" in err
    assert run_cli(*argv, "--force")[0] == 0
