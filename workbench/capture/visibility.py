"""Mask-only statistics of a capture, computed once per forward and shared by the layers that share a mask.

How many queries see each key (key_count) and how many keys of each region each query sees (region_count)
depend on the mask and the token regions alone, not on the scores; so do the runs of equal region the
one-pass kernel reads. Transformers hands every layer of a kind (full attention, sliding window) the same
mask in a forward, so computing them per layer repeats the same work 30 times per decode step.
`CallVisibility` holds them for one mask of one forward; `CountGroups` accumulates them over forwards once
per set of layers that shared a mask, so those layers store one count tensor between them.
"""

from __future__ import annotations

import torch

from workbench.capture.statistics import rows_of
from workbench.kernels import MaskSpec
from workbench.kernels.counts import interval_counts, visibility_counts
from workbench.traces.tokens import REGIONS


class CallVisibility:
    """key_count [batch, key_pos], region_count [batch, query_pos, region] and the kernel's region runs of one
    attention call's mask over its keys; `layers` lists the layers of this forward that reused them."""

    def __init__(self, call: dict, mask: MaskSpec, *, batch: int, n_queries: int):
        self.stack, self.rows, self.keys, self.start = call["stack"], call["rows"], call["keys"], call["start"]
        self.mask, self.key_regions, self.n_queries = mask, call["key_regions"], n_queries
        self.n_regions = call.get("n_regions", len(REGIONS))  # region x span cells where a trace has user spans
        self.layers: list[int] = []
        self._runs = None
        intervals = mask.key_intervals(n_queries, call["n_keys"])
        if intervals is not None:  # prefix sums over the intervals: no [query_pos, key_pos] pass
            self.counts = interval_counts(*intervals, batch=batch, n_keys=call["n_keys"], key_regions=self.key_regions,
                                          n_regions=self.n_regions, device="cpu")
        else:
            self.counts = visibility_counts(mask, batch=batch, n_queries=n_queries, n_keys=call["n_keys"],
                                            key_regions=self.key_regions, n_regions=self.n_regions, device="cpu")

    @property
    def runs(self) -> torch.Tensor:
        """[n_runs, 3] (start, end, region) of the keys, for the one-pass kernel (made on first use)."""
        if self._runs is None:
            from workbench.kernels.fused_cpu import region_runs_tensor

            self._runs = region_runs_tensor(self.key_regions)
        return self._runs

    def prompt_key_count(self, prompt_rows: int) -> torch.Tensor:
        """[key_pos] queries per key among this call's first `prompt_rows` rows."""
        if prompt_rows == self.n_queries:
            return self.counts[0][0]
        return visibility_counts(rows_of(self.mask, 0, prompt_rows), batch=1, n_queries=prompt_rows,
                                 n_keys=self.keys.stop - self.keys.start, key_regions=self.key_regions,
                                 n_regions=self.n_regions, device="cpu")[0][0]


class CountGroups:
    """key_count, region_count (and prompt_key_count for the text stack) per set of layers that shared a mask in
    a forward: (stack, layers) -> {stat: tensor over the stack's capacity}."""

    def __init__(self, capacity: dict[str, int], key_capacity: dict[str, int] | None = None):
        self.capacity = capacity  # the recorder's: stack -> positions (a vision stack is added when first seen)
        self.key_capacity = key_capacity if key_capacity is not None else {}  # stacks whose keys are not their rows
        self.groups: dict[tuple[str, tuple[int, ...]], dict[str, torch.Tensor]] = {}

    def allocate(self, stack: str, n_regions: int = len(REGIONS)) -> dict[str, torch.Tensor]:
        n = self.capacity[stack]
        return {"key_count": torch.zeros(self.key_capacity.get(stack, n), dtype=torch.long),
                "region_count": torch.zeros(n, n_regions, dtype=torch.long),
                **({"prompt_key_count": torch.zeros(n, dtype=torch.long)} if stack == "text" else {})}

    def add_forward(self, calls, *, prompt_length: int) -> None:
        """Add one forward's counts (its `CallVisibility`s), each once to the group of the layers that shared it."""
        with torch.inference_mode():  # the last forward's are added after capture, to tensors made during it
            self._add(calls, prompt_length)

    def _add(self, calls, prompt_length: int) -> None:
        for shared in calls:
            place = (shared.stack, tuple(sorted(set(shared.layers))))
            group = self.groups.get(place)
            if group is None:
                group = self.groups[place] = self.allocate(shared.stack, shared.n_regions)
            key_count, region_count = shared.counts
            group["key_count"][shared.keys] += key_count[0]
            group["region_count"][shared.rows] = region_count[0]
            prompt_rows = min(shared.n_queries, prompt_length - shared.start)
            if shared.stack == "text" and prompt_rows > 0:
                group["prompt_key_count"][shared.keys] += shared.prompt_key_count(prompt_rows)

    def by_layer(self) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
        """(stack, layer) -> its count tensors: its group's own tensors (the same objects for every layer of the
        group), or the sum of its groups where the layers shared masks differently from one forward to the next
        (each forward filled a layer's rows, and added its keys' counts, in exactly one of them)."""
        member: dict[tuple[str, int], list[dict[str, torch.Tensor]]] = {}
        for (stack, layers), group in self.groups.items():
            for layer in layers:
                member.setdefault((stack, layer), []).append(group)
        return {place: groups[0] if len(groups) == 1 else {stat: sum(g[stat] for g in groups) for stat in groups[0]}
                for place, groups in member.items()}
