"""The CIFAR-100 benchmark's architecture families: PyTorch weights import exactly, stage by stage.

For every family a small network (the published layers, fewer and narrower) is built in PyTorch
(tests/torch_archs.py, the published module names) with random weights and random BatchNorm
statistics (identity statistics would hide a mean/var or scale/bias swap), imported through the
generic converter, and compared at every stage boundary with the PyTorch twin's stages. The
published networks themselves are checked for their PyTorch names, shapes and parameter counts
without being run. XLA's compile time dominates on a CPU, so each family compiles one program that
returns the full run and every stage range k+1..N run on the full run's stage k output.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_archs as ta  # noqa: E402
from torch_archs import assert_close_rel, to_nhwc  # noqa: E402

from dnd_jax import checkpoints, models, torch_bridge  # noqa: E402
from dnd_jax import torch_reference as tr  # noqa: E402
from dnd_jax.models import (ARCHS, BatchNorm, build_arch, cifar_resnet,  # noqa: E402
                            mobilenetv2, resnet_bottleneck, shufflenet_v1, shufflenet_v2, vgg, wrn)
from dnd_jax.torch_bridge import TorchBridgeError  # noqa: E402

NUM_CLASSES = 10

# family -> (small dnd_jax network, its PyTorch twin), each covering every block variant of the
# family (projection and identity shortcuts, concatenating and adding blocks, ...)
SMALL = {
    "cifar_resnet": (lambda: cifar_resnet.CifarResNet(14, NUM_CLASSES, (4, 4, 8, 16)),
                     lambda: ta.CifarResNet(14, [4, 4, 8, 16], NUM_CLASSES)),
    "wrn": (lambda: wrn.WideResNet(16, 2, NUM_CLASSES, base_width=4),
            lambda: ta.WideResNet(16, 2, NUM_CLASSES, base_width=4)),
    "vgg": (lambda: vgg.VGG(11, NUM_CLASSES, width=4),
            lambda: ta.VGG(11, NUM_CLASSES, width=4)),
    "resnet_bottleneck": (
        lambda: resnet_bottleneck.BottleneckResNet((1, 2, 1, 1), NUM_CLASSES, width=4),
        lambda: ta.BottleneckResNet((1, 2, 1, 1), NUM_CLASSES, width=4)),
    "mobilenetv2": (
        lambda: mobilenetv2.MobileNetV2(6, 0.25, NUM_CLASSES, (1, 2, 2, 1, 2, 1, 1), 32),
        lambda: ta.MobileNetV2(6, NUM_CLASSES, width_mult=0.25,
                               num_blocks=(1, 2, 2, 1, 2, 1, 1), last_channel=32)),
    "shufflenet_v1": (
        lambda: shufflenet_v1.ShuffleNetV1((48, 96, 192), (2, 1, 1), 3, NUM_CLASSES, 12),
        lambda: ta.ShuffleNetV1((48, 96, 192), (2, 1, 1), 3, NUM_CLASSES, 12)),
    "shufflenet_v2": (
        lambda: shufflenet_v2.ShuffleNetV2((16, 32, 64, 128), (2, 1, 1), NUM_CLASSES, 8),
        lambda: ta.ShuffleNetV2((16, 32, 64, 128), (2, 1, 1), NUM_CLASSES, 8)),
}

STAGE_COUNTS = {
    **{name: 5 for name in ("resnet18", "resnet34", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
                            "resnet50_cifar", "mobilenetv2")},
    **{name: 4 for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                            "resnet110", "resnet8x4", "resnet32x4", "wrn16_1", "wrn16_2",
                            "wrn40_1", "wrn40_2", "shufflev1", "shufflev2")},
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def family(request):
  """(name, Flax model, its imported variables, PyTorch twin) of a small network."""
  make_flax, make_torch = SMALL[request.param]
  torch.manual_seed(0)
  twin = ta.randomise_batchnorm(make_torch())
  model = make_flax()
  return request.param, model, torch_bridge.model_state_dict_to_variables(
      model, twin.state_dict()), twin


def test_every_stage_equals_pytorch_and_every_stage_range_continues_the_run(family):
  name, model, variables, twin = family
  n = model.num_stages
  x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = twin.stages(x)

  @jax.jit
  def run(variables, image):
    full = model.apply(variables, image, method="stages")
    rests = [model.apply(variables, full[k - 1], k + 1, None, method="stages")
             for k in range(1, n)]
    return full, rests, model.apply(variables, image)

  full, rests, logits = run(variables, to_nhwc(x))
  assert len(full) == len(expected) == n
  for k, (ours, theirs) in enumerate(zip(full, expected), start=1):
    assert_close_rel(ours, to_nhwc(theirs), what=f"{name} stage {k}")
  assert full[-1].dtype == np.float32
  np.testing.assert_array_equal(logits, full[-1])
  for k, rest in enumerate(rests, start=1):   # stages k+1..n on stage k's output
    assert len(rest) == n - k
    for ours, whole in zip(rest, full[k:]):
      np.testing.assert_allclose(ours, whole, rtol=1e-6, atol=1e-6)


def test_export_gives_back_the_pytorch_tensors_bitwise(family):
  name, model, variables, twin = family
  original = twin.state_dict()
  exported = torch_bridge.model_variables_to_state_dict(model, variables)
  assert list(exported) == list(original)   # PyTorch's order, num_batches_tracked included
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].is_contiguous(), key
    assert torch.equal(exported[key], value), key
  twin.load_state_dict(exported, strict=True)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_train_and_bn_momentum_reach_every_batchnorm_and_dtype_every_stage(name):
  """Found without compiling: each BatchNorm's mode and momentum as the forward pass meets it, and
  the stage outputs' dtypes (bfloat16 features, float32 logits and parameters)."""
  model = SMALL[name][0]().clone(bn_momentum=1.0, dtype=jnp.bfloat16)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm):
      seen.append((context.module.use_running_average, context.module.momentum))
    return next_fun(*args, **kwargs)

  image = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
  with nn.intercept_methods(record):
    outs, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, method="stages",
                                                      mutable=["batch_stats"]), variables, image)
  assert seen and set(seen) == {(False, 1.0)}
  assert [o.dtype for o in outs] == [jnp.bfloat16] * (model.num_stages - 1) + [jnp.float32]
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {np.dtype(np.float32)}


