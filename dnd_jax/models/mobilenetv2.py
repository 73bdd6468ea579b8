"""The CIFAR MobileNetV2 of the distillation benchmarks (`mobile_half`: width 0.5, T = 6).

Layer for layer `models/mobilenetv2.py` of HobbitLong/RepDistiller and
`mdistiller/models/cifar/mobilenetv2.py` of megvii-research/mdistiller (from "Knowledge
Distillation via Route Constrained Optimization"; the same network and state_dict in both, only
forward()'s extra return values differ). It is not torchvision's MobileNetV2: the stem is a
stride-2 3x3 convolution also at 32x32, every inverted residual block has its 1x1 expansion
convolution (the first with expansion 1 too), the last 1x1 convolution keeps 1280 channels at
width 0.5, and the classifier has no dropout. Seven groups of inverted residual blocks (t, c, n,
s): (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2),
(T, 320, 1, 1), with c scaled by the width multiplier.

Stages (5), cut where the feature map shrinks (their f1..f4):
  1: conv1 and blocks 0-1 (16x16 at a 32x32 input)     2: block 2 (8x8)     3: blocks 3-4 (4x4)
  4: blocks 5-6 and conv2 (1x1 to 1280 + BN + ReLU; 2x2)     5: head: global average pool and
  classifier (their AvgPool2d(input_size // 16, ceil_mode=True), global at their 32x32 input)
Stage outputs of 1-3 are a block's linear output (no ReLU: MobileNetV2's bottlenecks are linear);
stage 4's is conv2's ReLU output, which their f4 (taken before conv2) is not.

State_dict keys (their names): conv1.0|1 (conv, BN), blocks.{g}.{i}.conv.0|1|3|4|6|7 (expansion
conv and BN, depthwise conv and BN, projection conv and BN), conv2.0|1, classifier.0. Flax:
stage1/conv1_conv|conv1_bn, stage{k}/block{g}_{i}/pw_conv|pw_bn|dw_conv|dw_bn|pwl_conv|pwl_bn,
stage4/conv2_conv|conv2_bn, stage5/classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (ClassifierHead, StagedNetwork, pad, torch_conv, torch_norm)

# (expands by T, channels, stride) per group; the block counts are a field
GROUPS = ((False, 16, 1), (True, 24, 1), (True, 32, 2), (True, 64, 2), (True, 96, 1),
          (True, 160, 2), (True, 320, 1))
NUM_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
STAGE_GROUPS = {1: (0, 1), 2: (2,), 3: (3, 4), 4: (5, 6)}
PUBLISHED = {"mobilenetv2": (6, 0.5)}
_BLOCK_LAYERS = {"pw_conv": 0, "pw_bn": 1, "dw_conv": 3, "dw_bn": 4, "pwl_conv": 6, "pwl_bn": 7}


class InvertedResidual(nn.Module):
  """1x1 expansion + BN + ReLU, 3x3 depthwise (strided) + BN + ReLU, 1x1 projection + BN; the
  input added back where stride 1 keeps the width."""

  features: int
  strides: int
  expand_ratio: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expand_ratio
    y = nn.relu(self.norm(name="pw_bn")(self.conv(hidden, (1, 1), name="pw_conv")(x)))
    y = self.conv(hidden, (3, 3), (self.strides, self.strides), padding=pad(1),
                  feature_group_count=hidden, name="dw_conv")(y)
    y = nn.relu(self.norm(name="dw_bn")(y))
    y = self.norm(name="pwl_bn")(self.conv(self.features, (1, 1), name="pwl_conv")(y))
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + y
    return y


class MobileNetV2Stage(nn.Module):
  """Stages 1-4: conv1 (stage 1), the stage's groups of blocks, conv2 (stage 4)."""

  groups: tuple[tuple[int, int, int, int, int], ...]   # (group, blocks, channels, stride, t)
  stem_features: int | None
  last_features: int | None
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    conv = torch_conv(self.dtype)
    norm = torch_norm(self.train, self.bn_momentum, self.dtype)
    x = x.astype(self.dtype)
    if self.stem_features is not None:
      x = conv(self.stem_features, (3, 3), (2, 2), padding=pad(1), name="conv1_conv")(x)
      x = nn.relu(norm(name="conv1_bn")(x))
    for g, blocks, features, strides, t in self.groups:
      for i in range(blocks):
        x = InvertedResidual(features, strides if i == 0 else 1, t, conv, norm,
                             name=f"block{g}_{i}")(x)
    if self.last_features is not None:
      x = nn.relu(norm(name="conv2_bn")(conv(self.last_features, (1, 1), name="conv2_conv")(x)))
    return x


class MobileNetV2(StagedNetwork):
  """Their MobileNetV2(T, width_mult); `num_blocks` (per group) can shrink it for tests, and
  `last_channel` None is their rule (1280, or 1280 x width_mult above 1)."""

  expand_ratio: int = 6
  width_mult: float = 0.5
  num_classes: int = 100
  num_blocks: tuple[int, ...] = NUM_BLOCKS
  last_channel: int | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 5

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if k == self.num_stages:
      # their Linear: N(0, 0.01) weight, zero bias
      return ClassifierHead(self.num_classes, self.dtype, "classifier",
                            nn.initializers.normal(0.01), zero_bias=True, name=f"stage{k}")
    w = self.width_mult
    groups = tuple((g, self.num_blocks[g], int(GROUPS[g][1] * w), GROUPS[g][2],
                    self.expand_ratio if GROUPS[g][0] else 1) for g in STAGE_GROUPS[k])
    last = self.last_channel or (int(1280 * w) if w > 1.0 else 1280)
    return MobileNetV2Stage(groups, int(32 * w) if k == 1 else None, last if k == 4 else None,
                            self.dtype, train, self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    _, module, *rest = path
    if module.startswith("block"):
      group, i = module[len("block"):].split("_")
      return f"blocks.{group}.{i}.conv.{_BLOCK_LAYERS[rest[0]]}"
    if module == "classifier":
      return "classifier.0"
    return module.replace("_conv", ".0").replace("_bn", ".1")   # conv1_conv -> conv1.0, ...
