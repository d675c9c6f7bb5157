"""Tiled VLM families on one patch grid per tile (workbench.traces.tiles) and rollout's patch grid, on real
tiny-llava-next and tiny-idefics3 traces: the grids are checked against the sequence layout docs/models.md draws
(LLaVA-NeXT: the base image's tokens first, row-major; Idefics3: the global image's tokens last, row-major), not
against the tokens' (row, col, tile) labels they are built from; the labels must then agree with them."""

from __future__ import annotations

import math

import numpy as np
import pytest

import workbench
from workbench.analyses.rollout import patch_grid
from workbench.traces.tiles import image_tiles, tile_grid, whole_image_tile

IMAGE = "data/scenes/images/scene_0001.png"


@pytest.fixture(scope="module")
def traces():
    return {name: workbench.trace(name, "Describe", image=IMAGE, max_new_tokens=1)
            for name in ("tiny-llava-next", "tiny-idefics3", "tiny-llava")}


def image_positions(trace) -> list[int]:
    return [t.i for t in trace.tokens if t.region == "image" and t.patch is not None]


@pytest.mark.parametrize("name,first", [("tiny-llava-next", True), ("tiny-idefics3", False)])
def test_the_whole_image_tile_is_the_family_s_base_or_global_image(traces, name, first):
    trace = traces[name]
    tiles = image_tiles(trace.tokens)
    assert len(tiles) > 1 and None not in tiles
    whole = whole_image_tile(trace.tokens, trace.model["architecture"])
    assert whole == (tiles[0] if first else tiles[-1])
    grid = tile_grid(trace.tokens, whole)
    side = grid.shape[0]
    positions = image_positions(trace)
    base = positions[:side * side] if first else positions[-side * side:]  # the documented sequence layout
    assert grid.shape == (side, side) and grid.tolist() == np.array(base).reshape(side, side).tolist()


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-idefics3"])
def test_every_tile_has_its_own_full_grid_and_no_token_is_lost(traces, name):
    trace = traces[name]
    seen = []
    for tile in image_tiles(trace.tokens):
        grid = tile_grid(trace.tokens, tile)
        assert (grid >= 0).all()  # a full grid: no cell left empty, none written twice (the count below)
        for (row, col), position in np.ndenumerate(grid):
            token = trace.tokens[int(position)]
            assert (token.patch, token.tile) == ((row, col), tile)
        seen += grid.ravel().tolist()
    assert sorted(seen) == image_positions(trace)


def test_an_untiled_family_keeps_its_one_grid(traces):
    trace = traces["tiny-llava"]
    assert image_tiles(trace.tokens) == [None] and whole_image_tile(trace.tokens, trace.model["architecture"]) is None
    positions = image_positions(trace)
    side = math.isqrt(len(positions))
    assert tile_grid(trace.tokens, None).tolist() == np.array(positions).reshape(side, side).tolist()


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-idefics3", "tiny-llava"])
def test_rollout_patch_grid_holds_the_whole_image_tile(traces, name):
    trace = traces[name]
    relevance = np.arange(len(trace.tokens), dtype=np.float64)  # each token's relevance is its position
    expected = tile_grid(trace.tokens, whole_image_tile(trace.tokens, trace.model["architecture"]))
    assert patch_grid(trace, relevance).tolist() == expected.astype(np.float64).tolist()
