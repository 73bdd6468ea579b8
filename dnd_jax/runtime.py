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
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("DND_JAX_DISTRIBUTED"):
    jax.distributed.initialize()
  cache = os.environ.get("DND_JAX_COMPILATION_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "dnd_jax", "jax_cache"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
