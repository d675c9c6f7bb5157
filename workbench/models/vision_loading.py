"""Load a standalone vision encoder (DINOv2): the module, its image processor, no tokenizer.

Such a model takes pixels only, so `LoadedModel.kind` is "vision", `tokenizer` is None and `processor` is the
image processor (resize, crop, normalise) that turns an image into `pixel_values`.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import WeightsMissingError
from workbench.models.loaded import LoadedModel


def load_vision_directory(directory: Path, *, name: str, dtype: str = "float32",
                          repair: str = "check that the folder holds the weights and preprocessor_config.json"
                          ) -> LoadedModel:
    """`repair`: what the user can do when loading fails (a converted cache folder can be deleted; a user's
    folder must be completed)."""
    import torch
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(str(directory), dtype=getattr(torch, dtype),
                                                       local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(str(directory), local_files_only=True)
    except OSError as error:
        raise WeightsMissingError(f"cannot load {name!r} from {directory}: {str(error).splitlines()[0]}; "
                                  f"{repair}") from error
    return LoadedModel(name, model.eval(), None, "vision", str(directory), processor=processor)
