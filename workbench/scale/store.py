"""The sweep folder: Parquet parts committed atomically, so a killed sweep resumes with no lost or duplicated rows.

    OUT/sweep.json                          what was swept (model, backend, inputs fingerprint, options)
    OUT/inputs/part-*.parquet               one row per input (summary, error if any)
    OUT/heads/stack=text/part-*.parquet     one row per (input, layer, head); Hive-partitioned by stack
    OUT/heads/stack=vision/part-*.parquet   the vision tower of a VLM
    OUT/_commits/part-*.json                the commit record of a part: its inputs and files
    OUT/aggregates/heads.parquet            per (stack, layer, head) over all inputs (written at the end)
    OUT/aggregates/layers.parquet           per (stack, layer)
    OUT/bundles/<id>.wbtrace                full bundles of the sampled inputs (--bundles)
    OUT/summary.json                        counts, errors, throughput of the last run

Only one process sweeps into a folder at a time (`workbench.scale.lock`). The workbench deletes only names it
writes (a resume drops uncommitted parts, --force the whole sweep); a user's other files in the folder stay.

Commit protocol: a part's Parquet files are written under temporary names and renamed into place, then its
commit record is renamed into `_commits/`. A part is committed iff its record exists. On start, files of parts
without a record (a crash between the renames) are deleted, so they can never duplicate rows; the inputs of
committed parts are skipped, so none is traced twice; the rest are traced again. A commit record may name
only its own part files, and a committed part whose files no longer read back (truncated, overwritten) is
uncommitted and traced again, with a warning naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from workbench.errors import InputError, OutputExistsError
from workbench.scale.lock import LOCK_NAME

FORMAT = "workbench-sweep"
VERSION = 1
# Options whose change alters the numbers: a resume must match them.
IDENTITY = ("model", "backend", "remote", "dtype", "kernel", "max_new_tokens", "system", "raw", "inputs")


# Names of what the workbench writes in a sweep folder: only these are ever deleted (by a resume or --force).
_PART = r"part-[0-9]{8}-[0-9a-f]{10}"
_PART_FILE = re.compile(r"(inputs|heads/stack=[a-z_]{1,32})/(" + _PART + r")\.parquet")
_OURS = re.compile(r"(inputs|heads/stack=[a-z_]{1,32})/(part-[0-9]{8}-[A-Za-z0-9]{1,40}\.parquet|"
                   r"\.part-[^/]{0,80}\.parquet\.tmp)|"
                   r"_commits/\.?part-[0-9]{8}-[0-9a-f]{10}\.json(\.[0-9a-f]{8}\.tmp)?|"
                   r"aggregates/\.?(heads|layers)\.parquet(\.tmp)?|\.?(sweep|summary)\.json(\.[0-9a-f]{8}\.tmp)?")
FOLDERS = ("inputs", "heads", "_commits", "aggregates", "bundles")


def _write_json_atomic(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temporary, path)


def is_sweep_folder(out: Path) -> bool:
    """True when `out/sweep.json` is a sweep record the workbench wrote (a user's own sweep.json is not)."""
    manifest = Path(out) / "sweep.json"
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_bytes()[: 1 << 20].decode("utf-8"))
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


