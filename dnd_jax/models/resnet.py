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
BatchNorm follows `torch.nn.BatchNorm2d` (`layers.BatchNorm`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (BatchNorm, StagedNetwork, conv_init, dense_init,
                                   torch_linear_bias_init)

NUM_STAGES = 5
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("cifar", "imagenet")
_TORCHVISION_DOWNSAMPLE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


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
                 bias_init=torch_linear_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)


class ResNet(StagedNetwork):
  """A ResNet whose five stages can be applied one range at a time.

  `__call__` runs the whole network and returns logits; `stages` (`layers.StagedNetwork`) runs
  stages `first..last` and returns the tuple of their outputs. BatchNorm uses batch statistics
  (and updates the `batch_stats` collection) when `train` is true, running statistics otherwise.
  `bn_momentum` is
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

  num_stages = NUM_STAGES

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth {self.depth} is not supported; use one of {sorted(STAGE_SIZES)}.")
    if self.stem not in STEMS:
      raise ValueError(f"Unknown stem {self.stem!r}; use one of {STEMS}.")
    if k == NUM_STAGES:
      return Head(self.num_classes, self.dtype, name="stage5")
    return ResidualStage(STAGE_SIZES[self.depth][k - 1], self.width * 2 ** (k - 1),
                         1 if k == 1 else 2, self.stem if k == 1 else None, self.dtype, train,
                         self.bn_momentum, self.remat, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    """The torchvision module name of the Flax module at `path` (the generic converter's naming;
    `torch_bridge.layout` lists the same names for the torchvision-specific path)."""
    stage, module, *rest = path
    if module.startswith("block"):
      layer = _TORCHVISION_DOWNSAMPLE.get(rest[0], rest[0])
      return f"layer{stage[len('stage'):]}.{module[len('block'):]}.{layer}"
    return {"stem_conv": "conv1", "stem_bn": "bn1"}.get(module, module)   # fc: the head
