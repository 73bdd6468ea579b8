"""dnd_jax.bench at toy size: its rows, its files (written after every row), its peak tables
and its targets."""

import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

from dnd_jax.bench import cli, harness, report

# (a ResNet18 teacher, as the GPU scripts' toy runs: it compiles faster than the default ResNet34)
TOY = ["--width", "4", "--image-size", "8", "--batch-sizes", "8", "--dtypes", "float32",
       "--dataset-size", "16", "--steps", "2", "--warmup", "1", "--teacher-depth", "18"]


def test_one_method_runs_in_both_frameworks_and_writes_json_and_markdown(tmp_path):
  pytest.importorskip("torch")
  result = cli.main(["--methods", "pdnd_p3", *TOY, "--torch", "eager",
                     "--profile-steps", "2", "--out", str(tmp_path)])
  rows = {r["framework"]: r for r in result["rows"]}
  assert sorted(rows) == ["jax", "torch eager"]
  for r in rows.values():
    assert "error" not in r, r
    assert r["case"] == "pdnd_p3" and r["batch"] == 8
    assert r["ms_per_step"] > 0 and r["synced_ms_per_step"] > 0 and r["loss_finite"]
    # throughput is the back-to-back loop's
    assert r["images_per_s"] == pytest.approx(8 / (r["ms_per_step"] / 1e3))
  jax_row = rows["jax"]
  assert len(jax_row["host_ms_each"]) == int(TOY[TOY.index("--steps") + 1])
  assert 0 <= jax_row["dispatches_before_a_wait"] <= len(jax_row["host_ms_each"])
  assert jax_row["compile_s"] > 0 and jax_row["peak_mib"] >= jax_row["temp_mib"] > 0
  assert jax_row["gflop_per_step"] > 0
  # the PyTorch row is scored with XLA's FLOP count of the same step
  assert rows["torch eager"]["xla_gflop_per_step"] == jax_row["gflop_per_step"]
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  assert saved["meta"]["width"] == 4 and len(saved["rows"]) == 2
  assert saved["meta"]["teacher_depth"] == 18
  text = (tmp_path / "benchmark.md").read_text()
  assert "Shapes: ResNet18 teacher -> ResNet18 student, width 4" in text
  assert "| pdnd_p3 | 8 | float32 | jax |" in text
  assert "| pdnd_p3 | 8 | float32 | torch eager |" in text
  assert "pdnd_p3 batch 8 float32" in text and "x torch eager" in text
  # --profile-steps: 2 more steps traced and summarised (a CPU trace has no device rows)
  profile = jax_row["profile"]
  assert profile["steps"] == 2 and profile["dispatches"] == 2 and profile["dispatch_ms_per_step"] > 0
  assert profile["device_busy_ms_per_step"] is None
  assert (tmp_path / profile["trace"]).is_file()
  # beside it, what the trace's op names compute: the timed step's optimised HLO
  assert (tmp_path / profile["hlo"]).read_text().startswith("HloModule jit_step")
  assert "| pdnd_p3 | 8 | float32 | jax | 2 |" in text  # the profile table
  # PyTorch rows alone, appended (the GPU script's part b): scored with the JAX row's FLOP count
  result = cli.main(["--methods", "pdnd_p3", *TOY, "--torch", "eager", "--no-jax",
                     "--append", "--out", str(tmp_path)])
  assert [r["framework"] for r in result["rows"]] == ["jax", "torch eager", "torch eager"]
  assert result["rows"][-1]["xla_gflop_per_step"] == jax_row["gflop_per_step"]
  assert len(result["meta"]["commands"]) == 2


