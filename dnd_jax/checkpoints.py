"""Orbax checkpoints: the resumable training state, and a model exported on its own.

A workdir holds
  checkpoints/<step>/   the whole training state (last `keep` epochs), to resume after a kill
  best/<step>/          the model variables of the epoch with the best evaluation accuracy
  model/                the final model variables plus `model.json` (its architecture): the
                        exported network; a distillation config loads its teacher from here.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

MODEL_META = "model.json"


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, or does not fit the configured model."""


def architecture(model_config, num_classes: int, image_shape) -> dict:
  """What must agree between a saved model and the config that loads it."""
  return {"depth": int(model_config.depth), "width": int(model_config.width),
          "stem": str(model_config.stem), "num_classes": int(num_classes),
          "in_channels": int(image_shape[-1])}


def save_model(path: str, variables: dict, arch: dict, info: dict | None = None) -> None:
  """Write variables and architecture to `path`, replacing what was there only once complete.

  In a multi-process run every process calls this with the same (replicated) variables; process
  0 alone writes, and the others wait for it.
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _save_model(path, jax.device_get(variables), arch, info,
                  ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0}))
    multihost_utils.sync_global_devices(f"dnd_jax.save_model:{os.path.abspath(path)}")
  else:
    _save_model(path, variables, arch, info, ocp.options.MultiprocessingOptions())


def _save_model(path, variables, arch, info, multiprocessing_options) -> None:
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  ckptr = ocp.StandardCheckpointer(multiprocessing_options=multiprocessing_options)
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
    self.state = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                       options=options)
    self.best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"),
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
