"""The run folder (workdir): the one module that knows its layout and writes its records.

A workdir holds

  config.json           the config the run was started (or last resumed) with
  metrics.jsonl         one JSON line per finished epoch
  summary.json          written once, when the run has finished; its presence means "finished"
  checkpoints/<step>/   the whole training state of the last epochs (see `dnd_jax.checkpoints`)
  best/<step>/          the model of the epoch with the best evaluation accuracy
  model/                the final model with its `model.json`: what a later run loads as a teacher
  checkpoints_skipped/  checkpoints that did not restore, moved aside on resume
  lock                  held (flock) by the one process training in this folder
  tensorboard/          TensorBoard event files
  profile/              JAX profiler traces, when asked for
  diagnosis.json, .md   scripts/diagnose.py's report on the run's student
  student.pt            scripts/export_torch_student.py's PyTorch state_dict (student_best.pt
                        of the best epoch's model)

Every other module asks this one for a path or a record instead of naming a file, so the layout,
the atomic writes and the one policy for comparing configs live here.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import fcntl
import json
import logging
import os
from typing import Any, Iterator

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "lock"
MODEL_DIR = "model"
BEST_DIR = "best"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
MODEL_META = "model.json"  # inside an exported model folder (`model_dir`)
DIAGNOSIS = "diagnosis"  # diagnosis.json and diagnosis.md

# Fields that may change between a run and its resumption without changing what it computes
# (where the decoded data is cached or downloaded from, how many images an evaluation batch holds).
RESULT_NEUTRAL = ("log", "checkpoint", "teacher.checkpoint", "teacher.config",
                  "teacher.allow_other_inputs", "model.remat", "compiler_options",
                  "data.cache_dir", "data.mirror", "data.workers", "eval_batch_size")


class WorkdirError(ValueError):
  """A workdir that this run cannot use (locked by another run, holding another run, unwritable)."""



# --- paths ---------------------------------------------------------------------------------------


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS_FILE)


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_FILE)


def model_dir(workdir: str) -> str:
  """The exported final model (a folder with `model.json`)."""
  return os.path.join(workdir, MODEL_DIR)


def best_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), BEST_DIR)


def tensorboard_dir(workdir: str) -> str:
  """TensorBoard event files (`dnd_jax.tb`)."""
  return os.path.join(workdir, TENSORBOARD_DIR)


def profile_dir(workdir: str) -> str:
  """JAX profiler traces of the steps `config.log.profile_steps` names (`dnd_jax.profiling`)."""
  return os.path.join(workdir, PROFILE_DIR)


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)


def diagnosis_path(folder: str) -> str:
  """The diagnosis report's path without its suffix (.json and .md are written)."""
  return os.path.join(folder, DIAGNOSIS)


def torch_student_path(workdir: str, best: bool = False) -> str:
  return os.path.join(workdir, "student_best.pt" if best else "student.pt")


def skip_checkpoint(workdir: str, step: int) -> str:
  """Move the unreadable checkpoint of `step` out of the way (into checkpoints_skipped/)."""
  target_dir = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR + "_skipped")
  os.makedirs(target_dir, exist_ok=True)
  target, n = os.path.join(target_dir, str(step)), 1
  while os.path.exists(target):
    target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
  os.replace(os.path.join(checkpoints_dir(workdir), str(step)), target)
  return target


def model_meta_path(model_path: str) -> str:
  return os.path.join(model_path, MODEL_META)


def has_model(model_path: str) -> bool:
  return os.path.isfile(model_meta_path(model_path))


def workdir_of_model(model_path: str) -> str | None:
  """The workdir whose exported model `model_path` is, or None when it is not a `<workdir>/model`."""
  path = os.path.abspath(model_path)
  return os.path.dirname(path) if os.path.basename(path) == MODEL_DIR else None


# --- records -------------------------------------------------------------------------------------


def write_atomic(path: str, text: str) -> None:
  """Write `path` whole or not at all: a process killed mid-write leaves the previous complete
  file (written beside it, synced, then renamed over it). Every record of this project is
  written this way."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
  """The rows of metrics.jsonl. A last line cut short (power lost while it was appended) is left
  out: its epoch has no checkpoint yet, so a resume redoes it and rewrites the file. A damaged
  line before it is an error that names the file."""
  path = metrics_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):
        break
      raise WorkdirError(f"{path} line {number} is damaged ({e}); every later epoch's row is "
                         "intact. Remove that line, or use another --workdir.") from None
  return rows


def _primary() -> bool:
  """In a multi-process run every process computes the same records; process 0 alone writes."""
  # without jax at the top: scripts/gpu/record_run.py reads run folders after every GPU run
  from dnd_jax.runtime import is_primary  # noqa: PLC0415
  return is_primary()


def write_metrics(workdir: str, history: list[dict]) -> None:
  """Rewrite the metrics file atomically (used on resume to drop epochs that will be redone)."""
  if not _primary():
    return
  write_atomic(metrics_path(workdir), "".join(json.dumps(row) + "\n" for row in history))


def append_metrics(workdir: str, row: dict) -> None:
  if not _primary():
    return
  with open(metrics_path(workdir), "a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_summary(workdir: str) -> dict | None:
  """The finished run's summary, or None while it has not finished."""
  path = summary_path(workdir)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_finished(workdir: str) -> bool:
  return os.path.isfile(summary_path(workdir))


