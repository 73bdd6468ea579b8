"""PyTorch twins of the CIFAR-100 benchmark's networks, for tests/test_archs.py, and the helpers
that compare PyTorch networks with dnd_jax's (tests/test_torch_bridge.py uses them too).

Each class is the network of HobbitLong/RepDistiller `models/*.py` and megvii-research/mdistiller
`mdistiller/models/cifar/*.py` (the two agree layer for layer), written here from reading them so
that the tests download nothing: the same modules under the same attribute names, so the same
state_dict keys and shapes, and the same forward(). Each takes the extra keyword arguments of its
dnd_jax family (widths, block counts) so that the tests can build small networks; the defaults and
the `PUBLISHED` constructors build the published ones.

`stages(x)` returns the outputs of dnd_jax's stages (the boundaries of each family's module
docstring, dnd_jax/models/*.py), computed with the twin's own layers in forward()'s order; the
last is forward(x).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def randomise_batchnorm(net):
  """`net` in eval mode with random BatchNorm parameters and statistics (identity statistics
  would hide a mean/var or scale/bias swap) and counters at 123, drawn from torch's generator."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.fill_(123)
  return net.eval()


def to_nhwc(t):
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def assert_close_rel(actual, expected, rtol=1e-4, what=""):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err <= rtol, f"{what}: max error {err:.3g} of the largest value (tolerance {rtol})"


def _kaiming_fan_out(model):
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


