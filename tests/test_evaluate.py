"""scripts/evaluate.py on real Fashion-MNIST: our exported model and the same one as PyTorch."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from dnd_jax import checkpoints, steps, torch_bridge
from dnd_jax.data import load_dataset
from dnd_jax.evaluate import evaluate_model, load_any_model
from dnd_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the data block of tiny_config, so the normalisation matches the teacher's training run
DATA_FLAGS = ["--config.data.image_size=8", "--config.data.fraction=0.05",
              "--config.eval_batch_size=1000"]


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), "--config",
                         os.path.join(REPO, "configs", "teacher_fashion.py"), *DATA_FLAGS, *args],
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_reports_the_training_runs_accuracy_for_ours_and_torch(tiny_teacher, tmp_path):
  torch = pytest.importorskip("torch")  # the PyTorch path of the bridge
  path, summary = tiny_teacher
  result = evaluate_model(path, tiny_config("teacher"))
  assert result["images"] == 10_000
  assert result["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-4)
  per_class = result["per_class_accuracy"]
  assert len(per_class) == 10 and sum(per_class.values()) / 10 == pytest.approx(
      result["accuracy"], abs=0.02)  # Fashion-MNIST's test split is balanced
  assert sum(map(sum, result["confusion"])) == 10_000 and result["images_per_s"] > 0
  assert result["trained_on_other_inputs"] == []
  # another image size than the training run's: measured all the same, and said; in batches
  # sized for the device (the configs' eval_batch_size 0)
  other = evaluate_model(path, tiny_config("teacher", eval_batch_size=0,
                                           **{"data.image_size": 12}))
  assert other["trained_on_other_inputs"] == ["image shape 8x8x1 (this run: 12x12x1)"]
  assert other["images"] == 10_000 and sum(map(sum, other["confusion"])) == 10_000
  # computed in the config's model.dtype, as the training run's evaluation is (bfloat16 runs were
  # evaluated in float32)
  bf16 = tiny_config("teacher", **{"model.dtype": "bfloat16"})
  dataset = load_dataset(bf16.data)
  variables, _ = checkpoints.load_model(path, checkpoints.read_model_meta(path)["architecture"],
                                        None)
  trainers = jax.jit(steps.make_evaluate(build_model(bf16.model, 10, jnp.bfloat16), bf16.data,
                                         dataset.mean, dataset.std, 1000))
  correct, _ = trainers(variables, dataset.eval_images, dataset.eval_labels)
  assert evaluate_model(path, bf16)["accuracy"] == float(correct) / 10_000
  # a validation split of rows it trained on (it held none out) is measured, and said
  held = evaluate_model(path, tiny_config("teacher", **{"data.val_fraction": 0.1}), "validation")
  assert held["trained_on_other_inputs"] == [
      "held-out rows val_fraction 0.0, subset_seed 0 (this run: 0.1, 0): it trained on some of "
      "these validation images"]
  with pytest.raises(checkpoints.CheckpointError, match="give its folder"):
    load_any_model(os.path.join(path, "model.json"), (8, 8, 1))

  torch.save(torch_bridge.variables_to_torch_state_dict(variables), tmp_path / "teacher.pt")
  # into folders that do not exist yet (they failed after the evaluation had run)
  proc = _cli("--model", str(tmp_path / "teacher.pt"), "--confusion", str(tmp_path / "p" / "c.png"),
              "--output", str(tmp_path / "j" / "r.json"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "j" / "r.json") as f:
    from_torch = json.load(f)
  assert from_torch["accuracy"] == pytest.approx(result["accuracy"], abs=1e-4)
  assert from_torch["trained_on_other_inputs"] == []  # a PyTorch file records no inputs
  assert os.path.getsize(tmp_path / "p" / "c.png") > 1000
  assert "accuracy" in proc.stdout and "Ankle boot: " in proc.stdout


def test_a_missing_model_is_one_error_line(tmp_path):
  proc = _cli("--model", str(tmp_path / "nothing"))
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: No model at"), proc.stderr
  assert "Traceback" not in proc.stderr