class SweepStore:
    """Reads and writes one sweep folder (see the module docstring)."""

    def __init__(self, out: Path):
        self.out = Path(out).expanduser()

    # -- opening ----------------------------------------------------------------------------------------
    def check_target(self) -> None:
        """Refuse an --out the workbench must not write into (before anything is created or locked in it):
        a file, or a non-empty folder that is not a sweep. --force never changes this: it replaces a sweep,
        never a user's files."""
        if self.out.is_symlink() or (self.out.exists() and not self.out.is_dir()):
            raise OutputExistsError(f"--out {self.out} exists and is not a folder; choose another --out")
        if is_sweep_folder(self.out):
            linked = [folder for folder in FOLDERS if (self.out / folder).is_symlink()]
            if linked:  # a resume deletes uncommitted parts in these: never follow a link out of the folder
                raise OutputExistsError(f"{self.out / linked[0]} is a symbolic link; a sweep keeps its parts inside "
                                        "its folder, so choose another --out")
            return
        if not self.out.exists():
            return
        if (self.out / "sweep.json").exists():
            raise OutputExistsError(f"{self.out / 'sweep.json'} is not a sweep record the workbench wrote (damaged "
                                    "or someone else's); choose another --out")
        if any(entry.name != LOCK_NAME for entry in self.out.iterdir()):
            raise OutputExistsError(f"--out {self.out} is a non-empty folder that holds no sweep; --force only "
                                    "replaces a sweep folder, so choose another --out")

    def open(self, identity: dict, *, force: bool) -> dict | None:
        """Check the folder holds the same sweep (or none yet) and create its layout; return the previous
        sweep.json, if any. Call under the sweep's lock, after `check_target`."""
        self.check_target()
        previous = None
        if is_sweep_folder(self.out):
            previous = json.loads((self.out / "sweep.json").read_text(encoding="utf-8"))
            differs = [key for key in IDENTITY if previous.get("identity", {}).get(key) != identity.get(key)]
            if differs and not force:
                raise OutputExistsError(
                    f"{self.out} holds a sweep with different {', '.join(differs)}; use another --out, or pass "
                    "--force to delete it and start over")
            if force:
                self.clear()
                previous = None
        for folder in FOLDERS:
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        if previous is None:
            _write_json_atomic(self.out / "sweep.json", {"format": FORMAT, "version": VERSION, "identity": identity})
        return previous

    def clear(self) -> None:
        """Delete what the sweep wrote (parts, records, aggregates, bundles, its JSON files); anything else a
        user put in the folder stays, and so do the folders holding it."""
        from workbench.traces.bundle import looks_like_bundle

        for path in sorted(self.out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            relative = path.relative_to(self.out).as_posix()
            if path.is_symlink():
                continue
            if path.is_file() and _OURS.fullmatch(relative):
                path.unlink()
            elif path.parent == self.out / "bundles" and path.suffix == ".wbtrace" and looks_like_bundle(path):
                shutil.rmtree(path)
        for path in [*(self.out / "heads").glob("stack=*"), *(self.out / folder for folder in FOLDERS)]:
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()

    # -- commits ----------------------------------------------------------------------------------------
    def commits(self) -> list[dict]:
        """The commit records, each checked to name only its own part files inside this folder."""
        records = []
        for path in sorted((self.out / "_commits").glob("part-*.json")):
            try:
                record = json.loads(path.read_bytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError):  # rename-into-place makes this a hand edit: uncommitted
                path.unlink()
                continue
            records.append(self._checked_record(path, record))
        return records

    def _checked_record(self, path: Path, record) -> dict:
        def refuse(why: str):
            raise InputError(f"{path}: {why}; the sweep folder was edited by hand. Pass --force to start over")

        if not isinstance(record, dict) or record.get("part") != path.stem or not re.fullmatch(_PART, path.stem):
            refuse("not a commit record of this sweep")
        files, inputs = record.get("files"), record.get("inputs")
        if not isinstance(inputs, list) or not all(type(i) is int and i >= 0 for i in inputs):
            refuse('"inputs" must be a list of input indices')
        if not isinstance(files, list) or f"inputs/{path.stem}.parquet" not in files:
            refuse('"files" must list the part\'s inputs/ file')
        for file in files:
            match = _PART_FILE.fullmatch(file) if isinstance(file, str) else None
            if match is None or match.group(2) != path.stem:
                refuse(f"it names {str(file)[:80]!r}, which is not one of this part's files in the sweep folder")
        return record

    def recover(self, notify: Callable[[str], None] | None = None) -> set[int]:
        """Drop damaged parts (truncated or garbage Parquet: `notify` says which, their inputs are traced again),
        delete uncommitted files and temporaries; return the indices of committed inputs."""
        records = [record for record in self.commits() if not self._damaged(record, notify)]
        committed_files = {file for record in records for file in record["files"]}
        for path in [*(self.out / "inputs").rglob("*"), *(self.out / "heads").rglob("*"),
                     *(self.out / "_commits").glob(".*")]:
            relative = path.relative_to(self.out).as_posix()
            if path.is_file() and not path.is_symlink() and _OURS.fullmatch(relative) and \
                    relative not in committed_files:
                path.unlink()
        done: set[int] = set()
        for record in records:
            overlap = done.intersection(record["inputs"])
            if overlap:
                raise InputError(f"{self.out}: inputs {sorted(overlap)[:5]} are committed twice; the folder was "
                                 "edited by hand. Pass --force to start over")
            done.update(record["inputs"])
        return done

    def _damaged(self, record: dict, notify: Callable[[str], None] | None) -> bool:
        """Uncommit (record first, then files) a part whose files do not read back as its rows."""
        import pyarrow.parquet as pq

        problem = None
        for file in record["files"]:
            path = self.out / file
            try:
                if path.is_symlink() or not path.is_file():
                    problem = f"{file} is missing"
                elif file.startswith("inputs/"):
                    indices = pq.read_table(path, columns=["index"]).column("index").to_pylist()
                    if sorted(indices) != sorted(record["inputs"]):
                        problem = f"{file} holds other inputs than its commit record"
                else:
                    pq.read_metadata(path)  # the footer: a truncated or overwritten file fails here
            except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
                problem = f"{file} is damaged ({type(error).__name__})"
            if problem:
                break
        if problem is None:
            return False
        message = (f"{self.out}: part {record['part']}: {problem}; its {len(record['inputs'])} inputs will be "
                   "traced again")
        if notify is not None:
            notify(message)
        else:
            import warnings

            warnings.warn(message, stacklevel=3)
        (self.out / "_commits" / f"{record['part']}.json").unlink()
        for file in record["files"]:
            (self.out / file).unlink(missing_ok=True)
        return True

    def commit(self, results) -> int:
        """Write one batch of results (a pyarrow Table of `result_schema()` rows) as a committed part."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if results.num_rows == 0:
            return 0
        indices = results.column("index").to_pylist()
        part = f"part-{min(indices):08d}-{uuid.uuid4().hex[:10]}"
        inputs = results.drop_columns(["heads"])
        heads_list = results.column("heads")
        parents = pc.list_parent_indices(heads_list)
        flat = pc.list_flatten(heads_list)
        heads = pa.Table.from_struct_array(flat) if len(flat) else None
        staged: list[tuple[Path, Path]] = []
        files = [f"inputs/{part}.parquet"]
        staged.append(self._stage(pq, inputs, files[-1]))
        if heads is not None:
            heads = heads.add_column(0, "index", pc.take(results.column("index"), parents))
            heads = heads.add_column(1, "id", pc.take(results.column("id"), parents))
            for stack in sorted(set(heads.column("stack").to_pylist())):
                subset = heads.filter(pc.equal(heads.column("stack"), stack)).drop_columns(["stack"])
                files.append(f"heads/stack={stack}/{part}.parquet")
                staged.append(self._stage(pq, subset, files[-1]))
        for temporary, final in staged:
            os.replace(temporary, final)
        record = {"part": part, "inputs": sorted(indices), "files": files}
        _write_json_atomic(self.out / "_commits" / f"{part}.json", record)
        return len(indices)

    def _stage(self, pq, table, relative: str) -> tuple[Path, Path]:
        final = self.out / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, temporary)
        return temporary, final

    # -- reading ----------------------------------------------------------------------------------------
    def _files(self, folder: str) -> list[str]:
        return sorted(str(self.out / file) for record in self.commits() for file in record["files"]
                      if file.startswith(folder + "/"))

    def read_inputs(self):
        """The per-input table of committed parts, sorted by index."""
        import pyarrow.dataset as ds

        files = self._files("inputs")
        if not files:
            from workbench.scale.features import input_schema

            return input_schema().empty_table()
        return ds.dataset(files, format="parquet").to_table().sort_by("index")

    def read_heads(self):
        """The per-head table of committed parts (with the `stack` partition column), sorted."""
        import pyarrow.dataset as ds

        files = self._files("heads")
        if not files:
            return None
        dataset = ds.dataset(files, format="parquet", partitioning="hive",
                             partition_base_dir=str(self.out / "heads"))
        table = dataset.to_table()
        return table.sort_by([("stack", "ascending"), ("layer", "ascending"), ("head", "ascending"),
                              ("index", "ascending")])

    def write_table(self, relative: str, table) -> None:
        import pyarrow.parquet as pq

        temporary, final = self._stage(pq, table, relative)
        os.replace(temporary, final)

    def write_summary(self, summary: dict) -> None:
        _write_json_atomic(self.out / "summary.json", summary)
