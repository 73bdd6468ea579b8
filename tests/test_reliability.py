"""What a user can rely on after a bad input, a kill, a Ctrl-C or a crash (issue 14), at tiny size:
one `error:` line and exit code 2 with nothing written, one run per workdir, resume past a damaged
checkpoint, summaries that count the whole run and are never rewritten, and a teacher that a
student run trains for itself on the student's settings, in its own folder."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config, wait_for_first_checkpoint
from dnd_jax import checkpoints, teacher, workdir as run_folder
from dnd_jax.train import check_resumable, finished_run, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a ResNet18 where a config trains a ResNet34 teacher, as tiny_config does (faster to compile)
TINY = ["--config.model.depth=18", "--config.model.width=4", "--config.data.image_size=8",
        "--config.data.fraction=0.05", "--config.batch_size=32", "--config.log.progress_bar=False", "--config.eval_batch_size=1000"]


def cli(workdir, *overrides, config="teacher_fashion.py", popen=False):
  args = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
          os.path.join(REPO, "configs", config) if "/" not in config else config,
          "--workdir", str(workdir), *TINY, *overrides]
  if popen:  # with Ctrl-C's default action, as from a terminal: a shell's background job (a CI
    # runner's, say) inherits SIGINT ignored, and Python keeps it ignored
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  return subprocess.run(args, capture_output=True, text=True, timeout=300)


# --- bad input: one error line, exit code 2, nothing written ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--config.no_such=1"], "no field 'no_such'"),
    (["--config.workdir=x"], "Use --workdir=<dir>"),
    (["--config.optim.lrr=0.1"], "Did you mean --config.optim.lr"),
    (["--config.lr=0.1"], "Did you mean --config.optim.lr"),
    (["--config.batch_size=0"], "config.batch_size=0 must be a positive whole number"),
    (["--config.batch_size=-8"], "config.batch_size=-8 must be a positive whole number"),
    (["--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--config.num_epochs=0"], "config.num_epochs=0 must be a positive whole number"),
    (["--config.optim.lr=nan"], "config.optim.lr=nan must be a finite number above 0"),
    (["--config=configs/no_such_config.py"], "config file 'configs/no_such_config.py' not found"),
    (["--config.data.dir=/nowhere/fashion"], "/nowhere/fashion"),
])
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(tmp_path, args, expected):
  result = cli(tmp_path / "run", *args)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  if "data.dir" not in args[0]:  # found before any work: nothing is written
    assert not (tmp_path / "run").exists()
  else:  # found while loading data: no record that a later run would take for a changed config
    assert run_folder.read_metrics(str(tmp_path / "run")) == []


@pytest.mark.slow
def test_unwritable_workdir_is_one_error_line(tmp_path):
  (tmp_path / "file").write_text("")
  result = cli(tmp_path / "file" / "run")  # unwritable even for root
  assert result.returncode == 2
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      f"error: --workdir '{tmp_path / 'file' / 'run'}' cannot be created: {tmp_path / 'file'} is a "
      "file. Choose another --workdir."]


def test_config_check_names_every_bad_value():
  from dnd_jax import config_check  # noqa: PLC0415
  config = tiny_config("teacher", batch_size=0, num_epochs=-1, **{"optim.lr": float("inf")})
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config)
  for text in ("batch_size=0", "num_epochs=-1", "optim.lr=inf"):
    assert text in str(info.value)
  config_check.check(tiny_config("teacher"))  # a good config passes
  # values that passed and then ended a run late: a NaN loss after an epoch with the advice to
  # lower the learning rate (tau 0, a zero std), a traceback (a seed past 64 bits), an image
  # reader's error blaming the data (a negative stored size)
  config = tiny_config("kd", seed=2**64, **{"method.tau": 0.0, "method.alpha": float("nan"),
                                             "data.std": (0.0,),
                                             "data.subset_seed": -1, "data.stored_size": -4})
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config)
  for text in ("method.tau=0.0 must be a finite number above 0",
               "method.alpha=nan must be a finite number", "seed=18446744073709551616",
               "data.subset_seed=-1", "data.std=(0.0,)", "data.stored_size=-4"):
    assert text in str(info.value)
  # augmentation: a traceback from inside the compiled step, or a crop silently turned off
  config = tiny_config("teacher", **{"data.crop_padding": -3, "data.rrc_ratio": (0.0, 1.0),
                                     "data.rrc_scale": (0.08,)})  # as `rrc_scale=0.08` parses
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config)
  for text in ("data.crop_padding=-3 must be", "data.rrc_scale=(0.08,) must be two numbers",
               "data.rrc_ratio=(0.0, 1.0) must be two numbers (lo, hi) with 0 < lo <= hi"):
    assert text in str(info.value)
  # found only once a teacher had been trained (the range), or the step traced (the choice)
  # ... or a KeyError traceback when the schedules were built (the schedule's name)
  config = tiny_config("dnd", **{"log.profile_steps": "10", "method.head_mse_on": "prob",
                                 "optim.schedule": "one_cycle"})
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config)
  for text in ("config.log.profile_steps='10' is not a step range",
               "config.method.head_mse_on='prob': use one of ['probs', 'logits']",
               "config.optim.schedule='one_cycle': use one of ['onecycle', 'cyclic', 'constant']"):
    assert text in str(info.value)
  if importlib.util.find_spec("tensorflow_datasets") is None:  # as installed without the extra
    with pytest.raises(config_check.ConfigError, match="needs tensorflow-datasets: pip install"):
      config_check.check(tiny_config("teacher", **{"data.source": "tfds"}))
  # Figure 2a's feature method distils from the network it re-trains; with the configs' default
  # teacher it trained an unrelated ResNet34 first and learnt that network's features, silently
  config = tiny_config("reinit_feature", **{"method.init_from": "/runs/naive/model"})
  with pytest.raises(config_check.ConfigError,
                     match="must be the network that method 'reinit_feature' re-trains.*"
                           "--config.teacher.checkpoint=/runs/naive/model"):
    config_check.check(config)
  config.teacher.checkpoint = "/runs/naive/model"
  config_check.check(config)


# --- one run per workdir ------------------------------------------------------------------------


def test_a_live_run_holds_the_workdir_and_a_stale_lock_is_taken_over(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with run_folder.lock(workdir):
    with pytest.raises(run_folder.WorkdirError, match=f"in use by another run \\(pid {os.getpid()}"
                                                      ".*started 20"):
      train_and_evaluate(tiny_config("teacher", num_epochs=1), workdir)
  assert not os.path.exists(run_folder.metrics_path(workdir))
  # a run killed while holding it: the kernel dropped its flock, its record stays behind
  with open(os.path.join(workdir, run_folder.LOCK_FILE), "w") as f:
    json.dump({"pid": 999999, "host": "h", "started": "2026-11-26T10:00:00"}, f)
  capsys.readouterr()
  with run_folder.lock(workdir):
    pass
  assert "Taking over the lock of an earlier run" in capsys.readouterr().err
  with run_folder.lock(workdir):  # released cleanly: nothing to say
    pass
  assert "Taking over" not in capsys.readouterr().err


# --- resume, summaries, finished runs -----------------------------------------------------------


def _damage(step_dir):
  """Overwrite the array data of a checkpoint with zeros (its metadata and structure stay)."""
  damaged = 0
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) == "d":  # TensorStore's data files
      for name in names:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.write(b"\0" * os.path.getsize(path))
        damaged += 1
  assert damaged


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_counts_the_whole_run(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  first = train_and_evaluate(tiny_config("teacher", num_epochs=2), workdir)
  ckpt_dir = run_folder.checkpoints_dir(workdir)
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  assert len(steps) == 2
  _damage(os.path.join(ckpt_dir, str(steps[-1])))
  os.remove(run_folder.summary_path(workdir))  # as if killed after its last checkpoint
  with open(run_folder.metrics_path(workdir), "a") as f:  # ... and power lost mid-append
    f.write('{"epoch": 3, "st')
  capsys.readouterr()
  t0 = time.perf_counter()
  resumed = train_and_evaluate(tiny_config("teacher", num_epochs=2), workdir)
  second_process_s = time.perf_counter() - t0
  err = capsys.readouterr().err
  assert f"Skipped the checkpoint at step {steps[-1]}: it does not restore" in err
  assert f"Resuming {workdir} from epoch 1 (step {steps[0]})" in err
  assert os.path.isdir(os.path.join(workdir, "checkpoints_skipped", str(steps[-1])))
  assert [r["epoch"] for r in run_folder.read_metrics(workdir)] == [1, 2]
  # the wall time counts the first process (up to its epoch-1 checkpoint) too
  assert resumed["wall_time_s"] > second_process_s + 0.2 * first["wall_time_s"]

  # a damaged row before the last is no torn append: named, never dropped
  lines = open(run_folder.metrics_path(workdir)).read().splitlines()
  damaged = tmp_path / "damaged"
  damaged.mkdir()
  (damaged / run_folder.METRICS_FILE).write_text(lines[0][:-3] + "\n" + lines[1] + "\n")
  with pytest.raises(run_folder.WorkdirError, match="metrics.jsonl line 1 is damaged"):
    run_folder.read_metrics(str(damaged))

  # every checkpoint damaged: one clear error that says how to start over, nothing moved
  for s in os.listdir(ckpt_dir):
    if s.isdigit():
      _damage(os.path.join(ckpt_dir, s))
  os.remove(run_folder.summary_path(workdir))
  with pytest.raises(checkpoints.CheckpointError, match="No checkpoint in .* restores .*step"):
    train_and_evaluate(tiny_config("teacher", num_epochs=2), workdir)


@pytest.mark.slow
def test_a_failed_run_then_a_finished_one_then_a_rerun(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match="nowhere"):
    train_and_evaluate(tiny_config("teacher", num_epochs=1, **{"data.dir": "/nowhere"}), workdir)
  capsys.readouterr()
  summary = train_and_evaluate(tiny_config("teacher", num_epochs=1), workdir)
  assert "config differs" not in capsys.readouterr().err  # the failed run computed nothing
  before = open(run_folder.summary_path(workdir)).read()
  mtime = os.stat(run_folder.summary_path(workdir)).st_mtime_ns
  again = train_and_evaluate(tiny_config("teacher", num_epochs=1), workdir)
  out = capsys.readouterr()
  assert again == summary and "not training it again" in out.err and "== teacher" in out.out
  assert open(run_folder.summary_path(workdir)).read() == before
  assert os.stat(run_folder.summary_path(workdir)).st_mtime_ns == mtime
  with pytest.raises(run_folder.WorkdirError, match="finished run with another config .*optim.lr"):
    train_and_evaluate(tiny_config("teacher", num_epochs=1, **{"optim.lr": 0.5}), workdir)
  assert open(run_folder.summary_path(workdir)).read() == before


@pytest.mark.slow
def test_ctrl_c_says_where_it_stopped_and_the_rerun_resumes(tmp_path):
  workdir = tmp_path / "run"
  proc = cli(workdir, "--config.num_epochs=4", popen=True)
  wait_for_first_checkpoint(workdir, [proc], timeout=240)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert not run_folder.is_finished(str(workdir)), "the run finished before it was interrupted"
  assert proc.returncode == 130, err
  assert "Traceback" not in err
  done = len(run_folder.read_metrics(str(workdir)))
  assert (f"interrupted at epoch {done + 1}; rerun the same command to resume" in err or
          f"interrupted at epoch {done}; rerun the same command to resume" in err), err
  result = cli(workdir, "--config.num_epochs=4")
  assert result.returncode == 0, result.stderr
  assert "Resuming" in result.stderr and "Taking over" not in result.stderr
  assert [r["epoch"] for r in run_folder.read_metrics(str(workdir))] == [1, 2, 3, 4]


def test_ctrl_c_during_a_checkpoint_save_commits_it_first(tmp_path, monkeypatch):
  """Ctrl-C while Orbax still wrote the epoch's checkpoint in the background left it uncommitted
  (the rerun went back one more epoch) and Orbax's threads printed tracebacks at exit."""
  from dnd_jax import train  # noqa: PLC0415
  save, close, closed = checkpoints.TrainCheckpoints.save, checkpoints.TrainCheckpoints.close, []

  def save_then_ctrl_c(self, step, state, meta):
    save(self, step, state, meta)  # returns with the write still going on in the background
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpoints.TrainCheckpoints, "save", save_then_ctrl_c)
  monkeypatch.setattr(checkpoints.TrainCheckpoints, "close",
                      lambda self: closed.append(close(self) is None))
  with pytest.raises(train.Interrupted):
    train_and_evaluate(tiny_config("teacher", num_epochs=2, **{"data.fraction": 0.004}),
                       str(tmp_path))
  assert closed == [True]  # waited for, then closed, before the interrupt went on
  assert checkpoints.TrainCheckpoints(str(tmp_path), keep=2).latest_step() == 240 // 32


