"""Layers that every architecture family shares: PyTorch's BatchNorm, torch-like initialisers, and
the helpers for checkpoints written before BatchNorm counted its batches.

The families (dnd_jax/models/*.py) mirror PyTorch models whose weights they import exactly, so
their building blocks follow PyTorch rather than Flax where the two differ: BatchNorm's running
variance and batch counter, and the initial weights' distributions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):
  """torch.nn.Linear's (and Conv2d's) default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# The BatchNorm statistics' names in the `batch_stats` collection (`mean` and `var` are Flax's).
BATCH_COUNTER = "num_batches_tracked"


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d`'s training semantics over the last (channel) axis.

  Normalises with the batch mean and the biased batch variance; updates the running mean with
  momentum 0.1 and the running variance with the *unbiased* batch variance (x n / (n - 1), n the
  values per channel), and counts the training batches in `num_batches_tracked`, as PyTorch does
  (docs/design.md section 1). Flax's `nn.BatchNorm` updates the running variance with the biased
  one, which leaves evaluation, exported students and imported-then-trained teachers a little off
  PyTorch's. Parameters (`scale`, `bias`) and statistics (`mean`, `var`) keep Flax's names and
  stay fp32 with a bf16 `dtype`; statistics and normalisation are computed in fp32 (the variance
  as E[x^2] - E[x]^2, as Flax computes it), the output is cast to `dtype`. Under `jax.jit` over a
  mesh the means are over the global batch, so the statistics are global across devices.
  """

  use_running_average: bool
  momentum: float = 0.1   # PyTorch's: new = (1 - momentum) * running + momentum * batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    count = self.variable("batch_stats", BATCH_COUNTER, jnp.zeros, (), jnp.int32)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      n = x.size // features
      mean = jnp.mean(xf, axes)
      var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        if n < 2:
          raise ValueError(f"BatchNorm in training mode needs more than one value per channel "
                           f"(input shape {x.shape}), as PyTorch's does.")
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / (n - 1))
        count.value = count.value + 1
    shape = (1,) * (x.ndim - 1) + (features,)
    mul = (jax.lax.rsqrt(var + self.epsilon) * scale).reshape(shape)
    y = (xf - mean.reshape(shape)) * mul + bias.reshape(shape)
    return y.astype(self.dtype)


def without_batch_counters(tree):
  """`tree` (variables, batch_stats or a train state) without the BatchNorm batch counters: the
  layout of checkpoints written before the counters existed."""
  if isinstance(tree, Mapping):
    return {k: without_batch_counters(v) for k, v in tree.items() if k != BATCH_COUNTER}
  if dataclasses.is_dataclass(tree) and hasattr(tree, "replace"):
    return tree.replace(**{f.name: without_batch_counters(getattr(tree, f.name))
                           for f in dataclasses.fields(tree)})
  return tree


def with_batch_counters(tree, like):
  """`tree` with every batch counter that `like` (the same structure, abstract or concrete) has
  and `tree` lacks added as 0, as PyTorch loads a state_dict that predates the counter."""
  if isinstance(like, Mapping):
    out = dict(tree)
    for k, v in like.items():
      if k == BATCH_COUNTER and k not in out:
        out[k] = jnp.zeros(v.shape, v.dtype)
      elif k in out:
        out[k] = with_batch_counters(out[k], v)
    return out
  if dataclasses.is_dataclass(like) and hasattr(like, "replace"):
    return tree.replace(**{f.name: with_batch_counters(getattr(tree, f.name), getattr(like, f.name))
                           for f in dataclasses.fields(like)})
  return tree
