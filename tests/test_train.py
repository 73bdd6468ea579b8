"""The real training loop at tiny size: every method learns, runs resume, bad input is caught."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import tiny_config
from dnd_jax import adapters, checkpoints, config_check, teacher
from dnd_jax.methods import get_method
from dnd_jax.models import build_model
from dnd_jax.train import read_metrics, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_teacher_learns(tiny_teacher):
  _, summary = tiny_teacher
  assert summary["final_accuracy"] > 0.4  # chance is 0.1
  assert summary["teacher_accuracy"] is None


@pytest.mark.parametrize("method", ["kd", "at", "jacobian", "dnd", "pdnd"])
def test_every_method_lowers_its_loss_and_beats_chance(tiny_teacher, tmp_path, method):
  path, teacher_summary = tiny_teacher
  # DnD's student with rematerialised blocks: the switch reaches the model through the trainer
  remat = {"model.remat": True} if method == "dnd" else {}
  config = tiny_config(method, **{"teacher.checkpoint": path}, **remat)
  summary = train_and_evaluate(config, str(tmp_path))
  history = read_metrics(str(tmp_path))
  assert [row["epoch"] for row in history] == [1, 2, 3]
  assert history[-1]["test_loss"] < history[0]["test_loss"]
  if method != "pdnd":  # Progressive DnD's loss changes meaning with its partition
    assert history[-1]["train_loss"] < history[0]["train_loss"]
  else:
    assert [row["phase"] for row in history] == [0, 1, 2]
    assert "train_mse_1" in history[0] and "train_mse_1-2" in history[1]
    assert "train_mse_1-4" in history[2]
  assert summary["final_accuracy"] > 0.3  # chance is 0.1
  assert summary["teacher_accuracy"] == pytest.approx(teacher_summary["final_accuracy"])
  assert summary["best_accuracy"] >= summary["final_accuracy"]
  assert os.path.isfile(tmp_path / "model" / checkpoints.MODEL_META)


def _cli(workdir, *overrides):
  args = [sys.executable, os.path.join(REPO, "scripts", "train.py"),
          "--config", os.path.join(REPO, "configs", "teacher_fashion.py"), "--workdir", str(workdir),
          "--config.model.depth=18", "--config.model.width=4", "--config.data.image_size=8",
          "--config.data.fraction=0.05",
          "--config.batch_size=32", "--config.num_epochs=4", "--config.log.progress_bar=False",
          "--config.eval_batch_size=1000", *overrides]
  return args, dict(os.environ)


def test_a_run_killed_with_sigkill_resumes_to_the_same_metrics(tmp_path):
  args, env = _cli(tmp_path / "whole")
  subprocess.run(args, env=env, check=True, capture_output=True)
  whole = read_metrics(str(tmp_path / "whole"))

  killed = tmp_path / "killed"
  args, env = _cli(killed)
  proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(read_metrics(str(killed))) >= 2:  # mid-training: two epochs done, two to go
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
  assert 2 <= len(read_metrics(str(killed))) < 4

  subprocess.run(args, env=env, check=True, capture_output=True)
  resumed = read_metrics(str(killed))
  assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
  for a, b in zip(whole, resumed):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "lr"):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["epoch"], key)
  s_whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
  s_resumed = json.loads((killed / "summary.json").read_text())
  assert s_whole["final_accuracy"] == s_resumed["final_accuracy"]
  assert s_whole["best_accuracy"] == s_resumed["best_accuracy"]


def test_unknown_config_key_is_a_clear_error(tmp_path):
  args, env = _cli(tmp_path, "--config.optim.lrr=0.1")
  result = subprocess.run(args, env=env, capture_output=True, text=True)
  assert result.returncode != 0
  assert "lrr" in result.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config("teacher", num_epochs=3, **{"checkpoint.keep": 3})
  train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 3000 // 32
  # as if killed after epoch 1: drop the later checkpoints and metrics
  for step in (2 * steps_per_epoch, 3 * steps_per_epoch):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  os.remove(tmp_path / "summary.json")
  bad = tiny_config("teacher", num_epochs=3, **{"optim.lr": 1e30, "checkpoint.keep": 3})
  with pytest.raises(FloatingPointError, match="last good checkpoint \\(epoch 1\\)"):
    train_and_evaluate(bad, str(tmp_path))
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() == steps_per_epoch
  assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1]
  # resuming with a sane learning rate works from the intact checkpoint
  summary = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(summary["final_accuracy"]) and summary["final_accuracy"] > 0.3


def test_missing_teacher_is_a_clear_error(tmp_path):
  config = tiny_config("dnd", **{"teacher.checkpoint": str(tmp_path / "nowhere" / "model")})
  with pytest.raises(checkpoints.CheckpointError, match="Teacher checkpoint .*nowhere.* not found"):
    train_and_evaluate(config, str(tmp_path / "run"))


def test_teacher_of_another_architecture_is_a_clear_error(tiny_teacher, tmp_path):
  path, _ = tiny_teacher
  config = tiny_config("kd", **{"teacher.checkpoint": path, "teacher.depth": 34})
  with pytest.raises(checkpoints.CheckpointError, match="depth: checkpoint 18 vs config 34"):
    train_and_evaluate(config, str(tmp_path))


def test_teacher_trained_on_other_inputs_is_a_clear_error_unless_allowed(tiny_teacher, tmp_path,
                                                                         capsys):
  """The teacher's path may hold a teacher made for other settings (an earlier run's automatic
  teacher at another image size, say): its accuracy on this run's images is about chance, and a
  run distilling from it would train to the end without a word."""
  path, _ = tiny_teacher  # trained on 8x8 Fashion-MNIST
  config = tiny_config("kd", **{"teacher.checkpoint": path, "data.image_size": 16})
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"trained on other inputs than this run's: image shape 8x8x1 "
                           r"\(this run: 16x16x1\)\. .*allow_other_inputs=True"):
    train_and_evaluate(config, str(tmp_path / "run"))
  assert read_metrics(str(tmp_path / "run")) == []  # stopped before training

  from dnd_jax.data import load_dataset  # noqa: PLC0415
  dataset = load_dataset(config.data)
  meta = checkpoints.read_model_meta(path)
  assert checkpoints.input_differences(meta, load_dataset(tiny_config("kd").data)) == []
  renormalised = json.loads(json.dumps(meta))
  renormalised["evaluation"].update(mean=[0.5], std=[0.5], image_shape=[16, 16, 1])
  assert checkpoints.input_differences(renormalised, dataset) == [
      "normalisation mean (0.5) (this run: (0.286))",
      "normalisation std (0.5) (this run: (0.353))"]
  assert checkpoints.input_differences({"architecture": meta["architecture"]}, dataset) == []

  # allowed: loaded, with a line that says so
  with config.unlocked():
    config.teacher.allow_other_inputs = True
  model, variables, _ = teacher.load(config, dataset, np.float32)
  assert model.depth == 18 and "params" in variables
  assert "trained on other inputs (image shape 8x8x1" in capsys.readouterr().err
  # the trained network a re-initialising method starts from, by the same rule
  with config.unlocked():
    config.teacher.allow_other_inputs = False
  start = tiny_config("reinit_end2end", **{"method.init_from": path, "teacher.checkpoint": path,
                                           "data.image_size": 16})
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"network at method.init_from .* image shape 8x8x1 \(this run: "
                           r"16x16x1\)\. Point --config.method.init_from"):
    train_and_evaluate(start, str(tmp_path / "reinit"))


def test_a_teacher_at_about_chance_is_worth_a_warning():
  assert "about chance (0.1000 for 10 classes)" in teacher.chance_warning(0.1001, 10)
  assert "about chance" in teacher.chance_warning(0.012, 100)
  assert teacher.chance_warning(0.16, 10) is None and teacher.chance_warning(0.2, 100) is None


def test_a_teacher_that_held_out_other_rows_is_worth_a_warning():
  """A run selecting on a validation split with a teacher trained on rows it validates on (one
  trained on all the data): the teacher's validation accuracy is no held-out figure."""
  from types import SimpleNamespace  # noqa: PLC0415
  config = tiny_config("kd", **{"data.val_fraction": 0.1})
  validating, testing = SimpleNamespace(eval_split="validation"), SimpleNamespace(eval_split="test")
  on_all = {"held_out": {"val_fraction": 0.0, "subset_seed": 0}}
  line = teacher.held_out_warning(config, on_all, validating)
  assert line.startswith("Warning: the teacher held out other training rows")
  assert "--config.data.val_fraction=0.1 and --config.data.subset_seed=0" in line
  same = {"held_out": teacher.held_out_record(config.data)}
  assert teacher.held_out_warning(config, same, validating) is None
  assert teacher.held_out_warning(config, on_all, testing) is None  # selects on nothing held out
  assert teacher.held_out_warning(config, {}, validating) is None  # imported: no record to judge


