"""The networks, each a Flax module that exposes its stages.

DnD trains each student stage on the teacher's feature at that stage's input, so a model's one
essential capability is `stages(x, first, last)`: run stages `first..last` on an input that is the
output of stage `first - 1` (or the image when `first == 1`) and return every stage's output. The
contract every family here follows:

- a `flax.linen.Module` with fields `num_classes`, `dtype` (the compute dtype; parameters and
  BatchNorm statistics stay float32) and `bn_momentum` (PyTorch's BatchNorm momentum, 0.1;
  `diagnose` sets 1.0 to re-estimate statistics), and a `num_stages` int;
- `stages(x, first=1, last=None, train=False)` returns the tuple of the outputs of stages
  first..last (last None: `num_stages`);
- `__call__(x, train=False)` returns the logits, the output of the last stage, which is always
  the head (pooling and classifier, float32 logits).

Families (each module's docstring lists its stages, their boundaries and the PyTorch state_dict
layout it imports; docs/models.md sums them up): `resnet` (ResNet18/34, the paper's pair, 5
stages), and the CIFAR-100 distillation benchmark's networks as HobbitLong/RepDistiller and
megvii-research/mdistiller define them: `cifar_resnet` (resnet8 ... resnet110, resnet8x4,
resnet32x4; 4 stages), `wrn` (WRN-d-k; 4), `vgg` (VGG with BatchNorm; 5), `resnet_bottleneck`
(their CIFAR ResNet50; 5), `mobilenetv2` (their half-width MobileNetV2; 5), `shufflenet_v1` and
`shufflenet_v2` (4 each). `layers` holds what they share: BatchNorm with PyTorch's semantics,
initialisers, the stage-interface base class and the classifier head.

`ARCHS` maps every published name to a factory `(num_classes, dtype=float32, bn_momentum=0.1,
**family_kwargs) -> Module`; `build_arch` is the checked way in. Each name builds exactly the
published network; family keyword arguments (widths, block counts) exist so that tests can
build small ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnd_jax.models import (cifar_resnet, mobilenetv2, resnet_bottleneck, shufflenet_v1,
                            shufflenet_v2, vgg, wrn)
from dnd_jax.models.layers import (BATCH_COUNTER, BatchNorm, conv_init, dense_init,
                                   torch_linear_bias_init, with_batch_counters,
                                   without_batch_counters)
from dnd_jax.models.resnet import (NUM_STAGES, STAGE_SIZES, STEMS, BasicBlock, Head, ResidualStage,
                                   ResNet)

__all__ = [
    "BATCH_COUNTER", "BatchNorm", "conv_init", "dense_init", "torch_linear_bias_init",
    "with_batch_counters", "without_batch_counters", "NUM_STAGES", "STAGE_SIZES", "STEMS",
    "BasicBlock", "Head", "ResidualStage", "ResNet", "DTYPES", "resolve_dtype", "build_model",
    "init_variables", "abstract_variables", "stage_output_shapes", "ARCHS", "build_arch",
    "family_kwargs",
]

# config.model.dtype: the compute dtype (parameters, BatchNorm statistics and losses stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}.")
  return DTYPES[name]


def build_model(model_config, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  """The network of a config block (`config.model`, `config.teacher` or a model.json's
  architecture record): `arch`, a name in `ARCHS`, built with the family keyword arguments in
  `arch_kwargs` (JSON lists read back as tuples); or, with `arch` unset or empty, a ResNet from
  `depth`, `width` and `stem`. `remat` (ResNet only) reaches either."""
  arch = model_config.get("arch") or ""
  if arch:
    kwargs = family_kwargs(model_config.get("arch_kwargs"))
    if model_config.get("remat", False):
      kwargs["remat"] = True
    return build_arch(arch, num_classes, dtype, **kwargs)
  return ResNet(depth=int(model_config.depth), num_classes=int(num_classes),
                width=int(model_config.width), stem=str(model_config.stem), dtype=dtype,
                remat=bool(model_config.get("remat", False)))


def family_kwargs(kwargs) -> dict:
  """A config's or a model.json's `arch_kwargs` (a dict, a ConfigDict or None) as keyword
  arguments of a family: lists (JSON's tuples) become tuples, as the modules' fields are."""
  if kwargs is None:
    return {}
  if hasattr(kwargs, "to_dict"):
    kwargs = kwargs.to_dict()
  as_tuple = lambda v: tuple(map(as_tuple, v)) if isinstance(v, (list, tuple)) else v  # noqa: E731
  return {str(k): as_tuple(v) for k, v in kwargs.items()}


def init_variables(model, key: jax.Array, image_shape: Sequence[int]) -> dict:
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


def abstract_variables(model, image_shape: Sequence[int]) -> dict:
  """`init_variables`'s shapes and dtypes, found without running the model (what a checkpoint is
  restored into)."""
  return _abstract_variables(model, tuple(image_shape))


@functools.lru_cache(maxsize=64)
def _abstract_variables(model, image_shape: tuple) -> dict:
  # cached: a process that loads one teacher for several runs (a grid, the tests) traces it once
  return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))


def stage_output_shapes(model, image_shape: Sequence[int], batch: int = 2) -> list[tuple]:
  """Shapes of the stage outputs, found without running the model."""
  return list(_stage_output_shapes(model, tuple(image_shape), batch))


@functools.lru_cache(maxsize=64)
def _stage_output_shapes(model, image_shape: tuple, batch: int) -> tuple:
  dummy = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  # one trace (initialisation and the stages together): tracing a network costs ~0.5 s
  outs, _ = jax.eval_shape(functools.partial(model.init_with_output, method="stages",
                                             train=False), jax.random.key(0), dummy)
  return tuple(tuple(o.shape) for o in outs)


def _factory(cls, **published) -> Callable[..., nn.Module]:
  """A registry entry: `cls` with the published network's fields, which family keyword
  arguments may override (for small test networks)."""

  def build(num_classes: int, dtype: Any = jnp.float32, bn_momentum: float = 0.1,
            **family_kwargs) -> nn.Module:
    return cls(num_classes=int(num_classes), dtype=dtype, bn_momentum=bn_momentum,
               **{**published, **family_kwargs})

  build.__doc__ = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in published.items())})"
  return build


# name -> factory. resnet18/34 are the paper's pair (torchvision layout, the CIFAR stem); the
# others are the CIFAR-100 benchmark's networks under their published names, lower case, with
# `resnet50_cifar` for their CIFAR bottleneck ResNet50 (not torchvision's ImageNet one).
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _factory(ResNet, depth=18, width=64, stem="cifar"),
    "resnet34": _factory(ResNet, depth=34, width=64, stem="cifar"),
    **{name: _factory(cifar_resnet.CifarResNet, depth=d, widths=w)
       for name, (d, w) in cifar_resnet.PUBLISHED.items()},
    **{name: _factory(wrn.WideResNet, depth=d, widen_factor=k)
       for name, (d, k) in wrn.PUBLISHED.items()},
    **{name: _factory(vgg.VGG, depth=d) for name, (d,) in vgg.PUBLISHED.items()},
    **{name: _factory(resnet_bottleneck.BottleneckResNet, num_blocks=blocks)
       for name, (blocks,) in resnet_bottleneck.PUBLISHED.items()},
    **{name: _factory(mobilenetv2.MobileNetV2, expand_ratio=t, width_mult=w)
       for name, (t, w) in mobilenetv2.PUBLISHED.items()},
    **{name: _factory(shufflenet_v1.ShuffleNetV1, out_planes=planes, num_blocks=blocks, groups=g)
       for name, (planes, blocks, g) in shufflenet_v1.PUBLISHED.items()},
    **{name: _factory(shufflenet_v2.ShuffleNetV2, out_channels=channels, num_blocks=blocks)
       for name, (channels, blocks) in shufflenet_v2.PUBLISHED.items()},
}


def build_arch(name: str, num_classes: int, dtype: Any = jnp.float32, bn_momentum: float = 0.1,
               **family_kwargs) -> nn.Module:
  """The network registered as `name` (see `ARCHS`)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown architecture {name!r}; known: {', '.join(ARCHS)}.")
  return ARCHS[name](num_classes, dtype=dtype, bn_momentum=bn_momentum, **family_kwargs)
