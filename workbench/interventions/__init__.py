"""Attention interventions: ACT calibration and VAR redistribution (off unless asked for), and their effect.

An intervention is a frozen spec (`ACT`, `VAR`, parsed from `act:beta=0.4` / `var:rho=0.5,p=0.6`) whose
`start()` returns a runtime for one input. While `intervening(model, runtime)` is active the workbench
attention implementation hands every layer's output to `runtime.apply(...)`; a runtime that changes attention
weights recomputes them eagerly for the heads it touches (softmax of q.k in fp32, as SDPA would) and replaces
those heads' output rows with P' @ V. Rows it leaves alone keep SDPA's bit-exact output, and with no runtime
active the attention path is exactly the default one. The statistics a capture records are computed from the
queries and keys, so they describe the attention BEFORE the intervention; outputs, hidden states, head
outputs, logits and the generation reflect it. Each runtime reports what it moved (`report()`).

- `act.py`: ACT (Yu et al. 2024); `var.py`: VAR (Kang et al. 2025); `spec.py`: parsing of `--intervene` specs,
  and `recorded`, which rebuilds the spec a bundle was traced under (replay applies it again); `eager.py`: the eager
  attention of the heads a runtime touches; `runtime.py`: the runtime base and `intervening`; `effect.py`: what an
  intervention changes in the next-token distribution and the greedy answer.
- `activations.py`: head outputs and residual streams recorded and overwritten per batch row (the ablation and
  activation patching of `workbench.analyses.causal`).
- `head_mask.py`: every head's output times a mask [layer, head] (head importance differentiates it; zeros are
  zero-ablation, the pruning curve of `workbench.analyses.importance`).

This package sits above `workbench.capture`: capture's attention implementation only knows that a runtime with an
`apply(...)` method may be active; the interventions themselves live here.
"""

from workbench.interventions.act import ACT, effective_min_queries
from workbench.interventions.eager import head_values, probabilities, visibility
from workbench.interventions.runtime import Runtime, intervening
from workbench.interventions.spec import SPECS, parse, recorded
from workbench.interventions.var import VAR, phi

__all__ = ["ACT", "SPECS", "VAR", "Runtime", "effective_min_queries", "head_values", "intervening", "parse", "phi",
           "probabilities", "recorded", "visibility"]
