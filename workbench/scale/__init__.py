"""Scale-out: `workbench sweep` traces thousands of inputs into Parquet features, locally or on a Ray cluster,
and resumes after a crash with no lost or duplicated rows. See docs/scaling.md.

Ray and pyarrow are imported only when a sweep runs.
"""

from workbench.scale.inputs import InputSet, SweepInput, read_inputs
from workbench.scale.store import SweepStore
from workbench.scale.sweep import SweepResult, run_sweep

__all__ = ["InputSet", "SweepInput", "SweepResult", "SweepStore", "read_inputs", "run_sweep"]
