"""Lookback Lens (Chuang et al. 2024; docs/probes.md, 'Lookback Lens'): lookback-ratio features + logistic regression.

Examples, from a dataset built by `workbench.probes.dataset` (ratios per generated token, layer, head):
- span-mean ("span"): the L*H ratios averaged over a span. span="answer": the whole generated span, label =
  the generation's label. span="claims": every claim the task defines (a stated number, an object mention in
  a caption, a short answer's word) is one example, hallucinated or grounded. The reference's predefined-span
  mode instead sets hallucinated spans against the text around them, which a classifier can separate by
  span composition alone (colour + shape words versus "a ... and"), so the workbench compares claims with
  claims. Generations without a claim (a refusal) give no example. A one-token claim is read from the row
  that predicted it, whose ratio is 1 when it is the first generated token: use span="answer" there.
- sliding window ("window", 8 tokens): for every generated token j the ratios averaged over tokens
  j-7..j, label = 1 if any token in the window is hallucinated (the reference's min-pool over its
  inverted labels). Deviation: windows at the start of a generation are shorter than 8 (the reference
  drops them), so answers of a few tokens still give examples. A generation's score is its highest window.
- variant "reference" (probes.features): the released code's ratio convention; its undefined ratios (NaN) are
  left out of span and window means, and a span or window of undefined ratios only gives no example.
Classifier: StandardScaler + LogisticRegression (max_iter 1000); C chosen by grouped cross-validation on
the training groups only (C="auto"), so no test input ever influences the fit.
Baselines on the same examples, higher = more suspicious: mean -log p of the tokens ("logprob"), the largest
-log p ("max_neg_logprob"), mean prediction entropy ("entropy"), 1 - mean lookback ratio ("lookback_mean",
the reference's trivial baseline) and, for datasets built with --vhd, minus the mean T-VHD ("t_vhd": He et al.
report lower T-VHD on hallucinated tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import InputError

FEATURES = ("span", "window")
# Per-head features other than the lookback ratio that the same pipeline can use (not Lookback Lens proper):
# the predicting row's attention share on the image, and VHD (datasets built with --vhd).
OTHER_FEATURES = ("share_image", "vhd")


def feature_column(variant: str) -> str:
    return variant if variant in OTHER_FEATURES else f"lookback_{variant}"
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass
class Examples:
    X: np.ndarray  # [example, layer * head]
    y: np.ndarray  # [example] 1 = hallucinated
    row: np.ndarray  # [example] dataset row
    baselines: dict[str, np.ndarray] = field(default_factory=dict)


def window_means(values: np.ndarray, window: int) -> np.ndarray:
    """[token, ...] -> [token, ...] mean over tokens max(0, j - window + 1)..j (shorter windows at the start),
    leaving NaN values out (the reference convention's undefined ratios); NaN where a window holds no value."""
    defined = ~np.isnan(values)
    zero = np.zeros((1, *values.shape[1:]), np.float64)
    cumulative = np.concatenate([zero, np.cumsum(np.where(defined, values, 0.0), 0, dtype=np.float64)])
    seen = np.concatenate([zero, np.cumsum(defined, 0, dtype=np.float64)])
    end = np.arange(1, values.shape[0] + 1)
    begin = np.maximum(0, end - window)
    counts = seen[end] - seen[begin]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (cumulative[end] - cumulative[begin]) / np.maximum(counts, 1), np.nan)


