"""The CIFAR ShuffleNetV2 of the distillation benchmarks (`ShuffleV2`: net_size 1, widths 116..464).

Layer for layer `models/ShuffleNetv2.py` of HobbitLong/RepDistiller and
`mdistiller/models/cifar/ShuffleNetv2.py` of megvii-research/mdistiller (the same network and
state_dict; only forward()'s extra return values differ): a 1x1 convolution to 24 channels + BN +
ReLU (no max-pool), three layers of one stride-2 DownBlock and (3, 7, 3) BasicBlocks, a 1x1
convolution to 1024 channels + BN + ReLU, a 4x4 average pool and a linear classifier. Their
authors left PyTorch's default initialisation in place, and so does this module.

Their BasicBlock splits the channels in half, passes the first half through and sends the second
through 1x1 + BN + ReLU, 3x3 depthwise + BN, 1x1 + BN + ReLU, then concatenates and shuffles (2
groups); the DownBlock runs both halves' branches on the whole input (left: depthwise 3x3/2 + BN,
1x1 + BN + ReLU; right: 1x1 + BN + ReLU, depthwise 3x3/2 + BN, 1x1 + BN + ReLU).

Stages (4):
  1: conv1 + bn1 + ReLU and layer1 (16x16 at a 32x32 input)     2: layer2 (8x8)
  3: layer3 and conv2 + bn2 + ReLU (4x4, 1024 channels)     4: head: global average pool and
  linear (logits)
Stage outputs 1-2 are their `feats`; stage 3 ends after conv2 (their f3 is taken before it), so
that the head is only the pool and the classifier, as in every family.

State_dict keys (their names): conv1, bn1, layer{k}.0.conv1..conv5|bn1..bn5 (the DownBlock),
layer{k}.{i}.conv1..conv3|bn1..bn3 (BasicBlock i >= 1), conv2, bn2, linear. Flax: stage1/conv1,
stage1/bn1, stage{k}/block{i}/..., stage3/conv2, stage3/bn2, stage4/linear.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (ClassifierHead, StagedNetwork, channel_shuffle, pad,
                                   torch_conv, torch_default_conv_init, torch_norm)

PUBLISHED = {"shufflev2": ((116, 232, 464, 1024), (3, 7, 3))}


class ShuffleV2Block(nn.Module):
  """Their BasicBlock (split ratio 0.5)."""

  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    c = int(x.shape[-1] * 0.5)
    x1, x2 = x[..., :c], x[..., c:]
    y = nn.relu(self.norm(name="bn1")(self.conv(c, (1, 1), name="conv1")(x2)))
    y = self.norm(name="bn2")(self.conv(c, (3, 3), padding=pad(1), feature_group_count=c,
                                        name="conv2")(y))
    y = nn.relu(self.norm(name="bn3")(self.conv(c, (1, 1), name="conv3")(y)))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleV2DownBlock(nn.Module):
  """Their DownBlock: two stride-2 branches on the whole input, concatenated and shuffled."""

  features: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    c, mid = x.shape[-1], self.features // 2
    left = self.norm(name="bn1")(self.conv(c, (3, 3), (2, 2), padding=pad(1),
                                           feature_group_count=c, name="conv1")(x))
    left = nn.relu(self.norm(name="bn2")(self.conv(mid, (1, 1), name="conv2")(left)))
    right = nn.relu(self.norm(name="bn3")(self.conv(mid, (1, 1), name="conv3")(x)))
    right = self.norm(name="bn4")(self.conv(mid, (3, 3), (2, 2), padding=pad(1),
                                            feature_group_count=mid, name="conv4")(right))
    right = nn.relu(self.norm(name="bn5")(self.conv(mid, (1, 1), name="conv5")(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Stage(nn.Module):
  """Stages 1-3: conv1 (stage 1), one layer (a DownBlock, then BasicBlocks), conv2 (stage 3)."""

  num_blocks: int
  features: int
  stem_features: int | None
  last_features: int | None
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    conv = torch_conv(self.dtype, kernel_init=torch_default_conv_init)
    norm = torch_norm(self.train, self.bn_momentum, self.dtype)
    x = x.astype(self.dtype)
    if self.stem_features is not None:
      x = nn.relu(norm(name="bn1")(conv(self.stem_features, (1, 1), name="conv1")(x)))
    x = ShuffleV2DownBlock(self.features, conv, norm, name="block0")(x)
    for i in range(1, self.num_blocks + 1):
      x = ShuffleV2Block(conv, norm, name=f"block{i}")(x)
    if self.last_features is not None:
      x = nn.relu(norm(name="bn2")(conv(self.last_features, (1, 1), name="conv2")(x)))
    return x


class ShuffleNetV2(StagedNetwork):
  """Their ShuffleNetV2(net_size); `out_channels` (three layers' widths and conv2's),
  `num_blocks` and `stem_channels` (24) can shrink it for tests."""

  out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024)
  num_blocks: tuple[int, int, int] = (3, 7, 3)
  num_classes: int = 100
  stem_channels: int = 24
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 4

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if k == self.num_stages:
      return ClassifierHead(self.num_classes, self.dtype, "linear", name=f"stage{k}")
    return ShuffleV2Stage(self.num_blocks[k - 1], self.out_channels[k - 1],
                          self.stem_channels if k == 1 else None,
                          self.out_channels[3] if k == 3 else None, self.dtype, train,
                          self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    stage, module, *rest = path
    if module.startswith("block"):
      return f"layer{stage[len('stage'):]}.{module[len('block'):]}.{rest[0]}"
    return module  # conv1, bn1 (stage 1); conv2, bn2 (stage 3); linear (the head)
