"""The one-command GPU scripts, end to end on the CPU at toy size (GPU_TOY=1), so that they cannot
rot between GPU runs: the same entry points, parts, time limits, files and exit codes."""

import json
import os
import pickle
import subprocess
import sys
import tarfile

import pytest

from dnd_jax import runtime

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
def test_gpu_all_runs_the_bench_parts_and_the_headline_into_eight_files(tmp_path):
  """One device command for both measurements (scripts/gpu_all.sh): the bench's parts named (a,
  the memory rows of part c with XLA's memory dump, and the profiled part e here; left out for the
  suite's time are part b, PyTorch rows appended with --no-jax, which tests/test_benchmark.py
  covers, and part d, the same benchmark with --steps-per-dispatch 4, since a scanned step
  compiles slowly on a CPU), then the headline's part a; the files gathered into the at most 8
  that come back."""
  out = tmp_path / "out"
  done = run_script("gpu_all.sh", out, GPU_WORK=str(tmp_path / "work"),
                    GPU_ALL_BENCH_PARTS="a,c,e", GPU_ALL_HEADLINE_PARTS="a",
                    GPU_ALL_BENCH_S="1500", GPU_ALL_HEADLINE_S="1500")
  assert done.returncode == 0, done.stdout + done.stderr
  assert sorted(os.listdir(out)) == ["benchmark.json", "benchmark.md", "env.txt", "headline.csv",
                                     "headline.json", "headline.md", "logs.tgz", "traces.tgz"]
  with tarfile.open(out / "logs.tgz") as tar:
    names = tar.getnames()
    assert "./bench/xla_memory.tgz" in names and "./bench/xla_dump" not in names
    with tarfile.open(fileobj=tar.extractfile("./bench/xla_memory.tgz")) as dump:
      reports = sorted(os.path.dirname(n) for n in dump.getnames()
                       if n.endswith("memory-usage-report.txt"))
  assert "./bench/gpu_bench.log" in names and "./headline/gpu_headline.log" in names
  assert not [n for n in names if "trace" in n]  # the traces travel in their own file
  assert reports == ["xla_dump/jax_dnd_lean_remat_b16_bfloat16_x1"]
  with tarfile.open(out / "traces.tgz") as tar:
    traces = [n for n in tar.getnames() if n.endswith(".trace.json.gz")]
    hlo = [n for n in tar.getnames() if n.endswith("/step.hlo.txt")]
    assert tar.extractfile(hlo[0]).read().startswith(b"HloModule jit_step")
  assert len(traces) == 2 and any("conv-graphs" in n for n in traces)
  assert sorted(os.path.dirname(n) for n in hlo) == sorted(
      os.path.dirname(n).split("/plugins/")[0] for n in traces)  # the HLO beside each trace

  # the bench: every part's rows in one table, in priority order
  result = json.loads((out / "benchmark.json").read_text())
  rows = [(r["framework"], r["case"], r["batch"], r["steps_per_dispatch"]) for r in result["rows"]]
  assert rows == [("jax", "pdnd_p3", 8, 1), ("torch eager", "pdnd_p3", 8, 1),  # part a
                  ("jax", "dnd_lean_remat", 16, 1),  # part c
                  ("jax", "pdnd_p3", 8, 1), ("jax conv-graphs", "pdnd_p3", 8, 1)]  # part e
  assert not [r for r in result["rows"] if "error" in r]
  assert all(r["dtype"] == "bfloat16" for r in result["rows"])
  assert [len(r.get("xla_dump", [])) for r in result["rows"]] == [0, 0, 2, 0, 0]
  assert len(result["meta"]["commands"]) == 4 and result["meta"]["measured_matmul_tflops"] > 0
  assert result["meta"]["teacher_depth"] == 18  # the toy's
  profiled = result["rows"][-2:]
  assert all(r["profile"]["steps"] == 2 and r["profile"]["dispatches"] == 2 for r in profiled)
  # the trainer's options (XLA's own CUDA-graph list), then the convolutions added over them
  assert profiled[0]["xla_options"]["xla_gpu_enable_command_buffer"] == runtime.GPU_COMMAND_BUFFER
  assert profiled[1]["xla_options"]["xla_gpu_enable_command_buffer"] == (
      runtime.GPU_COMMAND_BUFFER_CONVOLUTION)
  text = (out / "benchmark.md").read_text()
  assert "pdnd_p3 batch 8 bfloat16" in text
  assert "Rows of `jax conv-graphs` were compiled with `" in text
  assert "xla_gpu_enable_command_buffer=FUSION," in text
  assert "| pdnd_p3 | 8 | bfloat16 | jax conv-graphs | 2 |" in text  # the profile table
  env = (out / "env.txt").read_text()
  assert "jax 0." in env and "python 3." in env and "nvidia-smi" in env
  for part in ("a", "c", "e", "e_conv_graphs"):
    assert f"   {part} 0 " in done.stdout

  # the headline's part a: the main command's runs, each with its summary
  runs = _runs(out)
  assert list(runs) == ["teacher_cifar", "pdnd_cifar", "kd_cifar"]
  for name, method in (("teacher_cifar", "teacher"), ("pdnd_cifar", "pdnd"), ("kd_cifar", "kd")):
    r = runs[name]
    # (toy sizes: one step an epoch; the OneCycle runs, teacher and KD, need two steps)
    assert r["exit"] == 0 and r["epochs_done"] == (1 if method == "pdnd" else 2)
    assert r["process_wall_s"] > 0
    assert r["summary"]["method"] == method and r["summary"]["dataset"] == "cifar100"
    assert "configs/" in r["command"]
  text = (out / "headline.md").read_text()
  assert "| a | pdnd_cifar | 0 |" in text and "compile_time_s" in text
  assert "\na,pdnd_cifar,0," in (out / "headline.csv").read_text()
  assert "gpu_bench exit 0, gpu_headline exit 0" in done.stdout


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


