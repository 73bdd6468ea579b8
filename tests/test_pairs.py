"""Any teacher, any student: a cross-family pair whose stage shapes differ, at tiny size.

The pair is a small CIFAR ResNet (resnet8, narrow: 8x8, 4x4, 2x2 maps on 8-pixel images) teaching
a small ShuffleNetV2 (4x4, 2x2, 1x1 maps: half the teacher's size at every stage, and other
channels at stage 3), both of four stages: every boundary needs a stage adapter. The teacher is trained once per module, the DnD run once and shared
by the tests that read it (export, evaluation, resume).
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config, wait_for_first_checkpoint
from dnd_jax import adapters, checkpoints, config_check, models, workdir as run_folder
from dnd_jax.evaluate import evaluate_model
from dnd_jax.methods import get_method
from dnd_jax.train import read_metrics, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = {"arch": "resnet8", "arch_kwargs": {"widths": (8, 8, 16, 32)}}
STUDENT = {"arch": "shufflev2",
           "arch_kwargs": {"out_channels": (8, 16, 32, 64), "num_blocks": (1, 1, 1),
                           "stem_channels": 8}}
IMAGE = (8, 8, 1)


def pair_config(method: str, teacher_path: str = "", **overrides):
  """tiny_config's run of `method` with the pair: the student's architecture in config.model,
  the teacher's named in config.teacher (checked against its model.json)."""
  return tiny_config(method, **{
      "model.arch": STUDENT["arch"], "model.arch_kwargs": STUDENT["arch_kwargs"],
      "teacher.arch": TEACHER["arch"], "teacher.arch_kwargs": TEACHER["arch_kwargs"],
      "teacher.checkpoint": teacher_path, **overrides})


def _kwargs_flag(block: str, kwargs: dict) -> str:
  return f"--config.{block}.arch_kwargs={kwargs!r}"


@pytest.fixture(scope="module")
def pair_teacher(tmp_path_factory):
  """The small CIFAR ResNet trained as a teacher (its own run: arch in config.model)."""
  workdir = tmp_path_factory.mktemp("pair_teacher")
  summary = train_and_evaluate(tiny_config("teacher", **{
      "model.arch": TEACHER["arch"], "model.arch_kwargs": TEACHER["arch_kwargs"]}), str(workdir))
  return str(workdir / "model"), summary


