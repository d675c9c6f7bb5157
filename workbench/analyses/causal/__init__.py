"""Causal tools: ablation of heads and activation patching between a clean and a corrupted run.

- `metrics.py`: the number a run is judged by (logit difference of two answer tokens, log-probability of one) and
  the prompt pairs it is measured on;
- `ablation.py`: zero-, mean- and resample-ablation of heads -> `AblationResult`;
- `patching.py`: activation patching of head outputs, attention outputs and residual streams -> `PatchingResult`;
- `sweep.py`: the batched forwards both run, through `Tracer.last_logits` and the interventions' activation edits.

Both normalise an edited run's metric as (edited - corrupted) / (clean - corrupted): 1 where the edit gives the
clean run's metric, 0 where it gives the corrupted one's. See docs/analyses/patching.md.
"""
