"""The app server freezes what it holds for its whole life (imports, the app, loaded models), so that Python's full
collections skip it; objects made later stay collectable, and an evicted model is handed back and freed."""

from __future__ import annotations

import gc
import weakref


def _tracked(obj) -> bool:
    return any(o is obj for o in gc.get_objects())  # frozen objects are not listed: they sit in no generation


def test_objects_alive_at_create_app_are_frozen_and_later_ones_are_not(traces_dir):
    from workbench.app import create_app

    before = [object()]  # a container alive across create_app, like an imported module's tables
    gc.unfreeze()
    assert _tracked(before)
    create_app(traces_dir, allow_trace=False)
    assert gc.get_freeze_count() > 10_000 and not _tracked(before)
    after = [object()]
    assert _tracked(after)


def test_an_evicted_model_is_thawed_and_freed():
    from workbench.app.data.recompute import ModelPool

    pool = ModelPool(max_models=1)
    tracer, _ = pool.get("tiny-llama")
    assert not _tracked(tracer)  # frozen with the load
    first = weakref.ref(tracer.loaded.model)
    del tracer
    pool.get("tiny-gpt2")  # evicts tiny-llama
    gc.collect()
    assert first() is None