def test_ctrl_c_inside_a_save_waits_until_the_save_is_set_up(tmp_path, monkeypatch):
  """Ctrl-C while Orbax set a save up (its folders and futures) left it half made: the close
  then waited five minutes on a barrier, with tracebacks. The interrupt is held until the call
  returns, and the save commits."""
  # Ctrl-C as a terminal delivers it, whatever an earlier test in this worker left installed
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2)
  orbax_save = type(ckpts.state).save

  def interrupted_save(self, *args, **kwargs):
    # to this (the main) thread, and handled before it returns: os.kill lets the kernel hand a
    # process's signal to any of its threads (JAX's, Orbax's), and Python 3.11 may then run the
    # handler only later, after the save
    signal.raise_signal(signal.SIGINT)
    return orbax_save(self, *args, **kwargs)

  monkeypatch.setattr(type(ckpts.state), "save", interrupted_save)
  try:
    with pytest.raises(KeyboardInterrupt):
      ckpts.save(1, {"w": np.ones((2,), np.float32)}, {"epoch": 1})
  finally:
    signal.signal(signal.SIGINT, previous)
  monkeypatch.undo()
  ckpts.close()
  assert checkpoints.TrainCheckpoints(str(tmp_path), keep=2).latest_step() == 1


# --- the teacher a student run trains for itself ------------------------------------------------


