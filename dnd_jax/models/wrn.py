"""Wide ResNets WRN-d-k of the distillation benchmarks: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Layer for layer `models/wrn.py` of HobbitLong/RepDistiller and `mdistiller/models/cifar/wrn.py` of
megvii-research/mdistiller (the same network and state_dict; only forward()'s extra return values
differ): a 3x3 convolution to 16 channels, three groups of n = (d - 4) / 6 pre-activation blocks
of widths 16k, 32k, 64k (the second and third group stride 2), then BatchNorm, ReLU, an 8x8
average pool and a linear classifier. Their dropout rate is 0 in every published network, so
there is none here.

The block is theirs, quirk included: bn1 + ReLU come first; where the block changes the width, the
shortcut (a 1x1 strided `convShortcut`) takes the *activated* input, where it keeps the width,
the shortcut is the raw input.

Stages (4):
  1: conv1 and block1 (32x32 at a 32x32 input)     2: block2 (16x16)     3: block3 (8x8)
  4: head: bn1 + ReLU, global average pool and fc (logits)
A stage's output is its last block's sum, which the next block (or the head) normalises and
activates first: their `feats`; their `preact_feats` are that tensor after the next bn1.

State_dict keys (their names): conv1, block{1,2,3}.layer.{i}.bn1|conv1|bn2|conv2|convShortcut,
bn1, fc. Flax: stage1/conv1, stage{k}/block{i}/bn1|conv1|bn2|conv2|convShortcut, stage4/bn1,
stage4/fc.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dnd_jax.models.layers import (GroupStage, StagedNetwork, linear_classifier, pad, torch_norm)

# registry name -> (depth, widen_factor) as their constructors wrn_16_1() ... wrn_40_2() build them
PUBLISHED = {"wrn16_1": (16, 1), "wrn16_2": (16, 2), "wrn40_1": (40, 1), "wrn40_2": (40, 2)}


class WRNBlock(nn.Module):
  """Their pre-activation BasicBlock."""

  features: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    equal_in_out = x.shape[-1] == self.features
    act = nn.relu(self.norm(name="bn1")(x))
    out = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=pad(1),
                    name="conv1")(act)
    out = nn.relu(self.norm(name="bn2")(out))
    out = self.conv(self.features, (3, 3), padding=pad(1), name="conv2")(out)
    if equal_in_out:
      return x + out
    shortcut = self.conv(self.features, (1, 1), (self.strides, self.strides), padding="VALID",
                         name="convShortcut")(act)
    return shortcut + out


class WRNHead(nn.Module):
  """Stage 4: the last BatchNorm and ReLU, global average pool, fc (their zero-initialised bias)."""

  num_classes: int
  dtype: Any
  train: bool
  bn_momentum: float

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    x = nn.relu(torch_norm(self.train, self.bn_momentum, self.dtype)(name="bn1")(x))
    return linear_classifier(jnp.mean(x, axis=(1, 2)), self.num_classes, self.dtype, "fc",
                             zero_bias=True)


class WideResNet(StagedNetwork):
  """WRN-depth-widen_factor; `base_width` (16) scales every width, for small test networks."""

  depth: int = 40
  widen_factor: int = 2
  num_classes: int = 100
  base_width: int = 16
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  num_stages = 4

  def make_stage(self, k: int, train: bool) -> nn.Module:
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f"A WRN's depth is 6n + 4 (10, 16, 22, ...), not {self.depth}.")
    if k == self.num_stages:
      return WRNHead(self.num_classes, self.dtype, train, self.bn_momentum, name=f"stage{k}")
    features = self.base_width * 2 ** (k - 1) * self.widen_factor
    return GroupStage(WRNBlock, (self.depth - 4) // 6, features, 1 if k == 1 else 2,
                      self.base_width if k == 1 else None, False, self.dtype, train,
                      self.bn_momentum, name=f"stage{k}")

  @nn.nowrap
  def torch_name(self, path: tuple[str, ...]) -> str:
    stage, module, *rest = path
    if module.startswith("block"):
      return f"block{stage[len('stage'):]}.layer.{module[len('block'):]}.{rest[0]}"
    return module  # conv1 (stage 1); bn1, fc (the head)
