"""The one-command GPU scripts, end to end on the CPU at toy size (GPU_TOY=1), so that they cannot
rot between GPU runs: the same entry points, parts, time limits, files and exit codes."""

import json
import os
import pickle
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from make_fake_cifar100 import write_fake_cifar100  # noqa: E402


def run_script(script, out, *args, **env):
  environ = {**os.environ, "OUT": str(out), "GPU_TOY": "1", "JAX_PLATFORMS": "cpu",
             "PYTHON": sys.executable, **env}
  return subprocess.run(["bash", os.path.join("scripts", script), *args], cwd=REPO, env=environ,
                        capture_output=True, text=True, timeout=2700)


def test_fake_cifar100_is_read_as_the_official_format(tmp_path):
  from pathlib import Path

  from dnd_jax.data import cifar100

  folder = write_fake_cifar100(str(tmp_path), train=12, test=5, seed=1)
  assert sorted(os.listdir(folder)) == ["meta", "test", "train"]
  with open(os.path.join(folder, "train"), "rb") as f:
    assert pickle.load(f, encoding="latin1")["data"].shape == (12, 3072)
  arrays = cifar100.read(Path(tmp_path), verify=False)
  assert arrays["train_images"].shape == (12, 32, 32, 3)
  assert arrays["test_labels"].shape == (5,) and 0 <= arrays["test_labels"].min()
  assert arrays["test_labels"].max() < 100 and len(arrays["class_names"]) == 100
  with pytest.raises(cifar100.DataError, match="md5"):  # the real checksums: verify must be off
    cifar100.read(Path(tmp_path), verify=True)


@pytest.mark.slow
def test_gpu_bench_runs_its_three_parts_into_one_table(tmp_path):
  done = run_script("gpu_bench.sh", tmp_path)
  assert done.returncode == 0, done.stdout + done.stderr
  assert sorted(os.listdir(tmp_path)) == ["benchmark.json", "benchmark.md", "env.txt",
                                          "gpu_bench.log"]
  result = json.loads((tmp_path / "benchmark.json").read_text())
  rows = [(r["framework"], r["case"], r["batch"]) for r in result["rows"]]
  assert rows == [("jax", "pdnd_p3", 8), ("torch eager", "pdnd_p3", 8),  # part a
                  ("torch eager", "kd", 8),  # part b (torch.compile on a GPU)
                  ("jax", "kd", 16), ("jax", "dnd_lean", 16)]  # part c
  assert not [r for r in result["rows"] if "error" in r]
  assert all(r["dtype"] == "bfloat16" for r in result["rows"])
  assert len(result["meta"]["commands"]) == 3 and result["meta"]["measured_matmul_tflops"] > 0
  text = (tmp_path / "benchmark.md").read_text()
  assert "pdnd_p3 batch 8 bfloat16" in text and "memory-lean DnD batch 16 bfloat16" in text
  env = (tmp_path / "env.txt").read_text()
  assert "jax 0." in env and "python 3." in env and "nvidia-smi" in env
  assert "   a 0 " in done.stdout and "   c 0 " in done.stdout


@pytest.mark.slow
def test_gpu_bench_stops_early_with_its_own_exit_code_when_part_a_writes_nothing(tmp_path):
  done = run_script("gpu_bench.sh", tmp_path, JAX_PLATFORMS="no_such_platform")
  assert done.returncode == 3, done.stdout + done.stderr
  assert "part a (limit 1200s)" in done.stdout  # toy limits: 5x the GPU ones
  assert "part a produced no row" in done.stdout
  assert not (tmp_path / "benchmark.json").exists() and (tmp_path / "env.txt").exists()
  assert "part b" not in (tmp_path / "gpu_bench.log").read_text()


def _runs(out):
  return {r["run"]: r for r in json.loads((out / "headline.json").read_text())["runs"]}


@pytest.mark.slow
def test_gpu_headline_part_a_times_the_main_command_on_random_cifar(tmp_path):
  out = tmp_path / "out"
  done = run_script("gpu_headline.sh", out, "a", GPU_WORK=str(tmp_path / "work"))
  assert done.returncode == 0, done.stdout + done.stderr
  runs = _runs(out)
  assert list(runs) == ["teacher_cifar", "pdnd_cifar", "kd_cifar"]
  for name, method in (("teacher_cifar", "teacher"), ("pdnd_cifar", "pdnd"), ("kd_cifar", "kd")):
    r = runs[name]
    assert r["exit"] == 0 and r["epochs_done"] == 1 and r["process_wall_s"] > 0
    assert r["summary"]["method"] == method and r["summary"]["dataset"] == "cifar100"
    assert "configs/" in r["command"]
  text = (out / "headline.md").read_text()
  assert "| a | pdnd_cifar | 0 |" in text and "compile_time_s" in text
  assert "\na,pdnd_cifar,0," in (out / "headline.csv").read_text()


@pytest.mark.slow
def test_gpu_headline_part_b_trains_the_teacher_once_then_students(tmp_path):
  out = tmp_path / "out"
  done = run_script("gpu_headline.sh", out, "b", GPU_WORK=str(tmp_path / "work"))
  assert done.returncode == 0, done.stdout + done.stderr
  runs = _runs(out)
  assert list(runs) == ["teacher_fashion", "kd_fashion_e1"]
  assert runs["kd_fashion_e1"]["summary"]["dataset"] == "fashion_mnist"
  assert runs["kd_fashion_e1"]["summary"]["teacher_accuracy"] is not None
  pytest.importorskip("matplotlib")
  assert (out / "fashion_budgets.png").stat().st_size > 0
