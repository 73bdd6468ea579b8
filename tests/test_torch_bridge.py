"""PyTorch <-> dnd_jax weights: same features at every stage, bitwise round trips, clear errors.

A converted teacher that is slightly wrong would quietly spoil every student distilled from it,
so the features are compared at all five stage boundaries with randomised BatchNorm statistics
(identity statistics would hide a mean/var or scale/bias swap).
"""

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_archs import assert_close_rel, randomise_batchnorm, to_nhwc  # noqa: E402

from dnd_jax import torch_reference as tr  # noqa: E402
from dnd_jax import checkpoints, torch_bridge  # noqa: E402
from dnd_jax.data import default_data_config  # noqa: E402
from dnd_jax.models import ResNet, init_variables  # noqa: E402
from dnd_jax.torch_bridge import TorchBridgeError  # noqa: E402


def randomised_model(depth, num_classes, *, width=4, stem="cifar", in_channels=3, seed=0):
  """A PyTorch ResNet in eval mode with random weights and random BatchNorm parameters/statistics."""
  torch.manual_seed(seed)
  model = tr.build_resnet(depth, num_classes, width=width, stem=stem, in_channels=in_channels)
  return randomise_batchnorm(model)


def random_flax_variables(model, image_shape, seed=0):
  """Random values in exactly the tree `model.init` makes (found without running the slow init)."""
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(a.dtype), abstract)


def flax_model(arch):
  return ResNet(depth=arch["depth"], num_classes=arch["num_classes"], width=arch["width"],
                stem=arch["stem"])


CASES = [  # depth, stem, num_classes, in_channels, image side
    (18, "cifar", 10, 3, 16),
    (34, "cifar", 100, 1, 8),
    (18, "imagenet", 7, 1, 32),
    (34, "imagenet", 10, 3, 32),
]


@pytest.mark.parametrize("depth,stem,num_classes,in_channels,side", CASES)
def test_every_stage_output_equals_pytorch(depth, stem, num_classes, in_channels, side):
  model = randomised_model(depth, num_classes, stem=stem, in_channels=in_channels)
  variables = torch_bridge.torch_state_dict_to_variables(model.state_dict(), depth, stem)
  x = torch.randn(3, in_channels, side, side, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model.stages(x)
  arch = torch_bridge.variables_architecture(variables)
  assert arch == {"depth": depth, "stem": stem, "width": 4, "num_classes": num_classes,
                  "in_channels": in_channels}
  actual = flax_model(arch).apply(variables, jnp.asarray(to_nhwc(x)), method="stages")
  for k, (a, e) in enumerate(zip(actual, expected), start=1):
    assert_close_rel(a, to_nhwc(e), what=f"stage {k}")
  assert actual[-1].shape == (3, num_classes)


@pytest.mark.parametrize("depth,stem", [(18, "cifar"), (34, "imagenet")])
def test_converted_variables_have_exactly_the_flax_models_tree(depth, stem):
  model = randomised_model(depth, 5, stem=stem, in_channels=3)
  variables = torch_bridge.torch_state_dict_to_variables(model.state_dict())
  arch = torch_bridge.variables_architecture(variables)
  abstract = jax.eval_shape(lambda: init_variables(flax_model(arch), jax.random.key(0), (32, 32, 3)))
  shapes = jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), variables)
  assert shapes == jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), abstract)


@pytest.mark.parametrize("depth,stem,in_channels", [(18, "cifar", 3), (34, "imagenet", 1)])
def test_import_then_export_gives_back_the_same_tensors_bitwise(depth, stem, in_channels):
  model = randomised_model(depth, 12, stem=stem, in_channels=in_channels)
  original = model.state_dict()
  exported = torch_bridge.variables_to_torch_state_dict(
      torch_bridge.torch_state_dict_to_variables(original))
  assert list(exported) == list(original)  # torchvision's order, num_batches_tracked included
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].is_contiguous()
    assert torch.equal(exported[key], value), key
  assert int(exported["layer2.0.bn1.num_batches_tracked"]) == 123
  fresh = tr.build_resnet(depth, 12, width=4, stem=stem, in_channels=in_channels)
  fresh.load_state_dict(exported, strict=True)