def test_training_mode_equals_pytorch_with_its_running_statistics():
  """One step of training-mode BatchNorm in a whole network: logits and every updated running
  mean, variance (unbiased) and counter, as PyTorch's train() forward leaves them."""
  torch.manual_seed(0)
  model, twin = SMALL["wrn"][0](), ta.randomise_batchnorm(SMALL["wrn"][1]())
  variables = torch_bridge.model_state_dict_to_variables(model, twin.state_dict())
  x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
  logits, updated = jax.jit(lambda v, image: model.apply(v, image, train=True,
                                                         mutable=["batch_stats"]))(
      variables, to_nhwc(x))
  with torch.no_grad():
    expected = twin.train()(x)
  assert_close_rel(logits, expected.numpy(), what="training-mode logits")
  after = torch_bridge.model_variables_to_state_dict(model, {**variables, **updated})
  for key, value in twin.state_dict().items():
    if key.endswith("num_batches_tracked"):
      assert int(after[key]) == int(value) == 124, key
    elif key.endswith(("running_mean", "running_var")):
      assert_close_rel(after[key].numpy(), value.numpy(), what=key)


@pytest.mark.parametrize("name", sorted(ta.PUBLISHED))
def test_published_networks_have_the_pytorch_names_shapes_and_parameter_counts(name):
  """Without running either: the layout read off the Flax variables is the twin's state_dict."""
  torch.manual_seed(0)
  twin = ta.PUBLISHED[name](100)
  model = build_arch(name, 100)
  assert model.num_stages == STAGE_COUNTS[name]
  layout = {e.torch_key: e.torch_shape for e in torch_bridge.model_layout(model)}
  assert layout == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
  flax_params = sum(int(np.prod(s)) for k, s in layout.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  assert flax_params == sum(p.numel() for p in twin.parameters())


def test_the_registry_names_every_family_and_its_stage_count():
  assert set(ARCHS) == set(STAGE_COUNTS) == set(ta.PUBLISHED) | {"resnet18", "resnet34"}
  for name, count in STAGE_COUNTS.items():
    model = build_arch(name, 100)
    assert model.num_stages == count and model.num_classes == 100 and model.bn_momentum == 0.1
  assert build_arch("wrn40_2", 7, bn_momentum=1.0, base_width=4).base_width == 4
  with pytest.raises(ValueError, match=r"^Unknown architecture 'resnet50'; known: resnet18, "
                                       r"resnet34, resnet8, .*shufflev2\.$"):
    build_arch("resnet50", 100)


def test_resnet18_reads_the_same_through_the_generic_converter():
  """The generic converter, driven by ResNet.torch_name, agrees with the torchvision path."""
  torch.manual_seed(0)
  net = tr.build_resnet(18, 10, width=4, stem="cifar", in_channels=1)
  sd = net.state_dict()
  model = models.ResNet(depth=18, num_classes=10, width=4)
  variables = torch_bridge.model_state_dict_to_variables(model, sd)
  jax.tree.map(np.testing.assert_array_equal, variables,
               torch_bridge.torch_state_dict_to_variables(sd))
  exported = torch_bridge.model_variables_to_state_dict(model, variables)
  assert list(exported) == list(sd) and all(torch.equal(exported[k], v) for k, v in sd.items())


def test_their_checkpoint_files_are_unwrapped(tmp_path):
  """RepDistiller's ckpt_epoch_240.pth (mdistiller's cifar_teachers.tar holds the same files) is
  {"epoch", "model", "accuracy", "optimizer"}; mdistiller's own are {"epoch", "model",
  "optimizer", "best_acc"}, or {"model"} for a student. VGG has no conv1.weight, the key the
  ResNet path looks for."""
  model, twin = SMALL["vgg"][0](), SMALL["vgg"][1]()
  sd = twin.state_dict()
  optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
  for wrapped in ({"epoch": 240, "model": sd, "accuracy": torch.tensor(73.5),
                   "optimizer": optimizer.state_dict()},
                  {"epoch": 240, "model": {f"module.{k}": v for k, v in sd.items()},
                   "optimizer": optimizer.state_dict(), "best_acc": 73.5}):
    torch.save(wrapped, tmp_path / "ckpt_epoch_240.pth")
    loaded = torch_bridge.load_torch_checkpoint(str(tmp_path / "ckpt_epoch_240.pth"))
    variables = torch_bridge.model_state_dict_to_variables(model, loaded)
    kernel = variables["params"]["stage4"]["block4"]["conv1"]["kernel"]
    np.testing.assert_array_equal(kernel, sd["block4.3.weight"].numpy().transpose(2, 3, 1, 0))


def test_a_missing_key_a_wrong_shape_and_a_whole_distiller_are_named():
  model, twin = SMALL["shufflenet_v1"][0](), SMALL["shufflenet_v1"][1]()
  sd = twin.state_dict()
  del sd["layer1.0.bn3.running_var"]
  sd["layer1.1.conv1.weight"] = torch.zeros(12, 48, 1, 1)
  with pytest.raises(TorchBridgeError) as info:
    torch_bridge.model_state_dict_to_variables(model, sd)
  assert isinstance(info.value, checkpoints.CheckpointError)
  msg = str(info.value)
  assert msg.startswith("The PyTorch weights do not fit ShuffleNetV1")
  assert "missing key 'layer1.0.bn3.running_var' (expected shape (36,))" in msg
  assert ("key 'layer1.1.conv1.weight': checkpoint shape (12, 48, 1, 1) vs expected shape "
          "(12, 16, 1, 1)") in msg   # grouped: 16 input channels per group of 3
  distiller = {"model": {f"module.{part}.{k}": v for part in ("student", "teacher")
                         for k, v in twin.state_dict().items()}, "best_acc": 73.5}
  with pytest.raises(TorchBridgeError, match="whole mdistiller distiller.*student_best"):
    torch_bridge.model_state_dict_to_variables(model, distiller)
  variables = torch_bridge.model_state_dict_to_variables(model, twin.state_dict())
  del variables["params"]["stage3"]["block0"]["conv2"]["kernel"]
  with pytest.raises(TorchBridgeError, match=r"missing variable 'params/stage3/block0/conv2/"
                                             r"kernel' \(for 'layer3.0.conv2.weight'\)"):
    torch_bridge.model_variables_to_state_dict(model, variables)
