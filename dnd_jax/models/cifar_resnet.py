"""The CIFAR ResNets of the distillation benchmarks: resnet8 ... resnet110, resnet8x4, resnet32x4.

Layer for layer `models/resnet.py` of HobbitLong/RepDistiller and
`mdistiller/models/cifar/resnet.py` of megvii-research/mdistiller (the two define the same network
and the same state_dict; they differ only in what forward() returns besides the logits): a 3x3
stem convolution, three groups of n = (depth - 2) / 6 basic blocks (3x3 convolutions, a 1x1
strided projection where the shape changes), an 8x8 average pool and a linear classifier.
resnet8x4 and resnet32x4 have four times the channels: (32, 64, 128, 256) for stem and groups
instead of (16, 16, 32, 64).

Stages (4):
  1: conv1 + bn1 + ReLU and layer1 (32x32 at a 32x32 input)     2: layer2 (16x16)
  3: layer3 (8x8)     4: head: global average pool and fc (logits)
Each stage's output is its last block's output after the ReLU (their `feats`, not `preact_feats`).

State_dict keys (their names): conv1, bn1, layer{1,2,3}.{i}.conv1|bn1|conv2|bn2,
layer{k}.{i}.downsample.0|1, fc. Flax: stage1/conv1, stage1/bn1, stage{k}/block{i}/conv1|...|
downsample_conv|downsample_bn, stage4/fc.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import ClassifierHead, GroupStage, StagedNetwork
from dnd_jax.models.resnet import BasicBlock

WIDTHS = (16, 16, 32, 64)
WIDTHS_X4 = (32, 64, 128, 256)
# name -> (depth, widths) as their constructors resnet8() ... resnet32x4() build them
PUBLISHED = {**{f"resnet{d}": (d, WIDTHS) for d in (8, 14, 20, 32, 44, 56, 110)},
             "resnet8x4": (8, WIDTHS_X4), "resnet32x4": (32, WIDTHS_X4)}
_DOWNSAMPLE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


class CifarResNet(StagedNetwork):
  """A CIFAR ResNet of depth 6n + 2 with group widths `widths` (stem, layer1, layer2, layer3)."""

  depth: int = 32
  num_classes: int = 100
  widths: tuple[int, int, int, int] = WIDTHS
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 4

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if (self.depth - 2) % 6 or self.depth < 8:
      raise ValueError(f"A CIFAR ResNet's depth is 6n + 2 (8, 14, 20, ...), not {self.depth}.")
    if k == self.num_stages:
      return ClassifierHead(self.num_classes, self.dtype, "fc", name=f"stage{k}")
    return GroupStage(BasicBlock, (self.depth - 2) // 6, self.widths[k], 1 if k == 1 else 2,
                      self.widths[0] if k == 1 else None, True, self.dtype, train,
                      self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    stage, module, *rest = path
    if module.startswith("block"):
      layer = _DOWNSAMPLE.get(rest[0], rest[0])
      return f"layer{stage[len('stage'):]}.{module[len('block'):]}.{layer}"
    return module  # conv1, bn1 (stage 1), fc (the head)