@pytest.fixture(scope="module")
def dnd_run(pair_teacher, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pair_dnd")
  config = pair_config("dnd", pair_teacher[0])
  return str(workdir), config, train_and_evaluate(config, str(workdir))


def test_the_teacher_records_its_architecture(pair_teacher):
  path, summary = pair_teacher
  assert summary["final_accuracy"] > 0.4  # chance is 0.1
  arch = checkpoints.read_model_meta(path)["architecture"]
  assert arch == {"arch": "resnet8", "arch_kwargs": {"widths": [8, 8, 16, 32]},
                  "num_classes": 10, "in_channels": 1}


def test_every_boundary_of_the_pair_gets_both_adapters_and_equal_shapes_get_none():
  student = models.build_model(pair_config("dnd").model, 10)
  teacher = models.build_model(pair_config("dnd").teacher, 10)
  dnd = adapters.for_pair(student, teacher, get_method("dnd").for_stages(4), IMAGE)
  assert dnd.describe() == "in2 8x8x8 -> 4x4x8, in3 4x4x16 -> 2x2x16, in4 2x2x32 -> 1x1x64"
  assert adapters.for_pair(student, teacher, get_method("pdnd").for_stages(4), IMAGE) == dnd
  # the single-group methods compare logits (KD) or attention maps (AT): nothing to adapt
  for name in ("kd", "at", "jacobian"):
    assert not adapters.for_pair(student, teacher, get_method(name).for_stages(4), IMAGE)
  # the paper's pair, and any pair of equal shapes: no adapters, the student's layout unchanged
  resnet18, resnet34 = models.ResNet(18, 10, width=4), models.ResNet(34, 10, width=4)
  for name in ("dnd", "pdnd", "kd"):
    assert not adapters.for_pair(resnet18, resnet34, get_method(name), IMAGE)
  variables = models.init_variables(resnet18, jax.random.key(0), IMAGE)
  assert adapters.attach(variables, adapters.NONE.init(jax.random.key(1))) is variables


@pytest.mark.parametrize("method", ["dnd", "pdnd", "kd"])
def test_a_cross_family_pair_trains_and_beats_chance(pair_teacher, dnd_run, tmp_path, method):
  path, teacher_summary = pair_teacher
  if method == "dnd":
    workdir, config, summary = dnd_run
  else:
    workdir, config = str(tmp_path), pair_config(method, path)
    summary = train_and_evaluate(config, workdir)
  history = read_metrics(workdir)
  assert [row["epoch"] for row in history] == [1, 2, 3]
  # chance is 0.1; DnD across families compounds its stages' errors end to end (the paper's reason
  # for Progressive DnD): measured 0.29 (dnd), 0.48 (pdnd), 0.50 (kd), teacher 0.67
  assert summary["final_accuracy"] > (0.2 if method == "dnd" else 0.35)
  assert summary["teacher_accuracy"] == pytest.approx(teacher_summary["final_accuracy"])
  if method == "pdnd":  # four stages: {1}{2}{3}{4}, {1,2}{3}{4}, {1-3}{4}
    assert [row["phase"] for row in history] == [0, 1, 2]
    assert "train_mse_3" in history[0] and "train_mse_1-2" in history[1]
    assert "train_mse_1-3" in history[2]
  elif method == "dnd":
    assert {"train_mse_1", "train_mse_2", "train_mse_3", "train_mse_4"} <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_the_exported_student_runs_alone_and_the_checkpoint_keeps_the_adapters(dnd_run):
  workdir, config, summary = dnd_run
  model_dir = run_folder.model_dir(workdir)
  arch = checkpoints.read_model_meta(model_dir)["architecture"]
  assert arch["arch"] == "shufflev2" and arch["arch_kwargs"]["num_blocks"] == [1, 1, 1]
  _, variables, _ = checkpoints.load_model_as(model_dir, arch, IMAGE)
  assert sorted(variables["params"]) == ["stage1", "stage2", "stage3", "stage4"]
  # scripts/evaluate.py's evaluation of the folder: the student end to end, no teacher
  result = evaluate_model(model_dir, config)
  assert result["accuracy"] == pytest.approx(summary["final_accuracy"])
  # the training state holds the adapters (and their optimiser state), to resume with
  ckpts = checkpoints.TrainCheckpoints(workdir, keep=2)
  saved = ckpts.state.item_metadata(ckpts.latest_step())["state"]
  ckpts.close()
  assert sorted(saved["params"][adapters.ADAPTERS]) == ["in2", "in3", "in4"]
  assert adapters.ADAPTERS in saved["batch_stats"]


def test_a_killed_pair_run_resumes_to_the_same_metrics(dnd_run, pair_teacher, tmp_path):
  """The DnD run of `dnd_run`, through scripts/train.py, killed (SIGKILL) after its first
  checkpoint and run again: the same metrics, epoch for epoch, as the uninterrupted run."""
  whole_dir, config, _ = dnd_run
  whole = read_metrics(whole_dir)
  workdir = tmp_path / "killed"
  args = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
          os.path.join(REPO, "configs", "dnd_fashion.py"), "--workdir", str(workdir),
          f"--config.model.arch={STUDENT['arch']}", _kwargs_flag("model", STUDENT["arch_kwargs"]),
          f"--config.teacher.arch={TEACHER['arch']}",
          _kwargs_flag("teacher", TEACHER["arch_kwargs"]),
          f"--config.teacher.checkpoint={pair_teacher[0]}", "--config.teacher.config=",
          "--config.model.width=4", "--config.teacher.width=4", "--config.data.image_size=8",
          "--config.data.fraction=0.05", "--config.batch_size=32", "--config.num_epochs=3",
          "--config.eval_batch_size=1000", "--config.log.progress_bar=False",
          "--config.checkpoint.keep=2"]
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_first_checkpoint(workdir, [proc], timeout=300)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "summary.json").exists(), "the run finished before it could be killed"
  assert len(read_metrics(str(workdir))) < 3
  result = subprocess.run(args, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming" in result.stderr and "Stage adapters" in result.stderr
  # the command line's config is the in-process run's
  assert run_folder.config_changes(run_folder.read_config(str(workdir)), config) == []
  resumed = read_metrics(str(workdir))
  assert [r["epoch"] for r in resumed] == [1, 2, 3]
  for a, b in zip(whole, resumed):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "lr"):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["epoch"], key)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["final_accuracy"] == json.loads(
      open(run_folder.summary_path(whole_dir)).read())["final_accuracy"]


