"""Every command in scripts/ answers bad input the same way (dnd_jax/cli.py): one `error:` line
that says what is wrong and how to fix it, exit code 2, no traceback; Ctrl-C: one line, exit 130."""

import os
import subprocess
import sys

import pytest

from dnd_jax import cli
from dnd_jax.checkpoints import CheckpointError
from dnd_jax.train import Interrupted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ends(fn, capsys) -> tuple[int, list[str]]:
  with pytest.raises(SystemExit) as ended:
    fn()
  return ended.value.code, [line for line in capsys.readouterr().err.splitlines() if line]


@pytest.mark.parametrize("error", [
    ValueError("config.batch_size=0 must be a positive whole number."),
    CheckpointError("The PyTorch weights do not fit:\n  missing key 'fc.weight'\nExpected ..."),
    FileNotFoundError(2, "No such file or directory", "data/x"),
    FloatingPointError("the loss is nan at step 3"),
])
def test_bad_input_is_one_error_line_and_exit_2(error, capsys, monkeypatch):
  monkeypatch.delenv("DND_JAX_TRACEBACK", raising=False)

  def main():
    raise error

  code, lines = _ends(cli.guarded(main), capsys)
  assert code == cli.BAD_INPUT == 2
  first, *details = str(error).split("\n")  # the bridge's list of keys stays a list
  assert lines == [f"error: {first}", *details, cli.TRACEBACK_HINT]


def test_the_traceback_is_there_when_asked_for(monkeypatch):
  monkeypatch.setenv("DND_JAX_TRACEBACK", "1")

  def main():
    raise ValueError("bad")

  with pytest.raises(ValueError, match="bad"):
    cli.guarded(main)()


def test_a_bug_is_not_taken_for_bad_input():
  def main():
    raise TypeError("a bug: its traceback is what a report needs")

  with pytest.raises(TypeError):
    cli.guarded(main)()


def test_ctrl_c_is_one_line_and_exit_130(capsys, tmp_path):
  def main():
    raise KeyboardInterrupt

  assert _ends(cli.guarded(main, "interrupted before any work."), capsys) == (
      130, ["interrupted before any work."])

  def training():
    raise Interrupted(str(tmp_path), 3)

  assert _ends(cli.guarded(training), capsys) == (130, [
      f"interrupted at epoch 3; rerun the same command to resume (run folder {tmp_path})"])


def test_a_mistyped_config_file_is_named_with_the_nearest_one(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  code, lines = _ends(lambda: cli.parse_flags(["x.py", "--config", "configs/pdnd_cifr.py"]),
                      capsys)
  assert code == 2 and lines[0] == ("error: config file 'configs/pdnd_cifr.py' not found. Did "
                                    "you mean 'configs/pdnd_cifar.py'?")


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expected", [
    ("evaluate.py", ["--config", "configs/pdnd_cifar.py", "--config.data.imagesize=3", "--model",
                     "x"], "Did you mean --config.data.image_size"),
    ("diagnose.py", ["--config", "configs/dnd_fashon.py"], "Did you mean 'configs/dnd_fashion.py'"),
    ("import_torch_teacher.py", ["--config", "configs/pdnd_cifar.py", "--checkpoint",
                                 "/nowhere/teacher.pt"], "'/nowhere/teacher.pt' not found"),
    ("export_torch_student.py", ["--workdir", "/nowhere", "extra"], "unexpected arguments"),
    ("reproduce.py", ["table2_fashion", "--scale", "cpu", "--epochs", "2,x"],
     "--epochs '2,x': 'x' is not an integer"),
    ("benchmark.py", ["--batch-sizes", "8,x"], "--batch-sizes takes a comma list"),
])
def test_every_script_answers_bad_input_in_one_line(script, args, expected):
  done = subprocess.run([sys.executable, os.path.join("scripts", script), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2, done.stderr
  assert len(errors) == 1 and expected in errors[0], done.stderr
  assert "Traceback" not in done.stderr


@pytest.mark.parametrize("config, workdir", [("configs/quickstart.py", "runs/quickstart"),
                                             ("configs/quickstart.py:teacher",
                                              "runs/quickstart_teacher")])
def test_a_configs_argument_names_its_own_default_workdir(config, workdir):
  """`--config configs/quickstart.py:teacher` is another config than the quickstart's student:
  trained by hand, it goes where the quickstart looks for its teacher, not into the student's
  folder (which then refused the student as another run)."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  values(["x", "--config", os.path.join(REPO, config)])
  assert cli.default_workdir(values["config"]) == workdir


def test_callbacks_on_a_closed_event_loop_print_nothing_and_everything_else_does(monkeypatch):
  """A failed Orbax restore closes its event loop while TensorStore completes other reads, whose
  callbacks then fail on the closed loop (printed as unraisable exceptions around the command's
  `error:` line); a command drops exactly those."""
  import asyncio  # noqa: PLC0415
  import types  # noqa: PLC0415

  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    closed = e.with_traceback(e.__traceback__.tb_next)  # asyncio's frames, as from a C callback
  try:
    raise RuntimeError("Event loop is closed")  # the same words, from somewhere else
  except RuntimeError as e:
    elsewhere = e
  printed = []
  monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
  for exc in (closed, elsewhere, ValueError("other")):
    cli._unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                              exc_traceback=exc.__traceback__))
  assert [u.exc_value for u in printed] == [elsewhere, printed[-1].exc_value]
  assert isinstance(printed[-1].exc_value, ValueError)
