"""The networks, each a Flax module that exposes its stages.

DnD trains each student stage on the teacher's feature at that stage's input, so a model's one
essential capability is `stages(x, first, last)`: run stages `first..last` on an input that is the
output of stage `first - 1` (or the image when `first == 1`) and return every stage's output. The
contract every family here follows:

- a `flax.linen.Module` with fields `num_classes`, `dtype` (the compute dtype; parameters and
  BatchNorm statistics stay float32) and `bn_momentum` (PyTorch's BatchNorm momentum, 0.1;
  `diagnose` sets 1.0 to re-estimate statistics), and a `num_stages` int;
- `stages(x, first=1, last=None, train=False)` returns the tuple of the outputs of stages
  first..last (last None: `num_stages`);
- `__call__(x, train=False)` returns the logits, the output of the last stage, which is always
  the head (pooling and classifier, float32 logits).

Modules: `layers` (BatchNorm with PyTorch's semantics, initialisers), `resnet` (ResNet18/34, the
paper's pair).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from dnd_jax.models.layers import (BATCH_COUNTER, BatchNorm, conv_init, dense_init,
                                   torch_linear_bias_init, with_batch_counters,
                                   without_batch_counters)
from dnd_jax.models.resnet import (NUM_STAGES, STAGE_SIZES, STEMS, BasicBlock, Head, ResidualStage,
                                   ResNet)

__all__ = [
    "BATCH_COUNTER", "BatchNorm", "conv_init", "dense_init", "torch_linear_bias_init",
    "with_batch_counters", "without_batch_counters", "NUM_STAGES", "STAGE_SIZES", "STEMS",
    "BasicBlock", "Head", "ResidualStage", "ResNet", "DTYPES", "resolve_dtype", "build_model",
    "init_variables", "stage_output_shapes",
]

# config.model.dtype: the compute dtype (parameters, BatchNorm statistics and losses stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}.")
  return DTYPES[name]


def build_model(model_config, num_classes: int, dtype: Any = jnp.float32) -> ResNet:
  """A ResNet from a config block with `depth`, `width`, `stem` and optionally `remat`."""
  return ResNet(depth=int(model_config.depth), num_classes=int(num_classes),
                width=int(model_config.width), stem=str(model_config.stem), dtype=dtype,
                remat=bool(model_config.get("remat", False)))


def init_variables(model, key: jax.Array, image_shape: Sequence[int]) -> dict:
  """Parameters and BatchNorm statistics for images of shape (H, W, C).

  The initialisers draw from an "rbg" key derived from `key`: XLA compiles a ResNet's many
  threefry draws far more slowly than rbg ones on a CPU (docs/benchmarks-log.md, the CPU
  results), and initialisation needs no more than a deterministic, well-mixed stream.
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  rbg_key = jax.random.wrap_key_data(jnp.tile(data.astype(jnp.uint32).reshape(-1), 2)[:4],
                                     impl="rbg")
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return dict(jax.jit(functools.partial(model.init, train=False))(rbg_key, dummy))


def stage_output_shapes(model, image_shape: Sequence[int], batch: int = 2) -> list[tuple]:
  """Shapes of the stage outputs, found without running the model."""
  dummy = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), dummy)
  outs = jax.eval_shape(functools.partial(model.apply, method="stages"), variables, dummy)
  return [tuple(o.shape) for o in outs]
