"""Process-wide JAX settings that every entry point wants, in one place."""

from __future__ import annotations

import os

import jax
from absl import logging

CACHE_ENV = "DND_JAX_COMPILATION_CACHE"
_OFF = {"", "0", "off", "false", "no", "none"}


def default_cache_dir() -> str:
  """<$DND_JAX_CACHE or ~/.cache/dnd_jax>/jax_cache: beside the data caches, stable across runs."""
  root = os.environ.get("DND_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "dnd_jax")
  return os.path.join(root, "jax_cache")


def enable_compilation_cache() -> str | None:
  """Turn on JAX's persistent compilation cache; returns its folder, or None when off.

  A run's steps do not depend on its epoch budget, learning rate or seed (`dnd_jax.optim`), so a
  second run of a config (or a resumed one) loads them from this cache instead of compiling; on a
  GPU it also keeps XLA's autotuning results. $DND_JAX_COMPILATION_CACHE names another folder, or
  turns the cache off with "0", "off" or "". A folder the process already chose (JAX's own
  `jax_compilation_cache_dir`, e.g. from $JAX_COMPILATION_CACHE_DIR) is left as it is.
  Called by `train_and_evaluate`, so a library caller gets the cache too; it takes effect for
  compilations after the call.
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  setting = os.environ.get(CACHE_ENV)
  if setting is not None and setting.strip().lower() in _OFF:
    return None
  path = setting or default_cache_dir()
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def setup_runtime() -> None:
  """Start multi-host JAX when the environment asks for it, quieten Orbax, and turn on the
  persistent compilation cache (`enable_compilation_cache`)."""
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  start_distributed()
  enable_compilation_cache()


def start_distributed() -> None:
  """`jax.distributed.initialize` when the environment describes a multi-process run.

  On a cluster JAX detects the processes itself (SLURM, Open MPI, TPU pods, Kubernetes) once
  `DND_JAX_DISTRIBUTED=1` (or `JAX_COORDINATOR_ADDRESS`) is set; elsewhere, e.g. several processes
  on one machine, `DND_JAX_NUM_PROCESSES` and `DND_JAX_PROCESS_ID` give the count and this
  process's index (the coordinator from `JAX_COORDINATOR_ADDRESS`). CPU processes need
  cross-process collectives: `JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`, set here when missing.
  """
  if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("DND_JAX_DISTRIBUTED")):
    return
  kwargs = {}
  if os.environ.get("DND_JAX_NUM_PROCESSES"):
    kwargs = {"num_processes": int(os.environ["DND_JAX_NUM_PROCESSES"]),
              "process_id": int(os.environ.get("DND_JAX_PROCESS_ID", "0"))}
  if (os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu"
      and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION")):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Whether this process writes the run's own files (metrics, summary, config, TensorBoard).

  In a multi-process run every process computes the same metrics; process 0 alone writes them so
  that a shared workdir gets one copy. (Orbax checkpoints are written by all processes together.)
  """
  return jax.process_index() == 0
