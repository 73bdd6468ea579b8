"""Only the work the user asked for on the critical path: checkpoints written while training goes
on, the teacher's accuracy read from its record, an evaluation batch sized for the device, and the
persistent compilation cache on by default."""

import json
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from dnd_jax import checkpoints, runtime, steps
from dnd_jax.data import Dataset, load_dataset
from dnd_jax.models import ResNet
from dnd_jax.train import train_and_evaluate


def test_a_save_returns_before_it_is_written_and_the_state_may_then_be_donated(
    tmp_path, monkeypatch):
  """The loop saves and then donates the state to the next step at once; the checkpoint must hold
  the values at the save, though it is committed later. The commit is held back here until the
  donating steps have overwritten the state."""
  gate = threading.Event()
  finalize = ocp.CheckpointManager._finalize

  def held_back(self, *args, **kwargs):
    gate.wait(timeout=20)
    return finalize(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "_finalize", held_back)
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2)
  state = {"w": jnp.arange(1 << 16, dtype=jnp.float32)}
  saved = np.asarray(state["w"]).copy()
  ckpts.save(1, state, {"epoch": 1})
  assert ckpts.state.is_saving_in_progress()
  assert not (tmp_path / "checkpoints" / "1").exists()  # not committed yet

  step = jax.jit(lambda s: {"w": s["w"] * 0.0 - 1.0}, donate_argnums=0)
  for _ in range(3):
    state = step(state)
  jax.block_until_ready(state)
  gate.set()
  ckpts.wait()
  assert (tmp_path / "checkpoints" / "1").is_dir()
  restored, meta = ckpts.restore(1, jax.eval_shape(lambda: {"w": jnp.zeros(1 << 16)}))
  np.testing.assert_array_equal(restored["w"], saved)
  assert meta == {"epoch": 1}
  ckpts.close()


def _dataset(images, split="test"):
  labels = np.arange(len(images), dtype=np.int32) % 10
  return Dataset(name="fashion_mnist", train_images=images, train_labels=labels,
                 eval_images=images, eval_labels=labels, eval_split=split, test_images=images,
                 test_labels=labels, num_classes=10, mean=(0.5,), std=(0.25,))


def test_a_recorded_accuracy_counts_only_for_the_same_evaluation():
  images = np.zeros((20, 8, 8, 1), np.uint8)
  record = checkpoints.evaluation_record(_dataset(images), "float32")
  meta = json.loads(json.dumps({"accuracy": 0.875, "evaluation": record}))  # as in model.json
  assert checkpoints.recorded_accuracy(meta, record) == 0.875
  changed = images.copy()
  changed[3, 4, 4, 0] = 1
  for other in (checkpoints.evaluation_record(_dataset(changed), "float32"),
                checkpoints.evaluation_record(_dataset(images, "validation"), "float32"),
                checkpoints.evaluation_record(_dataset(images), "bfloat16")):
    assert checkpoints.recorded_accuracy(meta, other) is None
  assert checkpoints.recorded_accuracy({"accuracy": 0.875}, record) is None  # e.g. imported
  assert checkpoints.recorded_accuracy({"accuracy": float("nan"), "evaluation": record},
                                       record) is None


def test_an_exported_model_records_what_its_accuracy_was_measured_on(tiny_teacher):
  path, summary = tiny_teacher
  meta = checkpoints.read_model_meta(path)
  dataset = load_dataset(tiny_config("teacher").data)
  record = checkpoints.evaluation_record(dataset, "float32")
  assert checkpoints.recorded_accuracy(meta, record) == summary["final_accuracy"]


@pytest.mark.slow
def test_a_teacher_recorded_on_other_data_is_measured_instead(tiny_teacher, tmp_path, capsys):
  path, teacher_summary = tiny_teacher
  other = tmp_path / "teacher"
  shutil.copytree(path, other)
  meta = json.loads((other / checkpoints.MODEL_META).read_text())
  meta["evaluation"]["sha256"] = "0" * 64  # as if measured on other images
  (other / checkpoints.MODEL_META).write_text(json.dumps(meta))
  config = tiny_config("kd", num_epochs=1, eval_batch_size=0,
                       **{"teacher.checkpoint": str(other)})
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  assert "(measured)" in capsys.readouterr().err
  # the same network on the same test set, evaluated in batches of another size
  assert summary["teacher_accuracy"] == pytest.approx(teacher_summary["final_accuracy"], abs=1e-4)


class _Device:
  def __init__(self, bytes_limit):
    self.bytes_limit = bytes_limit

  def memory_stats(self):
    return {"bytes_limit": self.bytes_limit} if self.bytes_limit else None


def test_the_evaluation_batch_is_sized_for_the_device_in_equal_batches():
  model = ResNet(depth=18, width=64)
  # 8 stage-1 activations of 32x32x64 float32 per image, in an eighth of 80 GB: 4,768 images
  assert steps.eval_batch_size(10_000, (32, 32, 3), model, _Device(80e9)) == 3334  # 3 batches
  assert steps.eval_batch_size(10_000, (32, 32, 3), model, _Device(160e9)) == 5000
  bf16 = ResNet(depth=18, width=64, dtype=jnp.bfloat16)
  assert steps.eval_batch_size(10_000, (32, 32, 3), bf16, _Device(80e9)) == 5000
  # no memory figure (a CPU): batches of at most 500
  assert steps.eval_batch_size(10_000, (32, 32, 3), model, _Device(None)) == 500
  assert steps.eval_batch_size(1_001, (32, 32, 3), model, _Device(None)) == 334
  assert steps.eval_batch_size(7, (32, 32, 3), model, _Device(None)) == 7
  # a configured batch larger than the split is cut to it (it padded 10,000 images to 100,000)
  assert steps.resolve_eval_batch_size(100_000, 10_000, (32, 32, 3), model) == 10_000
  assert steps.resolve_eval_batch_size(3_000, 10_000, (32, 32, 3), model) == 3_000


def test_the_compilation_cache_is_on_by_default_and_can_be_turned_off(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
    monkeypatch.setenv("DND_JAX_CACHE", str(tmp_path))
    assert runtime.enable_compilation_cache() == str(tmp_path / "jax_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
    # a folder the process chose is kept
    assert runtime.enable_compilation_cache() == str(tmp_path / "jax_cache")

    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert runtime.enable_compilation_cache() == str(tmp_path / "elsewhere")

    for off in ("0", "off", ""):
      jax.config.update("jax_compilation_cache_dir", None)
      monkeypatch.setenv(runtime.CACHE_ENV, off)
      assert runtime.enable_compilation_cache() is None
      assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