def test_files_are_written_after_every_row_and_append_keeps_them(tmp_path, monkeypatch):
  """A run cut off after its first row leaves that row on disk; --append adds to it."""
  calls = []

  def fake_row(self, case, batch, dtype, per_dispatch=1):
    if calls:
      saved = json.loads((tmp_path / "benchmark.json").read_text())
      assert [r["case"] for r in saved["rows"]] == calls  # on disk before the next row starts
    calls.append(case)
    if case == "kd":
      raise MemoryError("out of memory")  # a failing row is recorded, the run goes on
    return {"framework": "jax", "case": case, "batch": batch, "dtype": dtype,
            "steps_per_dispatch": per_dispatch, "compile_s": 1.0, "ms_per_step": 2.0,
            "images_per_s": batch / 2e-3, "synced_ms_per_step": 2.5, "host_ms_per_step": 0.1,
            "peak_mib": 10.0, "temp_mib": 5.0, "gflop_per_step": 1.0, "mean_loss": 1.0,
            "loss_finite": True}

  monkeypatch.setattr(harness.JaxBench, "row", fake_row)
  args = [*TOY, "--torch", "none", "--out", str(tmp_path)]
  cli.main(["--methods", "dnd,kd", *args])
  result = cli.main(["--methods", "dnd_lean", *args, "--append"])
  assert [r["case"] for r in result["rows"]] == ["dnd", "kd", "dnd_lean"]
  assert "out of memory" in result["rows"][1]["error"]
  assert len(result["meta"]["commands"]) == 2
  text = (tmp_path / "benchmark.md").read_text()
  assert "| kd | 8 | float32 | jax | error: MemoryError: out of memory" in text
  with pytest.raises(ValueError, match="width"):
    cli.main(["--methods", "dnd", *args, "--append", "--width", "8"])
  with pytest.raises(ValueError, match=r"teacher_depth \(18 there, 34 here\)"):
    cli.main(["--methods", "dnd", *args, "--append", "--teacher-depth", "34"])
  (tmp_path / "benchmark.json").write_text("{")  # cut off mid-write by hand, say
  with pytest.raises(ValueError, match="not a benchmark table"):
    cli.main(["--methods", "dnd", *args, "--append"])


# a cross-family pair at test size (a narrow CIFAR ResNet32x4 into a narrow ShuffleNetV2, four
# stages each, every boundary of other shapes) as JSON flags
PAIR = ["--teacher-arch", "resnet32x4", "--teacher-arch-kwargs",
        '{"depth": 8, "widths": [8, 8, 16, 32]}', "--student-arch", "shufflev2",
        "--student-arch-kwargs",
        '{"out_channels": [8, 16, 32, 64], "num_blocks": [1, 1, 1], "stem_channels": 8}']


def test_any_pair_is_timed_with_its_stage_adapters_and_recorded_in_the_meta(tmp_path, capsys):
  """--student-arch / --teacher-arch: the step is built as training builds it (the method for
  the pair's four stages, `adapters.for_pair`'s adapters in the state); one real row of the
  cheapest such step (PDnD's last phase: one adapter), the pair in the meta and the Shapes line,
  an --append of another pair refused, and bad pairs refused before any work."""
  toy = [a for a in TOY if a not in ("--teacher-depth", "18")]
  args = cli.parse_args([*toy, *PAIR, "--methods", "dnd", "--torch", "none"])
  bench = harness.JaxBench(args)
  spec, state, _ = bench._inputs("dnd", 8, "float32", abstract=True)
  assert spec.method.partition(0) == ((1, 1), (2, 2), (3, 3), (4, 4))  # four stages
  assert spec.adapters.describe() == (
      "in2 8x8x8 -> 4x4x8, in3 4x4x16 -> 2x2x16, in4 2x2x32 -> 1x1x64")
  assert sorted(state.params["adapters"]) == ["in2", "in3", "in4"]
  result = cli.main([*toy, *PAIR, "--methods", "pdnd_p3", "--torch", "none",
                     "--out", str(tmp_path)])
  (row,) = result["rows"]
  assert "error" not in row and row["loss_finite"] and row["ms_per_step"] > 0
  meta = result["meta"]
  assert (meta["teacher_arch"], meta["student_arch"], meta["teacher_depth"]) == (
      "resnet32x4", "shufflev2", None)
  assert meta["student_arch_kwargs"]["num_blocks"] == [1, 1, 1]
  assert ("Shapes: resnet32x4 {\"depth\": 8, \"widths\": [8, 8, 16, 32]} teacher -> shufflev2 "
          in (tmp_path / "benchmark.md").read_text())
  other = [*toy, "--methods", "kd", "--torch", "none", "--append", "--out", str(tmp_path)]
  with pytest.raises(ValueError, match=r"student_arch \(shufflev2 there,  here\)"):
    cli.main([*other, "--teacher-depth", "18"])  # the ResNet pair: another table
  with pytest.raises(ValueError, match=r"teacher_arch_kwargs \("):
    cli.main([*other, *PAIR[:2], *PAIR[4:]])  # the published resnet32x4
  for flags, message in (
      (["--teacher-arch", "resnet32x5"], "--teacher-arch 'resnet32x5' is no known network"),
      (["--student-arch", "vgg8", "--teacher-arch", "resnet8"],
       "the student (vgg8) has 5 stages and the teacher (resnet8) 4"),
      (PAIR[:4], "the student (resnet18) has 5 stages and the teacher (resnet32x4) 4"),
      ([*PAIR, "--torch", "eager"], "the PyTorch reference is the paper's ResNet pair only"),
      (["--student-arch-kwargs", "{}"], "--student-arch-kwargs is for a network --student-arch"),
      (["--student-arch", "vgg8", "--student-arch-kwargs", "[1]"], "is not a JSON object"),
      (["--student-arch", "vgg8", "--student-arch-kwargs", '{"widht": 4}'],
       "'vgg8' does not take them"),
      (["--teacher-arch", "vgg8", "--teacher-depth", "18"], "--teacher-depth is the ResNet")):
    with pytest.raises(SystemExit):
      cli.parse_args(["--torch", "none", *flags])
    assert message in capsys.readouterr().err, flags


