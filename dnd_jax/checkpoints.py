"""Orbax checkpoints: the resumable training state, and a model exported on its own.

The workdir's layout is `dnd_jax.workdir`'s: training-state checkpoints (the last `keep` epochs,
to resume after a kill), the best epoch's model, and the exported final model with its
architecture in `model.json` (what a distillation config loads its teacher from).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; a checkpoint damaged later (a disk error, a copy cut
short) is moved aside on resume and the run continues from the newest intact one.

`model.json` also records what its accuracy was measured on (`evaluation_record`), so that a
distillation run can take its teacher's accuracy from there instead of compiling an evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dnd_jax import models, workdir as run_folder

log = logging.getLogger(__name__)

MODEL_META = run_folder.MODEL_META


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, or does not fit the configured model."""


def architecture(model_config, num_classes: int, image_shape) -> dict:
  """What must agree between a saved model and the config that loads it: a network of
  `models.ARCHS` by its name and family keyword arguments (`arch`, `arch_kwargs`, as JSON holds
  them), or the paper's ResNet by depth, width and stem (the record of every model exported
  before `arch` existed, so those load as they did); the classes and input channels."""
  arch = model_config.get("arch") or ""
  if arch:
    kwargs = models.family_kwargs(model_config.get("arch_kwargs"))
    family = {"arch": str(arch), "arch_kwargs": json.loads(json.dumps(kwargs))}
  else:
    family = {"depth": int(model_config.depth), "width": int(model_config.width),
              "stem": str(model_config.stem)}
  return {**family, "num_classes": int(num_classes), "in_channels": int(image_shape[-1])}


def describe(arch: dict) -> str:
  """A network's architecture record in a few words, for messages: "resnet32x4",
  "shufflev2 (out_channels=[8, 16, 32, 64])", "ResNet18 (width 64, cifar stem)"."""
  if arch.get("arch"):
    kwargs = ", ".join(f"{k}={v}" for k, v in (arch.get("arch_kwargs") or {}).items())
    return f"{arch['arch']} ({kwargs})" if kwargs else str(arch["arch"])
  return f"ResNet{arch.get('depth')} (width {arch.get('width')}, {arch.get('stem')} stem)"


def input_record(dataset) -> dict:
  """What a network trained on `dataset` expects of its inputs: the data set, the image shape and
  the normalisation. A teacher's features are computed on the student run's inputs, so these must
  be the ones the teacher was trained on (`dnd_jax.teacher.check_inputs`); an evaluation on other
  inputs says so (`dnd_jax.evaluate`)."""
  return {"data": dataset.name, "image_shape": list(dataset.image_shape),
          "mean": [float(m) for m in dataset.mean], "std": [float(s) for s in dataset.std]}


def _describe(field: str, value) -> str:
  if field == "image_shape":
    return "x".join(str(n) for n in value)
  if field in ("mean", "std"):
    return "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
  return str(value)


def input_differences(meta: dict, dataset) -> list[str]:
  """How the inputs a model was trained on differ from `dataset`'s, as "field X (this run: Y)"
  strings. The evaluation a model.json records (`evaluation_record`) was made on the data its run
  trained on; a model without that record (an imported PyTorch one) has no differences to show."""
  recorded = meta.get("evaluation")
  if not isinstance(recorded, dict):
    return []
  names = {"data": "data set", "image_shape": "image shape", "mean": "normalisation mean",
           "std": "normalisation std"}
  differences = []
  for field, now in input_record(dataset).items():
    then = recorded.get(field)
    if then is None:
      continue
    same = (then == now if field in ("data", "image_shape") else
            len(then) == len(now) and all(abs(a - b) <= 1e-6 for a, b in zip(then, now)))
    if not same:
      differences.append(f"{names[field]} {_describe(field, then)} "
                         f"(this run: {_describe(field, now)})")
  return differences


def evaluation_record(dataset, dtype: str) -> dict:
  """What an evaluation accuracy is measured on: the evaluation split's images and labels (their
  SHA-256, with their count, shape and split for a reader), the normalisation, the compute dtype.

  The digest rather than the data config: whatever settings produced them (fraction, subset_seed
  and val_fraction only matter for a validation split; the folder the files came from not at
  all), equal arrays give equal accuracies. Hashing CIFAR-100's test set takes milliseconds. A
  streamed data set's digest is of its evaluation files' names and labels
  (`dnd_jax.data.stream.StreamData`), which are not read whole.
  """
  return {**input_record(dataset), "split": dataset.eval_split,
          "examples": dataset.n_eval, "dtype": str(dtype),
          "sha256": dataset.eval_digest()}


