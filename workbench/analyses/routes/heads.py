"""Typed attention heads recognised from their patterns, and how often heads carry route edges.

Ferrando & Voita 2024 (section 5) find the heads that carry information-flow routes and name the recurring
kinds; the pattern scores here are the usual definitions, computed from the trace's rebuilt attention
rows (chunked over queries, O(head * chunk * n) memory):

- previous-token: mean over query rows i >= 1 of A[i, i - 1];
- induction: over text rows i whose token occurred before, the attention mass on the keys j that follow an
  earlier occurrence (token[j - 1] == token[i], 1 <= j < i);
- subword-merging: over text rows that continue a word (nothing between it and an alphanumeric
  predecessor), the mass on the earlier tokens of the same word, minus the head's mean mass on the previous
  token over word-initial text rows (so a plain previous-token head, which also puts its mass on the
  previous subword, scores near 0; with no word-initial rows nothing is subtracted).
A head gets a type when its score reaches `type_threshold`; a head may have several types.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.analyses.decomposed import attention_rows
from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS

TYPES = ("previous_token", "induction", "subword_merging")
_TEXT_REGIONS = tuple(REGIONS.index(region) for region in ("system", "prompt", "generated"))
_ROW_CHUNK = 256


@dataclass(frozen=True)
class HeadPatterns:
    """Per type: scores [layer][head] (None where the trace has no row of that kind) and the rows averaged."""

    scores: dict[str, tuple[tuple[float, ...], ...] | None]
    rows: dict[str, int]
    type_threshold: float

    def types(self) -> dict[tuple[int, int], tuple[str, ...]]:
        """(layer, head) -> the types whose score reaches the threshold (heads without a type left out)."""
        found: dict[tuple[int, int], list[str]] = {}
        for kind, table in self.scores.items():
            for layer, row in enumerate(table or ()):
                for head, score in enumerate(row):
                    if score >= self.type_threshold:
                        found.setdefault((layer, head), []).append(kind)
        return {key: tuple(kinds) for key, kinds in sorted(found.items())}

    def to_json(self) -> dict:
        return {"scores": {kind: ([list(row) for row in table] if table is not None else None)
                           for kind, table in self.scores.items()},
                "rows": self.rows, "type_threshold": self.type_threshold,
                "typed": [{"layer": layer, "head": head, "types": list(kinds)}
                          for (layer, head), kinds in self.types().items()]}

    @classmethod
    def from_json(cls, data: dict) -> HeadPatterns:
        scores = {kind: (tuple(tuple(float(v) for v in row) for row in table) if table is not None else None)
                  for kind, table in data["scores"].items()}
        return cls(scores=scores, rows=dict(data.get("rows") or {}),
                   type_threshold=float(data.get("type_threshold", 0.4)))


def _word_starts(trace, text: torch.Tensor) -> torch.Tensor:
    """For each position, the first position of the word it belongs to (itself unless it continues a word).

    Token pieces may have lost their leading space (tokenizers trim offsets), so they are aligned to the
    rendered input text and a token continues a word when nothing separates it from an alphanumeric
    predecessor; tokens not found there (generated ones) fall back to their own text.
    """
    tokens = trace.tokens
    rendered = trace.meta.get("inputs", {}).get("text") or ""
    starts = torch.arange(len(tokens))
    cursor = 0
    for i, token in enumerate(tokens):
        piece = token.text
        found = rendered.find(piece, cursor) if piece else -1
        adjacent = found == cursor if found >= 0 else None
        if found >= 0:
            cursor = found + len(piece)
        if i == 0 or not (bool(text[i]) and bool(text[i - 1])):
            continue
        joined = adjacent if adjacent is not None else True
        if joined and piece[:1].isalnum() and tokens[i - 1].text[-1:].isalnum():
            starts[i] = starts[i - 1]
    return starts


def head_patterns(trace, *, type_threshold: float = 0.4) -> HeadPatterns:
    """Pattern scores of every head of the text stack (needs a trace captured with decomposition=True)."""
    tokens = trace.tokens
    n = len(tokens)
    ids = torch.tensor([token.id for token in tokens])
    text = torch.isin(trace.regions, torch.tensor(_TEXT_REGIONS))
    starts = _word_starts(trace, text)
    keys = torch.arange(n)
    previous_ids = torch.cat([torch.tensor([-1]), ids[:-1]])
    key_ok = text & torch.cat([torch.tensor([False]), text[:-1]])  # key j and token j - 1 are text

    def masks(positions: torch.Tensor) -> dict[str, torch.Tensor]:  # [row, key_pos] per kind, chunk by chunk
        before = keys[None, :] < positions[:, None]
        induction = (previous_ids[None, :] == ids[positions, None]) & key_ok[None, :] & before & text[positions, None]
        return {"induction": induction, "subword_merging": (keys[None, :] >= starts[positions, None]) & before}

    chunks = [keys[start:start + _ROW_CHUNK] for start in range(0, n, _ROW_CHUNK)]
    chunk_masks = [masks(positions) for positions in chunks] if n <= 4 * _ROW_CHUNK else None
    wanted = {"previous_token": keys >= 1, "induction": torch.zeros(n, dtype=torch.bool),
              "subword_merging": torch.zeros(n, dtype=torch.bool)}
    word_initial = (starts == keys) & text & torch.cat([torch.tensor([False]), text[:-1]])  # [query_pos]
    for index, positions in enumerate(chunks):
        for kind, mask in (chunk_masks[index] if chunk_masks else masks(positions)).items():
            wanted[kind][positions] = mask.any(-1)
    rows = {kind: int(selected.sum()) for kind, selected in wanted.items()}
    initial_rows = int(word_initial.sum())
    tables: dict[str, list[list[float]]] = {kind: [] for kind in TYPES}
    for layer in range(trace.n_layers()):
        query = trace.tensor(tensor_name("text", layer, "query")).float()
        key = trace.tensor(tensor_name("text", layer, "key")).float()
        sums = {kind: torch.zeros(query.shape[0], dtype=torch.float64) for kind in (*TYPES, "initial_previous")}
        for index, positions in enumerate(chunks):
            attention = attention_rows(query, key, positions)  # [head, row, key_pos]
            chosen = wanted["previous_token"][positions]
            if chosen.any():
                rows_here = positions[chosen]
                previous = attention[:, chosen.nonzero().flatten(), rows_here - 1]  # [head, chosen rows]
                sums["previous_token"] += previous.sum(-1).double()
                sums["initial_previous"] += previous[:, word_initial[rows_here]].sum(-1).double()
            for kind, mask in (chunk_masks[index] if chunk_masks else masks(positions)).items():
                chosen = wanted[kind][positions]
                if chosen.any():
                    block = mask[chosen].to(attention.dtype)  # [row, key_pos]
                    sums[kind] += (attention[:, chosen] * block).sum((1, 2)).double()
        if initial_rows:
            sums["subword_merging"] -= sums["initial_previous"] * (rows["subword_merging"] / initial_rows)
        for kind in TYPES:
            tables[kind].append([round(float(value / rows[kind]), 6) if rows[kind] else float("nan")
                                 for value in sums[kind]])
    scores = {kind: (tuple(tuple(row) for row in tables[kind]) if rows[kind] else None) for kind in TYPES}
    return HeadPatterns(scores=scores, rows=rows, type_threshold=type_threshold)


def head_usage(routes, n_layers: int, n_heads: int, threshold: float) -> dict[str, list[list[float]]]:
    """Across route graphs: per (layer, head), the routes with at least one edge the head carries (its own
    part above the threshold), the edges it carries, and the summed contribution of its parts on them."""
    in_routes = [[0] * n_heads for _ in range(n_layers)]
    edges = [[0] * n_heads for _ in range(n_layers)]
    weight = [[0.0] * n_heads for _ in range(n_layers)]
    for graph in routes:
        seen = set()
        for _, target, data in graph.edges(data=True):
            if "heads" not in data:
                continue
            layer = int(target[1:].split("_")[0])
            for head, part in enumerate(data["heads"]):
                if part > threshold:
                    edges[layer][head] += 1
                    weight[layer][head] += part
                    seen.add((layer, head))
        for layer, head in seen:
            in_routes[layer][head] += 1
    return {"routes": in_routes, "edges": edges,
            "weight": [[round(value, 6) for value in row] for row in weight]}