def write_summary(workdir: str, summary: dict) -> None:
  if not _primary():
    return
  write_atomic(summary_path(workdir), json.dumps(summary, indent=2))


def read_config(workdir: str) -> dict | None:
  path = config_path(workdir)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError:
      return None


def has_progress(workdir: str) -> bool:
  """Whether a run here got as far as a finished epoch (metrics, a checkpoint, or a summary)."""
  ckpts = checkpoints_dir(workdir)
  return (bool(read_metrics(workdir)) or is_finished(workdir) or
          (os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))))


# --- the one config-diff policy ------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  flat = {}
  for k, v in tree.items():
    flat.update(_flatten(v, f"{prefix}{k}."))
  return flat


def _as_dict(config) -> dict:
  return config if isinstance(config, dict) else json.loads(config.to_json_best_effort())


def config_changes(stored, now, ignore: tuple[str, ...] = RESULT_NEUTRAL) -> list[str]:
  """Fields whose value differs, as "field old -> new", ignoring fields under `ignore`.

  A field on one side only is no change: it is one the config schema gained (or lost) since the
  stored run, with the default that run implied.
  """
  before, after = _flatten(_as_dict(stored)), _flatten(_as_dict(now))
  neutral = lambda k: any(k == p or k.startswith(p + ".") for p in ignore)  # noqa: E731
  return [f"{k} {before[k]!r} -> {after[k]!r}" for k in sorted(before.keys() & after.keys())
          if before[k] != after[k] and not neutral(k)]


def record_config(config, workdir: str) -> list[str]:
  """Write the run's config, returning (and printing) what changed since the run it resumes.

  Changing e.g. `num_epochs` or `optim.lr` between a run and its resumption changes the schedule
  from the resumed step on; that is allowed (it is how a run is extended) but worth a line. A
  stored config of a run that never finished an epoch (one that failed on bad input) is replaced
  without a word: nothing was computed with it.
  """
  stored = read_config(workdir)
  changed = config_changes(stored, config) if stored and has_progress(workdir) else []
  if changed:
    log.warning("Warning: the config differs from the one this workdir was started with: " +
                ", ".join(changed))
  if _primary():
    write_atomic(config_path(workdir), config.to_json_best_effort(indent=2))
  return changed


# --- one run per workdir -------------------------------------------------------------------------


def _holder(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Hold the workdir for this process, or refuse with the pid and start time of the run holding it.

  An flock on `<workdir>/lock`: the kernel releases it when its process ends however it ends, so a
  lock left by a killed run is stale by construction and is taken over (with a line saying so).
  """
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    other = _holder(path)
    raise WorkdirError(
        f"{workdir} is in use by another run (pid {other.get('pid', '?')} on "
        f"{other.get('host', '?')}, started {other.get('started', '?')}). Wait for it to finish, "
        "stop it, or give this run another --workdir.") from None
  try:
    before = _holder(path)
    if before.get("pid") and not before.get("released"):
      log.info(f"Taking over the lock of an earlier run in {workdir} that ended without releasing "
               f"it (pid {before['pid']}, started {before.get('started', '?')}).")
    record = {"pid": os.getpid(), "host": os.uname().nodename,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    try:
      yield
    finally:  # ended, failed or interrupted: this process says it let go
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({**record, "released": True}).encode(), 0)
  finally:
    os.close(fd)  # releases the flock


# --- where a run may go --------------------------------------------------------------------------


def check_writable(workdir: str) -> None:
  """Refuse a workdir that cannot be created or written, before anything else is done."""
  probe = os.path.abspath(workdir)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise WorkdirError(f"--workdir {workdir!r} cannot be created: {probe} is a file. Choose "
                       "another --workdir.")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {workdir!r} is not writable ({probe} is read-only for this "
                       "user). Choose another --workdir.")


def nearby_models(model_path: str) -> list[str]:
  """Exported models next to a mistyped `model_path`, closest first (for "did you mean")."""
  parent = os.path.dirname(os.path.abspath(model_path))
  grand = os.path.dirname(parent)
  found = []
  for folder in (parent, grand):
    if os.path.isdir(folder):
      for name in os.listdir(folder):
        for candidate in (os.path.join(folder, name), os.path.join(folder, name, MODEL_DIR)):
          if has_model(candidate):
            found.append(candidate)
  return difflib.get_close_matches(os.path.abspath(model_path), found, n=3, cutoff=0.5)