def _teacher_config_file(tmp_path):
  path = tmp_path / "teacher_cfg.py"
  path.write_text("from dnd_jax.configs import base_config\n\n"
                  "def get_config():\n  c = base_config('fashion_mnist', 'teacher')\n"
                  "  c.num_epochs = 1\n  return c\n")
  return str(path)


def test_a_missing_teacher_is_trained_on_the_students_data_in_its_own_workdir(tmp_path, capsys):
  student = tiny_config("pdnd", **{"teacher.checkpoint": str(tmp_path / "t" / "model"),
                                   "teacher.config": _teacher_config_file(tmp_path),
                                   "data.dir": str(tmp_path / "my_fashion"), "model.width": 8})
  student.teacher.width = None  # nothing set for the teacher: its width follows the student's
  calls = []
  path = teacher.provision(student, train_fn=lambda c, w: calls.append((c, w)) or {},
                           overrides=["data.dir", "data.fraction", "model.width"])
  assert path == student.teacher.checkpoint
  [(config, workdir)] = calls
  assert workdir == str(tmp_path / "t")
  assert config.method.name == "teacher" and config.num_epochs == 1
  assert config.data.to_dict() == student.data.to_dict()  # dir, fraction, image size, ...
  assert (config.model.width, config.model.depth, config.model.stem) == (8, 34, "cifar")
  err = capsys.readouterr().err
  for text in ("training the teacher first", "data.dir=", "data.fraction=0.05",
               "data.image_size=8", "model.width=8"):
    assert text in err
  # a share of the data that the student's config file chose (not the command line) is the
  # student's own: the teacher keeps its config's (all the data, as the quickstart's teacher)
  calls.clear()
  with student.unlocked():  # a validation split the config file chose: held out by both
    student.data.val_fraction, student.data.subset_seed = 0.1, 5
  teacher.provision(student, train_fn=lambda c, w: calls.append((c, w)) or {},
                    overrides=["data.dir"])
  [(config, _)] = calls
  assert config.data.fraction == 1.0 and config.data.dir == student.data.dir
  assert (config.data.val_fraction, config.data.subset_seed) == (0.1, 5)
  assert config.data.image_size == 8
  # a teacher of another number of stages is refused before it is trained (not after, minutes
  # later); one of other stage shapes is trained (stage adapters connect it: dnd_jax.adapters)
  four = tiny_config("dnd", **{"teacher.checkpoint": str(tmp_path / "w" / "model"),
                               "teacher.config": _teacher_config_file(tmp_path),
                               "teacher.arch": "resnet8",
                               "teacher.arch_kwargs": {"widths": (4, 4, 8, 16)}})
  with pytest.raises(ValueError, match=r"The student, ResNet18 \(width 4, cifar stem\), has 5 "
                                       r"stages and the teacher to be trained at .*w/model, "
                                       r"resnet8 \(widths=\[4, 4, 8, 16\]\), has 4"):
    teacher.provision(four, train_fn=lambda c, w: pytest.fail("trained a mismatched teacher"))
  wide = tiny_config("dnd", **{"teacher.checkpoint": str(tmp_path / "w" / "model"),
                               "teacher.config": _teacher_config_file(tmp_path),
                               "teacher.width": 8})
  teacher.provision(wide, train_fn=lambda c, w: calls.append((c, w)) or {})
  assert calls[-1][0].model.width == 8
  # bad input met by the teacher's own run (the student's share of the data is one batch of the
  # teacher's) is said to be the teacher's, with the config whose fields to change
  few = tiny_config("pdnd", **{"teacher.checkpoint": str(tmp_path / "few" / "model"),
                               "teacher.config": _teacher_config_file(tmp_path),
                               "data.fraction": 0.003})
  with pytest.raises(ValueError, match=r"Training the teacher in .*few stopped: OneCycle needs "
                                       r"at least 2 steps.* This run has 1 training step \(1 "
                                       r"epochs of 1: batch_size 128 over 180 .* data.fraction.*"
                                       r"those of .*teacher_cfg.py"):
    teacher.provision(few, train_and_evaluate, overrides=["data.fraction"])