def _normal_fan_out(model, linear_std=None):
  """Their `n = k * k * out_channels; normal_(0, sqrt(2 / n))`, zero conv and linear biases."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
      m.weight.data.normal_(0, math.sqrt(2.0 / n))
      if m.bias is not None:
        m.bias.data.zero_()
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.data.fill_(1)
      m.bias.data.zero_()
    elif isinstance(m, nn.Linear):
      if linear_std is not None:
        m.weight.data.normal_(0, linear_std)
      m.bias.data.zero_()


# --- CIFAR ResNets (resnet.py) --------------------------------------------------------------------


class CifarBasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class CifarResNet(nn.Module):
  def __init__(self, depth, num_filters, num_classes=100):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = num_filters[0]
    self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(num_filters[0])
    self.relu = nn.ReLU(inplace=True)
    self.layer1 = self._make_layer(num_filters[1], n)
    self.layer2 = self._make_layer(num_filters[2], n, stride=2)
    self.layer3 = self._make_layer(num_filters[3], n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(num_filters[3], num_classes)
    _kaiming_fan_out(self)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes))
    layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def stages(self, x):
    s1 = self.layer1(self.relu(self.bn1(self.conv1(x))))
    s2 = self.layer2(s1)
    s3 = self.layer3(s2)
    return [s1, s2, s3, self.fc(self.avgpool(s3).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# --- WRN (wrn.py) ---------------------------------------------------------------------------------


class WRNBlock(nn.Module):
  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
    self.equal_in_out = in_planes == out_planes
    self.convShortcut = (None if self.equal_in_out else
                         nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False))

  def forward(self, x):
    if self.equal_in_out:
      out = self.relu1(self.bn1(x))
    else:
      x = self.relu1(self.bn1(x))
    out = self.relu2(self.bn2(self.conv1(out if self.equal_in_out else x)))
    out = self.conv2(out)
    return (x if self.equal_in_out else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[WRNBlock(in_planes if i == 0 else out_planes, out_planes,
                                          stride if i == 0 else 1) for i in range(nb_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth, widen_factor, num_classes=100, base_width=16):
    super().__init__()
    b = base_width
    channels = [b, b * widen_factor, 2 * b * widen_factor, 4 * b * widen_factor]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
    self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
    self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
    self.bn1 = nn.BatchNorm2d(channels[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(channels[3], num_classes)
    _normal_fan_out(self)

  def stages(self, x):
    s1 = self.block1(self.conv1(x))
    s2 = self.block2(s1)
    s3 = self.block3(s2)
    out = F.avg_pool2d(self.relu(self.bn1(s3)), 8).flatten(1)
    return [s1, s2, s3, self.fc(out)]

  def forward(self, x):
    return self.stages(x)[-1]


# --- VGG (vgg.py) ---------------------------------------------------------------------------------

VGG_CFG = {
    8: [[1], [2], [4], [8], [8]],
    11: [[1], [2], [4, 4], [8, 8], [8, 8]],
    13: [[1, 1], [2, 2], [4, 4], [8, 8], [8, 8]],
    16: [[1, 1], [2, 2], [4, 4, 4], [8, 8, 8], [8, 8, 8]],
    19: [[1, 1], [2, 2], [4, 4, 4, 4], [8, 8, 8, 8], [8, 8, 8, 8]],
}


class VGG(nn.Module):
  def __init__(self, depth, num_classes=100, width=64):
    super().__init__()
    cfg = [[width * u for u in block] for block in VGG_CFG[depth]]
    self.block0 = self._make_layers(cfg[0], 3)
    self.block1 = self._make_layers(cfg[1], cfg[0][-1])
    self.block2 = self._make_layers(cfg[2], cfg[1][-1])
    self.block3 = self._make_layers(cfg[3], cfg[2][-1])
    self.block4 = self._make_layers(cfg[4], cfg[3][-1])
    self.pool0 = nn.MaxPool2d(2, 2)
    self.pool1 = nn.MaxPool2d(2, 2)
    self.pool2 = nn.MaxPool2d(2, 2)
    self.pool3 = nn.MaxPool2d(2, 2)
    self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
    self.classifier = nn.Linear(cfg[4][-1], num_classes)
    _normal_fan_out(self, linear_std=0.01)

  @staticmethod
  def _make_layers(cfg, in_channels):
    layers = []
    for v in cfg:
      layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
      in_channels = v
    return nn.Sequential(*layers[:-1])

  def stages(self, x):
    h = x.shape[2]
    s1 = F.relu(self.block0(x))
    s2 = F.relu(self.block1(self.pool0(s1)))
    s3 = F.relu(self.block2(self.pool1(s2)))
    out = F.relu(self.block3(self.pool2(s3)))
    if h == 64:
      out = self.pool3(out)
    s4 = F.relu(self.block4(out))
    return [s1, s2, s3, s4, self.classifier(self.pool4(s4).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# --- CIFAR ResNet50 (resnetv2.py) -----------------------------------------------------------------


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != 4 * planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False),
                                    nn.BatchNorm2d(4 * planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
  def __init__(self, num_blocks=(3, 4, 6, 3), num_classes=100, width=64):
    super().__init__()
    self.in_planes = width
    self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.layer1 = self._make_layer(width, num_blocks[0], 1)
    self.layer2 = self._make_layer(2 * width, num_blocks[1], 2)
    self.layer3 = self._make_layer(4 * width, num_blocks[2], 2)
    self.layer4 = self._make_layer(8 * width, num_blocks[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.linear = nn.Linear(32 * width, num_classes)
    _kaiming_fan_out(self)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(Bottleneck(self.in_planes, planes, s))
      self.in_planes = 4 * planes
    return nn.Sequential(*layers)

  def stages(self, x):
    s1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
    s2 = self.layer2(s1)
    s3 = self.layer3(s2)
    s4 = self.layer4(s3)
    return [s1, s2, s3, s4, self.linear(self.avgpool(s4).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# --- MobileNetV2 (mobilenetv2.py) -----------------------------------------------------------------


def conv_bn(inp, oup, stride):
  return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                       nn.ReLU(inplace=True))


def conv_1x1_bn(inp, oup):
  return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                       nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    self.use_res_connect = stride == 1 and inp == oup
    hidden = inp * expand_ratio
    self.conv = nn.Sequential(
        nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  def __init__(self, T=6, feature_dim=100, input_size=32, width_mult=0.5,
               num_blocks=(1, 2, 3, 4, 3, 3, 1), last_channel=None):
    super().__init__()
    setting = [[1, 16, 1], [T, 24, 1], [T, 32, 2], [T, 64, 2], [T, 96, 1], [T, 160, 2],
               [T, 320, 1]]
    input_channel = int(32 * width_mult)
    self.conv1 = conv_bn(3, input_channel, 2)
    self.blocks = nn.ModuleList([])
    for (t, c, s), n in zip(setting, num_blocks):
      output_channel = int(c * width_mult)
      layers = []
      for stride in [s] + [1] * (n - 1):
        layers.append(InvertedResidual(input_channel, output_channel, stride, t))
        input_channel = output_channel
      self.blocks.append(nn.Sequential(*layers))
    self.last_channel = last_channel or (int(1280 * width_mult) if width_mult > 1.0 else 1280)
    self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
    self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
    self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
    _normal_fan_out(self, linear_std=0.01)

  def stages(self, x):
    s1 = self.blocks[1](self.blocks[0](self.conv1(x)))
    s2 = self.blocks[2](s1)
    s3 = self.blocks[4](self.blocks[3](s2))
    s4 = self.conv2(self.blocks[6](self.blocks[5](s3)))
    return [s1, s2, s3, s4, self.classifier(self.avgpool(s4).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# --- ShuffleNetV1 (ShuffleNetv1.py) ---------------------------------------------------------------


def shuffle(x, groups):
  n, c, h, w = x.size()
  return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Bottleneck(nn.Module):
  def __init__(self, in_planes, out_planes, stride, groups, stem_planes):
    super().__init__()
    self.stride = stride
    mid = int(out_planes / 4)
    self.g = 1 if in_planes == stem_planes else groups
    self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = nn.Sequential()
    if stride == 2:
      self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

  def forward(self, x):
    out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
  def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3,
               num_classes=100, stem_planes=24):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_planes)
    self.in_planes = stem_planes
    layers = []
    for planes, blocks in zip(out_planes, num_blocks):
      layer = []
      for i in range(blocks):
        cat_planes = self.in_planes if i == 0 else 0
        layer.append(ShuffleV1Bottleneck(self.in_planes, planes - cat_planes, 2 if i == 0 else 1,
                                         groups, stem_planes))
        self.in_planes = planes
      layers.append(nn.Sequential(*layer))
    self.layer1, self.layer2, self.layer3 = layers
    self.linear = nn.Linear(out_planes[2], num_classes)

  def stages(self, x):
    s1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
    s2 = self.layer2(s1)
    s3 = self.layer3(s2)
    return [s1, s2, s3, self.linear(F.avg_pool2d(s3, 4).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# --- ShuffleNetV2 (ShuffleNetv2.py) ---------------------------------------------------------------


class ShuffleV2Block(nn.Module):
  def __init__(self, in_channels):
    super().__init__()
    c = int(in_channels * 0.5)
    self.conv1 = nn.Conv2d(c, c, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = nn.Conv2d(c, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    c = int(x.size(1) * 0.5)
    x1, x2 = x[:, :c], x[:, c:]
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    out = F.relu(self.bn3(self.conv3(out)))
    return shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
  def __init__(self, in_channels, out_channels):
    super().__init__()
    mid = out_channels // 2
    self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    out1 = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    out2 = F.relu(self.bn3(self.conv3(x)))
    out2 = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(out2)))))
    return shuffle(torch.cat([out1, out2], 1), 2)


class ShuffleNetV2(nn.Module):
  def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3), num_classes=100,
               stem_channels=24):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_channels, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_channels)
    in_channels = stem_channels
    layers = []
    for channels, blocks in zip(out_channels[:3], num_blocks):
      layers.append(nn.Sequential(ShuffleV2DownBlock(in_channels, channels),
                                  *[ShuffleV2Block(channels) for _ in range(blocks)]))
      in_channels = channels
    self.layer1, self.layer2, self.layer3 = layers
    self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def stages(self, x):
    s1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
    s2 = self.layer2(s1)
    s3 = F.relu(self.bn2(self.conv2(self.layer3(s2))))
    return [s1, s2, s3, self.linear(F.avg_pool2d(s3, 4).flatten(1))]

  def forward(self, x):
    return self.stages(x)[-1]


# The published networks, by dnd_jax.models.ARCHS name (resnet18/34 are torchvision's:
# dnd_jax/torch_reference.py).
PUBLISHED = {
    **{f"resnet{d}": (lambda n, d=d: CifarResNet(d, [16, 16, 32, 64], n))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda n: CifarResNet(8, [32, 64, 128, 256], n),
    "resnet32x4": lambda n: CifarResNet(32, [32, 64, 128, 256], n),
    "wrn16_1": lambda n: WideResNet(16, 1, n),
    "wrn16_2": lambda n: WideResNet(16, 2, n),
    "wrn40_1": lambda n: WideResNet(40, 1, n),
    "wrn40_2": lambda n: WideResNet(40, 2, n),
    **{f"vgg{d}": (lambda n, d=d: VGG(d, n)) for d in (8, 11, 13, 16, 19)},
    "resnet50_cifar": lambda n: BottleneckResNet((3, 4, 6, 3), n),
    "mobilenetv2": lambda n: MobileNetV2(6, n, width_mult=0.5),
    "shufflev1": lambda n: ShuffleNetV1(num_classes=n),
    "shufflev2": lambda n: ShuffleNetV2(num_classes=n),
}