def test_export_then_import_gives_back_the_flax_variables_bitwise():
  model = ResNet(depth=18, num_classes=10, width=4, stem="cifar")
  variables = random_flax_variables(model, (8, 8, 1))
  back = torch_bridge.torch_state_dict_to_variables(
      torch_bridge.variables_to_torch_state_dict(variables))
  jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_torchvision_loads_the_export_strictly():
  try:
    import torchvision
  except Exception as e:  # a torchvision built for another torch fails with several error types
    pytest.skip(f"torchvision is not importable here: {e}")
  reference = randomised_model(18, 10, width=64, stem="cifar")
  exported = torch_bridge.variables_to_torch_state_dict(
      torch_bridge.torch_state_dict_to_variables(reference.state_dict()))
  net = torchvision.models.resnet18(num_classes=10)
  net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  net.maxpool = torch.nn.Identity()
  net.load_state_dict(exported, strict=True)
  x = torch.randn(2, 3, 16, 16)
  with torch.no_grad():
    torch.testing.assert_close(net.eval()(x), reference(x))
  imagenet = torchvision.models.resnet34(num_classes=7)
  imagenet.load_state_dict(torch_bridge.variables_to_torch_state_dict(
      torch_bridge.torch_state_dict_to_variables(imagenet.state_dict())), strict=True)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 7},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 0.1}},
    lambda sd: {"model_state_dict": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
])
def test_checkpoint_dicts_and_dataparallel_prefixes_are_unwrapped(wrap):
  model = randomised_model(18, 10)
  expected = torch_bridge.torch_state_dict_to_variables(model.state_dict())
  jax.tree.map(np.testing.assert_array_equal,
               torch_bridge.torch_state_dict_to_variables(wrap(model.state_dict()), 18, "cifar"),
               expected)


def test_a_state_dict_without_batch_counters_imports_them_as_zero():
  """PyTorch before 0.4.1 wrote no num_batches_tracked; PyTorch itself loads such files with 0."""
  sd = {k: v for k, v in randomised_model(18, 10).state_dict().items()
        if not k.endswith("num_batches_tracked")}
  variables = torch_bridge.torch_state_dict_to_variables(sd)
  counter = variables["batch_stats"]["stage3"]["block0"]["downsample_bn"]["num_batches_tracked"]
  assert counter.dtype == np.int32 and int(counter) == 0
  exported = torch_bridge.variables_to_torch_state_dict(variables)
  assert exported["layer3.0.downsample.1.num_batches_tracked"].dtype == torch.long


def test_a_counter_that_is_not_a_count_is_named():
  sd = randomised_model(18, 10).state_dict()
  sd["layer1.0.bn1.num_batches_tracked"] = torch.tensor(-3)
  assert "Key 'layer1.0.bn1.num_batches_tracked' holds" in error_of(sd)


def test_half_precision_weights_are_widened_to_float32():
  model = randomised_model(18, 10)
  half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
  variables = torch_bridge.torch_state_dict_to_variables(half)
  kernel = variables["params"]["stage2"]["block0"]["conv1"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, half["layer2.0.conv1.weight"].float().numpy().transpose(2, 3, 1, 0))


# --- errors that name the key -----------------------------------------------------------------


def error_of(state_dict, *args, **kwargs) -> str:
  with pytest.raises(TorchBridgeError) as info:
    torch_bridge.torch_state_dict_to_variables(state_dict, *args, **kwargs)
  assert isinstance(info.value, checkpoints.CheckpointError)
  return str(info.value)


def test_missing_key_is_named_with_its_shape():
  sd = randomised_model(18, 10).state_dict()
  del sd["layer2.1.bn1.running_var"]
  msg = error_of(sd, 18, "cifar")
  assert "missing key 'layer2.1.bn1.running_var' (expected shape (8,))" in msg


def test_unexpected_key_is_named_with_its_shape():
  sd = randomised_model(18, 10).state_dict()
  sd["head.proj.weight"] = torch.zeros(3, 5)
  assert "unexpected key 'head.proj.weight' with shape (3, 5)" in error_of(sd, 18, "cifar")


def test_wrong_shape_names_the_key_and_both_shapes():
  sd = randomised_model(18, 10).state_dict()
  sd["layer3.1.conv2.weight"] = torch.zeros(16, 16, 1, 1)
  msg = error_of(sd, 18, "cifar")
  assert ("key 'layer3.1.conv2.weight': checkpoint shape (16, 16, 1, 1) vs expected shape "
          "(16, 16, 3, 3)") in msg


def test_resnet18_weights_for_a_resnet34_config_are_named():
  msg = error_of(randomised_model(18, 10).state_dict(), 34, "cifar")
  assert "missing key 'layer1.2.conv1.weight' (expected shape (4, 4, 3, 3))" in msg
  assert "looks like ResNet18" in msg and "Expected ResNet34" in msg


def test_resnet34_weights_for_a_resnet18_config_are_named():
  msg = error_of(randomised_model(34, 10).state_dict(), 18, "cifar")
  assert "unexpected key 'layer1.2.conv1.weight' with shape (4, 4, 3, 3)" in msg
  assert "looks like ResNet34" in msg