def test_stage_shapes_that_differ_get_stage_adapters(tiny_teacher):
  """A student wider than its teacher was refused; stage adapters connect the two now
  (tests/test_pairs.py trains such pairs). Only the diagnosis, which splices the exported student
  (without adapters) onto the teacher, still needs equal shapes."""
  path, _ = tiny_teacher
  config = tiny_config("dnd", **{"teacher.checkpoint": path, "model.width": 8})
  config_check.check(config)
  student = build_model(config.model, 10)
  teacher_net = build_model(tiny_config("teacher").model, 10)
  found = adapters.for_pair(student, teacher_net, get_method("dnd"), (8, 8, 1))
  assert found.describe() == ("in2 8x8x4 -> 8x8x8, in3 4x4x8 -> 4x4x16, in4 2x2x16 -> 2x2x32, "
                              "in5 1x1x32 -> 1x1x64")
  with pytest.raises(ValueError, match=r"Stage 1 output shapes differ: student \(8, 8, 8\) vs "
                                       r"teacher \(8, 8, 4\)"):
    teacher.check_same_stage_shapes(student, teacher_net, (8, 8, 1), path)


def test_unknown_method_and_oversized_batch_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown method 'fitnets'"):
    train_and_evaluate(tiny_config("teacher", **{"method.name": "fitnets"}), str(tmp_path))
  with pytest.raises(ValueError, match="larger than the training set"):
    train_and_evaluate(tiny_config("teacher", batch_size=4096), str(tmp_path))


