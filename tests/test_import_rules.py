"""Imports follow the data flow: an AST scan of every package module against the layout's import table.

ALLOWED below is the "may import" column of the component layout, the data flow read downwards:
kernels -> models, traces -> capture -> interventions -> analyses -> probes -> app, with the CLI and sweeps on
top. A component may import itself, the shared base modules and the components it lists. On top of the table:
kernels use torch (numpy, triton) and the standard library only, analyses never load models (they take a
Tracer), the app uses capture only through its package (`workbench.capture`), no module imports a `_private`
name (module or attribute) from another module except a package's `__init__` importing its own private
submodules, and the module graph has no cycles. Imports inside functions count: a lazy import is still a
dependency. Every violation is reported in one assertion message.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Import name -> source folder (pyproject.toml's package-dir).
SOURCES = {"workbench": "workbench", "workbench.kernels": "kernels", "workbench.probes": "probes",
           "workbench.app": "app"}

# Component of a module: the longest matching prefix wins. `workbench` itself is the public API: its
# `__init__` re-exports the whole tree lazily, so only the top components may import it.
COMPONENTS = {
    "workbench": "api",
    "workbench.errors": "base", "workbench.threads": "base", "workbench.peak_rss": "base",
    "workbench.lazy": "base", "workbench.version": "base", "workbench.images": "base",
    "workbench.strict_json": "base", "workbench.output_paths": "base",
    "workbench.option_checks": "base",
    "workbench.kernels": "kernels",
    "workbench.models": "models", "workbench.traces": "traces", "workbench.datasets": "datasets",
    "workbench.capture": "capture",
    # The nnsight / TransformerLens / NDIF front-ends are capture backends (behind the Tracer).
    "workbench.interventions": "interventions",
    "workbench.analyses": "analyses",
    "workbench.cli": "cli", "workbench.scale": "scale",
    "workbench.probes": "probes", "workbench.app": "app",
}

_WORKBENCH = {"base", "models", "traces", "datasets", "capture", "interventions", "analyses", "api"}

# The layout table's "may import" column; every component except kernels may also import the base modules
# (errors, thread settings, lazy attributes). The table is the data flow read downwards.
ALLOWED = {
    "kernels": set(),                                            # torch (numpy, triton) only
    "base": set(),
    "models": {"base", "kernels"},
    "traces": {"base", "kernels"},
    "datasets": {"base"},
    "capture": {"base", "kernels", "models", "traces"},
    "interventions": {"base", "capture"},
    "analyses": {"base", "traces", "capture", "interventions"},
    "probes": _WORKBENCH,
    "app": _WORKBENCH | {"probes"},
    "scale": _WORKBENCH | {"kernels", "probes"},
    "cli": _WORKBENCH | {"kernels", "probes", "app", "scale"},
    "api": set(COMPONENTS.values()) - {"cli", "scale", "app", "probes"},
}

# Third-party packages kernels may use besides the standard library (ninja: the build tool torch's C++
# extension builder runs, located through its pip package).
KERNEL_THIRD_PARTY = {"torch", "numpy", "triton", "ninja"}

# Modules that load model weights: analyses take a trace (and a Tracer) instead.
MODEL_LOADING = {"workbench.models.loading"}
MODEL_LOADING_NAMES = {"load_model"}

# What the app may import from capture: the package's public surface only.
APP_CAPTURE_PUBLIC = {"workbench.capture"}


@dataclass(frozen=True)
class Import:
    module: str         # importing module
    line: int
    target: str         # internal module imported (or external top-level package)
    names: tuple        # names taken from the target (from-import), empty for `import x`
    internal: bool


def module_files() -> dict[str, Path]:
    """Every package module, by import name."""
    modules = {}
    for prefix, folder in SOURCES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if "__pycache__" in parts or any(part.startswith(".") for part in parts):
                continue
            if prefix == "workbench" and parts and ".".join(("workbench", parts[0])) in SOURCES:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((prefix, *parts))] = path
    return modules


def _is_package(modules: dict[str, Path], name: str) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _resolve_relative(module: str, level: int, name: str | None, modules: dict[str, Path]) -> str:
    package = module if _is_package(modules, module) else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _internal(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted `name` that is a package module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports(module: str, tree: ast.AST, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import statement of a module, at any depth (functions included), resolved to modules."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _internal(alias.name, modules)
                yield Import(module, node.lineno, target or alias.name.split(".")[0], (), target is not None)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_relative(module, node.level, node.module, modules) if node.level else node.module
            base = _internal(source, modules)
            if base is None:
                yield Import(module, node.lineno, source.split(".")[0], (), False)
                continue
            plain = []
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:                   # `from package import submodule`
                    yield Import(module, node.lineno, submodule, (), True)
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(module, node.lineno, base, tuple(plain), True)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(tree: ast.AST, modules: dict[str, Path], module: str) -> dict[str, str]:
    """Local names bound to package modules (`import a.b as m`, `from a import b`), for attribute checks."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
                elif not alias.asname and alias.name.split(".")[0] in modules:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_relative(module, node.level, node.module, modules) if node.level else node.module
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def private_attribute_uses(module: str, tree: ast.AST, modules: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """`alias._name` where `alias` is another package module bound by an import: a private name reached
    through an attribute instead of an import."""
    aliases = _module_aliases(tree, modules, module)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parts = _dotted(node)
        if not parts or parts[0] not in aliases:
            continue
        target = aliases[parts[0]]
        for attribute in parts[1:]:
            if f"{target}.{attribute}" in modules and not _private(attribute):
                target = f"{target}.{attribute}"
                continue
            if _private(attribute) and target != module:
                yield node.lineno, f"{target}.{attribute}"
            break


def component(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in COMPONENTS:
            return COMPONENTS[name]
    raise AssertionError(f"{module}: no component in the layout table (add it to COMPONENTS)")


def _private_module_allowed(importer: str, target: str, modules: dict[str, Path]) -> bool:
    """A private module (`pkg._mod`, or anything below it) may be imported only by its own package's
    `__init__` (`pkg`): siblings share code through public modules."""
    parts = target.split(".")
    for index, part in enumerate(parts):
        if _private(part) and not (importer == ".".join(parts[:index]) and _is_package(modules, importer)):
            return False
    return True


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), those with a cycle only."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1 or node in graph.get(node, ()):
                    result.append(sorted(members))
    return result


def violations() -> list[str]:
    modules = module_files()
    found = []
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = f"{path.relative_to(ROOT)}"
        mine = component(module)
        for imp in imports(module, tree, modules):
            at = f"{where}:{imp.line}"
            if not imp.internal:
                if mine == "kernels" and imp.target not in KERNEL_THIRD_PARTY and not _stdlib(imp.target):
                    found.append(f"{at}: kernels import {imp.target} (torch, numpy, triton and stdlib only)")
                continue
            if imp.target != module:
                graph[module].add(imp.target)
            theirs = component(imp.target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                found.append(f"{at}: {mine} imports {theirs} ({imp.target})")
            if mine == "analyses" and (imp.target in MODEL_LOADING or MODEL_LOADING_NAMES & set(imp.names)):
                found.append(f"{at}: analyses load models ({imp.target} {', '.join(imp.names)}); take a Tracer")
            if mine == "app" and theirs == "capture" and imp.target not in APP_CAPTURE_PUBLIC:
                found.append(f"{at}: the app imports capture internals ({imp.target}); use workbench.capture")
            if not _private_module_allowed(module, imp.target, modules):
                found.append(f"{at}: private module {imp.target} imported from another module")
            for name in imp.names:
                if _private(name):
                    found.append(f"{at}: private name {imp.target}.{name} imported from another module")
        for line, name in private_attribute_uses(module, tree, modules):
            found.append(f"{where}:{line}: private name {name} used from another module")
    for members in strongly_connected(graph):
        found.append("import cycle: " + " <-> ".join(members))
    return sorted(set(found))


def _stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "__future__"


def test_every_module_has_a_component():
    for module in module_files():
        component(module)


def test_imports_follow_the_layout():
    found = violations()
    assert not found, f"{len(found)} import rule violations:\n" + "\n".join(found)


# The scanner must see what it is meant to see: planted trees with one violation of each kind.
def _scan(tmp_path, files: dict[str, str], monkeypatch) -> list[str]:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    return violations()


def _package(extra: dict[str, str]) -> dict[str, str]:
    files = {f"{folder}/__init__.py": "" for folder in ("workbench", "kernels", "probes", "app", "workbench/models",
                                                        "workbench/traces", "workbench/capture",
                                                        "workbench/analyses", "workbench/cli")}
    files.update(extra)
    return files


def test_scanner_finds_planted_violations(tmp_path, monkeypatch):
    found = _scan(tmp_path, _package({
        "kernels/k.py": "from workbench.kernels import _inner\nfrom workbench.models import cache\n",
        "kernels/_inner.py": "import torch\n",
        "kernels/ext.py": "import pandas\n",
        "workbench/models/cache.py": "def f():\n    from workbench.capture import tracer\n",
        "workbench/capture/tracer.py": "from workbench.models.cache import _secret\n",
        "workbench/analyses/a.py": "def g():\n    from workbench.models.loading import load_model\n",
        "workbench/models/loading.py": "def load_model(): ...\n",
        "workbench/analyses/_hidden.py": "",
        "workbench/cli/c.py": "from workbench.analyses import _hidden\nimport workbench.models.cache as m\nm._x\n",
        "app/v.py": "from workbench.capture.tracer import T\n",
        "workbench/traces/a.py": "from workbench.traces import b\n",
        "workbench/traces/b.py": "def h():\n    import workbench.traces.a\n",
    }), monkeypatch)
    text = "\n".join(found)
    expected = [
        "kernels/k.py:2: kernels imports models (workbench.models.cache)",
        "kernels/ext.py:1: kernels import pandas",
        "workbench/models/cache.py:2: models imports capture",
        "workbench/capture/tracer.py:1: private name workbench.models.cache._secret",
        "workbench/analyses/a.py:2: analyses imports models",
        "workbench/analyses/a.py:2: analyses load models",
        "workbench/cli/c.py:1: private module workbench.analyses._hidden",
        "kernels/k.py:1: private module workbench.kernels._inner",
        "workbench/cli/c.py:3: private name workbench.models.cache._x used",
        "app/v.py:1: the app imports capture internals (workbench.capture.tracer)",
        "import cycle: workbench.traces.a <-> workbench.traces.b",
        "import cycle: workbench.capture.tracer <-> workbench.models.cache",
    ]
    for line in expected:
        assert line in text, f"{line!r} not reported; found:\n{text}"
    assert len(found) == len(expected), text


def test_scanner_accepts_what_the_layout_allows(tmp_path, monkeypatch):
    found = _scan(tmp_path, _package({
        "kernels/_inner.py": "import torch, math\nimport numpy\n",
        "kernels/__init__.py": "from workbench.kernels import _inner\nfrom . import _inner as again\n",
        "workbench/traces/trace.py": "from workbench.kernels import x\nfrom workbench.errors import E\n",
        "workbench/errors.py": "",
        "workbench/capture/_backend.py": "from workbench.traces.trace import Trace\n",
        "workbench/capture/__init__.py": "from workbench.capture._backend import Tracer\n",
        "workbench/analyses/s.py": "from workbench.capture import Tracer\nfrom workbench.traces.trace import T\n",
        "app/v.py": "import workbench\nfrom workbench.capture import Tracer\nfrom workbench.probes import p\n",
        "probes/p.py": "from workbench.analyses import s\n",
        "workbench/cli/c.py": "from workbench.app import v\n",
    }), monkeypatch)
    assert found == []
