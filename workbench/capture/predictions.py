"""What the model predicted at each query row: log p of the token that follows, and the entropy of the
distribution. Stored per row (`outputs.next_token_logprob`, `outputs.prediction_entropy` [query_pos]): row i
predicts the token at position i + 1 (`workbench.traces.metrics.predicting_row`).

Each row's full-vocabulary log-softmax is computed once. During generation the log p of a token is known only
after its row's entropy was recorded, so the log-softmax of the latest row is kept for it (one row of the
vocabulary) instead of being computed a second time.
"""

from __future__ import annotations

import torch

from workbench.traces.metrics import predicting_row

PREDICTION_AXES = ("query_pos",)
# Logits per log-softmax chunk (2 MiB of fp32 per temporary): larger temporaries are fresh memory from the OS on
# every call, and touching it cost more than the arithmetic (measured 2-3x slower at 25 MiB on CPU).
CHUNK_ELEMENTS = 1 << 19


class Predictions:
    def __init__(self, capacity: int):
        self.logprob = torch.full((capacity,), float("nan"))
        self.entropy = torch.full((capacity,), float("nan"))
        self._latest: tuple[int, torch.Tensor] | None = None  # (row, its log-softmax [vocab])

    def record_rows(self, logits: torch.Tensor, input_ids: torch.Tensor, length: int) -> None:
        """logits [rows, vocab] of the LAST `rows` of the first `length` positions of input_ids [query_pos]:
        each row's entropy, and log p of the next token where it is in input_ids."""
        rows = logits.shape[0]
        first = length - rows
        chunk = max(1, CHUNK_ELEMENTS // logits.shape[-1])
        for start in range(0, rows, chunk):
            end = min(rows, start + chunk)
            logp = torch.log_softmax(logits[start:end].float(), -1)
            self.entropy[first + start:first + end] = _entropy(logp).cpu()
            targets = input_ids[first + start + 1:min(length, first + end + 1)]
            if len(targets):
                picked = logp[: len(targets)].gather(-1, targets[:, None].to(logp.device))[:, 0].cpu()
                self.logprob[first + start:first + start + len(targets)] = picked
            if end == rows:  # the last row predicts the first generated token
                self._latest = (length - 1, logp[-1].clone())

    def record_token(self, position: int, token_id: int, logits: torch.Tensor) -> None:
        """A generated token at `position`, predicted by `logits` [vocab] of its predicting row."""
        row = predicting_row(position)
        if self._latest is not None and self._latest[0] == row:
            logp = self._latest[1]
        else:  # a row not recorded before
            logp = torch.log_softmax(logits.float(), -1)
        self.logprob[row] = logp[token_id].cpu()

    def record_row_entropy(self, row: int, logits: torch.Tensor) -> None:
        """Entropy of one row's logits [vocab]; its log-softmax is kept for the token it predicts."""
        logp = torch.log_softmax(logits.float(), -1)
        self.entropy[row] = float(_entropy(logp))
        self._latest = (row, logp)

    def tensors(self, length: int) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        return {"outputs.next_token_logprob": (self.logprob[:length].clone(), PREDICTION_AXES),
                "outputs.prediction_entropy": (self.entropy[:length].clone(), PREDICTION_AXES)}


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the distributions whose log-probabilities are logp [..., vocab]: one dot product per row
    (no third vocabulary-sized tensor for p * log p)."""
    probabilities = logp.exp()
    entropy = -torch.linalg.vecdot(probabilities, logp)
    undefined = entropy.isnan()
    if bool(undefined.any()):  # a -inf logit makes 0 * -inf = NaN where p log p is 0; a NaN logit stays NaN
        finite_logp = logp.clamp_min(torch.finfo(logp.dtype).min)
        entropy = torch.where(undefined, -(probabilities * finite_logp).sum(-1), entropy)
    return entropy