def test_a_mistyped_teacher_path_never_touches_another_run(tmp_path):
  finished = tmp_path / "teacher_run"
  finished.mkdir()
  (finished / "model").mkdir()
  (finished / "model" / "model.json").write_text("{}")
  (finished / "summary.json").write_text('{"epochs": 1}')
  (finished / "metrics.jsonl").write_text('{"epoch": 1}\n')
  (finished / "config.json").write_text(tiny_config("kd").to_json())
  before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
  never = lambda c, w: pytest.fail(f"trained into {w}")  # noqa: E731
  typo = tiny_config("dnd", **{"teacher.checkpoint": str(finished / "modle"),
                               "teacher.config": _teacher_config_file(tmp_path)})
  with pytest.raises(checkpoints.CheckpointError, match="Did you mean .*teacher_run/model"):
    teacher.provision(typo, train_fn=never)
  # a <workdir>/model path whose workdir holds another run (a finished KD student, say)
  other = tiny_config("dnd", **{"teacher.checkpoint": str(tmp_path / "kd_run" / "model"),
                                "teacher.config": _teacher_config_file(tmp_path)})
  os.rename(finished / "model", tmp_path / "moved")
  os.rename(finished, tmp_path / "kd_run")
  with pytest.raises(run_folder.WorkdirError, match="holds another run"):
    teacher.provision(other, train_fn=never)
  after = {p: p.read_bytes() for p in (tmp_path / "kd_run").rglob("*") if p.is_file()}
  assert sorted(p.name for p in after) == sorted(p.name for p in before if p.parent == finished)
  # a run being resumed has trained with its teacher: a missing one (a relative path read from
  # another folder, say) is never replaced by a new one, which the run would go on distilling from
  gone = tiny_config("dnd", **{"teacher.checkpoint": str(tmp_path / "fresh" / "model"),
                               "teacher.config": _teacher_config_file(tmp_path)})
  with pytest.raises(checkpoints.CheckpointError, match="has trained with the teacher at .*fresh"):
    teacher.provision(gone, train_fn=never, resuming=True)


