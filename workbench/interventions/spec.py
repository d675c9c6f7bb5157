"""Intervention specs from the command line ('act:beta=0.4', 'var:rho=0.5,p=0.6' -> ACT / VAR; the decoding
interventions 'avc:alpha=1', 'damro:top_k=10' -> AVC / DAMRO with kinds=DECODING; all four with kinds=CAPTURE)
and from a bundle's manifest (`recorded`: the spec a bundle was traced under, so a replay can apply it again)."""

from __future__ import annotations

from dataclasses import fields

from workbench.errors import InputError
from workbench.interventions.act import ACT
from workbench.interventions.contrastive import AVC, DAMRO
from workbench.interventions.var import VAR

SPECS = {"act": ACT, "var": VAR}
# Contrastive decoding against suspect image tokens: they change the decoding loop, not attention. `workbench trace
# --intervene` takes both kinds (CAPTURE: the decoding ones through `analyses.recalibration.trace`), `workbench blind
# --intervene` the decoding ones.
DECODING = {"avc": AVC, "damro": DAMRO}
CAPTURE = {**SPECS, **DECODING}


def parse(text: str, kinds: dict = SPECS):
    """'act', 'act:beta=0.4,threshold=0.1,layers=2,3', 'var:rho=0.5,p=0.6,dims=1415,2533' -> ACT / VAR;
    with kinds=DECODING, 'avc:alpha=1', 'damro:top_k=10,alpha=2' -> AVC / DAMRO."""
    name, _, options = text.strip().partition(":")
    spec = kinds.get(name.strip().lower())
    if spec is None:
        if name.strip().lower() in CAPTURE:
            where = "workbench trace --intervene" if name.strip().lower() in SPECS else \
                "workbench trace --intervene or workbench blind --intervene"
            raise InputError(f"{name.strip()} is applied by `{where}`, not here")
        names = " or ".join(f"{k}:..." for k in kinds)
        example = "damro:top_k=10" if kinds is DECODING else "var:rho=0.5,p=0.6"
        raise InputError(f"unknown intervention {name!r}; use {names} (e.g. {example})")
    pairs: list[list[str]] = []
    for piece in filter(None, (part.strip() for part in options.split(","))):
        if "=" in piece:
            pairs.append(piece.split("=", 1))
        elif pairs:  # a list value continues: layers=2,3
            pairs[-1][1] += "," + piece
        else:
            raise InputError(f"cannot read {piece!r} in --intervene {text!r}; write NAME:key=value,key=value")
    known = {f.name: f for f in fields(spec)}
    values = {}
    for key, raw in pairs:
        key = key.strip()
        if key not in known:
            raise InputError(f"{name} has no option {key!r}; options: {', '.join(known)}")
        values[key] = _convert(known[key].type, raw.strip(), f"{name}:{key}")
    return spec(**values)


def _convert(annotation, raw: str, what: str):
    try:
        if "tuple" in str(annotation):
            return tuple(int(part) for part in raw.replace("+", ",").split(",") if part)
        if "bool" in str(annotation):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if "int" in str(annotation):
            return int(raw)
        if "float" in str(annotation):
            return float(raw)
        return raw
    except ValueError:
        raise InputError(f"cannot read {raw!r} for {what}") from None


def recorded(meta: dict):
    """The intervention a bundle was traced under, rebuilt from its manifest's capture.intervention (every field of
    the spec, as `to_json` wrote it), or None when it was traced without one. A record this workbench cannot rebuild
    exactly (an unknown name, a missing or unreadable field) is refused: replaying without the edit, or with a
    default in place of a lost value, would recompute attention the traced run never had."""
    record = (meta.get("capture") or {}).get("intervention")
    if record is None:
        return None
    redo = "its maps cannot be recomputed; trace it again with --maps to store them"
    name = record.get("name") if isinstance(record, dict) else None
    spec = CAPTURE.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"this bundle was traced under intervention {name!r}, which this workbench cannot rebuild; "
                         f"{redo}")
    missing = [f.name for f in fields(spec) if f.name not in record]
    if missing:
        raise InputError(f"this bundle's manifest records intervention {name} without its {', '.join(missing)} "
                         f"(traced by an older workbench), so {redo}")
    values = {f.name: tuple(record[f.name]) if isinstance(record[f.name], list) else record[f.name]
              for f in fields(spec)}
    try:
        return spec(**values)
    except (TypeError, ValueError) as error:
        raise InputError(f"this bundle's manifest records intervention {name} with values this workbench cannot "
                         f"read ({error}), so {redo}") from None
