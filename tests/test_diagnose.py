"""The DnD diagnostic: its sums equal a direct computation, its BatchNorm re-estimation equals
PyTorch's `update_bn`, a teacher diagnosed against itself has no error, and the command works on a
trained student."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dnd_jax import checkpoints, diagnose
from dnd_jax.data import augment
from dnd_jax.models import ResNet, init_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (8, 8, 1)
MEAN, STD = (0.3,), (0.2,)


def _models():
  student = ResNet(depth=18, num_classes=10, width=4)
  teacher = ResNet(depth=34, num_classes=10, width=4)
  return (student, init_variables(student, jax.random.key(0), IMAGE),
          teacher, init_variables(teacher, jax.random.key(1), IMAGE))


def test_probe_sums_equal_a_direct_computation():
  """37 images in batches of 16: the padding of the last batch is masked out of every sum."""
  student, s_vars, teacher, t_vars = _models()
  config = tiny_config("dnd")
  images = jax.random.randint(jax.random.key(2), (37, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(37, dtype=jnp.int32) % 10
  sums = jax.jit(diagnose.make_probe(student, teacher, config.data, MEAN, STD, 16))(
      s_vars, t_vars, images, labels)

  @jax.jit  # one program (run eagerly, each of its operations would compile on its own)
  def direct(s_vars, t_vars, images):
    x = augment.eval_preprocess(images, config.data, MEAN, STD)
    t = teacher.apply(t_vars, x, method="stages")
    s = student.apply(s_vars, x, method="stages")
    hybrid = [s[-1]] + [student.apply(s_vars, t[k - 1], k + 1, 5, method="stages")[-1]
                        for k in range(1, 5)]
    fed = [s[0]] + [student.apply(s_vars, t[k - 1], k + 1, k + 1, method="stages")[0]
                    for k in range(1, 5)]
    return t, s, hybrid, fed

  t, s, hybrid, fed = jax.device_get(direct(s_vars, t_vars, images))
  labels = np.asarray(labels)
  for k in range(5):
    assert int(sums["hybrid_correct"][k]) == int(np.sum(np.argmax(hybrid[k], -1) == labels)), k
    np.testing.assert_allclose(sums["err_teacher_input"][k], np.sum(np.square(fed[k] - t[k])),
                               rtol=1e-4)
    np.testing.assert_allclose(sums["err_end_to_end"][k], np.sum(np.square(s[k] - t[k])),
                               rtol=1e-4)
    np.testing.assert_allclose(sums["teacher_sq"][k], np.sum(np.square(t[k])), rtol=1e-4)
  assert int(sums["teacher_correct"]) == int(np.sum(np.argmax(t[-1], -1) == labels))
  # a random student fed end to end drifts further from the teacher than one fed teacher inputs
  assert float(sums["err_end_to_end"][3]) != float(sums["err_teacher_input"][3])
  # batch size 0 (the configs' default) is sized for the device: the same sums
  auto = jax.jit(diagnose.make_probe(student, teacher, config.data, MEAN, STD, 0))(
      s_vars, t_vars, images, labels)
  for key, value in sums.items():
    np.testing.assert_allclose(auto[key], value, rtol=1e-4, err_msg=key)


def test_batchnorm_reestimation_equals_pytorch_update_bn():
  torch = pytest.importorskip("torch")
  sys.path.insert(0, REPO)
  from dnd_jax import torch_reference as tr  # noqa: PLC0415
  from dnd_jax.torch_bridge import torch_state_dict_to_variables  # noqa: PLC0415

  torch.manual_seed(0)
  net = tr.build_resnet(18, 10, width=4, stem="cifar", in_channels=3)
  variables = torch_state_dict_to_variables(net.state_dict())
  batches = np.random.default_rng(0).normal(1.0, 2.0, size=(3, 6, 3, 8, 8)).astype(np.float32)
  torch.optim.swa_utils.update_bn([torch.from_numpy(b) for b in batches], net)
  expected = torch_state_dict_to_variables(net.state_dict())["batch_stats"]

  model = ResNet(depth=18, num_classes=10, width=4)
  inputs = jnp.asarray(batches.transpose(0, 1, 3, 4, 2))
  got = jax.jit(lambda v: diagnose.reestimate_batch_stats(model, v, 3, lambda i: inputs[i]))(
      variables)
  stats = dict(jax.tree_util.tree_leaves_with_path(got["batch_stats"]))
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    if path[-1].key != "num_batches_tracked":
      np.testing.assert_allclose(stats[path], value, rtol=1e-4, atol=1e-6, err_msg=str(path))
  # the parameters are untouched
  jax.tree.map(np.testing.assert_array_equal, got["params"], variables["params"])


@pytest.mark.slow
def test_a_teacher_diagnosed_against_itself_has_no_error(tiny_teacher):
  path, summary = tiny_teacher
  config = tiny_config("dnd", **{"teacher.checkpoint": path, "model.depth": 18})
  d = diagnose.diagnose(config, path, bn_batches=2)
  assert d["teacher_accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)
  trained = d["trained_statistics"]
  # (one argmax may flip where XLA fuses a split network differently: 1e-4 of 10,000 images)
  for acc in trained["hybrid_accuracy"].values():
    assert acc == pytest.approx(d["teacher_accuracy"], abs=2e-4)
  for errors in (trained["relative_error_end_to_end"], trained["relative_error_teacher_input"]):
    assert max(errors.values()) < 1e-5, errors
  # re-estimated statistics (two batches) are not the teacher's own, so they change its features
  assert d["re_estimated_statistics"]["relative_error_end_to_end"]["4"] > 1e-3


@pytest.mark.slow
def test_the_command_diagnoses_a_trained_dnd_student(tiny_teacher, tmp_path):
  from dnd_jax.train import train_and_evaluate  # noqa: PLC0415
  path, teacher_summary = tiny_teacher
  config = tiny_config("dnd", **{"teacher.checkpoint": path, "num_epochs": 1})
  summary = train_and_evaluate(config, str(tmp_path / "run"))

  flags = ["--config.model.width=4", "--config.teacher.width=4", "--config.data.image_size=8",
           "--config.data.fraction=0.05", "--config.batch_size=32", "--config.eval_batch_size=3000",
           f"--config.teacher.checkpoint={path}"]
  # the student named alone: its report goes beside its model folder, not into the current
  # folder's runs/<config name>/ (where it replaced that run's own report)
  out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "diagnose.py"), "--config",
                        os.path.join(REPO, "configs", "dnd_fashion.py"), *flags,
                        "--student", str(tmp_path / "run" / "model")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  assert not (tmp_path / "runs").exists()
  with open(tmp_path / "run" / "diagnosis.json") as f:
    d = json.load(f)
  # the student alone is the run's own evaluation (10,000 test images in padded batches of 3,000)
  # (up to two argmax flips where XLA compiles other batch sizes differently)
  assert d["trained_statistics"]["hybrid_accuracy"]["0"] == pytest.approx(summary["final_accuracy"],
                                                                           abs=2e-4)
  assert d["teacher_accuracy"] == pytest.approx(teacher_summary["final_accuracy"], abs=2e-4)
  errors = d["trained_statistics"]
  assert errors["relative_error_end_to_end"]["1"] == errors["relative_error_teacher_input"]["1"]
  assert all(0 < v < 10 for v in errors["relative_error_end_to_end"].values())
  assert d["bn_reestimation"]["batches"] == 3000 // 32
  assert (tmp_path / "run" / "diagnosis.md").read_text() in out.stdout
  assert "| k = 4: teacher 1-4, student 5 |" in out.stdout

  # a config that names another teacher than the run's: its hybrids would splice in a network
  # the student never saw
  variables, meta = checkpoints.load_model(path, checkpoints.read_model_meta(path)["architecture"],
                                           None)
  other = str(tmp_path / "other" / "model")
  checkpoints.save_model(other, jax.tree.map(lambda x: x * 2, variables),
                         checkpoints.read_model_meta(path)["architecture"], meta)
  with pytest.raises(checkpoints.CheckpointError, match="distilled from another teacher"):
    diagnose.diagnose(tiny_config("dnd", **{"teacher.checkpoint": other}),
                      str(tmp_path / "run" / "model"))

  missing = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "diagnose.py"),
                            "--config", os.path.join(REPO, "configs", "dnd_fashion.py"), *flags,
                            "--student", str(tmp_path / "nowhere")],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert missing.returncode == 2 and "error: No student model at" in missing.stderr
