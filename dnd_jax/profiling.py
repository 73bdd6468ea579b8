"""A `jax.profiler` trace of chosen training steps, written into the workdir.

`config.log.profile_steps = "10-15"` traces global steps 10 to 14 (the end is exclusive; "" traces
nothing). Pick steps after the first epoch's compile, where the run is in its steady state. The
trace lands in `<workdir>/profile/plugins/profile/<time>/` as `*.xplane.pb` (TensorBoard's
profile plugin: `tensorboard --logdir <workdir>/profile`) and `*.trace.json.gz` (open it in
https://ui.perfetto.dev). The trace is stopped after the device finished the last traced step.
"""

from __future__ import annotations

import sys

import jax

from dnd_jax import workdir as run_folder



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

  def before(self, step: int) -> None:
    if self.range and not self.active and self.range[0] <= step < self.range[1]:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, next_step: int, state) -> None:
    if self.active and next_step >= self.range[1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      print(f"Profiler trace of steps {self.range[0]}-{self.range[1]} written to {self.dir}.",
            file=sys.stderr, flush=True)
      self.range = None

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