def test_a_run_is_never_undone_or_continued_with_other_steps_per_epoch(tiny_teacher, tmp_path):
  """A finished run asked for fewer epochs, and an unfinished one resumed with fewer epochs than
  it has done or with another batch size (other steps per epoch: its step, which the schedules
  count, and the partition switches would disagree), are refused, with nothing written."""
  finished = os.path.dirname(tiny_teacher[0])  # 3 epochs of tiny_config("teacher")
  assert finished_run(tiny_config("teacher"), finished)["epochs"] == 3
  assert finished_run(tiny_config("teacher", num_epochs=4), finished) is None  # extends it
  with pytest.raises(run_folder.WorkdirError, match="finished after 3 epochs; num_epochs=2"):
    finished_run(tiny_config("teacher", num_epochs=2), finished)

  workdir = str(tmp_path / "run")  # the same run, as if killed before its summary was written
  shutil.copytree(finished, workdir, ignore=shutil.ignore_patterns("lock"))
  os.remove(run_folder.summary_path(workdir))
  with open(run_folder.metrics_path(workdir), "a") as f:  # an epoch done after its last checkpoint
    f.write(json.dumps({"epoch": 4, "step": 372}) + "\n")
  files = {name: open(os.path.join(workdir, name)).read()
           for name in ("config.json", "metrics.jsonl")}
  with pytest.raises(run_folder.WorkdirError,
                     match=r"epoch 3, step 279 \(93 steps per epoch\), but this config gives 46 "
                           r"steps per epoch \(batch_size 64 over 3000"):
    train_and_evaluate(tiny_config("teacher", batch_size=64), workdir)
  with pytest.raises(run_folder.WorkdirError, match="has done 3 epochs; num_epochs=2"):
    train_and_evaluate(tiny_config("teacher", num_epochs=2), workdir)
  # the same number of rows, other ones: it would validate on what it has trained on
  with pytest.raises(run_folder.WorkdirError, match="other rows of the training set .*subset_seed"):
    train_and_evaluate(tiny_config("teacher", **{"data.subset_seed": 7}), workdir)
  assert {name: open(os.path.join(workdir, name)).read() for name in files} == files
  assert not os.path.exists(os.path.join(workdir, "checkpoints_skipped"))
  check_resumable(workdir, tiny_config("teacher"), 3, 279, 93, 3000)  # its own config goes on
  # a finished run whose checkpoints were deleted (to save disk) cannot be extended: it started
  # over and replaced its metrics, model and summary
  pruned = str(tmp_path / "pruned")
  shutil.copytree(finished, pruned, ignore=shutil.ignore_patterns("lock", "checkpoints"))
  records = {name: open(os.path.join(pruned, name)).read()
             for name in ("summary.json", "metrics.jsonl")}
  with pytest.raises(run_folder.WorkdirError, match="finished run without a checkpoint"):
    train_and_evaluate(tiny_config("teacher", num_epochs=4), pruned)
  assert {name: open(os.path.join(pruned, name)).read() for name in records} == records


