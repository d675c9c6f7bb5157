"""Hallucination datasets: trace every input with generation, keep per generated token features + labels.

One Parquet table per dataset, one row per traced input (generation). Per-token arrays are flattened
`list<float32>` columns whose shapes come from the row's `n_generated` and the table metadata:

    id, group, task, source, prompt, image, generated_text, answer, label (1 = hallucinated), correct, subtype,
    n_tokens, start (first generated position), n_generated, healthy, seconds
    token_ids, token_texts, token_labels, claim         [generated token]
    lookback_<variant>, entropy, share_image (VLMs)     [generated token, layer, head]   (probes.features)
    logprob, pred_entropy                               [generated token]
    sink                                                [layer, head]
    hidden_mean                                         [layer, d_model] mean over the predicting rows
    vhd [generated token, layer, head], t_vhd [generated token]   with --vhd (VLMs): workbench.analyses.divergence,
                                                        teacher-forced on the generated tokens
    text_embedding                                      [384] MiniLM embedding of prompt + answer (optional)
    graph_nodes [token, node feature], graph_src, graph_dst, graph_weight [edge]          (probes.graphs)

Table metadata (key b"workbench.probes", JSON): format, schema_version, model, layers, heads, d_model,
variants, node_features, top_k, edges_per_node, created, workbench_version, command.
The file is written to a temporary name and renamed, so a crash leaves no half table.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.errors import InputError, OutputExistsError, WorkbenchError

FORMAT = "workbench-probe-dataset"
SCHEMA_VERSION = 1
META_KEY = b"workbench.probes"
PER_TOKEN = ("lookback_context", "lookback_image_prompt", "lookback_image", "lookback_prompt", "lookback_reference",
             "share_image", "entropy")


def trace_item(loaded, item, *, max_new_tokens: int, top_k: int, edges_per_node: int, vhd: bool = False,
               reference_lookback: bool = False) -> dict:
    """Trace one input and return its table row (without the text embedding). reference_lookback: also capture
    the --decomposition tensors, so `lookback_reference` (the released code's convention) can be computed on a
    chat-template input (its response header needs each generated row's attention on single keys)."""
    return trace_items(loaded, [item], max_new_tokens=max_new_tokens, top_k=top_k, edges_per_node=edges_per_node,
                       vhd=vhd, reference_lookback=reference_lookback)[0]


def trace_items(loaded, items: list, *, max_new_tokens: int, top_k: int, edges_per_node: int, vhd: bool = False,
                reference_lookback: bool = False, tracer=None) -> list[dict]:
    """`trace_item` of each input, traced together in left-padded forwards (`Tracer.trace_batch`: every trace as if
    traced alone); each row's seconds are its share of the batch's time."""
    from workbench.capture import Tracer

    tracer = tracer if tracer is not None else Tracer.open(loaded)
    start_time = time.perf_counter()
    results = tracer.trace_batch([item.prompt for item in items], [item.image for item in items],
                                 max_new_tokens=max_new_tokens, hidden_states=True, top_k=top_k,
                                 decomposition=reference_lookback)
    seconds = (time.perf_counter() - start_time) / len(items)
    return [_row(loaded, item, result, seconds, edges_per_node=edges_per_node, vhd=vhd)
            for item, result in zip(items, results, strict=True)]


def _row(loaded, item, result, seconds: float, *, edges_per_node: int, vhd: bool) -> dict:
    """The table row of one traced input."""
    from workbench.probes.features import hidden_means, token_features
    from workbench.probes.graphs import attention_graph
    from workbench.probes.tasks import label

    start, end = int(result.generation["start"]), int(result.generation["end"])
    generated = result.tokens[start:end]
    texts = [token.text for token in generated]
    labelled = label(item, texts)
    features = token_features(result)
    graph = attention_graph(result, edges_per_node=edges_per_node)
    hidden = hidden_means(result)
    row = {
        "id": item.id, "group": item.group, "task": item.task, "source": item.source, "prompt": item.prompt,
        "image": item.image, "generated_text": result.generation["text"], "answer": str(item.truth.get("answer", "")),
        "label": labelled.label, "correct": labelled.correct, "subtype": labelled.subtype,
        "n_tokens": len(result.tokens), "start": start, "n_generated": end - start,
        "healthy": bool(result.checks.get("healthy", True)), "seconds": seconds,
        "token_ids": [token.id for token in generated], "token_texts": texts,
        "token_labels": labelled.token_labels, "claim": labelled.claim,
        "hidden_mean": hidden, "graph_nodes": graph["nodes"], "graph_src": graph["src"], "graph_dst": graph["dst"],
        "graph_weight": graph["weight"],
        **features,
    }
    if vhd:
        row.update(vhd_features(loaded, item, [token.id for token in generated]))
    return row


def vhd_features(loaded, item, generated_ids: list[int]) -> dict:
    """VHD [token, layer, head] and T-VHD [token] of the generation (He et al. 2025; workbench.analyses.divergence)."""
    from workbench.analyses.divergence import vhd

    if item.image is None:
        raise InputError(f"{item.id}: --vhd compares runs with and without the image, and this input has none")
    if not generated_ids:
        return {"vhd": np.zeros((0,), np.float32), "t_vhd": np.zeros(0, np.float32)}
    result = vhd(loaded, item.prompt, item.image, continuation=generated_ids)
    return {"vhd": result.vhd.float().numpy(), "t_vhd": result.t_vhd.float().numpy()}


def text_embeddings(texts: list[str], *, batch: int = 32, progress: Callable[[int], None] | None = None
                    ) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (BERT encoder, mean pooling over tokens, L2-normalised)."""
    import torch

    from workbench.models import load_model

    loaded = load_model("minilm")
    out = []
    with torch.inference_mode():
        for first in range(0, len(texts), batch):
            encoded = loaded.tokenizer(texts[first:first + batch], padding=True, truncation=True, max_length=256,
                                       return_tensors="pt")
            hidden = loaded.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
            if progress:
                progress(min(first + batch, len(texts)))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


def embedding_text(row: dict) -> str:
    """What the MiniLM embedding sees: the question (last line of the prompt) and the answer."""
    question = row["prompt"].strip().splitlines()[-1] if row["prompt"].strip() else ""
    answer = row["generated_text"].split("<|im_end|>")[0].strip()
    return f"{question}\n{answer}"


def build(model: str, items: list, out: Path, *, max_new_tokens: int = 16, top_k: int = 4, edges_per_node: int = 8,
          embed: bool = True, vhd: bool = False, reference_lookback: bool = False, force: bool = False,
          command: str = "", batch_size: int = 1,
          on_start: Callable[[str, int], None] | None = None,
          on_advance: Callable[[str, int, int], None] | None = None) -> dict:
    """Trace `items` through `model` and write the dataset table to `out`; returns its metadata.

    batch_size: inputs traced together in one left-padded forward (the rows equal one-at-a-time traces to fp32
    rounding). on_start(stage, total) and on_advance(stage, done, tokens) report progress ("trace", then "embed").
    """
    import torch

    from workbench.capture import Tracer
    from workbench.models import load_model

    out = Path(out).expanduser()
    check_output(out, force)
    if not items:
        raise InputError("no inputs to trace; check --limit and the task")
    loaded = load_model(model) if isinstance(model, str) else model
    if loaded.kind == "encoder":
        raise InputError(f"{loaded.name} is an encoder and cannot generate answers; use a causal LM or a VLM")
    if vhd and loaded.kind != "vlm":
        raise InputError(f"--vhd needs a vision-language model; {loaded.name} takes no image")
    torch.manual_seed(0)
    rows, tokens = [], 0
    if on_start:
        on_start("trace", len(items))
    tracer = Tracer.open(loaded)
    for first in range(0, len(items), batch_size):
        for row in trace_items(loaded, items[first:first + batch_size], max_new_tokens=max_new_tokens, top_k=top_k,
                               edges_per_node=edges_per_node, vhd=vhd, reference_lookback=reference_lookback,
                               tracer=tracer):
            rows.append(row)
            tokens += row["n_tokens"]
            if on_advance:
                on_advance("trace", len(rows), tokens)
    embeddings = None
    if embed:
        if on_start:
            on_start("embed", len(rows))
        embeddings = text_embeddings([embedding_text(row) for row in rows],
                                     progress=(lambda done: on_advance("embed", done, 0)) if on_advance else None)
    from workbench.probes.graphs import node_feature_names

    text = loaded.text_config
    meta = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "model": loaded.name, "model_source": loaded.source,
        "layers": int(text.num_hidden_layers), "heads": int(text.num_attention_heads),
        "d_model": int(text.hidden_size), "variants": [k[9:] for k in rows[0] if k.startswith("lookback_")],
        "node_features": node_feature_names(int(text.num_hidden_layers)), "top_k": top_k,
        "edges_per_node": edges_per_node, "max_new_tokens": max_new_tokens,
        "label": "1 = hallucinated, 0 = grounded", "row": "features of generated token p come from query row p - 1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workbench_version": __import__("workbench").__version__, "command": command,
    }
    write_table(rows, embeddings, meta, out)
    return meta


def check_output(out: Path, force: bool) -> Path:
    """Where a dataset table may be written (the policy of workbench/output_paths.py: with force, only a table
    this module wrote is replaced)."""
    from workbench.output_paths import check_output as check_path

    out = Path(out).expanduser()
    if out.suffix != ".parquet":
        raise InputError(f"--out {out} should end in .parquet (the dataset is one Parquet table)")
    return check_path(out, force=force, what="dataset table", ours=is_dataset_table, ours_is="a probe dataset table")


def is_dataset_table(path: Path) -> bool:
    """True for a Parquet file whose schema carries our metadata key (a table `build` wrote)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet, or damaged: not something we can tell is ours
        return False
    return META_KEY in metadata


def _list_column(values: list, dtype):
    """A list<dtype> Arrow column from per-row arrays (flattened), None for missing rows."""
    import pyarrow as pa

    flat = [None if v is None else np.asarray(v).ravel() for v in values]
    offsets = np.zeros(len(flat) + 1, np.int64)
    offsets[1:] = np.cumsum([0 if v is None else len(v) for v in flat])
    data = np.concatenate([v for v in flat if v is not None]) if any(v is not None for v in flat) else np.zeros(0)
    mask = pa.array([v is None for v in flat])
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(data.astype(dtype.to_pandas_dtype())),
                                          mask=mask)
    return array.cast(pa.large_list(dtype))


def write_table(rows: list[dict], embeddings, meta: dict, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    scalars = {"id": pa.string(), "group": pa.string(), "task": pa.string(), "source": pa.string(),
               "prompt": pa.string(), "image": pa.string(), "generated_text": pa.string(), "answer": pa.string(),
               "label": pa.int8(), "correct": pa.bool_(), "subtype": pa.string(), "n_tokens": pa.int32(),
               "start": pa.int32(), "n_generated": pa.int32(), "healthy": pa.bool_(), "seconds": pa.float64()}
    columns = {name: pa.array([row[name] for row in rows], type=kind) for name, kind in scalars.items()}
    columns["token_texts"] = pa.array([row["token_texts"] for row in rows], type=pa.list_(pa.string()))
    for name, kind in (("token_ids", pa.int32()), ("token_labels", pa.int8()), ("claim", pa.int8()),
                       ("graph_src", pa.int32()), ("graph_dst", pa.int32())):
        columns[name] = _list_column([row[name] for row in rows], kind)
    floats = [*PER_TOKEN, "vhd", "t_vhd", "logprob", "pred_entropy", "sink", "hidden_mean", "graph_nodes",
              "graph_weight"]
    for name in floats:
        if any(row.get(name) is not None for row in rows):
            columns[name] = _list_column([row.get(name) for row in rows], pa.float32())
    if embeddings is not None:
        columns["text_embedding"] = _list_column(list(embeddings), pa.float32())
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        pq.write_table(table, temporary, compression="zstd")
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class ProbeDataset:
    """A dataset table in memory: per-row metadata as numpy arrays, per-token arrays reshaped on request."""

    path: Path
    meta: dict
    table: object  # pyarrow.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> np.ndarray:
        if name not in self.table.column_names:
            raise InputError(f"{self.path} has no column {name!r}; rebuild it with `workbench probe build`")
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    @property
    def labels(self) -> np.ndarray:
        return self.column("label").astype(np.int64)

    @property
    def groups(self) -> np.ndarray:
        return self.column("group").astype(str)

    @property
    def tasks(self) -> np.ndarray:
        return self.column("task").astype(str)

    def per_token(self, name: str) -> list[np.ndarray]:
        """Per row [generated token, layer, head] (or [generated token] for logprob/pred_entropy)."""
        values = self._lists(name)
        n_gen = self.column("n_generated")
        shape = (self.meta["layers"], self.meta["heads"])
        if name in ("logprob", "pred_entropy", "t_vhd", "token_labels", "claim"):
            return values
        return [v.reshape(int(n), *shape) for v, n in zip(values, n_gen)]

    def per_row(self, name: str, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
        """[row, ...] for fixed-size columns (sink, hidden_mean, text_embedding)."""
        return np.stack([v.reshape(shape) for v in self._lists(name)])

    def graphs(self) -> list[dict]:
        width = len(self.meta["node_features"])
        nodes, src, dst, weight = (self._lists(n) for n in ("graph_nodes", "graph_src", "graph_dst", "graph_weight"))
        return [{"nodes": x.reshape(-1, width), "src": s, "dst": d, "weight": w}
                for x, s, d, w in zip(nodes, src, dst, weight)]

    def _lists(self, name: str) -> list[np.ndarray]:
        if name not in self.table.column_names:
            raise InputError(f"{self.path} has no column {name!r} (this dataset was built without it)")
        column = self.table.column(name).combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]

    def fingerprint(self) -> str:
        """Identifies the rows (ids + model), so a probe knows whether it was trained on this dataset."""
        digest = hashlib.sha256(self.meta["model"].encode())
        for item in self.column("id"):
            digest.update(str(item).encode() + b"\0")
        return digest.hexdigest()[:16]

    def select(self, mask: np.ndarray) -> "ProbeDataset":
        import pyarrow as pa

        return ProbeDataset(self.path, self.meta, self.table.filter(pa.array(np.asarray(mask, bool))))


def load(path: str | Path) -> ProbeDataset:
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"dataset {path} does not exist; build it with `workbench probe build ... --out {path}`")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for damaged files
        raise WorkbenchError(f"{path} is not a readable Parquet table ({type(error).__name__}); rebuild it") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WorkbenchError(f"{path} is not a probe dataset (no workbench metadata); build one with "
                             "`workbench probe build`")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise WorkbenchError(f"{path} uses dataset schema {meta['schema_version']}, newer than this workbench reads")
    return ProbeDataset(path, meta, table)


def split(groups: np.ndarray, *, seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
    """Test mask by group: a group is in the test set when a hash of (seed, group) falls below the fraction.

    Every input of a group lands on the same side (never split by token or by question of one scene), and a
    group's side does not depend on which other groups the dataset holds.
    """
    def unit(group: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2**64

    return np.array([unit(str(group)) < test_fraction for group in groups], dtype=bool)