def test_peak_tables_percent_of_peak_and_verdicts():
  assert report.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert report.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert report.peak_tflops("NVIDIA H200", "float32") == 494.0
  assert report.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert report.peak_tflops("NVIDIA A10", "bfloat16") == 125.0
  assert report.peak_tflops("cpu", "float32") is None
  assert report.measured_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 790.0
  assert report.measured_peak_tflops("NVIDIA H100 PCIe", "bfloat16") is None
  rows = [{"framework": "jax", "case": "pdnd_p1", "batch": 128, "dtype": "bfloat16",
           "steps_per_dispatch": 1, "gflop_per_step": 989.0, "ms_per_step": 2000.0,
           "images_per_s": 64.0, "peak_mib": 1.0, "temp_mib": 1.0},
          {"framework": "torch eager", "case": "pdnd_p1", "batch": 128, "dtype": "bfloat16",
           "steps_per_dispatch": 1, "gflop_per_step": None, "ms_per_step": 1000.0,
           "images_per_s": 128.0}]
  report.add_flop_shares(rows, "NVIDIA H100 80GB HBM3")
  assert rows[0]["pct_of_peak"] == pytest.approx(0.05)  # 989 GFLOP in 2 s of a 989 TFLOP/s peak
  assert rows[0]["pct_of_measured_peak"] == pytest.approx(0.05 * 989 / 790)
  assert rows[1]["pct_of_peak"] == pytest.approx(0.1)
  report.add_flop_shares(rows, "NVIDIA H100 80GB HBM3", {"bfloat16": 494.5})  # this run's
  assert rows[0]["pct_of_measured_peak"] == pytest.approx(0.1)
  report.add_flop_shares(rows, "cpu")
  assert rows[0]["pct_of_peak"] is None and not math.isnan(rows[0]["xla_gflop_per_step"])
  lines = report.targets(rows)
  assert "64 images/s (missed by 100%: >= 25,000)" in lines[0]
  assert "0.50x torch eager (missed by 67%: >= 1.5x)" in lines[0]
  # part c's memory rows: each DnD variant's peak against vanilla KD's (and default DnD's); a
  # verdict only where the target is (memory-lean DnD)
  memory = {"batch": 512, "dtype": "bfloat16", "steps_per_dispatch": 1, "ms_per_step": 1.0,
            "images_per_s": 512_000.0}
  lines = report.targets([
      {"framework": "jax", "case": "kd", "peak_mib": 1000.0, "temp_mib": 800.0, **memory},
      {"framework": "jax", "case": "dnd", "peak_mib": 700.0, "temp_mib": 500.0, **memory},
      {"framework": "jax", "case": "dnd_lean", "peak_mib": 770.0, "temp_mib": 560.0, **memory},
      {"framework": "jax", "case": "dnd_lean_remat", "peak_mib": 500.0, "temp_mib": 300.0,
       **memory},
      {"framework": "jax", "case": "kd_remat", "peak_mib": 800.0, "temp_mib": 600.0, **memory}])
  assert lines == [
      "- DnD batch 512 bfloat16: peak 700.0 MiB = 0.70x vanilla KD's (1000.0 MiB); temporaries "
      "0.62x KD's",
      "- DnD (memory-lean) batch 512 bfloat16: peak 770.0 MiB = 0.77x vanilla KD's (1000.0 MiB; "
      "missed by 28%: <= 0.6x), 1.10x default DnD's; temporaries 0.70x KD's",
      "- DnD (memory-lean, remat) batch 512 bfloat16: peak 500.0 MiB = 0.50x vanilla KD's "
      "(1000.0 MiB; met: <= 0.6x), 0.71x default DnD's; temporaries 0.38x KD's",
      "- KD (remat) batch 512 bfloat16: peak 800.0 MiB = 0.80x vanilla KD's (1000.0 MiB); "
      "temporaries 0.75x KD's"]


