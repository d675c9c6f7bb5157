"""App fixtures: a traces folder with small real bundles (tiny fixtures, plus SmolLM2 for the slow tier), a
corrupt one and analysis results in the documented shapes. Helpers live in tests/app/app_helpers.py."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import workbench
from tests.app.app_helpers import circuits_result, png_bytes, routes_result


@pytest.fixture(scope="session")
def traces_dir(tmp_path_factory) -> Path:
    """tiny-llama with fp32 maps, tiny-llama statistics only (+ results), tiny-llava with its image, a corrupt one."""
    root = tmp_path_factory.mktemp("traces")
    maps = workbench.trace("tiny-llama", "The cat sat on the mat and looked at the dog", max_new_tokens=5,
                           maps="all", map_dtype="float32")
    maps.save(root / "llama-maps.wbtrace")
    stats = workbench.trace("tiny-llama", "Anna's code is 4417. What is Anna's code?", max_new_tokens=4)
    stats.save(root / "llama-stats.wbtrace")
    saved = workbench.load(root / "llama-stats.wbtrace")
    saved.add_result("routes", routes_result(saved, len(saved.tokens) - 1))
    saved.add_result("circuits", circuits_result())
    data = png_bytes()
    images = root / "images"
    images.mkdir()
    image_path = images / f"{hashlib.sha256(data).hexdigest()}.png"
    image_path.write_bytes(data)
    (root / "vlm").mkdir()
    workbench.trace("tiny-llava", "Describe the picture", image=str(image_path), max_new_tokens=3).save(
        root / "vlm" / "llava.wbtrace")
    broken = root / "broken.wbtrace"
    shutil.copytree(root / "llama-stats.wbtrace", broken)
    (broken / "manifest.json").write_text('{"format": "workbench-trace", "schema_version": 1, "model"')
    return root


@pytest.fixture(scope="session")
def store(traces_dir):
    from workbench.app.data.service import AppData

    return AppData(traces_dir)


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory) -> Path:
    """A SmolLM2 bundle like `make demo` writes (reused from out/demo when present)."""
    demo = Path(__file__).resolve().parents[2] / "out" / "demo" / "capital.wbtrace"
    root = tmp_path_factory.mktemp("demo")
    if demo.is_dir():
        try:
            workbench.load(demo)
            shutil.copytree(demo, root / "capital.wbtrace")
            return root / "capital.wbtrace"
        except workbench.WorkbenchError:
            pass
    workbench.trace("smollm2", "The capital of France is", max_new_tokens=12).save(root / "capital.wbtrace")
    return root / "capital.wbtrace"