def test_missing_teacher_is_trained_first_when_a_teacher_config_is_given(tmp_path, monkeypatch):
  teacher_cfg = tmp_path / "tiny_teacher.py"
  teacher_cfg.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom conftest import tiny_config\n\n"
      "def get_config():\n  return tiny_config('teacher', num_epochs=1)\n" % os.path.dirname(__file__))
  config = tiny_config("kd", num_epochs=1, **{"teacher.checkpoint": str(tmp_path / "t" / "model"),
                                             "teacher.config": str(teacher_cfg)})
  assert teacher.provision(config, train_and_evaluate) == config.teacher.checkpoint
  summary = train_and_evaluate(config, str(tmp_path / "student"))
  assert os.path.isfile(tmp_path / "t" / "model" / checkpoints.MODEL_META)
  assert summary["teacher_accuracy"] > 0.15  # a 1-epoch width-4 teacher; chance is 0.1



def test_validation_split_selects_and_reports_test_accuracy_of_both_models(tmp_path):
  config = tiny_config("teacher", num_epochs=2, **{"data.val_fraction": 0.2})
  summary = train_and_evaluate(config, str(tmp_path))
  history = read_metrics(str(tmp_path))
  assert summary["eval_split"] == "validation"
  assert "validation_accuracy" in history[0] and "test_accuracy" not in history[0]
  assert summary["best_accuracy"] == max(r["validation_accuracy"] for r in history)
  for key in ("final_test_accuracy", "best_test_accuracy"):
    assert 0.2 < summary[key] <= 1.0  # measured on the 10,000 official test images
  if summary["best_epoch"] == 2:
    assert summary["best_test_accuracy"] == summary["final_test_accuracy"]
  # what a student validating on its own split checks this network against, as a teacher
  held_out = checkpoints.read_model_meta(str(tmp_path / "model"))["held_out"]
  assert held_out == {"val_fraction": 0.2, "subset_seed": 0}


def test_rematerialised_blocks_are_no_config_change_for_a_resumed_run():
  """A run that ran out of memory resumes with `model.remat` on: the same computation and the same
  parameters (tests/test_models.py), so it is no change worth a warning; a learning rate is."""
  from dnd_jax import workdir

  stored = json.loads(tiny_config("dnd").to_json())  # as the workdir keeps it
  changes = workdir.config_changes(stored, tiny_config("dnd", **{
      "model.remat": True, "optim.lr": 0.5, "eval_batch_size": 100,  # nor where data is cached
      "data.cache_dir": "/elsewhere"}))
  assert len(changes) == 1 and changes[0].startswith("optim.lr ") and changes[0].endswith("0.5")


def test_resuming_with_a_changed_config_says_what_changed(tmp_path, capsys):
  train_and_evaluate(tiny_config("teacher", num_epochs=1), str(tmp_path))
  capsys.readouterr()
  summary = train_and_evaluate(tiny_config("teacher", num_epochs=2), str(tmp_path))
  err = capsys.readouterr().err
  assert "Resuming" in err and "num_epochs 1 -> 2" in err
  assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2]
  assert summary["epochs"] == 2
