"""VGG8/11/13/16/19 with BatchNorm, the CIFAR versions of the distillation benchmarks.

Layer for layer `models/vgg.py` of HobbitLong/RepDistiller and `mdistiller/models/cifar/vgg.py` of
megvii-research/mdistiller (vgg8_bn ... vgg19_bn; the same network and state_dict in both; only
forward()'s extra return values differ): five blocks of 3x3 convolutions (with a bias) + BatchNorm
+ ReLU, 2x2 max-pools between them, a global average pool (their AdaptiveAvgPool2d) and one
linear classifier (no VGG fully connected layers). Their forward() applies `pool3` only to 64-pixel
images (their Tiny-ImageNet runs); the CIFAR networks never do, so block3 and block4 both work at
4x4. `pool3=True` builds the 64-pixel variant.

Stages (5):
  1: block0 (32x32 at a 32x32 input)     2: pool0 + block1 (16x16)     3: pool1 + block2 (8x8)
  4: pool2 + block3 (+ pool3) + block4 (4x4)     5: head: global average pool and classifier
Every stage ends in a ReLU (their `feats`; `preact_feats` are the same tensors before it). Blocks
3 and 4 share a stage so that VGG, like the other 5-stage families, has four body stages.

State_dict keys (their names): block{b}.{3j} (conv j of block b: weight, bias), block{b}.{3j+1}
(its BatchNorm), classifier. Flax: stage{k}/block{b}/conv{j}|bn{j}, stage5/classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (ClassifierHead, StagedNetwork, pad, torch_conv, torch_norm)

# Their cfg, in units of the first block's width (64): the convolutions' widths per block.
CFGS = {
    8: ((1,), (2,), (4,), (8,), (8,)),
    11: ((1,), (2,), (4, 4), (8, 8), (8, 8)),
    13: ((1, 1), (2, 2), (4, 4), (8, 8), (8, 8)),
    16: ((1, 1), (2, 2), (4, 4, 4), (8, 8, 8), (8, 8, 8)),
    19: ((1, 1), (2, 2), (4, 4, 4, 4), (8, 8, 8, 8), (8, 8, 8, 8)),
}
PUBLISHED = {f"vgg{d}": (d,) for d in CFGS}
# stage -> the blocks it runs; every block but block0 follows a 2x2 max-pool (block4's only with
# pool3)
STAGE_BLOCKS = {1: (0,), 2: (1,), 3: (2,), 4: (3, 4)}


class VGGBlock(nn.Module):
  """Their `_make_layers(cfg)` with batch_norm, and the ReLU their forward() applies after it."""

  widths: tuple[int, ...]
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    for j, features in enumerate(self.widths):
      x = self.conv(features, (3, 3), padding=pad(1), name=f"conv{j}")(x)
      x = nn.relu(self.norm(name=f"bn{j}")(x))
    return x


class VGGStage(nn.Module):
  """Stages 1-4: each block of the stage, after its max-pool."""

  blocks: tuple[tuple[int, tuple[int, ...], bool], ...]   # (index, widths, pooled before)
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    conv = torch_conv(self.dtype, use_bias=True)   # their conv bias starts at zero
    norm = torch_norm(self.train, self.bn_momentum, self.dtype)
    x = x.astype(self.dtype)
    for b, widths, pooled in self.blocks:
      if pooled:
        x = nn.max_pool(x, (2, 2), (2, 2))
      x = VGGBlock(widths, conv, norm, name=f"block{b}")(x)
    return x


class VGG(StagedNetwork):
  """VGG-depth with BatchNorm; `width` (64, the first block's) scales every width, for small test
  networks (the classifier takes 8 x width features: their 512)."""

  depth: int = 13
  num_classes: int = 100
  width: int = 64
  pool3: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 5

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if self.depth not in CFGS:
      raise ValueError(f"VGG depth {self.depth} is not one of {sorted(CFGS)}.")
    if k == self.num_stages:
      # their Linear: N(0, 0.01) weight, zero bias
      return ClassifierHead(self.num_classes, self.dtype, "classifier",
                            nn.initializers.normal(0.01), zero_bias=True, name=f"stage{k}")
    cfg = CFGS[self.depth]
    blocks = tuple((b, tuple(self.width * u for u in cfg[b]), b > 0 and (b < 4 or self.pool3))
                   for b in STAGE_BLOCKS[k])
    return VGGStage(blocks, self.dtype, train, self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    _, module, *rest = path
    if module.startswith("block"):
      layer = rest[0]
      if layer.startswith("conv"):
        return f"{module}.{3 * int(layer[len('conv'):])}"
      return f"{module}.{3 * int(layer[len('bn'):]) + 1}"
    return module  # classifier
