"""What the reproduction reads from a run folder: the only module here that names its files.

(The trainer writes them; one small function per file keeps the names in one place.)
"""

from __future__ import annotations

import json
import math
import os


def exported_model(workdir: str) -> str:
  """Where a run exports its final model (what a later run loads as teacher or start)."""
  return os.path.join(workdir, "model")


def summary_of(workdir: str) -> dict | None:
  """The run's summary; present only once the run has finished."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def config_record_of(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def curve_of(workdir: str) -> list[tuple[int, float]]:
  """(epoch, evaluation accuracy) from a run's per-epoch metrics."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      row = json.loads(line)
      for key in ("test_accuracy", "validation_accuracy"):
        if key in row:
          out.append((int(row["epoch"]), float(row[key])))
          break
  return out


def has_exported_model(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "model.json"))


def finite(x) -> bool:
  return x is not None and isinstance(x, (int, float)) and math.isfinite(x)

