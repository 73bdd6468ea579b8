"""Process-wide JAX settings that every entry point wants, in one place."""

from __future__ import annotations

import os

import jax
from absl import logging


def setup_runtime() -> None:
  """Start multi-host JAX when the environment asks for it, and cache compiled steps on disk.

  The persistent compilation cache (also holding XLA's GPU autotuning results) makes a resumed
  or repeated run skip most of its compile time.
  """
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  start_distributed()
  cache = os.environ.get("DND_JAX_COMPILATION_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "dnd_jax", "jax_cache"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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
