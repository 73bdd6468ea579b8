"""Shared test settings: tiny models on CPU, strict shapes, fast compiles.

On 2 CPU cores XLA's compile time dominates tests of tiny models, so the tests share one
persistent compilation cache for the session, which the `scripts/` subprocesses that tests start
also use. (Turning XLA's backend optimisations off compiles faster but runs convolutions ~7x
slower, a net loss here.)
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["DND_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="dnd_jax_test_xla_cache_")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["DND_JAX_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

from dnd_jax.configs import base_config  # noqa: E402


def tiny_config(method: str, **overrides):
  """A config that runs the real loop on real Fashion-MNIST in seconds on 2 CPU cores."""
  c = base_config("fashion_mnist", method)
  c.model.width = 4
  c.teacher.width = 4
  c.data.image_size = 8
  c.data.fraction = 0.05  # 3,000 training images
  c.batch_size = 32
  c.eval_batch_size = 1000
  c.num_epochs = 3
  c.log.progress_bar = False
  c.checkpoint.keep = 2
  c.teacher.config = ""
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
  """A width-4 ResNet34 teacher trained once per session; returns its exported model path."""
  from dnd_jax.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp("teacher")
  summary = train_and_evaluate(tiny_config("teacher"), str(workdir))
  return str(workdir / "model"), summary
