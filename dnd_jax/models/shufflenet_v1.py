"""The CIFAR ShuffleNetV1 of the distillation benchmarks (`ShuffleV1`: 3 groups, widths 240..960).

Layer for layer `models/ShuffleNetv1.py` of HobbitLong/RepDistiller and
`mdistiller/models/cifar/ShuffleNetv1.py` of megvii-research/mdistiller (the same network and
state_dict; only forward()'s extra return values differ): a 1x1 convolution to 24 channels + BN +
ReLU, three layers of (4, 8, 4) bottlenecks whose first block strides 2 and concatenates a 3x3
average-pooled shortcut, a 4x4 average pool and a linear classifier. Their bottleneck: grouped 1x1
(groups 1 where the input is the stem's 24 channels) + BN + ReLU, channel shuffle, 3x3 depthwise
(strided) + BN + ReLU, grouped 1x1 + BN, then ReLU of the sum or concatenation. Their authors
left PyTorch's default initialisation in place, and so does this module.

Stages (4):
  1: conv1 + bn1 + ReLU and layer1 (16x16 at a 32x32 input)     2: layer2 (8x8)
  3: layer3 (4x4)     4: head: global average pool and linear (logits)
Each stage's output is its last block's output after the ReLU (their `feats`).

State_dict keys (their names): conv1, bn1, layer{k}.{i}.conv1|bn1|conv2|bn2|conv3|bn3, linear.
Flax: stage1/conv1, stage1/bn1, stage{k}/block{i}/conv1|..., stage4/linear.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (ClassifierHead, StagedNetwork, channel_shuffle, pad,
                                   torch_conv, torch_default_conv_init, torch_norm)

PUBLISHED = {"shufflev1": ((240, 480, 960), (4, 8, 4), 3)}


class ShuffleV1Bottleneck(nn.Module):
  """Their Bottleneck; `features` is the residual branch's width (the layer's width less the
  input's where the block concatenates)."""

  features: int
  strides: int
  groups: int
  first_groups: int   # the first 1x1 convolution's (and the shuffle's) groups
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    mid = self.features // 4
    y = self.conv(mid, (1, 1), feature_group_count=self.first_groups, name="conv1")(x)
    y = channel_shuffle(nn.relu(self.norm(name="bn1")(y)), self.first_groups)
    y = self.conv(mid, (3, 3), (self.strides, self.strides), padding=pad(1),
                  feature_group_count=mid, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.norm(name="bn3")(self.conv(self.features, (1, 1), feature_group_count=self.groups,
                                        name="conv3")(y))
    if self.strides == 2:   # AvgPool2d(3, stride=2, padding=1), padding counted as PyTorch does
      shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding=pad(1), count_include_pad=True)
      return nn.relu(jnp.concatenate([y, shortcut], axis=-1))
    return nn.relu(y + x)


class ShuffleV1Stage(nn.Module):
  """Stages 1-3: (the stem, for stage 1, then) one layer of bottlenecks."""

  num_blocks: int
  features: int
  groups: int
  stem_features: int
  is_first: bool
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    conv = torch_conv(self.dtype, kernel_init=torch_default_conv_init)
    norm = torch_norm(self.train, self.bn_momentum, self.dtype)
    x = x.astype(self.dtype)
    if self.is_first:
      x = nn.relu(norm(name="bn1")(conv(self.stem_features, (1, 1), name="conv1")(x)))
    for i in range(self.num_blocks):
      in_features = x.shape[-1]
      x = ShuffleV1Bottleneck(
          self.features - in_features if i == 0 else self.features, 2 if i == 0 else 1,
          self.groups, 1 if in_features == self.stem_features else self.groups, conv, norm,
          name=f"block{i}")(x)
    return x


class ShuffleNetV1(StagedNetwork):
  """Their ShuffleNet(cfg); `out_planes`, `num_blocks` and `stem_planes` (24) can shrink it for
  tests (the widths' quarters must divide by `groups`)."""

  out_planes: tuple[int, int, int] = (240, 480, 960)
  num_blocks: tuple[int, int, int] = (4, 8, 4)
  groups: int = 3
  num_classes: int = 100
  stem_planes: int = 24
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 4

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if k == self.num_stages:
      return ClassifierHead(self.num_classes, self.dtype, "linear", name=f"stage{k}")
    return ShuffleV1Stage(self.num_blocks[k - 1], self.out_planes[k - 1], self.groups,
                          self.stem_planes, k == 1, self.dtype, train, self.bn_momentum,
                          name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    stage, module, *rest = path
    if module.startswith("block"):
      return f"layer{stage[len('stage'):]}.{module[len('block'):]}.{rest[0]}"
    return module  # conv1, bn1 (stage 1), linear (the head)
