"""TensorBoard event files and profiler traces from the real loop, read back without TensorFlow."""

import glob
import os
import struct
import subprocess
import sys
import time

import jax
import pytest

from conftest import tiny_config
from dnd_jax import profiling, tb, workdir as run_folder
from dnd_jax.train import read_metrics, train_and_evaluate


def read_scalars(logdir: str, values: bool = False) -> dict[str, list]:
  """tag -> steps (or (step, value) pairs), over every event file in `logdir` (TFRecord framing,
  Event protos)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  steps = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(
            (event.step, value.simple_value) if values else event.step)
  return steps


@pytest.mark.slow
def test_running_means_cover_every_partition_of_an_epoch(tiny_teacher, tmp_path):
  """Progressive DnD changes partition mid-epoch (6 steps, 3 partitions): the running means
  logged at the epoch's last step are the epoch's means over all its partitions, as in
  metrics.jsonl, not those of the steps since the last switch. (The data are those of
  tests/test_multiprocess.py's run, whose programs the suite's compilation cache then shares.)"""
  pytest.importorskip("tensorboardX")
  config = tiny_config("pdnd", num_epochs=1, **{"teacher.checkpoint": tiny_teacher[0],
                                                "data.fraction": 0.004, "data.val_fraction": 0.1,
                                                "log.refresh_steps": 6})
  train_and_evaluate(config, str(tmp_path))
  (row,) = read_metrics(str(tmp_path))
  assert row["phase"] == 2
  scalars = read_scalars(run_folder.tensorboard_dir(str(tmp_path)), values=True)
  for name in ("loss", "accuracy"):
    assert scalars[f"train/{name}"] == [(6, pytest.approx(row[f"train_{name}"], rel=1e-5))]


@pytest.mark.slow
def test_events_continue_on_resume_and_a_trace_is_written(tmp_path, capsys, monkeypatch):
  pytest.importorskip("tensorboardX")
  overrides = {"data.fraction": 0.004, "log.refresh_steps": 3, "log.profile_steps": "2-4"}
  stop_trace = jax.profiler.stop_trace

  def slow_stop_trace():  # writing a trace takes seconds on a GPU; it is no training time
    time.sleep(4.0)
    stop_trace()

  monkeypatch.setattr(jax.profiler, "stop_trace", slow_stop_trace)
  train_and_evaluate(tiny_config("teacher", num_epochs=1, **overrides), str(tmp_path))
  monkeypatch.undo()
  assert read_metrics(str(tmp_path))[0]["epoch_time_s"] < 4.0  # 7 tiny steps
  train_and_evaluate(tiny_config("teacher", num_epochs=2, **overrides), str(tmp_path))
  scalars = read_scalars(run_folder.tensorboard_dir(str(tmp_path)))
  per_epoch = 240 // 32  # 7 steps
  assert scalars["epoch/test_accuracy"] == [per_epoch, 2 * per_epoch]  # no step twice
  assert scalars["train/loss"] == [3, 6, per_epoch + 3, per_epoch + 6]
  assert scalars["train/lr"] == scalars["train/images_per_s"] == scalars["train/loss"]
  assert "epoch/accuracy" in scalars and "epoch/lr" in scalars
  traces = glob.glob(run_folder.profile_dir(str(tmp_path)) + "/plugins/profile/*/*")
  assert any(t.endswith(".xplane.pb") for t in traces), traces
  assert any(t.endswith(".trace.json.gz") for t in traces), traces
  # and one line of the log says where the traced steps' time went
  profile_lines = [line for line in capsys.readouterr().err.splitlines()
                   if line.startswith("Profile: ")]
  assert len(profile_lines) == 1 and profile_lines[0].startswith("Profile: 2 steps, host dispatch")


def test_without_tensorboardx_the_writer_warns_once_and_writes_nothing(tmp_path, monkeypatch,
                                                                       capsys):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  writer = tb.Writer(str(tmp_path), tiny_config("teacher").log, 0)
  writer.steps(1, {"loss": 1.0}, 0.1, 10.0)
  writer.epoch(1, {"test_accuracy": 0.5})
  writer.close()
  assert not writer.enabled
  assert capsys.readouterr().err.count("tensorboardX is not installed") == 1
  assert not os.path.exists(run_folder.tensorboard_dir(str(tmp_path)))


def test_the_event_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch where it is installed (seconds of startup): the writer keeps it
  out of a training process, and still writes its events. In a fresh process, since this one
  may have imported torch for other tests."""
  pytest.importorskip("tensorboardX")
  pytest.importorskip("torch")
  code = f"""
import sys
from conftest import tiny_config
from dnd_jax import tb
writer = tb.Writer({str(tmp_path)!r}, tiny_config("teacher").log, 0)
writer.epoch(1, {{"test_accuracy": 0.5}})
writer.close()
print(writer.enabled, "torch" in sys.modules)
import torch  # still importable afterwards
"""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  done = subprocess.run([sys.executable, "-c", code], cwd=tests_dir, capture_output=True,
                        text=True, timeout=300, check=True)
  assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]
  assert read_scalars(run_folder.tensorboard_dir(str(tmp_path))) == {"epoch/test_accuracy": [1]}


def test_a_profile_range_past_the_run_is_a_clear_error(tmp_path):
  """7 steps: a range that ends later was never traced (100-105), or left the trace running
  through evaluation and checkpoints (5-30), without a word."""
  config = tiny_config("teacher", num_epochs=1, **{"data.fraction": 0.004,
                                                   "log.profile_steps": "5-30"})
  with pytest.raises(ValueError, match=r"profile_steps='5-30' ends after the run's last step: it "
                                       r"has 7 .*within 0-7"):
    train_and_evaluate(config, str(tmp_path))
  assert read_metrics(str(tmp_path)) == []


@pytest.mark.parametrize("spec", ["10", "5-5", "a-b", "-1-3"])
def test_a_bad_profile_step_range_is_a_clear_error(spec):
  with pytest.raises(ValueError, match="profile_steps"):
    profiling.parse_steps(spec)
  assert profiling.parse_steps("10-15") == (10, 15) and profiling.parse_steps("") is None
