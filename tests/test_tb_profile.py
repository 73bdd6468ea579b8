"""TensorBoard event files and profiler traces from the real loop, read back without TensorFlow."""

import glob
import os
import struct
import sys

import pytest

from conftest import tiny_config
from dnd_jax import profiling, tb, workdir as run_folder
from dnd_jax.train import train_and_evaluate


def read_scalars(logdir: str) -> dict[str, list[int]]:
  """tag -> steps, over every event file in `logdir` (TFRecord framing, Event protos)."""
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
        steps.setdefault(value.tag, []).append(event.step)
  return steps


@pytest.mark.slow
def test_events_continue_on_resume_and_a_trace_is_written(tmp_path, capsys):
  pytest.importorskip("tensorboardX")
  overrides = {"data.fraction": 0.004, "log.refresh_steps": 3, "log.profile_steps": "2-4"}
  train_and_evaluate(tiny_config("teacher", num_epochs=1, **overrides), str(tmp_path))
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


@pytest.mark.parametrize("spec", ["10", "5-5", "a-b", "-1-3"])
def test_a_bad_profile_step_range_is_a_clear_error(spec):
  with pytest.raises(ValueError, match="profile_steps"):
    profiling.parse_steps(spec)
  assert profiling.parse_steps("10-15") == (10, 15) and profiling.parse_steps("") is None