def test_unknown_method_is_a_clear_error(capsys):
  with pytest.raises(SystemExit):
    cli.parse_args(["--methods", "dnd,fitnet"])
  assert "unknown --methods ['fitnet']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--jax-label", "graphs"])
  assert "--jax-label must start with 'jax'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--xla-option", "xla_gpu_enable_command_buffer"])
  assert "--xla-option takes NAME=VALUE" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--batch-sizes", "128,x"])
  assert "--batch-sizes takes a comma list of whole numbers" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--teacher-depth", "50"])
  assert "--teacher-depth must be one of [18, 34] (got 50)" in capsys.readouterr().err


def test_a_labelled_variant_gets_its_own_verdicts():
  """Rows of a `--jax-label` run (other compile options) are JAX rows: scored with the FLOP count and
  judged against the same PyTorch rows, under their own name."""
  timing = {"batch": 128, "dtype": "bfloat16", "steps_per_dispatch": 1, "peak_mib": 1.0,
            "temp_mib": 1.0}
  rows = [{"framework": "jax", "case": "pdnd_p1", "gflop_per_step": 600.0, "ms_per_step": 5.0,
           "images_per_s": 25_600.0, **timing},
          {"framework": "jax graphs", "case": "pdnd_p1", "gflop_per_step": 600.0,
           "ms_per_step": 4.0, "images_per_s": 32_000.0, **timing},
          {"framework": "torch.compile cudagraphs", "case": "pdnd_p1", "gflop_per_step": None,
           "ms_per_step": 4.0, "images_per_s": 32_000.0, **timing}]
  report.add_flop_shares(rows, "NVIDIA H200")
  assert rows[1]["pct_of_peak"] > rows[0]["pct_of_peak"] > 0
  lines = report.targets(rows)
  assert any(line.startswith("- pdnd_p1 batch 128 bfloat16: 25,600") and
             "0.80x torch.compile cudagraphs (missed by 20%" in line for line in lines)
  assert any(line.startswith("- pdnd_p1 (jax graphs) batch 128 bfloat16: 32,000 images/s (met")
             and "1.00x torch.compile cudagraphs (met" in line for line in lines)


def test_flop_count_comes_from_the_lowered_step_and_includes_its_convolutions():
  """On a GPU the compiled step's convolutions are cuDNN calls that XLA's cost analysis skips
  (an H200 table said 3.6 GFLOP for a ~600 GFLOP step); the lowered step's count has them. Its
  convolutions dominate, so doubling the width about quadruples the count (elementwise work
  only doubles it)."""
  import argparse

  def gflop(width):
    bench = harness.JaxBench(argparse.Namespace(width=width, image_size=8, num_classes=10,
                                                dataset_size=16,
                                                teacher_depth=harness.TEACHER_DEPTH))
    return bench.step_gflop("kd", 8, "float32")

  assert 3.5 < gflop(8) / gflop(4) < 4.0


def test_recount_flops_rewrites_an_old_tables_counts_and_shares(tmp_path):
  """A table whose counts came from a GPU's compiled program is fixed in place, PyTorch-only rows
  (no JAX row of their case in the table) included."""
  meta = {"date": "d", "commands": ["c"], "backend": "gpu", "device_kind": "NVIDIA H200",
          "device_count": 1, "host": "h", "width": 4, "image_size": 8, "num_classes": 10,
          "dataset_size": 16, "steps": 2, "warmup": 1, "cpu_affinity": 1, "jax": "0",
          "jaxlib": "0", "flax": "0", "torch": "0", "python": "3"}
  timing = {"batch": 8, "dtype": "bfloat16", "steps_per_dispatch": 1, "ms_per_step": 1.0,
            "images_per_s": 8000.0, "synced_ms_per_step": 1.0, "host_ms_per_step": 1.0}
  rows = [{"framework": "jax", "case": "kd", "gflop_per_step": 1e-6, "peak_mib": 1.0,
           "temp_mib": 1.0, "compile_s": 1.0, **timing},
          {"framework": "torch.compile cudagraphs", "case": "pdnd_p3", "compile_s": 20.0,
           "peak_mib": 1.0, "temp_mib": None, **timing}]
  (tmp_path / "benchmark.json").write_text(json.dumps({"meta": meta, "rows": rows}))
  result = cli.main(["--recount-flops", "--out", str(tmp_path)])
  kd, pdnd = result["rows"]
  assert kd["gflop_per_step"] > 1e-3 and pdnd["xla_gflop_per_step"] > 1e-3
  assert pdnd["pct_of_peak"] > 0 and pdnd["pct_of_measured_peak"] > 0  # H200: both peaks known
  assert sorted(result["meta"]["gflop_per_step"]) == ["kd/8/bfloat16", "pdnd_p3/8/bfloat16"]
  text = (tmp_path / "benchmark.md").read_text()
  assert "recounted" in text and "n/a | n/a |\n" not in text


