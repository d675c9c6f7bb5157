"""Prediction records against an independent float64 computation on planted logits (incl. -inf entries)."""

import math

import torch

from workbench.capture.predictions import CHUNK_ELEMENTS, Predictions


def _reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-probabilities and entropies by the definition: H = -sum p log p over tokens with p > 0."""
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    return logp, -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def test_row_records_equal_the_definition_with_infinite_logits():
    generator = torch.Generator().manual_seed(0)
    vocab = 4099  # a chunk of 127 rows (CHUNK_ELEMENTS // vocab) and a short last one
    rows, length = 137, 150  # the first 13 positions not recorded
    logits = torch.randn(rows, vocab, generator=generator) * 4
    logits[3, :250] = float("-inf")  # part of the vocabulary masked out
    logits[CHUNK_ELEMENTS // vocab + 2, 7] = float("-inf")
    input_ids = torch.randint(0, vocab, (length,), generator=generator)
    input_ids[length - rows + 4] = 0  # row 3 predicts a token its logits rule out: log p = -inf
    predictions = Predictions(length)
    predictions.record_rows(logits, input_ids, length)
    logp, entropy = _reference(logits)
    first = length - rows
    assert torch.isnan(predictions.entropy[:first]).all() and torch.isnan(predictions.logprob[:first]).all()
    assert torch.allclose(predictions.entropy[first:].double(), entropy, atol=1e-5, rtol=1e-6)
    expected = logp[:-1].gather(-1, input_ids[first + 1:, None])[:, 0]
    stored = predictions.logprob[first:length - 1].double()
    assert stored[3] == -math.inf and torch.isfinite(entropy[3])
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(stored))
    assert torch.allclose(stored[finite], expected[finite], atol=1e-5, rtol=1e-6)
    assert math.isnan(predictions.logprob[length - 1])  # the last row predicts a token not in the input


def test_generated_token_uses_its_row():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 300, generator=generator)
    logits[1, 5:40] = float("-inf")
    predictions = Predictions(4)
    predictions.record_row_entropy(1, logits[0])
    predictions.record_token(2, 17, logits[0])  # the kept row
    predictions.record_token(3, 9, logits[1])  # a row recorded nowhere before
    predictions.record_row_entropy(2, logits[1])
    logp, entropy = _reference(logits)
    assert torch.allclose(predictions.logprob[1:3].double(), torch.stack([logp[0, 17], logp[1, 9]]), atol=1e-6)
    assert torch.allclose(predictions.entropy[1:3].double(), entropy, atol=1e-5, rtol=1e-6)