def claim_runs(claim: np.ndarray, token_labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) of each maximal run of claim tokens; label 1 when any of its tokens is hallucinated."""
    out, start = [], None
    for index in range(len(claim) + 1):
        inside = index < len(claim) and claim[index]
        if inside and start is None:
            start = index
        elif not inside and start is not None:
            out.append((start, index, int(token_labels[start:index].max())))
            start = None
    return out


def examples(data, *, features: str = "span", variant: str = "context", window: int = 8, span: str = "answer",
             rows: np.ndarray | None = None) -> Examples:
    """Lookback examples (and baseline scores on the same spans or windows) of the dataset rows `rows`."""
    if span not in ("answer", "claims"):
        raise InputError(f"unknown --span {span!r}; use answer or claims")
    if features not in FEATURES:
        raise InputError(f"unknown --features {features!r}; use span (span-mean) or window (sliding window)")
    column = feature_column(variant)
    if column not in data.table.column_names:
        extra = "".join(f", {name}" for name in OTHER_FEATURES if data.has(name))
        raise InputError(f"{data.path} has no feature variant {variant!r}; it has "
                         f"{', '.join(data.meta['variants'])}{extra}")
    if window < 1:
        raise InputError("--window must be at least 1")
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    ratios, logprob = data.per_token(column), data.per_token("logprob")
    entropy, token_labels = data.per_token("pred_entropy"), data.per_token("token_labels")
    tvhd = data.per_token("t_vhd") if data.has("t_vhd") else None
    claims = data.per_token("claim") if span == "claims" else None
    labels = data.labels
    X, y, owner = [], [], []
    base = {"logprob": [], "max_neg_logprob": [], "entropy": [], "lookback_mean": [], "t_vhd": []}
    for row in rows:
        r = ratios[row].reshape(len(ratios[row]), -1).astype(np.float64)
        if not len(r):
            continue
        nll, ent = -np.nan_to_num(logprob[row].astype(np.float64)), np.nan_to_num(entropy[row].astype(np.float64))
        low_vhd = -tvhd[row].astype(np.float64) if tvhd is not None else None  # lower T-VHD = more suspicious
        if features == "window":
            X.append(window_means(r, window))
            y.append(np.array([token_labels[row][max(0, j - window + 1):j + 1].max() for j in range(len(r))]))
            owner.append(np.full(len(r), row))
            base["logprob"].append(window_means(nll, window))
            base["max_neg_logprob"].append(np.array([nll[max(0, j - window + 1):j + 1].max() for j in range(len(r))]))
            base["entropy"].append(window_means(ent, window))
            if low_vhd is not None:
                base["t_vhd"].append(window_means(low_vhd, window))
            continue
        segments = claim_runs(claims[row], token_labels[row]) if span == "claims" else [(0, len(r), int(labels[row]))]
        for start, end, label in segments:
            X.append(window_means(r[start:end], end - start)[-1:])  # the span's mean, undefined ratios left out
            y.append(np.array([label]))
            owner.append(np.array([row]))
            base["logprob"].append(nll[start:end].mean(keepdims=True))
            base["max_neg_logprob"].append(nll[start:end].max(keepdims=True))
            base["entropy"].append(ent[start:end].mean(keepdims=True))
            if low_vhd is not None:
                base["t_vhd"].append(low_vhd[start:end].mean(keepdims=True))
    if not X:
        raise InputError(f"{data.path}: no generated tokens in the selected rows")
    X_all = np.concatenate(X)
    # The reference convention leaves a ratio undefined where no new key is visible: a span or window made only
    # of such tokens has no feature and gives no example (the reference raises on NaN features instead).
    keep = ~np.isnan(X_all).any(1)
    if not keep.any():
        raise InputError(f"{data.path}: every example's {variant} ratios are undefined")
    baselines = {name: np.concatenate(values)[keep] for name, values in base.items() if values}
    baselines["lookback_mean"] = 1 - X_all[keep].mean(1)
    return Examples(X_all[keep], np.concatenate(y).astype(np.int64)[keep], np.concatenate(owner)[keep], baselines)


def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, C="auto", seed: int = 0):
    """(sklearn Pipeline, chosen C, {C: mean grouped-CV AUROC}) fitted on the training examples only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y.tolist())) < 2:
        raise InputError("the training split holds only one class; use more inputs (--limit) or another split seed")

    def make(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))

    cv = {}
    if C == "auto":
        from workbench.probes.evaluate import auroc, grouped_folds

        for c in C_GRID:
            scores = []
            for train, test in grouped_folds(groups, y, n_splits=5, seed=seed):
                model = make(c).fit(X[train], y[train])
                scores.append(auroc(y[test], model.predict_proba(X[test])[:, 1]))
            scores = [s for s in scores if s is not None]
            cv[c] = float(np.mean(scores)) if scores else float("nan")
        finite = {c: s for c, s in cv.items() if np.isfinite(s)}
        C = max(finite, key=lambda c: (finite[c], -abs(np.log10(c)))) if finite else 1.0
    model = make(float(C)).fit(X, y)
    return model, float(C), cv