# --- bad pairs: one clear error before any work ---------------------------------------------------


def test_an_unknown_architecture_is_a_config_error():
  config = pair_config("dnd", **{"model.arch": "shufflenet_v2"})
  with pytest.raises(config_check.ConfigError, match=r"config.model.arch='shufflenet_v2' is no "
                                                     r"known network .*use one of resnet18, "):
    config_check.check(config)
  config = pair_config("kd", **{"teacher.arch": "wrn40"})
  with pytest.raises(config_check.ConfigError, match=r"config.teacher.arch='wrn40' .*did you mean "
                                                     r"wrn40_2 or wrn40_1"):
    config_check.check(config)
  bad_kwargs = pair_config("dnd", **{"model.arch_kwargs": {"width": 4}})
  with pytest.raises(config_check.ConfigError, match=r"config.model.arch_kwargs=\{'width': 4\}: "
                                                     r"'shufflev2' does not take them"):
    config_check.check(bad_kwargs)


def test_a_teacher_with_another_stage_count_is_a_config_error(pair_teacher, tmp_path):
  # named in config.teacher: a VGG (5 stages) for the ShuffleNet (4)
  config = pair_config("pdnd", **{"teacher.arch": "vgg8", "teacher.arch_kwargs": {}})
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config)
  assert ("The student, shufflev2 (num_blocks=[1, 1, 1], out_channels=[8, 16, 32, 64], "
          "stem_channels=8), has 4 stages and config.teacher.arch='vgg8', vgg8, has 5") in str(
              info.value)
  assert "Set --config.model.arch to a network of 5 stages or --config.teacher.arch to one of 4" \
      in str(info.value)
  # found in the teacher's model.json: the paper's ResNet18 student (5 stages) for it (4)
  config = tiny_config("dnd", **{"teacher.checkpoint": pair_teacher[0], "teacher.width": None})
  with pytest.raises(config_check.ConfigError,
                     match=r"The student, ResNet18 \(width 4, cifar stem\), has 5 stages and the "
                           r"teacher at .*pair_teacher.*model' \(its model.json\), resnet8 "
                           r"\(widths=\[8, 8, 16, 32\]\), has 4"):
    config_check.check(config)
  # a method without a teacher has no pair to check
  config_check.check(pair_config("teacher", **{"teacher.arch": "vgg8"}))


def test_a_bad_pair_on_the_command_line_is_one_error_line(tmp_path):
  args = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
          os.path.join(REPO, "configs", "dnd_fashion.py"), "--workdir", str(tmp_path / "run"),
          "--config.teacher.arch=vgg13", "--config.model.arch=shufflev2"]
  result = subprocess.run(args, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "has 4 stages and config.teacher.arch='vgg13'" in errors[0]
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_adapter_shapes_for_larger_smaller_and_odd_maps():
  """Strided convolutions shrink, transposed ones grow, to the exact target size (odd sizes
  included), after which the BatchNorm; ConvReg's kernels where the ratio is 2."""
  for source, target in [((8, 8, 3), (4, 4, 5)), ((7, 7, 3), (4, 4, 2)), ((5, 5, 3), (4, 4, 3)),
                         ((2, 2, 4), (4, 4, 6)), ((2, 2, 4), (7, 7, 3)), ((1, 1, 8), (3, 3, 2)),
                         ((4, 4, 3), (4, 4, 9))]:
    connector = adapters.Connector(target)
    x = np.ones((2, *source), np.float32)
    variables = connector.init(jax.random.key(0), x, False)
    y, _ = connector.apply(variables, x, True, mutable=["batch_stats"])
    assert y.shape == (2, *target), (source, target)
  kernel = lambda s, t: adapters.Connector(t).init(  # noqa: E731
      jax.random.key(0), np.ones((1, *s), np.float32), False)["params"]["conv"]["kernel"].shape
  assert kernel((8, 8, 3), (4, 4, 5)) == (3, 3, 3, 5)  # ConvReg: 3x3, stride 2
  assert kernel((2, 2, 3), (4, 4, 5)) == (4, 4, 3, 5)  # ConvReg: 4x4 transposed, stride 2
  assert kernel((4, 4, 3), (4, 4, 9)) == (1, 1, 3, 9)  # channels only: 1x1
  assert np.isfinite(np.asarray(y)).all()
