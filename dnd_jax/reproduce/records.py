"""What the reproduction reads from a run folder, through `dnd_jax.workdir` (its one owner)."""

from __future__ import annotations

import math

from dnd_jax import workdir as run_folder

exported_model = run_folder.model_dir        # where a run exports its final model
summary_of = run_folder.read_summary         # present only once the run has finished
config_record_of = run_folder.read_config
has_exported_model = run_folder.has_model


def curve_of(workdir: str) -> list[tuple[int, float]]:
  """(epoch, evaluation accuracy) from a run's per-epoch metrics."""
  out = []
  for row in run_folder.read_metrics(workdir):
    for key in ("test_accuracy", "validation_accuracy"):
      if key in row:
        out.append((int(row["epoch"]), float(row[key])))
        break
  return out


def finite(x) -> bool:
  return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
