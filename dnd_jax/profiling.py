"""A `jax.profiler` trace of chosen training steps, written into the workdir, and read back.

`config.log.profile_steps = "10-15"` traces global steps 10 to 14 (the end is exclusive; "" traces
nothing). Pick steps after the first epoch's compile, where the run is in its steady state. The
trace lands in `<workdir>/profile/plugins/profile/<time>/` as `*.xplane.pb` (TensorBoard's
profile plugin: `tensorboard --logdir <workdir>/profile`) and `*.trace.json.gz` (open it in
https://ui.perfetto.dev). The trace is stopped after the device finished the last traced step, and
one line says where the traced steps' time went (`summarize_trace`: the device's busy time against
the step's span, kernels and launches per step), so the first question a trace answers (is the
device busy, or waiting for the host?) needs no viewer.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import logging
import os
import re
import time

import jax

from dnd_jax import workdir as run_folder

log = logging.getLogger(__name__)


def parse_steps(spec: str) -> tuple[int, int] | None:
  """"a-b" -> (a, b) with 0 <= a < b; "" -> None."""
  if not spec:
    return None
  try:
    start, stop = (int(part) for part in spec.split("-"))
  except ValueError:
    start = stop = -1
  if not 0 <= start < stop:
    raise ValueError(f"config.log.profile_steps={spec!r} is not a step range; write it as "
                     "\"START-END\" with 0 <= START < END (global steps, END exclusive), e.g. "
                     "\"10-15\", or \"\" for no trace.")
  return start, stop


class StepTracer:
  """Starts the trace before the step `start` is dispatched and stops it once step `stop - 1` is
  done. With several steps per dispatch, the trace covers the dispatches that overlap the range."""

  def __init__(self, workdir: str, spec: str):
    self.range = parse_steps(spec)
    self.dir = run_folder.profile_dir(workdir)
    self.active = False
    self.first = None  # the first traced step
    # seconds spent writing and reading the trace back: the loop keeps them out of training time
    self.overhead_s = 0.0

  def before(self, step: int, n: int = 1) -> None:
    """Called before the dispatch of steps step .. step + n - 1."""
    if self.range and not self.active and step < self.range[1] and step + n > self.range[0]:
      jax.profiler.start_trace(self.dir)
      self.active = True
      self.first = step

  def after(self, next_step: int, state) -> None:
    if self.active and next_step >= self.range[1]:
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      jax.profiler.stop_trace()
      self.active = False
      log.info(f"Profiler trace of steps {self.first}-{next_step} written to {self.dir}.")
      trace = find_trace(self.dir)
      if trace is not None:
        log.info("Profile: " + describe(summarize_trace(trace, next_step - self.first)))
      self.range = None
      self.overhead_s += time.perf_counter() - t0

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


# --- reading a trace back -----------------------------------------------------------------------

# Threads of a device's process that hold summaries, not the kernels themselves (the kernels are on
# the stream threads, "Stream #N(...)"): XLA's module and HLO-op timelines, and step markers.
_DEVICE_SUMMARY_THREADS = ("XLA Modules", "XLA Ops", "Steps", "XLA TraceMe", "Framework",
                           "Source code")
# CUDA driver/runtime calls that start work on the GPU, as the profiler records them on the host.
_LAUNCH = ("launchkernel", "launchcooperativekernel")
_GRAPH_LAUNCH = ("graphlaunch",)


def _interval_union(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop <= end:
      continue
    total += stop - max(start, end)
    end = stop
  return total


def _outermost(events: list[dict]) -> list[dict]:
  """The events not inside another of `events` on the same thread (a jitted call is recorded
  as a `PjitFunction` event with another one nested inside it)."""
  kept, ends = [], {}
  for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
    where = (e["pid"], e.get("tid"))
    if e["ts"] + e["dur"] <= ends.get(where, float("-inf")):
      continue
    kept.append(e)
    ends[where] = e["ts"] + e["dur"]
  return kept


def op_category(name: str) -> str:
  """A coarse class of an XLA op or kernel name, for a per-step breakdown."""
  n = name.lower()
  if "conv" in n or "fprop" in n or "dgrad" in n or "wgrad" in n:
    return "convolution"
  if any(k in n for k in ("gemm", "cublas", "dot", "matmul")):
    return "matmul"
  if "memcpy" in n or "memset" in n or n.startswith("copy"):
    return "copy"
  if "reduce" in n:
    return "reduction"
  if "fusion" in n:
    return "fusion"
  return "other"


def summarize_trace(path: str, steps: int) -> dict:
  """Where `steps` traced steps spent their time, from a profiler's `*.trace.json.gz`.

  Answers the question a step time alone cannot: is the device busy, or waiting for the host?
  `device_busy_ms_per_step` is the union of the kernels' intervals on the device's streams,
  `span_ms_per_step` the time from the first dispatch to the last kernel's end; when busy is far
  below span, the device idles between kernels (the host launches them too slowly, or waits).
  `kernel_launches_per_step` and `graph_launches_per_step` count the host's CUDA launch calls (a
  CUDA graph launches many kernels in one call). The op breakdown uses XLA's per-op timeline
  where the trace has one, else the kernels. A trace without device rows (a CPU run) gives only
  the host's figures. `threads` lists every (process, thread, events) seen, so a trace laid out
  differently than expected still shows what it holds.
  """
  with gzip.open(path, "rt") as f:
    events = json.load(f)["traceEvents"]
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  inventory = collections.Counter((procs.get(e["pid"], str(e["pid"])),
                                   threads.get((e["pid"], e.get("tid")), str(e.get("tid"))))
                                  for e in spans)

  def on_device(e):
    return re.match(r"/device:(GPU|TPU)", procs.get(e["pid"], "")) is not None

  def thread(e):
    return threads.get((e["pid"], e.get("tid")), "")

  kernels = [e for e in spans if on_device(e) and not thread(e).startswith(_DEVICE_SUMMARY_THREADS)]
  xla_ops = [e for e in spans if on_device(e) and thread(e) == "XLA Ops"]
  host = [e for e in spans if not on_device(e)]
  dispatches = _outermost([e for e in host if e["name"].startswith("PjitFunction")])
  host_names = [e["name"].lower() for e in host]
  launches = sum(1 for name in host_names if any(k in name for k in _LAUNCH))
  graph_launches = sum(1 for name in host_names if any(k in name for k in _GRAPH_LAUNCH))
  n = max(steps, 1)
  ms = 1e-3  # trace times are in microseconds

  summary = {
      "steps": steps,
      "dispatches": len(dispatches),
      "dispatch_ms_per_step": sum(e["dur"] for e in dispatches) * ms / n if dispatches else None,
      "device_kernels_per_step": len(kernels) / n if kernels else None,
      "device_busy_ms_per_step": _interval_union([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
                                 * ms / n if kernels else None,
      "span_ms_per_step": None,
      "kernel_launches_per_step": launches / n if kernels else None,
      "graph_launches_per_step": graph_launches / n if kernels else None,
      "op_ms_per_step": {},
      "top_ops": [],
      "threads": [[p, t, c] for (p, t), c in sorted(inventory.items())],
  }
  if kernels and dispatches:
    start = min(e["ts"] for e in dispatches)
    end = max(e["ts"] + e["dur"] for e in kernels)
    summary["span_ms_per_step"] = (end - start) * ms / n
  ops = xla_ops or kernels
  if ops:
    by_category, by_name = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    for e in ops:
      family = re.sub(r"\.\d+$", "", e["name"])
      by_category[op_category(family)] += e["dur"] * ms / n
      by_name[family] += e["dur"] * ms / n
      counts[family] += 1
    summary["op_ms_per_step"] = {k: round(v, 4) for k, v in by_category.most_common()}
    summary["top_ops"] = [[name, round(t, 4), counts[name] / n]
                          for name, t in by_name.most_common(8)]
  return summary


def find_trace(trace_dir: str) -> str | None:
  """The newest `*.trace.json.gz` under a `jax.profiler` output folder."""
  found = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
  return max(found, key=os.path.getmtime) if found else None


def describe(summary: dict) -> str:
  """One line for a log: the traced steps' device time against their span, launches, top ops."""
  def f(key, spec=".2f"):
    value = summary.get(key)
    return "n/a" if value is None else format(value, spec)

  parts = [f"{summary['steps']} steps, host dispatch {f('dispatch_ms_per_step')} ms/step"]
  if summary.get("device_busy_ms_per_step") is not None:
    parts.append(f"device busy {f('device_busy_ms_per_step')} of {f('span_ms_per_step')} "
                 f"ms/step, {f('device_kernels_per_step', '.0f')} kernels/step from "
                 f"{f('kernel_launches_per_step', '.0f')} kernel and "
                 f"{f('graph_launches_per_step', '.0f')} graph launches")
  else:
    parts.append("no device rows in the trace (a CPU run)")
  if summary.get("op_ms_per_step"):
    parts.append("ms/step by op: " + op_breakdown(summary))
  return "; ".join(parts)


def op_breakdown(summary: dict, top: int = 4) -> str:
  """The `top` op classes of a summary with their ms per step ("convolution 1.20, fusion 0.80");
  "" when the trace had none."""
  return ", ".join(f"{k} {v:.2f}" for k, v in list(summary.get("op_ms_per_step", {}).items())[:top])