def variables_digest(variables: Any) -> str:
  """A short digest of a network's weights and statistics (every leaf's path, dtype, shape and
  bytes): what tells one teacher from another whatever folder it is read from."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


def recorded_accuracy(meta: dict, record: dict) -> float | None:
  """The accuracy in a model.json (`read_model_meta`) if it was measured on `record`, else None."""
  accuracy = meta.get("accuracy")
  if meta.get("evaluation") != record or not isinstance(accuracy, (int, float)):
    return None
  return float(accuracy) if math.isfinite(accuracy) else None


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


def _has_batch_counters(tree) -> bool:
  return any(getattr(path[-1], "key", None) == models.BATCH_COUNTER
             for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def _compatible_target(saved_tree, abstract):
  """The restore target for a checkpoint whose metadata tree is `saved_tree`, and what turns the
  restored tree into `abstract`'s layout: a checkpoint written before the BatchNorm batch counters
  existed restores without them and gets them as 0, so older runs and teachers keep loading."""
  if _has_batch_counters(abstract) and not _has_batch_counters(saved_tree):
    return (models.without_batch_counters(abstract),
            lambda tree: models.with_batch_counters(tree, abstract))
  return abstract, lambda tree: tree


def read_model_meta(path: str) -> dict:
  meta_file = run_folder.model_meta_path(path)
  if not os.path.isfile(meta_file):
    raise CheckpointError(
        f"No model at {path!r} (expected {meta_file}). Point the config at a folder written by "
        "scripts/train.py (<workdir>/model) or by scripts/import_torch_teacher.py.")
  try:
    with open(meta_file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{meta_file} is not valid JSON ({e}); re-export the model.") from e


# How long a failed restore waits for TensorStore's other reads (local files: milliseconds).
_FAILED_RESTORE_SETTLE_S = 0.5


def _settle_failed_restore() -> None:
  """Let the reads of a failed restore finish before its error goes on.

  Orbax closes the restore's event loop as soon as one read fails, while TensorStore still
  completes the others; each completion then meets the closed loop from a TensorStore thread and
  prints a traceback (`dnd_jax.cli` drops those while the process lives). Waiting here keeps them
  from landing during interpreter exit, after the command's one `error:` line.
  """
  time.sleep(_FAILED_RESTORE_SETTLE_S)


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
  directory = os.path.join(os.path.abspath(path), "variables")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      target, complete = _compatible_target(ckptr.metadata(directory).item_metadata,
                                            abstract_variables)
      variables = complete(ckptr.restore(directory, target))
  except Exception as e:  # Orbax raises several types for unreadable or mismatched trees.
    _settle_failed_restore()
    raise CheckpointError(f"Could not restore the model variables at {path!r}: {e}") from e
  return dict(variables), meta


def network(arch: dict, dtype=jnp.float32) -> nn.Module:
  """The network of an architecture record (`architecture`'s fields, as a model.json or a
  PyTorch state_dict gives them), computing in `dtype` (parameters stay float32)."""
  return models.build_model(ml_collections.ConfigDict(arch), arch["num_classes"], dtype)


def load_model_as(path: str, arch: dict, image_shape,
                  dtype=jnp.float32) -> tuple[nn.Module, dict, dict]:
  """(network, variables, model.json) of the exported model at `path`, which must have the
  architecture `arch` (`architecture`'s fields). Every command that loads a saved network builds
  it here, so what "this folder's network" means is decided once."""
  model = network(arch, dtype)
  variables, meta = load_model(path, arch, models.abstract_variables(model, image_shape))
  return model, variables, meta


def restore_target(tree: Any, sharding) -> Any:
  """`tree`'s shapes and dtypes (arrays, abstract arrays or Orbax's metadata) placed with
  `sharding`: restored into it, a checkpoint lands where this process wants it, not where it was
  saved (Orbax refuses a saved placement this process does not have, e.g. other devices)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_best_model(workdir: str) -> tuple[dict, dict, int]:
  """(variables, meta, step) of a run's best-model checkpoint, on this process's first device.

  The target is built from the checkpoint's own metadata and placed here: restored as saved, a
  model trained on several devices would not load on one (Orbax checks the topology)."""
  directory = run_folder.best_dir(workdir)
  handlers = {"variables": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  step = None
  if os.path.isdir(directory):
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
      step = manager.latest_step()
      if step is not None:
        target = restore_target(manager.item_metadata(step)["variables"],
                                jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  if step is None:
    raise CheckpointError(f"No best-model checkpoint in {directory}.")
  return dict(restored["variables"]), dict(restored["meta"] or {}), int(step)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
  """Hold Ctrl-C (SIGINT) until the block is done, then raise it as it would have been.

  Orbax sets a save up in the calling thread (its folders, the futures its background thread
  commits): interrupted there, the save was left half made, the checkpointer's close waited five
  minutes on a barrier that never came, with tracebacks, and the workdir kept a best model of an
  epoch without its state. Only the main thread receives signals; elsewhere this does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught and previous is not signal.SIG_IGN:
    if callable(previous):
      previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    else:
      raise KeyboardInterrupt


class TrainCheckpoints:
  """Periodic training-state checkpoints (last `keep`) and the best model, with resume.

  Saving overlaps training: `save` and `save_best` return once Orbax has copied the arrays to host
  memory, and a background thread writes the files, deletes checkpoints beyond `keep` and commits
  (renames) the new one while the next epoch trains; a save first waits for the previous one,
  long finished by then. The training step donates the state's buffers, so the copy must be
  complete before the next step runs: with Orbax's default transfer settings (no
  `save_device_host_concurrent_gb` limit) every array's device-to-host copy is synchronous, i.e.
  done when `save` returns (tests/test_critical_path.py donates right after a save and restores
  the saved values). A run killed mid-write leaves only an uncommitted temporary folder and
  resumes from the previous checkpoint. `wait` before reading a checkpoint back or exiting.
  """

  def __init__(self, workdir: str, keep: int, every_epochs: int = 1):
    def manager(directory, max_to_keep, tree_item):
      # handlers named up front, so that a fresh manager (a resumed run) can read a checkpoint's
      # tree metadata before restoring it (`_compatible_target`). Each manager's cross-process
      # barriers get their own prefix: Orbax names them by step, and the state and the best
      # model are often saved at the same step, which in a multi-process run made two saves
      # wait at one barrier until it timed out and the processes aborted.
      return ocp.CheckpointManager(
          directory, options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
              multiprocessing_options=ocp.options.MultiprocessingOptions(
                  barrier_sync_key_prefix=tree_item)),
          item_handlers={tree_item: ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})

    self.workdir = workdir
    self.state = manager(run_folder.checkpoints_dir(workdir), keep, "state")
    # A resume goes back to one of the `keep` state checkpoints, up to keep x every_epochs epochs
    # before the newest best model, and drops the bests of the epochs it will redo: keeping that
    # many bests keeps the one the restored state's meta names (with one, a resume could find
    # none, or a later epoch's, and the run end without its best model).
    self.best = manager(run_folder.best_dir(workdir), keep * every_epochs, "variables")

  def latest_step(self) -> int | None:
    return self.state.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    with interrupts_deferred():
      self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    try:
      target, complete = _compatible_target(self.state.item_metadata(step)["state"], abstract_state)
      restored = self.state.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:
      _settle_failed_restore()
      raise CheckpointError(
          f"Could not resume from the checkpoint at step {step} in {self.state.directory}: {e}. "
          "If the config changed since that run, use a new --workdir; to start over, delete "
          "that folder.") from e
    return complete(restored["state"]), restored["meta"]

  def restore_latest_intact(self, abstract_state: Any,
                            accept: Callable[[Any, dict], None] | None = None,
                            ) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores; None when there is none.

    A checkpoint that does not restore is moved to `<workdir>/checkpoints_skipped/` (never
    deleted: it may be worth a look) with a line saying which and why, and the next older one is
    tried; when none restores, the error lists each one's reason and how to start over. `accept`
    sees the restored state and meta first and may refuse them by raising: then nothing in the
    workdir has been moved or deleted.
    """
    failures = []
    for step in sorted(self.state.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
      except CheckpointError as e:
        reason = str(e.__cause__ or e).strip().splitlines()[0][:200]
        failures.append((step, reason))
        continue
      if accept is not None:
        accept(state, meta)
      for bad, reason in failures:
        where = run_folder.skip_checkpoint(self.workdir, bad)
        log.warning(f"Skipped the checkpoint at step {bad}: it does not restore ({reason}); "
                    f"moved it to {where}.")
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
    for early in self.best.all_steps():  # of a run killed before its first state checkpoint:
      self.best.delete(early)  # epochs the run redoes (saving one again failed: "step exists")
    return None

  def save_best(self, step: int, variables: Any, meta: dict) -> None:
    with interrupts_deferred():
      self.best.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                   meta=ocp.args.JsonSave(meta)), force=True)

  def restore_best(self, abstract_variables: Any) -> tuple[Any, dict] | None:
    step = self.best.latest_step()
    if step is None:
      return None
    target, complete = _compatible_target(self.best.item_metadata(step)["variables"],
                                          abstract_variables)
    restored = self.best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return complete(restored["variables"]), restored["meta"]

  def wait(self) -> None:
    with interrupts_deferred():
      self.state.wait_until_finished()
      self.best.wait_until_finished()

  def close(self) -> None:
    with interrupts_deferred():
      self.state.close()
      self.best.close()
