"""Orbax checkpoints: the resumable training state, and a model exported on its own.

The workdir's layout is `dnd_jax.workdir`'s: training-state checkpoints (the last `keep` epochs,
to resume after a kill), the best epoch's model, and the exported final model with its
architecture in `model.json` (what a distillation config loads its teacher from).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; a checkpoint damaged later (a disk error, a copy cut
short) is moved aside on resume and the run continues from the newest intact one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from dnd_jax import workdir as run_folder

MODEL_META = run_folder.MODEL_META


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, or does not fit the configured model."""


def architecture(model_config, num_classes: int, image_shape) -> dict:
  """What must agree between a saved model and the config that loads it."""
  return {"depth": int(model_config.depth), "width": int(model_config.width),
          "stem": str(model_config.stem), "num_classes": int(num_classes),
          "in_channels": int(image_shape[-1])}


def save_model(path: str, variables: dict, arch: dict, info: dict | None = None) -> None:
  """Write variables and architecture to `path`, replacing what was there only once complete."""
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, "variables"), jax.device_get(variables))
  ckptr.wait_until_finished()
  with open(os.path.join(tmp, MODEL_META), "w") as f:
    json.dump({"architecture": arch, **(info or {})}, f, indent=2)
  old = path + ".old"
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)


def read_model_meta(path: str) -> dict:
  meta_file = os.path.join(path, MODEL_META)
  if not os.path.isfile(meta_file):
    raise CheckpointError(
        f"No model at {path!r} (expected {meta_file}). Point the config at a folder written by "
        "scripts/train.py (<workdir>/model) or by scripts/import_torch_teacher.py.")
  try:
    with open(meta_file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{meta_file} is not valid JSON ({e}); re-export the model.") from e


def load_model(path: str, arch: dict, abstract_variables: Any) -> tuple[dict, dict]:
  """Variables saved by `save_model`, checked against the expected architecture and shapes."""
  meta = read_model_meta(path)
  saved = meta.get("architecture", {})
  diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in arch.items()
           if saved.get(k) != v]
  if diffs:
    raise CheckpointError(
        f"The model at {path!r} does not match the configured architecture ({'; '.join(diffs)}). "
        "Fix the config's model block, or point it at the right checkpoint.")
  try:
    variables = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "variables"),
                                                   abstract_variables)
  except Exception as e:  # Orbax raises several types for unreadable or mismatched trees.
    raise CheckpointError(f"Could not restore the model variables at {path!r}: {e}") from e
  return dict(variables), meta


class TrainCheckpoints:
  """Periodic training-state checkpoints (last `keep`) and the best model, with resume."""

  def __init__(self, workdir: str, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.workdir = workdir
    self.state = ocp.CheckpointManager(run_folder.checkpoints_dir(workdir), options=options)
    self.best = ocp.CheckpointManager(run_folder.best_dir(workdir),
                                      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def latest_step(self) -> int | None:
    return self.state.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    try:
      restored = self.state.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(
          f"Could not resume from the checkpoint at step {step} in {self.state.directory}: {e}. "
          "If the config changed since that run, use a new --workdir; to start over, delete "
          "that folder.") from e
    return restored["state"], restored["meta"]

  def restore_latest_intact(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores; None when there is none.

    A checkpoint that does not restore is moved to `<workdir>/checkpoints_skipped/` (never
    deleted: it may be worth a look) with a line saying which and why, and the next older one is
    tried; when none restores, the error lists each one's reason and how to start over.
    """
    failures = []
    for step in sorted(self.state.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
      except CheckpointError as e:
        reason = str(e.__cause__ or e).strip().splitlines()[0][:200]
        failures.append((step, reason))
        continue
      for bad, reason in failures:
        where = run_folder.skip_checkpoint(self.workdir, bad)
        print(f"Skipped the checkpoint at step {bad}: it does not restore ({reason}); moved it to "
              f"{where}.", file=sys.stderr, flush=True)
      if failures:
        self.state.reload()
      for later in [s for s in self.best.all_steps() if s > step]:
        self.best.delete(later)  # of an epoch that will be redone (and saved again if still best)
      return step, state, meta
    if failures:
      raise CheckpointError(
          f"No checkpoint in {run_folder.checkpoints_dir(self.workdir)} restores (" +
          "; ".join(f"step {s}: {r}" for s, r in failures) + "). If the config changed since that "
          "run, use it again or a new --workdir; to start this run over, delete that folder.")
    return None

  def save_best(self, step: int, variables: Any, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                 meta=ocp.args.JsonSave(meta)), force=True)

  def restore_best(self, abstract_variables: Any) -> tuple[Any, dict] | None:
    step = self.best.latest_step()
    if step is None:
      return None
    restored = self.best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(abstract_variables), meta=ocp.args.JsonRestore()))
    return restored["variables"], restored["meta"]

  def wait(self) -> None:
    self.state.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.state.close()
    self.best.close()