@pytest.mark.slow
def test_gpu_headline_grid_parts_report_every_finished_run_and_the_compile_share(tmp_path):
  """Parts c (data efficiency) and d (seeded budgets): scripts/reproduce.py grids in one process
  each, d reusing c's teacher; each part's report, CSV, figure and run summaries come back, and
  its line on the share of startup and compilation."""
  out = tmp_path / "out"
  done = run_script("gpu_headline.sh", out, "c,d", GPU_WORK=str(tmp_path / "work"))
  assert done.returncode == 0, done.stdout + done.stderr
  assert sorted(os.listdir(out)) == ["efficiency.md", "efficiency.tgz", "env.txt",
                                     "gpu_headline.log", "seeded_budgets.md",
                                     "seeded_budgets.tgz"]
  for part, name, csv_name, cells in (("c", "efficiency", "table3_fashion", 2),
                                      ("d", "seeded_budgets", "table2_fashion", 2)):
    line = next(l for l in done.stdout.splitlines() if f"part {part} ({name}):" in l)
    assert f"{cells} of {cells} runs finished; startup " in line and line.endswith("%)")
    with tarfile.open(out / f"{name}.tgz") as tar:
      names = tar.getnames()
      rows = tar.extractfile(f"./{csv_name}.csv").read().decode().splitlines()
    assert len(rows) == 1 + cells and all(",finished," in r for r in rows[1:])
    assert any(n.startswith("./figures/") and n.endswith(".png") for n in names)
    assert sum(n.endswith("/summary.json") for n in names) == cells + (part == "c")  # + teacher
    assert not [n for n in names if "/checkpoints" in n or n.endswith("/model")]
    assert "Against the paper's claims" in (out / f"{name}.md").read_text()
  log = (out / "gpu_headline.log").read_text()
  assert "--teacher-epochs 1" in log and f"--teacher {tmp_path}/work/efficiency/teacher/model" in log
