"""The scenes pipeline on the shipped trained tiny LLaVA: image variants present, labels from the scene truth."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.datasets import scenes
from workbench.models.registry import data_root
from workbench.probes import dataset, tasks

MODEL_DIR = data_root() / "models" / "llava_scenes"


@pytest.mark.skipif(not (MODEL_DIR / "config.json").exists(), reason="llava-scenes is not trained in this checkout")
def test_scene_questions_become_labelled_rows(tmp_path, models):
    items = tasks.sample(tasks.scene_items(data_root() / "scenes"), 20, seed=1)
    path = tmp_path / "scenes.parquet"
    dataset.build(models("llava-scenes"), items, path, max_new_tokens=20, embed=False, vhd=True)
    data = dataset.load(path)
    assert set(data.meta["variants"]) == {"context", "image_prompt", "image", "prompt"}
    assert data.meta["layers"] * data.meta["heads"] == data.per_token("lookback_image")[0][0].size
    for item, answer, label, correct in zip(items, data.column("generated_text"), data.labels, data.column("correct")):
        assert correct == scenes.is_correct(item.truth, answer)
        if item.truth["type"] != "caption":
            assert label == (not correct)
    assert len(data.per_token("t_vhd")[0]) == data.column("n_generated")[0]
    groups = set(data.groups)
    assert groups == {item.group for item in items} and len(groups) < len(items)
    assert np.all(np.isfinite(np.concatenate(data.per_token("share_image"))))
