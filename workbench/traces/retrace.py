"""The `workbench trace` command that traces a bundle's input again, built from its manifest: what a hint
prints when an analysis needs a capture option the bundle was traced without (routes and circuits need
`--decomposition`), so the user can copy one line instead of reconstructing model, prompt and flags.

    >>> meta = {"model": {"name": "smollm2", "source": "smollm2", "dtype": "float32"},
    ...         "inputs": {"prompt": "The capital of France is", "system": None, "raw": True, "image": None},
    ...         "generation": {"max_new_tokens": 5}, "capture": {"maps": {}}}
    >>> retrace(meta, "runs/capital.wbtrace", ["--decomposition"]).command
    "workbench trace --model smollm2 --raw --prompt 'The capital of France is' -n 5 --decomposition -o runs/capital-decomposition.wbtrace"
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

LONG_PROMPT = 160  # characters; a longer (or multi-line) prompt goes through --prompt-file


@dataclass(frozen=True)
class Retrace:
    """command: one shell line; out: the new bundle it writes; prompt_file: when set, the command reads the
    prompt from this file, which the user writes first with the bundle's prompt (inputs.prompt)."""

    command: str
    out: str
    prompt_file: str | None = None

    def describe(self) -> str:
        """The command, preceded by what to do first when the prompt goes through a file."""
        if self.prompt_file is None:
            return f"`{self.command}`"
        return (f"save the bundle's prompt (inputs.prompt in its manifest.json) as {self.prompt_file}, then run "
                f"`{self.command}`")


def retrace(meta: dict, bundle_path, flags: list[str]) -> Retrace:
    """The trace command for the bundle at `bundle_path` (manifest `meta`) plus the capture `flags`, writing
    NAME-<flag>.wbtrace beside it. Keeps what changes the tokens (model, dtype, system message, chat
    template or --raw, image, new tokens), the intervention it was traced under, and the maps and hidden states
    the bundle kept."""
    path = Path(str(bundle_path)) if bundle_path else Path("BUNDLE.wbtrace")
    suffix = "-".join(flag.lstrip("-") for flag in flags) or "again"
    out = str(path.with_name(f"{path.name.removesuffix('.wbtrace')}-{suffix}.wbtrace"))
    model, inputs = meta.get("model", {}), meta.get("inputs", {})
    capture, generation = meta.get("capture", {}), meta.get("generation", {})
    words = ["workbench", "trace", "--model", model.get("source") or model.get("name") or "MODEL"]
    if model.get("dtype") not in (None, "float32"):
        words += ["--dtype", str(model["dtype"])]
    if inputs.get("system"):
        words += ["--system", inputs["system"]]
    if inputs.get("raw"):
        words.append("--raw")
    image = inputs.get("image")
    if isinstance(image, dict):
        source = image.get("source")
        words += ["--image", source if source and source != "in-memory image" else "IMAGE"]
    prompt, prompt_file = str(inputs.get("prompt") or ""), None
    if "\n" in prompt or len(prompt) > LONG_PROMPT:
        prompt_file = "PROMPT.txt"
        words += ["--prompt-file", prompt_file]
    else:
        words += ["--prompt", prompt]
    if generation.get("max_new_tokens") is not None:
        words += ["-n", str(generation["max_new_tokens"])]
    for stack, chosen in sorted((capture.get("maps") or {}).items()):
        words += ["--maps" if stack == "text" else f"--{stack}-maps", _spec(chosen)]
    if capture.get("hidden_states"):
        words.append("--hidden")
    if isinstance(capture.get("intervention"), dict):
        words += ["--intervene", intervene_spec(capture["intervention"])]
    words += [*flags, "-o", out]
    return Retrace(" ".join(_quote(word) for word in words), out, prompt_file)


def intervene_spec(record: dict) -> str:
    """A manifest's capture.intervention record as a --intervene spec ('act:beta=0.4,...'): every recorded option,
    so the new trace runs the very intervention (VAR's calibrated dims included) and not the defaults."""
    derived = {"name", "code_rho", "report"}  # the name leads; code_rho follows from rho; report is an outcome
    options = []
    for key, value in record.items():
        if key in derived or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(int(v)) for v in value)
        options.append(f"{key}={value}")
    return f"{record.get('name', 'NAME')}:{','.join(options)}"


def _spec(chosen: dict) -> str:
    """A capture.maps entry ({layers, heads}: index lists, None for all) as a --maps spec."""
    def side(values) -> str:
        return "all" if values is None else ",".join(str(v) for v in values)
    return f"{side(chosen.get('layers'))}:{side(chosen.get('heads'))}"


def _quote(word: str) -> str:
    return word if word in ("IMAGE", "MODEL") else shlex.quote(word)
