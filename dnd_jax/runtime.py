"""Process-wide JAX settings that every entry point wants, in one place."""

from __future__ import annotations

import os

import jax
from absl import logging

from dnd_jax.data.sources import cache_root

CACHE_ENV = "DND_JAX_COMPILATION_CACHE"
_OFF = {"", "0", "off", "false", "no", "none"}


def default_cache_dir() -> str:
  """<$DND_JAX_CACHE or ~/.cache/dnd_jax>/jax_cache: beside the data caches, stable across runs."""
  return str(cache_root() / "jax_cache")


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


# The trainer's CUDA-graph commands: XLA's own default list (its debug_options_flags.cc), set
# explicitly so that it can be changed from the command line. XLA turns runs of these operations
# into CUDA graphs; convolutions stay launches of their own. Adding CONVOLUTION
# (GPU_COMMAND_BUFFER_CONVOLUTION) makes one graph per step, which the benchmark found faster, but
# it is not the default: the trainer's first distillation step has failed with it, cuDNN refusing
# to be captured into a graph ("Failed to trace command buffer: <unknown cudnn status: 5003>"),
# which XLA's list never asks of it. Measurements and the failure: docs/benchmarks-log.md.
GPU_COMMAND_BUFFER = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
GPU_COMMAND_BUFFER_CONVOLUTION = GPU_COMMAND_BUFFER + ",CONVOLUTION"
# Backends whose XLA knows the xla_gpu_* options: the GPU uses them; the CPU ignores them but
# checks their names and values, so a typo fails in a CPU test rather than on a GPU.
_GPU_OPTIONS_ON = ("gpu", "cuda", "rocm", "cpu")


def compiler_options(options, platform: str | None = None) -> dict | None:
  """`config.compiler_options` as `Lowered.compile` takes them, for `platform` (default: JAX's).

  xla_gpu_* options are left out on other backends (TPU), where this project has not tried them.
  None when nothing is left (XLA's defaults).
  """
  platform = platform or jax.default_backend()
  chosen = {str(k): v for k, v in dict(options or {}).items()
            if not str(k).startswith("xla_gpu_") or platform in _GPU_OPTIONS_ON}
  return chosen or None


def graph_capture_failure(error: Exception, config_options) -> str | None:
  """The fix, as one line, when `error` is XLA failing to capture a cuDNN convolution into a CUDA
  graph, which `config.compiler_options` asked for (",CONVOLUTION"); None for any other error.

  XLA reports it at the first step that runs, as an UNKNOWN runtime error naming a cuDNN status
  (on an H200: "<unknown cudnn status: 5003>"); without this line the user meets that and no hint
  that an option of theirs is the cause. The option is result-neutral, so the run resumes
  without it.
  """
  # The Python error carries only the cuDNN status (XLA logs the failed capture apart), so any
  # cuDNN error under the option gets this line, worded as the likely cause, not a certain one.
  text = str(error).lower()
  commands = str(dict(config_options or {}).get("xla_gpu_enable_command_buffer", ""))
  if "cudnn" not in text or "CONVOLUTION" not in commands.upper().split(","):
    return None
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return (f"cuDNN failed ({first}) in a step whose convolutions run inside XLA's CUDA graphs "
          f"(config.compiler_options.xla_gpu_enable_command_buffer has CONVOLUTION): the likely "
          f"cause is that this GPU's cuDNN would not run them there. Rerun the same command "
          f"with --config.compiler_options.xla_gpu_enable_command_buffer={GPU_COMMAND_BUFFER} "
          f"(the default); the run resumes from its last checkpoint. An error that recurs "
          f"without CONVOLUTION has another cause.")


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
