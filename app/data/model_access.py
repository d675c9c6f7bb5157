"""Which models the app's server may load: registry names, and folders the server was started with.

A bundle's manifest names its model, and anyone who can put a bundle in the traces folder (or send a form)
chooses that name. Loading it on their behalf must not reach an arbitrary folder (or the hub) on the server,
so recompute and trace jobs go through `ModelAccess.check`: a registry name, or a folder at or under one of
`workbench app --allow-model-dir DIR`. Every other name gets the same message, whether or not such a path
exists on the server, so the answer says nothing about the server's files.

    >>> access = ModelAccess([Path("/srv/models")])
    >>> access.check("tiny-llama")                 # 'tiny-llama'
    >>> access.check("/srv/models/my-llama")       # '/srv/models/my-llama' (resolved)
    >>> access.check("/home/me/secret-model")      # InputError, the same text as for a path that does not exist
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import InputError, WorkbenchError

MAX_LISTED = 50  # folder models offered in the trace form, at most


class ModelAccess:
    def __init__(self, allowed_dirs=()):
        self.allowed_dirs = [Path(d).expanduser().resolve() for d in allowed_dirs]

    def check(self, name) -> str:
        """The name to load (a registry name, or the resolved folder), or an InputError that reveals nothing."""
        from workbench.models.registry import REGISTRY

        if isinstance(name, str) and name in REGISTRY:
            if REGISTRY[name].source == "hub":
                self._cached(name)
            return name
        folder = self._allowed_folder(name)
        if folder is None:
            raise InputError(self.refusal(name))
        return str(folder)

    def refusal(self, name) -> str:
        shown = str(name)[:80] + ("..." if len(str(name)) > 80 else "")
        where = "registry models (`workbench models`)" + (
            " and the folders given with --allow-model-dir" if self.allowed_dirs else
            "; start it with --allow-model-dir DIR to allow model folders")
        return f"this server does not load the model {shown!r}: it only loads {where}"

    def _allowed_folder(self, name) -> Path | None:
        if not isinstance(name, str) or not name or "\x00" in name or len(name) > 4096 or not self.allowed_dirs:
            return None
        try:
            folder = Path(name).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        inside = any(folder == root or root in folder.parents for root in self.allowed_dirs)
        return folder if inside and (folder / "config.json").is_file() else None

    @staticmethod
    def _cached(name: str) -> None:
        """A hub registry model is loaded only from the local cache: a request never starts a download."""
        from workbench.models.loading import model_directory

        try:
            found = model_directory(name, prepare=False)
        except WorkbenchError:
            found = None
        if found is None:
            raise InputError(f"the weights of {name!r} are not on this server; trace it where they are") from None

    def folders(self) -> list[Path]:
        """Model folders under the allowed folders (each one itself, or its sub-folders holding a config.json)."""
        found: list[Path] = []
        for root in self.allowed_dirs:
            if (root / "config.json").is_file():
                found.append(root)
                continue
            try:
                found += sorted(child for child in root.iterdir() if (child / "config.json").is_file())
            except OSError:
                continue
        return found[:MAX_LISTED]

    def kind(self, name: str) -> str:
        """"causal", "encoder" or "vlm" of an allowed name (checked first)."""
        from workbench.models.registry import REGISTRY

        if name in REGISTRY:
            return REGISTRY[name].kind
        from workbench.models.loading import model_kind, read_config

        config = read_config(self.check(name))
        if config is None:
            raise InputError(f"cannot read the config of {Path(name).name}; check the folder's config.json")
        return model_kind(config)
