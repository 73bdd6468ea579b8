"""Shared test settings: tiny models on CPU, strict shapes, fast compiles.

On 2 CPU cores XLA's compile time dominates tests of tiny models, so the tests share one
persistent compilation cache for the session (every program, however quick to compile: the same
small ones recur in many tests), which the `scripts/` subprocesses that tests start also use, and
XLA's backend runs at optimisation level 1 instead of 3 (through XLA_FLAGS, which those
subprocesses inherit): the programs are the same, LLVM generates their code with fewer passes.
Level 0 compiles faster still but runs convolutions several times slower, a net loss here; the
measurements are in docs/development.md.
"""

import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=1").strip()
# One cache per test session, shared by pytest-xdist's workers (the README's command runs two):
# their run id names it; without xdist, a fresh folder. A test file run as a script by a test
# (the multi-process workers) imports this module too and finds the session's folder in
# DND_JAX_TEST_CACHE: the folder is part of a program's cache key (XLA's options name a folder
# inside it), so a folder of its own would share nothing.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if os.environ.get("DND_JAX_TEST_CACHE"):
  _cache = os.environ["DND_JAX_TEST_CACHE"]
elif _run_id:
  _cache = os.path.join(tempfile.gettempdir(), f"dnd_jax_test_xla_cache_{_run_id}")
  os.makedirs(_cache, exist_ok=True)
else:
  _cache = tempfile.mkdtemp(prefix="dnd_jax_test_xla_cache_")
os.environ["DND_JAX_COMPILATION_CACHE"] = os.environ["DND_JAX_TEST_CACHE"] = _cache
# every program into the cache, in this process and in the subprocesses that inherit this
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["DND_JAX_COMPILATION_CACHE"])

import pytest  # noqa: E402

from dnd_jax.configs import base_config  # noqa: E402


def tiny_config(method: str, **overrides):
  """A config that runs the real loop on real Fashion-MNIST in seconds on 2 CPU cores."""
  c = base_config("fashion_mnist", method)
  if method == "teacher":
    # The tests' trained teachers are ResNet18s, not the paper's ResNet34: a ResNet34 step
    # compiles about 1.7x the convolutions, and what these runs check does not depend on the
    # teacher being deeper (tests/test_methods.py, test_diagnose.py and test_compile_once.py
    # build ResNet34 teachers where depth matters).
    c.model.depth = 18
  c.model.width = 4
  c.teacher.width = 4
  c.data.image_size = 8
  c.data.fraction = 0.05  # 3,000 training images
  c.batch_size = 32
  c.eval_batch_size = 1000
  c.num_epochs = 3
  c.log.progress_bar = False
  c.checkpoint.keep = 2
  c.teacher.config = ""
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


# The modules with the longest end-to-end tests, longest first (by the `--durations` list that
# every run prints; docs/development.md has the latest). With `--dist loadscope` a module runs whole on one pytest-xdist worker,
# and xdist's default order (the modules with the most tests first) drew these last;
# `--no-loadscope-reorder` (pyproject.toml) keeps this order instead.
LONGEST_FIRST = ("test_train.py", "test_gpu_scripts.py", "test_multiprocess.py", "test_pairs.py",
                 "test_reliability.py", "test_reproduce.py", "test_dispatch.py", "test_parallel.py",
                 "test_methods.py")


if os.environ.get("DND_JAX_COMPILE_LOG"):  # which test compiles what: tests/compile_log.py
  import compile_log

  compile_log.start(os.environ["DND_JAX_COMPILE_LOG"])

  def pytest_runtest_setup(item):
    compile_log.set_test(f"{item.nodeid} (setup)")

  def pytest_runtest_call(item):
    compile_log.set_test(item.nodeid)

  def pytest_runtest_teardown(item):
    compile_log.set_test(f"{item.nodeid} (teardown)")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep order


def wait_for_first_checkpoint(workdir, procs, timeout: float) -> None:
  """Until a training-state checkpoint in `workdir` is complete (Orbax renames its folder to the
  step number once written), one of `procs` has exited, or `timeout` seconds have passed."""
  from dnd_jax import workdir as run_folder  # noqa: PLC0415
  folder = run_folder.checkpoints_dir(str(workdir))
  deadline = time.time() + timeout
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
      return
    time.sleep(0.05)


def start_processes(script: str, args: list[str], processes: int) -> list:
  """`processes` runs of `python script *args` as one JAX job over a local coordinator (one CPU
  device each, gloo collectives), started through the environment that
  `dnd_jax.runtime.setup_runtime` reads, as a cluster starts `scripts/train.py`; one process is
  a plain run. Each is expected to print a JSON report as its last line (`finish_processes`)."""
  tests = os.path.dirname(os.path.abspath(__file__))
  base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [os.path.dirname(tests), tests, os.environ.get("PYTHONPATH", "")]))
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(processes):
    env = dict(base)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", DND_JAX_NUM_PROCESSES=str(processes),
                 DND_JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, script, *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def finish_processes(procs, timeout: float = 900) -> list[dict]:
  """Each process's JSON report, with its log (stderr) under "log"; the processes are killed if
  one fails or runs past `timeout`."""
  reports = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, err[-4000:]
      reports.append({**json.loads(out.strip().splitlines()[-1]), "log": err})
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return reports


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
  """A width-4 ResNet18 teacher (see tiny_config) trained once per session; returns its exported
  model path.

  Under pytest-xdist the workers share it: the first to get the lock trains it, the others find
  the finished run (train_and_evaluate returns its summary without training again).
  """
  from dnd_jax.train import train_and_evaluate
  if not _run_id:
    workdir = tmp_path_factory.mktemp("teacher")
    return str(workdir / "model"), train_and_evaluate(tiny_config("teacher"), str(workdir))
  workdir = os.path.join(tempfile.gettempdir(), f"dnd_jax_test_teacher_{_run_id}")
  with open(workdir + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    summary = train_and_evaluate(tiny_config("teacher"), workdir)
  return os.path.join(workdir, "model"), summary