@pytest.mark.parametrize("have,want,shapes", [
    ("imagenet", "cifar", "(4, 3, 7, 7) vs expected shape (4, 3, 3, 3)"),
    ("cifar", "imagenet", "(4, 3, 3, 3) vs expected shape (4, 3, 7, 7)"),
])
def test_stem_mismatch_names_conv1_and_both_shapes(have, want, shapes):
  msg = error_of(randomised_model(18, 10, stem=have).state_dict(), 18, want)
  assert f"key 'conv1.weight': checkpoint shape {shapes}" in msg
  assert f"Expected ResNet18 with the {want} stem" in msg


def test_class_and_channel_mismatches_name_the_keys():
  sd = randomised_model(18, 10, in_channels=1).state_dict()
  msg = error_of(sd, 18, "cifar", num_classes=100, in_channels=3)
  assert "key 'fc.weight': checkpoint shape (10, 32) vs expected shape (100, 32)" in msg
  assert "key 'fc.bias': checkpoint shape (10,) vs expected shape (100,)" in msg
  assert "key 'conv1.weight': checkpoint shape (4, 1, 3, 3) vs expected shape (4, 3, 3, 3)" in msg


def test_wrong_width_names_the_keys():
  msg = error_of(randomised_model(18, 10, width=8).state_dict(), 18, "cifar", width=4)
  assert "key 'conv1.weight': checkpoint shape (8, 3, 3, 3) vs expected shape (4, 3, 3, 3)" in msg
  assert "more like these" in msg  # every tensor is wrong: the list is cut short, with a count


def test_non_resnet_input_is_a_clear_error():
  assert "Expected a state_dict" in error_of([torch.zeros(1)])
  assert "Could not tell the depth" in error_of({"encoder.weight": torch.zeros(2, 2)})
  nested = {"net": randomised_model(18, 10).state_dict(), "epoch": 3}
  msg = error_of(nested, 18, "cifar", width=4, num_classes=10, in_channels=3)
  assert "unexpected key 'net' (OrderedDict, not a tensor)" in msg
  assert "missing key 'conv1.weight' (expected shape (4, 3, 3, 3))" in msg
  assert "no 'conv1.weight' at the top level (keys: ['epoch', 'net'])" in msg


def test_integer_weights_are_named():
  sd = randomised_model(18, 10).state_dict()
  sd["fc.bias"] = torch.zeros(10, dtype=torch.int64)
  assert "Key 'fc.bias' has dtype int64" in error_of(sd)


def test_variables_with_a_missing_leaf_are_named_on_export():
  variables = random_flax_variables(ResNet(depth=18, num_classes=10, width=4), (8, 8, 3))
  del variables["batch_stats"]["stage3"]["block1"]["bn2"]["var"]
  with pytest.raises(TorchBridgeError, match=r"missing variable 'batch_stats/stage3/block1/bn2/var' "
                                             r"\(for 'layer3.1.bn2.running_var'\)"):
    torch_bridge.variables_to_torch_state_dict(variables)


# --- the scripts' library functions ----------------------------------------------------------


def teacher_config(tmp_path, dataset="fashion_mnist", depth=34):
  config = ml_collections.ConfigDict()
  config.data = default_data_config(dataset)
  config.teacher = ml_collections.ConfigDict(dict(
      depth=depth, width=4, stem="cifar", checkpoint=str(tmp_path / "teacher" / "model")))
  return config


def test_import_teacher_writes_a_model_that_load_model_reads(tmp_path):
  model = randomised_model(34, 10, in_channels=1)
  pt = tmp_path / "teacher.pt"
  torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
              "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "epoch": 3},
             pt)
  config = teacher_config(tmp_path)
  path, arch = torch_bridge.import_teacher(str(pt), config)
  assert path == config.teacher.checkpoint
  image_shape = (28, 28, 1)
  expected_arch = checkpoints.architecture(config.teacher, 10, image_shape)
  assert arch == expected_arch
  abstract = jax.eval_shape(lambda: init_variables(flax_model(arch), jax.random.key(0), image_shape))
  variables, meta = checkpoints.load_model(path, expected_arch, abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               torch_bridge.torch_state_dict_to_variables(model.state_dict()))
  assert meta["source"] == "pytorch" and meta["torch_checkpoint"] == str(pt)
  x = torch.randn(2, 1, 28, 28)
  with torch.no_grad():
    assert_close_rel(flax_model(arch).apply(variables, jnp.asarray(to_nhwc(x))), model(x))
  # a model there already is replaced only when asked; a training run's model never is
  with pytest.raises(TorchBridgeError, match="holds a model already.*--overwrite"):
    torch_bridge.import_teacher(str(pt), config)
  assert torch_bridge.import_teacher(str(pt), config, overwrite=True)[0] == path
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
  with pytest.raises(TorchBridgeError, match="model of the training run"):
    torch_bridge.import_teacher(str(pt), config, output=str(run / "model"), overwrite=True)
  assert not (run / "model").exists()