def test_a_resumed_run_keeps_its_teacher(tiny_teacher, tmp_path):
  """A run is never given another teacher midway: resumed (or extended) with a teacher path that
  holds other weights, it went on distilling from them and reported the first one's accuracy."""
  path, _ = tiny_teacher
  model_meta = checkpoints.read_model_meta(path)
  variables, _ = checkpoints.load_model(path, model_meta["architecture"], None)
  other = str(tmp_path / "other" / "model")
  shifted = jax.tree.map(lambda x: x + 1 if np.issubdtype(x.dtype, np.floating) else x, variables)
  checkpoints.save_model(other, shifted, model_meta["architecture"],
                         {k: v for k, v in model_meta.items() if k != "architecture"})
  moved = str(tmp_path / "moved" / "model")  # the same teacher elsewhere is the same teacher
  shutil.copytree(path, moved)
  overrides = {"data.fraction": 0.004}
  workdir = str(tmp_path / "kd")
  train_and_evaluate(tiny_config("kd", num_epochs=1, **{"teacher.checkpoint": path, **overrides}),
                     workdir)
  rows = run_folder.read_metrics(workdir)
  with pytest.raises(run_folder.WorkdirError, match="distilled from another teacher"):
    train_and_evaluate(tiny_config("kd", num_epochs=2, **{"teacher.checkpoint": other,
                                                          **overrides}), workdir)
  assert run_folder.read_metrics(workdir) == rows
  extended = train_and_evaluate(
      tiny_config("kd", num_epochs=2, **{"teacher.checkpoint": moved, **overrides}), workdir)
  assert extended["epochs"] == 2


