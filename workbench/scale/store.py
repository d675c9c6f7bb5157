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

Commit protocol: a part's Parquet files are written under temporary names and renamed into place, then its
commit record is renamed into `_commits/`. A part is committed iff its record exists. On start, files of parts
without a record (a crash between the renames) are deleted, so they can never duplicate rows; the inputs of
committed parts are skipped, so none is traced twice; the rest are traced again.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from workbench.errors import InputError, OutputExistsError

FORMAT = "workbench-sweep"
VERSION = 1
# Options whose change alters the numbers: a resume must match them.
IDENTITY = ("model", "backend", "remote", "dtype", "kernel", "max_new_tokens", "system", "raw", "inputs")


def _write_json_atomic(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temporary, path)


class SweepStore:
    """Reads and writes one sweep folder (see the module docstring)."""

    def __init__(self, out: Path):
        self.out = Path(out).expanduser()

    # -- opening ----------------------------------------------------------------------------------------
    def open(self, identity: dict, *, force: bool) -> dict | None:
        """Create the folder or check it holds the same sweep; return the previous sweep.json, if any."""
        manifest = self.out / "sweep.json"
        if self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"--out {self.out} exists and is not a folder")
        previous = None
        if manifest.exists():
            try:
                previous = json.loads(manifest.read_text())
            except json.JSONDecodeError:
                raise OutputExistsError(f"{manifest} is damaged; pass --force to start the sweep over") from None
            differs = [key for key in IDENTITY if previous.get("identity", {}).get(key) != identity.get(key)]
            if differs and not force:
                raise OutputExistsError(
                    f"{self.out} holds a sweep with different {', '.join(differs)}; use another --out, or pass "
                    "--force to delete it and start over")
            if force:
                self.clear()
                previous = None
        elif self.out.exists() and any(self.out.iterdir()) and not force:
            raise OutputExistsError(f"--out {self.out} is a non-empty folder that holds no sweep; choose another "
                                    "--out or pass --force to use it anyway")
        for folder in ("inputs", "heads", "_commits", "aggregates", "bundles"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        if previous is None:
            _write_json_atomic(manifest, {"format": FORMAT, "version": VERSION, "identity": identity})
        return previous

    def clear(self) -> None:
        for name in ("inputs", "heads", "_commits", "aggregates", "bundles"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in ("sweep.json", "summary.json"):
            (self.out / name).unlink(missing_ok=True)

    # -- commits ----------------------------------------------------------------------------------------
    def commits(self) -> list[dict]:
        records = []
        for path in sorted((self.out / "_commits").glob("part-*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except json.JSONDecodeError:  # cannot happen with rename-into-place; be safe: treat as uncommitted
                path.unlink()
        return records

    def recover(self) -> set[int]:
        """Delete uncommitted files and temporaries; return the indices of committed inputs."""
        records = self.commits()
        committed_files = {file for record in records for file in record["files"]}
        for folder in ("inputs", "heads"):
            for path in (self.out / folder).rglob("*"):
                if not path.is_file():
                    continue
                relative = path.relative_to(self.out).as_posix()
                if path.name.startswith(".") or relative not in committed_files:
                    path.unlink()
        for path in (self.out / "_commits").glob(".*"):
            path.unlink()
        done: set[int] = set()
        for record in records:
            overlap = done.intersection(record["inputs"])
            if overlap:
                raise InputError(f"{self.out}: inputs {sorted(overlap)[:5]} are committed twice; the folder was "
                                 "edited by hand. Pass --force to start over")
            done.update(record["inputs"])
        return done

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
