"""Reading a profiler trace back (`dnd_jax.profiling.summarize_trace`), on a trace laid out as a
GPU run's is: a device process with stream threads and XLA's op timeline, CUDA launch calls on
the host. (A real CPU trace, which has no device rows, goes through it in tests/test_benchmark.py
and tests/test_tb_profile.py.)"""

import gzip
import json

import pytest

from dnd_jax import profiling


def _write_trace(path, events, processes, threads):
  meta = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
          for pid, name in processes.items()]
  meta += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
           for (pid, tid), name in threads.items()]
  with gzip.open(path, "wt") as f:
    json.dump({"displayTimeUnit": "ns", "traceEvents": meta + events}, f)


def _x(pid, tid, name, ts, dur):
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}


def test_a_gpu_like_trace_splits_busy_time_launches_and_ops(tmp_path):
  host, gpu = 1, 2
  events = []
  for step in range(2):  # two steps of 1000 us each, dispatched at 0 and 1000
    t = 1000.0 * step
    events.append(_x(host, 10, "PjitFunction(step)", t, 600.0))
    events.append(_x(host, 10, "PjitFunction(step)", t + 1, 590.0))  # nested: the same call
    events += [_x(host, 10, "cuLaunchKernel", t + 10 * i, 5.0) for i in range(3)]
    events.append(_x(host, 10, "cuGraphLaunch", t + 50, 5.0))
    # kernels on two streams: 100-300 and 200-400 overlap (300 us busy), then 600-700
    events += [_x(gpu, 20, "sm90_xmma_fprop_implicit_gemm", t + 100, 200.0),
               _x(gpu, 21, "loop_add_fusion", t + 200, 200.0),
               _x(gpu, 20, "input_reduce_fusion", t + 600, 100.0)]
    events += [_x(gpu, 30, "convolution.12", t + 100, 200.0),
               _x(gpu, 30, "fusion.3", t + 200, 200.0),
               _x(gpu, 30, "reduce-window.4", t + 600, 100.0)]
    events.append(_x(gpu, 31, "jit_step(7)", t + 100, 600.0))  # XLA Modules: not a kernel
  path = tmp_path / "x.trace.json.gz"
  _write_trace(path, events, {host: "/host:CPU", gpu: "/device:GPU:0"},
               {(host, 10): "python3", (gpu, 20): "Stream #13(Compute)",
                (gpu, 21): "Stream #14(Compute)", (gpu, 30): "XLA Ops",
                (gpu, 31): "XLA Modules"})
  s = profiling.summarize_trace(str(path), steps=2)
  assert s["dispatches"] == 2 and s["dispatch_ms_per_step"] == pytest.approx(0.6)
  assert s["device_kernels_per_step"] == 3
  assert s["device_busy_ms_per_step"] == pytest.approx(0.4)  # 100-400 and 600-700
  assert s["span_ms_per_step"] == pytest.approx(1.7 / 2)  # 0 .. 1700
  assert s["kernel_launches_per_step"] == 3 and s["graph_launches_per_step"] == 1
  # ops from XLA's op timeline, by class and by name (numeric suffixes merged)
  assert s["op_ms_per_step"] == {"convolution": 0.2, "fusion": 0.2, "reduction": 0.1}
  assert s["top_ops"][0][0] in ("convolution", "fusion")
  assert ["/device:GPU:0", "XLA Modules", 2] in s["threads"]
  line = profiling.describe(s)
  assert "device busy 0.40 of 0.85 ms/step" in line and "3 kernels/step" in line


def test_without_an_op_timeline_the_kernels_are_classified():
  assert profiling.op_category("sm90_xmma_dgrad_implicit_gemm_bf16") == "convolution"
  assert profiling.op_category("cutlass_80_tensorop_bf16_s16816gemm") == "matmul"
  assert profiling.op_category("MemcpyD2D") == "copy"
  assert profiling.op_category("loop_multiply_fusion") == "fusion"


def test_a_cpu_trace_has_host_figures_only(tmp_path):
  path = tmp_path / "x.trace.json.gz"
  _write_trace(path, [_x(1, 10, "PjitFunction(step)", 0.0, 2000.0)], {1: "/host:CPU"},
               {(1, 10): "python"})
  s = profiling.summarize_trace(str(path), steps=1)
  assert s["dispatch_ms_per_step"] == pytest.approx(2.0)
  assert s["device_busy_ms_per_step"] is None and s["op_ms_per_step"] == {}
  assert "no device rows" in profiling.describe(s)


def test_the_tracer_starts_at_a_dispatch_that_overlaps_the_range(tmp_path, monkeypatch):
  """With several steps per dispatch, a dispatch that starts before the range but runs into it is
  traced (it was skipped, and a range inside one dispatch traced nothing, without a word)."""
  started = []
  monkeypatch.setattr(profiling.jax.profiler, "start_trace", started.append)
  tracer = profiling.StepTracer(str(tmp_path), "1-3")
  tracer.before(0, 3)  # steps 0-2 hold steps 1 and 2
  assert tracer.active and tracer.first == 0 and len(started) == 1
  late = profiling.StepTracer(str(tmp_path), "4-8")
  late.before(0, 3)
  assert not late.active
  late.before(3, 3)  # steps 3-5 run into the range
  assert late.active and late.first == 3
