"""scripts/benchmark.py at toy size: its rows, its files, its peak-FLOP table and its targets."""

import importlib.util
import json
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench_script():
  spec = importlib.util.spec_from_file_location("benchmark_script",
                                                os.path.join(REPO, "scripts", "benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_one_method_runs_in_both_frameworks_and_writes_json_and_markdown(bench_script, tmp_path):
  pytest.importorskip("torch")
  result = bench_script.main([
      "--methods", "pdnd_p3", "--width", "4", "--image-size", "8", "--batch-sizes", "8",
      "--dtypes", "float32", "--dataset-size", "16", "--steps", "2", "--warmup", "1",
      "--torch", "eager", "--out", str(tmp_path)])
  rows = {r["framework"]: r for r in result["rows"]}
  assert sorted(rows) == ["jax", "torch eager"]
  for r in rows.values():
    assert "error" not in r, r
    assert r["case"] == "pdnd_p3" and r["batch"] == 8
    assert r["ms_per_step"] > 0 and r["loss_finite"]
    assert r["images_per_s"] == pytest.approx(8 / (r["ms_per_step"] / 1e3))
  jax_row = rows["jax"]
  assert jax_row["compile_s"] > 0 and jax_row["peak_mib"] >= jax_row["temp_mib"] > 0
  assert jax_row["gflop_per_step"] > 0
  # the PyTorch row is scored with XLA's FLOP count of the same step
  assert rows["torch eager"]["xla_gflop_per_step"] == jax_row["gflop_per_step"]
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  assert saved["meta"]["width"] == 4 and len(saved["rows"]) == 2
  text = (tmp_path / "benchmark.md").read_text()
  assert "| pdnd_p3 | 8 | float32 | jax |" in text
  assert "| pdnd_p3 | 8 | float32 | torch eager |" in text
  assert "pdnd_p3 batch 8 float32" in text and "x torch eager" in text


def test_peak_table_and_percent_of_peak(bench_script):
  assert bench_script.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert bench_script.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert bench_script.peak_tflops("NVIDIA H200", "float32") == 494.0
  assert bench_script.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert bench_script.peak_tflops("NVIDIA A10", "bfloat16") == 125.0
  assert bench_script.peak_tflops("cpu", "float32") is None
  rows = [{"framework": "jax", "case": "kd", "batch": 128, "dtype": "bfloat16",
           "steps_per_dispatch": 1, "gflop_per_step": 989.0, "ms_per_step": 2000.0}]
  bench_script.add_flop_shares(rows, "NVIDIA H100 80GB HBM3")
  assert rows[0]["pct_of_peak"] == pytest.approx(0.05)  # 989 GFLOP in 2 s of a 989 TFLOP/s peak
  bench_script.add_flop_shares(rows, "cpu")
  assert rows[0]["pct_of_peak"] is None and not math.isnan(rows[0]["xla_gflop_per_step"])


def test_unknown_method_is_a_clear_error(bench_script, capsys):
  with pytest.raises(SystemExit):
    bench_script.parse_args(["--methods", "dnd,fitnet"])
  assert "unknown --methods ['fitnet']" in capsys.readouterr().err