def test_a_resume_finds_the_best_model_its_checkpoint_names(tmp_path):
  """Killed after an epoch's best model was saved but before its state was (or with the newest
  state damaged), a run resumes from an older state and drops the newer bests, which it redoes:
  the best model of the restored state must still be there."""
  def variables(value):
    return {"params": {"w": np.full((2,), value, np.float32)}}

  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2, every_epochs=1)
  for epoch in (1, 2, 3):
    ckpts.save_best(epoch, variables(epoch), {"epoch": epoch, "best_epoch": epoch})
    if epoch < 3:  # killed before the state of epoch 3 was written
      ckpts.save(epoch, {"w": np.full((2,), epoch, np.float32)}, {"epoch": epoch})
  ckpts.wait()
  ckpts.close()
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2, every_epochs=1)

  def refuse(state, meta):
    raise run_folder.WorkdirError(f"not with epoch {meta['epoch']}")

  with pytest.raises(run_folder.WorkdirError, match="not with epoch 2"):  # a refused resume
    ckpts.restore_latest_intact({"w": np.zeros((2,), np.float32)}, refuse)
  assert sorted(ckpts.best.all_steps()) == [2, 3]  # ... deletes nothing
  step, _, meta = ckpts.restore_latest_intact({"w": np.zeros((2,), np.float32)})
  assert (step, meta["epoch"]) == (2, 2)
  best, best_meta = ckpts.restore_best(variables(0))
  ckpts.close()
  assert best_meta["epoch"] == 2 and float(best["params"]["w"][0]) == 2.0
  # killed after the first epoch's best model but before any state: the rerun starts over, and
  # its first best is saved again at the same step (it stopped with "step 1 already exists")
  early = checkpoints.TrainCheckpoints(str(tmp_path / "early"), keep=2, every_epochs=1)
  early.save_best(1, variables(1), {"epoch": 1, "best_epoch": 1})
  early.wait()
  early.close()
  early = checkpoints.TrainCheckpoints(str(tmp_path / "early"), keep=2, every_epochs=1)
  assert early.restore_latest_intact({"w": np.zeros((2,), np.float32)}) is None
  early.save_best(1, variables(5), {"epoch": 1, "best_epoch": 1})
  early.wait()
  best, _ = early.restore_best(variables(0))
  early.close()
  assert float(best["params"]["w"][0]) == 5.0
