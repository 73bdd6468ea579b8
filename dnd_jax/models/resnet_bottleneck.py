"""The CIFAR ResNet50 of the distillation benchmarks (`resnet50_cifar` in the registry).

Layer for layer `ResNet50` of `models/resnetv2.py` in HobbitLong/RepDistiller and of
`mdistiller/models/cifar/resnetv2.py` in megvii-research/mdistiller (the same network and
state_dict; only forward()'s extra return values differ). It is not torchvision's ImageNet
ResNet50: the stem is one 3x3 convolution (stride 1, no max-pool), the shortcut and classifier
have other names (`shortcut`, `linear`), and the 3x3 convolution of a bottleneck carries its
stride. Bottleneck blocks (1x1, 3x3, 1x1 x4) in four groups of (3, 4, 6, 3), widths 64..512,
outputs 256..2048 channels.

Stages (5):
  1: conv1 + bn1 + ReLU and layer1 (32x32 at a 32x32 input)     2: layer2 (16x16)
  3: layer3 (8x8)     4: layer4 (4x4)     5: head: global average pool and linear (logits)
Each stage's output is its last block's output after the ReLU (their `feats`).

State_dict keys (their names): conv1, bn1, layer{k}.{i}.conv1|bn1|conv2|bn2|conv3|bn3,
layer{k}.{i}.shortcut.0|1, linear. Flax: stage1/conv1, stage1/bn1,
stage{k}/block{i}/conv1|...|shortcut_conv|shortcut_bn, stage5/linear.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import ClassifierHead, GroupStage, StagedNetwork, pad

EXPANSION = 4
PUBLISHED = {"resnet50_cifar": ((3, 4, 6, 3),)}
_SHORTCUT = {"shortcut_conv": "shortcut.0", "shortcut_bn": "shortcut.1"}


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), with a 1x1 strided projection where the shape
  changes."""

  planes: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    out_features = self.planes * EXPANSION
    s = (self.strides, self.strides)
    y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), name="conv1")(x)))
    y = self.conv(self.planes, (3, 3), s, padding=pad(1), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.norm(name="bn3")(self.conv(out_features, (1, 1), name="conv3")(y))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = self.conv(out_features, (1, 1), s, padding="VALID", name="shortcut_conv")(x)
      shortcut = self.norm(name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class BottleneckResNet(StagedNetwork):
  """Their CIFAR bottleneck ResNet; `width` (64) scales every width, for small test networks."""

  num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
  num_classes: int = 100
  width: int = 64
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 5

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if k == self.num_stages:
      return ClassifierHead(self.num_classes, self.dtype, "linear", name=f"stage{k}")
    return GroupStage(Bottleneck, self.num_blocks[k - 1], self.width * 2 ** (k - 1),
                      1 if k == 1 else 2, self.width if k == 1 else None, True, self.dtype, train,
                      self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    stage, module, *rest = path
    if module.startswith("block"):
      layer = _SHORTCUT.get(rest[0], rest[0])
      return f"layer{stage[len('stage'):]}.{module[len('block'):]}.{layer}"
    return module  # conv1, bn1 (stage 1), linear (the head)