def test_an_imported_teacher_is_expected_to_be_what_a_trained_one_would_be():
  """`--config.model.width=4` on the quickstart trains a width-4 teacher; an import for the same
  command expected the teacher config's width 8."""
  from dnd_jax import teacher  # noqa: PLC0415
  from dnd_jax.configs import load_config_file  # noqa: PLC0415
  config = load_config_file("configs/quickstart.py")
  config.model.width = 4
  wanted = teacher.architecture_to_build(config)
  trained = teacher.config_for_training(config)[0].model
  assert (wanted.depth, wanted.width, wanted.stem) == (trained.depth, trained.width,
                                                       trained.stem) == (34, 4, config.model.stem)


def test_import_teacher_checks_the_config_and_data_set(tmp_path):
  pt = tmp_path / "teacher.pt"
  torch.save(randomised_model(34, 10, in_channels=1).state_dict(), pt)
  with pytest.raises(TorchBridgeError, match=r"key 'fc.weight': checkpoint shape \(10, 32\) vs "
                                             r"expected shape \(100, 32\)"):
    torch_bridge.import_teacher(str(pt), teacher_config(tmp_path, "cifar100"))
  with pytest.raises(TorchBridgeError, match="unexpected key 'layer1.2.conv1.weight'"):
    torch_bridge.import_teacher(str(pt), teacher_config(tmp_path, depth=18))
  assert not os.path.exists(tmp_path / "teacher" / "model")
  with pytest.raises(TorchBridgeError, match="not found"):
    torch_bridge.import_teacher(str(tmp_path / "nope.pt"), teacher_config(tmp_path))


def test_a_pickled_module_is_refused(tmp_path):
  pt = tmp_path / "module.pt"
  torch.save(randomised_model(18, 10), pt)
  with pytest.raises(TorchBridgeError, match="weights_only"):
    torch_bridge.load_torch_checkpoint(str(pt))


@pytest.mark.parametrize("best", [False, True])
def test_export_student_writes_a_state_dict_pytorch_loads_strictly(tmp_path, best):
  model = ResNet(depth=18, num_classes=10, width=4, stem="imagenet")
  variables = random_flax_variables(model, (32, 32, 1))
  arch = {"depth": 18, "width": 4, "stem": "imagenet", "num_classes": 10, "in_channels": 1}
  workdir = tmp_path / "run"
  if best:
    ckpts = checkpoints.TrainCheckpoints(str(workdir), keep=1)
    ckpts.save_best(40, variables, {"best_accuracy": 0.5, "best_epoch": 2})
    ckpts.wait()
    ckpts.close()
  else:
    checkpoints.save_model(str(workdir / "model"), variables, arch, {"accuracy": 0.5})
  path, info = torch_bridge.export_student(str(workdir), best=best)
  assert path == str(workdir / ("student_best.pt" if best else "student.pt"))
  assert {k: info[k] for k in arch} == arch
  net = tr.build_resnet(18, 10, width=4, stem="imagenet", in_channels=1)
  net.load_state_dict(torch.load(path, weights_only=True), strict=True)
  x = torch.randn(2, 1, 32, 32)
  with torch.no_grad():
    assert_close_rel(model.apply(variables, jnp.asarray(to_nhwc(x))), net.eval()(x))
  if not best:  # a place that cannot be written is bad input (an OSError), not torch's RuntimeError
    with pytest.raises(OSError):
      torch_bridge.export_student(str(workdir), output="/proc/student.pt")


def test_the_scripts_round_trip_a_teacher_through_the_command_line(tmp_path):
  """import_torch_teacher.py (with --config.x overrides) then export_torch_student.py on the
  folder it wrote gives back the original tensors."""
  import subprocess  # noqa: PLC0415

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  model = randomised_model(34, 10, in_channels=1)
  torch.save(model.state_dict(), tmp_path / "teacher.pt")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,  # noqa: E731
                                     capture_output=True, text=True, timeout=120)
  imported = run(os.path.join(repo, "scripts", "import_torch_teacher.py"), "--checkpoint",
                 "teacher.pt", "--config", os.path.join(repo, "configs", "dnd_fashion.py"),
                 "--config.teacher.width=4", "--config.teacher.checkpoint=run/model")
  assert imported.returncode == 0, imported.stderr
  assert "into run/model" in imported.stdout
  exported = run(os.path.join(repo, "scripts", "export_torch_student.py"), "--workdir", "run",
                 "--output", "back.pt")
  assert exported.returncode == 0, exported.stderr
  assert "strict=True" in exported.stdout
  back = torch.load(tmp_path / "back.pt", weights_only=True)
  for key, value in model.state_dict().items():
    assert torch.equal(back[key], value), key
