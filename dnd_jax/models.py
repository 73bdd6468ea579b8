"""ResNet18/34 as five stages, so that any contiguous range of stages can run on its own.

DnD trains each student stage on the teacher's feature at that stage's input, so the model's one
essential capability is `stages(x, first, last)`: run stages `first..last` on an input that is the
output of stage `first - 1` (or the image when `first == 1`) and return every stage's output.

Stages (docs/design.md section 1):
  1: stem (conv + BN + ReLU [+ max-pool]) and layer1      2: layer2      3: layer3      4: layer4
  5: global average pool and the fully connected layer (logits)

Convolutions pad explicitly as PyTorch does (`padding=1` for 3x3, 3 for 7x7, 1 for the max-pool):
Flax's "SAME" pads strided convolutions asymmetrically (flax issue 2993), which would make
PyTorch weights give different features. Initialisation follows torchvision's ResNet, and
BatchNorm follows `torch.nn.BatchNorm2d` (`BatchNorm` below).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_STAGES = 5
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("cifar", "imagenet")

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_linear_bias_init(fan_in: int):
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


class BasicBlock(nn.Module):
  """The ResNet basic block; a 1x1 strided projection when the shape changes."""

  features: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)),
                  name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), padding="VALID",
                           name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResidualStage(nn.Module):
  """Stages 1-4: (the stem, for stage 1, then) a run of basic blocks."""

  num_blocks: int
  features: int
  strides: int
  stem: str | None
  dtype: Any
  train: bool
  bn_momentum: float = 0.1
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    # Rematerialised blocks keep only their input for the backward pass; without gradients
    # (evaluation, the frozen teacher) there is nothing to save, so they stay plain.
    block = nn.remat(BasicBlock) if self.remat and self.train else BasicBlock
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    norm = functools.partial(BatchNorm, use_running_average=not self.train,
                             momentum=self.bn_momentum, dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    elif self.stem == "imagenet":
      x = conv(self.features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i in range(self.num_blocks):
      x = block(self.features, self.strides if i == 0 else 1, conv, norm, name=f"block{i}")(x)
    return x


class Head(nn.Module):
  """Stage 5: global average pool and the classifier; returns fp32 logits."""

  num_classes: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_init,
                 bias_init=_torch_linear_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)


class ResNet(nn.Module):
  """A ResNet whose five stages can be applied one range at a time.

  `__call__` runs the whole network and returns logits; `stages` runs stages `first..last`
  and returns the tuple of their outputs. BatchNorm uses batch statistics (and updates the
  `batch_stats` collection) when `train` is true, running statistics otherwise. `bn_momentum` is
  PyTorch's BatchNorm momentum (0.1); 1.0 makes the updated statistics the batch's own, which
  is how `diagnose` re-estimates them.

  `remat` recomputes each residual block's activations in the backward pass instead of keeping
  them (`jax.checkpoint` via `nn.remat`): only the blocks' inputs stay alive between the forward
  and backward passes, at the price of one more forward pass of the blocks. The parameters,
  their names and the computed values are unchanged, so it is a switch of any run
  (`config.model.remat`), not of the model's identity.
  """

  depth: int = 18
  num_classes: int = 10
  width: int = 64
  stem: str = "cifar"
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1
  remat: bool = False

  def _stage(self, k: int, train: bool) -> nn.Module:
    sizes = STAGE_SIZES[self.depth]
    if k == NUM_STAGES:
      return Head(self.num_classes, self.dtype, name="stage5")
    return ResidualStage(sizes[k - 1], self.width * 2 ** (k - 1), 1 if k == 1 else 2,
                         self.stem if k == 1 else None, self.dtype, train, self.bn_momentum,
                         self.remat, name=f"stage{k}")

  @nn.compact
  def stages(self, x, first: int = 1, last: int = NUM_STAGES, train: bool = False):
    """Outputs of stages first..last, given the input of stage `first`."""
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth {self.depth} is not supported; use one of {sorted(STAGE_SIZES)}.")
    if self.stem not in STEMS:
      raise ValueError(f"Unknown stem {self.stem!r}; use one of {STEMS}.")
    if not 1 <= first <= last <= NUM_STAGES:
      raise ValueError(f"Stage range {first}..{last} is not within 1..{NUM_STAGES}.")
    outputs = []
    for k in range(first, last + 1):
      x = self._stage(k, train)(x)
      outputs.append(x)
    return tuple(outputs)

  def __call__(self, x, train: bool = False):
    return self.stages(x, 1, NUM_STAGES, train)[-1]


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


def init_variables(model: ResNet, key: jax.Array, image_shape: Sequence[int]) -> dict:
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


def stage_output_shapes(model: ResNet, image_shape: Sequence[int], batch: int = 2) -> list[tuple]:
  """Shapes of the five stage outputs, found without running the model."""
  dummy = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), dummy)
  outs = jax.eval_shape(functools.partial(model.apply, method="stages"), variables, dummy)
  return [tuple(o.shape) for o in outs]