# ---------------------------------------------------------------------------------------------- the probe
class LookbackProbe:
    """A trained Lookback Lens: scaler + logistic regression weights, scored with numpy (no sklearn needed)."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray]):
        self.config = config
        self.mean = tensors["scaler_mean"].astype(np.float64)
        self.scale = tensors["scaler_scale"].astype(np.float64)
        self.coef = tensors["coef"].astype(np.float64)
        self.intercept = float(tensors["intercept"].reshape(-1)[0])

    @classmethod
    def from_pipeline(cls, pipeline, config: dict) -> "LookbackProbe":
        scaler, classifier = pipeline[0], pipeline[-1]
        tensors = {"scaler_mean": scaler.mean_.astype(np.float64), "scaler_scale": scaler.scale_.astype(np.float64),
                   "coef": classifier.coef_.reshape(-1).astype(np.float64),
                   "intercept": classifier.intercept_.reshape(-1).astype(np.float64)}
        return cls(config, tensors)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.mean, "scaler_scale": self.scale, "coef": self.coef,
                "intercept": np.array([self.intercept])}

    def pipeline(self):
        """The equivalent scikit-learn Pipeline (for users who want sklearn's API)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        scaler, classifier = StandardScaler(), LogisticRegression()
        scaler.mean_, scaler.scale_, scaler.var_ = self.mean, self.scale, self.scale ** 2
        scaler.n_features_in_, scaler.n_samples_seen_ = len(self.mean), 0
        classifier.coef_, classifier.intercept_ = self.coef[None, :], np.array([self.intercept])
        classifier.classes_, classifier.n_features_in_ = np.array([0, 1]), len(self.coef)
        return make_pipeline(scaler, classifier)

    def score(self, X: np.ndarray) -> np.ndarray:
        """P(hallucinated) for feature rows [example, layer * head]."""
        X = np.asarray(X, np.float64)
        if X.shape[-1] != len(self.coef):
            raise InputError(f"this probe expects {len(self.coef)} features (layers x heads) but got {X.shape[-1]}")
        logits = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def check_model(self, layers: int, heads: int, what: str) -> None:
        if (layers, heads) != (self.config["layers"], self.config["heads"]):
            raise InputError(f"the probe was trained on {self.config['model']} ({self.config['layers']} layers x "
                             f"{self.config['heads']} heads) but {what} has {layers} x {heads}; lookback features "
                             "only transfer between models with the same layer and head counts")

    def score_trace(self, trace) -> dict:
        """The per-token result written to results/lookback.json (shape documented in docs/probes.md)."""
        from workbench.probes.features import token_features
        from workbench.probes.scores import LookbackScores

        from workbench.traces.metrics import predicting_rows

        self.check_model(trace.n_layers(), trace.n_heads(), f"this trace's model ({trace.model.get('name')})")
        variant = self.config["variant"]
        if variant == "vhd":
            raise InputError("a probe on VHD features needs two forwards per token; score it with "
                             "`workbench probe eval`")
        if variant in ("image", "share_image") and not any(t.region == "image" for t in trace.tokens):
            raise InputError(f"the probe uses the {variant!r} features, which need an image in the trace")
        rows = predicting_rows(trace)
        start = int(trace.generation["start"])
        if not len(rows):
            return LookbackScores(self.summary()).to_json()
        lookback = [] if variant in OTHER_FEATURES else [variant]
        ratios = token_features(trace, variants=lookback)[feature_column(variant)].reshape(len(rows), -1)
        window = self.config["window"] if self.config["features"] == "window" else len(rows)
        features = window_means(ratios.astype(np.float64), window)
        defined = ~np.isnan(features).any(1)  # the reference variant's undefined first ratio: no score there
        if not defined.any():
            return LookbackScores(self.summary()).to_json()
        scores = np.full(len(rows), np.nan)
        scores[defined] = self.score(features[defined])
        token_scores = tuple({"pos": start + i, "score": round(float(s), 6), "text": trace.tokens[start + i].text}
                             for i, s in enumerate(scores) if defined[i])  # pos: the generated token's position
        generation = round(float(np.nanmax(scores) if self.config["features"] == "window" else scores[defined][-1]), 6)
        return LookbackScores(self.summary(), token_scores, generation).to_json()

    def summary(self) -> dict:
        keys = ("detector", "features", "window", "span", "variant", "model", "layers", "heads", "dataset", "tasks",
                "C", "metrics")
        return {key: self.config.get(key) for key in keys}
