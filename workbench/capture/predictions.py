"""What the model predicted at each query row: log p of the token that follows, and the entropy of the
distribution. Stored per row (`outputs.next_token_logprob`, `outputs.prediction_entropy` [query_pos]): row i
predicts the token at position i + 1 (`workbench.traces.metrics.predicting_row`).

Every row's logits are reduced once: its log-normaliser (log-sum-exp) and entropy from one exponentiation of the
centred logits, no full-vocabulary log-softmax. The log-normaliser is kept per row, so the log p of a generated
token (known only after its row) is one subtraction, not a second pass over the vocabulary.
"""

from __future__ import annotations

import torch

from workbench.traces.metrics import predicting_row

PREDICTION_AXES = ("query_pos",)
ROW_CHUNK = 128  # rows per pass: temporaries stay small beside the logits


class Predictions:
    def __init__(self, capacity: int):
        self.logprob = torch.full((capacity,), float("nan"))
        self.entropy = torch.full((capacity,), float("nan"))
        self.log_normaliser = torch.full((capacity,), float("nan"))  # log-sum-exp of each reduced row's logits

    def record_rows(self, logits: torch.Tensor, input_ids: torch.Tensor, length: int) -> None:
        """logits [rows, vocab] of the LAST `rows` of the first `length` positions of input_ids [query_pos]:
        each row's entropy, and log p of the next token where it is in input_ids."""
        rows = logits.shape[0]
        first = length - rows
        for start in range(0, rows, ROW_CHUNK):
            end = min(rows, start + ROW_CHUNK)
            chunk = logits[start:end].float()
            log_z, entropy = _reduce(chunk)
            self.entropy[first + start:first + end] = entropy.cpu()
            self.log_normaliser[first + start:first + end] = log_z.cpu()
            targets = input_ids[first + start + 1:min(length, first + end + 1)]
            if len(targets):
                picked = chunk[: len(targets)].gather(-1, targets[:, None].to(chunk.device))[:, 0] - log_z[: len(targets)]
                self.logprob[first + start:first + start + len(targets)] = picked.cpu()

    def record_token(self, position: int, token_id: int, logits: torch.Tensor) -> None:
        """A generated token at `position`, predicted by `logits` [vocab] of its predicting row."""
        row = predicting_row(position)
        log_z = self.log_normaliser[row]
        if torch.isnan(log_z):  # a row not reduced before
            log_z = torch.logsumexp(logits.float(), -1).cpu()
        self.logprob[row] = float(logits[token_id].float().cpu()) - float(log_z)

    def record_row_entropy(self, row: int, logits: torch.Tensor) -> None:
        """Entropy (and log-normaliser, for `record_token`) of one row's logits [vocab]."""
        log_z, entropy = _reduce(logits.float()[None])
        self.entropy[row], self.log_normaliser[row] = float(entropy[0]), float(log_z[0])

    def tensors(self, length: int) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        return {"outputs.next_token_logprob": (self.logprob[:length].clone(), PREDICTION_AXES),
                "outputs.prediction_entropy": (self.entropy[:length].clone(), PREDICTION_AXES)}


def _reduce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp, entropy in nats) of each row of logits [rows, vocab], fp32. With c = logits - max and
    e = exp(c): log Z = max + log sum e and H = log sum e - sum(e c) / sum e; c <= 0 keeps both accurate for
    peaked rows (no difference of two large numbers)."""
    top = logits.max(-1, keepdim=True).values
    centred = (logits - top).clamp_min_(torch.finfo(torch.float32).min)  # a -inf logit adds 0, not NaN
    weights = centred.exp()
    total = weights.sum(-1)
    spread = torch.einsum("rv,rv->r", weights, centred)
    log_total = total.log()
    return top[:, 0] + log_total, log_total - spread / total
