"""Tokens of a trace and the region each belongs to."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Region vocabulary; a region id is an index into this tuple.
#   special:   BOS/EOS and other special tokens, and chat-template scaffolding (role names, separators)
#   system:    the system message of a chat template
#   image:     image placeholder tokens (each carries its patch row/column, and its tile where the family tiles)
#   prompt:    the user's text (the "context" of Lookback Lens)
#   generated: tokens produced by the model during the trace
REGIONS: tuple[str, ...] = ("special", "system", "image", "prompt", "generated")


@dataclass(frozen=True)
class Token:
    i: int
    id: int
    text: str
    region: str
    patch: tuple[int, int] | None = None
    tile: int | None = None  # which tile (crop, image split, frame) the patch belongs to, for families that tile

    def to_json(self) -> dict:
        data = asdict(self)
        data["patch"] = list(self.patch) if self.patch is not None else None
        if data.pop("tile") is not None:
            data["tile"] = self.tile
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Token":
        patch = data.get("patch")
        region = data["region"]
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}")
        tile = data.get("tile")
        return cls(int(data["i"]), int(data["id"]), str(data["text"]), region, tuple(patch) if patch else None,
                   int(tile) if tile is not None else None)