def test_pdnd_partition_1_and_dnd_lower_to_the_same_network_computation():
  """The H200 table timed pdnd_p1 at 3.90 ms and dnd at 5.46 ms per step. Both train every
  student stage on its teacher input; their lowered programs have the same convolutions,
  reductions, gathers and matrix products, and differ only in the scalar arithmetic of their
  learning-rate schedules (cyclic against one-cycle), so the gap is not in the program."""
  import argparse
  import collections
  import re

  import jax

  from dnd_jax import steps

  bench = harness.JaxBench(argparse.Namespace(width=4, image_size=8, num_classes=10,
                                              dataset_size=16,
                                              teacher_depth=harness.TEACHER_DEPTH))

  def ops(case):
    step_fn, state, sums, data = bench._step(case, 8, "bfloat16", abstract=True)
    text = jax.jit(steps.accumulate_metrics(step_fn)).lower(state, sums, *data).as_text()
    return collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", text))

  dnd, pdnd = ops("dnd"), ops("pdnd_p1")
  assert dnd["convolution"] > 50
  for op in ("convolution", "reduce", "dot_general", "gather", "scatter", "dynamic_slice",
             "batch_norm_training", "rsqrt", "while", "case"):
    assert dnd[op] == pdnd[op], op
  differ = {op for op in dnd.keys() | pdnd.keys() if dnd[op] != pdnd[op]}
  assert differ <= {"add", "subtract", "multiply", "divide", "constant", "floor", "power",
                    "cosine", "abs", "maximum", "minimum", "compare", "select", "convert"}, differ


def test_xla_dump_compiles_past_the_persistent_cache(tmp_path):
  """XLA dumps only what it compiles, and the dump options are no part of the cache key: a step
  already in the persistent cache would leave `--xla-dump` empty-handed without the bypass."""
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache even this one
  try:
    x = jnp.full((16, 16), float(len(str(tmp_path))))  # a program of its own, cached here
    lowered = jax.jit(lambda a: jnp.tanh(a) @ a.T - 3.25).lower(x)
    lowered.compile()

    def reports(folder):
      return [n for n in os.listdir(folder) if n.endswith("memory-usage-report.txt")] \
          if os.path.isdir(folder) else []

    lowered.compile(compiler_options={"xla_dump_to": str(tmp_path / "cached")})
    assert not reports(tmp_path / "cached")  # read from the cache: nothing compiled, no dump
    with harness._without_persistent_cache():
      lowered.compile(compiler_options={"xla_dump_to": str(tmp_path / "bypass")})
    assert reports(tmp_path / "bypass")
    assert jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def test_timing_tells_a_waiting_dispatch_from_a_bounded_queue_and_a_free_run():
  """`dispatches_before_a_wait`: the host's view of why host ms/step can equal ms/step."""
  loop_s = 4e-3  # 4 ms per step, back to back, 6 steps
  every_call_waits = harness.timing_fields(128, [4e-3], loop_s, [4e-3] * 6)
  queue_of_3 = harness.timing_fields(128, [4e-3], loop_s, [1e-4] * 3 + [4e-3] * 3)
  runs_ahead = harness.timing_fields(128, [4e-3], loop_s, [1e-4] * 6)
  assert every_call_waits["dispatches_before_a_wait"] == 0
  assert queue_of_3["dispatches_before_a_wait"] == 3
  assert runs_ahead["dispatches_before_a_wait"] == 6
  assert queue_of_3["host_ms_each"] == [0.1] * 3 + [4.0] * 3
  assert every_call_waits["host_ms_per_step"] == pytest.approx(4.0)
  # several steps per dispatch: per step, like the other fields
  scanned = harness.timing_fields(128, [8e-3], 8e-3, [2e-4, 8e-3], per_dispatch=2)
  assert scanned["host_ms_each"] == [0.1, 4.0] and scanned["dispatches_before_a_wait"] == 1
