"""What every architecture family shares: PyTorch's BatchNorm, torch-like initialisers, the
stage-interface base class and classifier head, and the helpers for checkpoints written before
BatchNorm counted its batches.

The families (dnd_jax/models/*.py) mirror PyTorch models whose weights they import exactly, so
their building blocks follow PyTorch rather than Flax where the two differ: BatchNorm's running
variance and batch counter, explicit (symmetric) padding, the initial weights' distributions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convolutions. Flax counts
# a grouped kernel's fan-out as PyTorch does (output channels x kernel area), so this holds for
# depthwise convolutions too.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torch.nn.Conv2d's default weight is the same distribution (fan-in: input channels per group x
# kernel area); for networks whose authors left PyTorch's default in place.
torch_default_conv_init = dense_init


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


def pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's `padding=p` for a 2-D convolution or pool: p on every side. Flax's "SAME" pads a
  strided convolution asymmetrically (flax issue 2993), which would shift imported features."""
  return ((p, p), (p, p))


def torch_conv(dtype: Any, kernel_init=conv_init, use_bias: bool = False):
  """nn.Conv as the families use it: PyTorch's `padding=0` unless given (`pad`), no bias unless
  asked, a torch-like initialiser, the compute dtype (parameters stay float32)."""
  return functools.partial(nn.Conv, padding="VALID", use_bias=use_bias, kernel_init=kernel_init,
                           bias_init=nn.initializers.zeros, dtype=dtype)


def torch_norm(train: bool, momentum: float, dtype: Any):
  """BatchNorm in training mode (batch statistics, updated running ones) or inference mode."""
  return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                           dtype=dtype)


def channel_shuffle(x, groups: int):
  """ShuffleNet's channel shuffle on NHWC: PyTorch's NCHW `view(N, g, C/g, H, W).permute(0, 2, 1,
  3, 4)`, so that channel j of group i moves to position j * g + i in either layout."""
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)


def linear_classifier(x, num_classes: int, dtype: Any, name: str, kernel_init=None,
                      zero_bias: bool = False):
  """A torch.nn.Linear (inside a compact module): PyTorch's default initialisation unless the
  family's authors replaced it (`kernel_init`, a zero bias). Returns float32 logits."""
  fan_in = x.shape[-1]
  bias_init = nn.initializers.zeros if zero_bias else torch_linear_bias_init(fan_in)
  y = nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init or dense_init,
               bias_init=bias_init, name=name)(x)
  return y.astype(jnp.float32)


class GroupStage(nn.Module):
  """A body stage of the residual families: (for the first stage, their stem: a 3x3 convolution
  `conv1` to `stem_features` channels, with `bn1` and ReLU where `stem_norm`) a group of
  `num_blocks` blocks of one kind, the first strided. `block(features, strides, conv, norm,
  name=...)` is the family's block module."""

  block: Any
  num_blocks: int
  features: int
  strides: int
  stem_features: int | None
  stem_norm: bool
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    conv = torch_conv(self.dtype)
    norm = torch_norm(self.train, self.bn_momentum, self.dtype)
    x = x.astype(self.dtype)
    if self.stem_features is not None:
      x = conv(self.stem_features, (3, 3), padding=pad(1), name="conv1")(x)
      if self.stem_norm:
        x = nn.relu(norm(name="bn1")(x))
    for i in range(self.num_blocks):
      x = self.block(self.features, self.strides if i == 0 else 1, conv, norm,
                     name=f"block{i}")(x)
    return x


class ClassifierHead(nn.Module):
  """The last stage of a family: global average pool, then the linear classifier (float32 logits).

  The published CIFAR networks pool with a fixed window (AvgPool2d(8), avg_pool2d(4), ...) that
  covers the whole final feature map at their 32x32 input, the only size at which their forward
  runs; a global mean is the same there and lets the network take other image sizes.
  """

  num_classes: int
  dtype: Any
  dense_name: str = "fc"
  kernel_init: Callable | None = None
  zero_bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x, axis=(1, 2))
    return linear_classifier(x, self.num_classes, self.dtype, self.dense_name, self.kernel_init,
                             self.zero_bias)


class StagedNetwork(nn.Module):
  """The stage interface (dnd_jax/models/__init__.py) for a family that defines `make_stage`.

  Subclasses set `num_stages`, define `make_stage(k, train)` (the module of stage k, named
  `stage{k}`, so that parameters live under params/stage{k}) and `torch_name(path)`: the PyTorch
  module name (e.g. "layer2.0.conv1") of the Flax module at `path` (e.g. ("stage2", "block0",
  "conv1")), which is all `torch_bridge` needs to read and write the family's state_dicts.
  """

  num_stages: ClassVar[int] = 0

  def make_stage(self, k: int, train: bool) -> nn.Module:
    raise NotImplementedError

  @nn.compact
  def stages(self, x, first: int = 1, last: int | None = None, train: bool = False):
    """Outputs of stages first..last (last None: the head), given the input of stage `first`."""
    last = self.num_stages if last is None else last
    if not 1 <= first <= last <= self.num_stages:
      raise ValueError(f"Stage range {first}..{last} is not within 1..{self.num_stages}.")
    outputs = []
    for k in range(first, last + 1):
      x = self.make_stage(k, train)(x)
      outputs.append(x)
    return tuple(outputs)

  def __call__(self, x, train: bool = False):
    return self.stages(x, 1, None, train)[-1]

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    raise NotImplementedError
