"""`Trace`: one traced input in memory: metadata, tokens, lazily available tensors and analysis results.

`Trace.save` and `load` are the entry points to the bundle on disk; the file format itself is `bundle`'s,
which never imports this module (no import cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS, Token


class MemoryTensors:
    """Tensors held in memory (a fresh capture): name -> (tensor, axes)."""

    def __init__(self, tensors: dict[str, tuple[torch.Tensor, tuple[str, ...]]]):
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def axes(self, name: str) -> tuple[str, ...]:
        return tuple(self._tensors[name][1])

    def get(self, name: str, index: int | None = None) -> torch.Tensor:
        tensor = self._tensors[name][0]
        return tensor if index is None else tensor[index]


class Trace:
    """One traced input. Build with `workbench.trace(...)`, read with `workbench.load(path)`.

    meta holds the manifest fields: model, inputs, generation, dims, capture, checks (see docs/trace-format.md).
    Tensors load lazily, one layer file at a time, when read from a bundle.

    >>> import workbench
    >>> t = workbench.trace("tiny-gpt2", "The cat sat on the mat", max_new_tokens=2, maps="0:all")
    >>> t.n_layers(), t.n_heads(), len(t.tokens), t.generation["end"] - t.generation["start"]
    (3, 4, 25, 2)
    >>> t.axes("layer_00.maps")
    ('head', 'query_pos', 'key_pos')
    >>> stats = t.layer(0)
    >>> from workbench.traces.metrics import alpha
    >>> a = alpha(stats["key_mass"], stats["key_count"])   # Gu et al.'s alpha [head, key_pos], key_mass / key_count
    >>> bool(torch.allclose(a[:, 0].float(), stats["maps"][:, :, 0].float().mean(1), atol=1e-3))
    True
    >>> t.add_result("note", {"checked": True})
    >>> t.to_json()["results"]
    {'note': {'checked': True}}
    """

    def __init__(self, *, meta: dict[str, Any], tokens: list[Token], tensors, results: dict | None = None,
                 path: Path | None = None):
        self.meta = meta
        self.tokens = tokens
        self._tensors = tensors
        self._results = dict(results or {})
        self.path = path

    # -- metadata ---------------------------------------------------------------------------------------
    @property
    def model(self) -> dict:
        return self.meta["model"]

    @property
    def generation(self) -> dict:
        return self.meta["generation"]

    @property
    def dims(self) -> dict:
        return self.meta["dims"]

    @property
    def checks(self) -> dict:
        return self.meta.get("checks", {})

    @property
    def stacks(self) -> list[str]:
        return list(self.dims["stacks"])

    def n_layers(self, stack: str = "text") -> int:
        return self.dims["stacks"][stack]["layers"]

    def n_heads(self, stack: str = "text") -> int:
        return self.dims["stacks"][stack]["heads"]

    @property
    def regions(self) -> torch.Tensor:
        """[key_pos] region id of every token of the text stack."""
        return torch.tensor([REGIONS.index(token.region) for token in self.tokens], dtype=torch.long)

    @property
    def text(self) -> str:
        return "".join(token.text for token in self.tokens)

    # -- tensors ----------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        return self._tensors.names()

    def axes(self, name: str) -> tuple[str, ...]:
        return self._tensors.axes(name)

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self._tensors.names():
            raise KeyError(f"this trace has no tensor {name!r}; see trace.tensor_names()")
        return self._tensors.get(name)

    def tensor_slice(self, name: str, index: int) -> torch.Tensor:
        """tensor(name)[index], reading only that slice from a bundle (e.g. one head of a layer's maps).

        >>> import workbench
        >>> trace = workbench.trace("tiny-llama", "Hello there", maps="0:all")
        >>> heads = trace.tensor("layer_00.maps").shape[0]
        >>> bool((trace.tensor_slice("layer_00.maps", heads - 1) == trace.tensor("layer_00.maps")[-1]).all())
        True
        """
        if name not in self._tensors.names():
            raise KeyError(f"this trace has no tensor {name!r}; see trace.tensor_names()")
        return self._tensors.get(name, index)

    def image(self):
        """The input image as the model saw it (a PIL RGB image), or None for text-only traces."""
        if not self.has("inputs.image"):
            return None
        from PIL import Image

        return Image.fromarray(self.tensor("inputs.image").numpy())

    def layer(self, layer: int, stack: str = "text") -> dict[str, torch.Tensor]:
        """All tensors of one layer, by statistic name (key_mass, entropy, maps, ...)."""
        prefix = tensor_name(stack, layer, "")
        return {name[len(prefix):]: self.tensor(name) for name in self.tensor_names() if name.startswith(prefix)}

    def has(self, name: str) -> bool:
        return name in self._tensors.names()

    # -- results ----------------------------------------------------------------------------------------
    @property
    def results(self) -> dict[str, dict]:
        return dict(self._results)

    def add_result(self, name: str, data: dict) -> None:
        """Attach an analysis result (JSON-able dict); written to results/<name>.json on save."""
        from workbench.traces.bundle import check_result_name, write_result

        check_result_name(name)
        self._results[name] = data
        if self.path is not None:
            write_result(self.path, name, data)

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write this trace as a bundle directory (atomic; refuses to replace an existing path unless force)."""
        from workbench.traces.bundle import save_bundle

        return save_bundle(self, Path(path), force=force)

    def to_json(self) -> dict:
        """The JSON export: metadata, tokens, per-layer x head summaries and analysis results (no raw maps)."""
        from workbench.traces.summary import export_json

        return export_json(self)

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (f"Trace(model={self.model.get('name')!r}, tokens={len(self.tokens)}, "
                f"layers={self.n_layers()}, heads={self.n_heads()}{where})")


def load(path: str | Path, *, verify: bool = False) -> Trace:
    """Open a bundle lazily (tensors are read per layer on use). verify=True also checks every file's checksum.

    >>> import tempfile, workbench
    >>> path = workbench.trace("tiny-gpt2", "The cat sat on the mat").save(f"{tempfile.mkdtemp()}/cat.wbtrace")
    >>> again = workbench.load(path, verify=True)
    >>> again.checks["healthy"], tuple(again.layer(0)["key_mass"].shape)     # [head, key_pos]
    (True, (4, 23))
    """
    from workbench.traces.bundle import open_bundle

    return Trace(**open_bundle(Path(path), verify=verify))
