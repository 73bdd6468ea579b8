"""Where a run's wall time goes: startup, compile, train, eval, checkpoint.

startup           reading the data, building and initialising the models (compiling the
                  initialiser included), restoring a checkpoint, placing arrays on the device
compile           lowering and compiling the steps and evaluations (or loading them from the
                  persistent compilation cache)
train             the training steps, measured per epoch up to the epoch's last step
eval              the per-epoch evaluation, the teacher's when it is measured, final test accuracy
checkpoint        the part of checkpointing the loop waits for (the device-to-host copy; the writes
                  overlap training), and the final export

The parts add up across resumes: the totals so far travel in the checkpointed `meta` as
`<part>_time_s` and `wall_time_s`, and a resumed run continues from the checkpoint's totals (the
time a killed run spent after its last checkpoint is counted in neither). What no part claims
(logging, metrics files, the progress bar) is the rest, so the parts sum to at most the wall time.
"""

from __future__ import annotations

import contextlib
import time

PARTS = ("startup", "compile", "train", "eval", "checkpoint")


class TimeSplit:
  """This run's time per part, on top of the totals of the run it resumes."""

  def __init__(self):
    self.start = time.perf_counter()
    self.before = dict.fromkeys(PARTS + ("wall",), 0.0)  # totals of earlier runs (a resume)
    self.now = dict.fromkeys(PARTS, 0.0)  # this run's

  def resume(self, meta: dict) -> None:
    """Continue from the totals in a restored checkpoint's `meta`."""
    self.before = {k: float(meta.get(f"{k}_time_s", 0.0)) for k in self.before}

  def add(self, part: str, seconds: float) -> None:
    self.now[part] += seconds

  @contextlib.contextmanager
  def __call__(self, part: str):
    """`with split("eval"): ...` counts the block's wall time to `part`."""
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.add(part, time.perf_counter() - t0)

  def startup_done(self) -> None:
    """Counts to startup all the time since the start that no other part claimed."""
    elapsed = time.perf_counter() - self.start
    self.now["startup"] = max(elapsed - sum(v for k, v in self.now.items() if k != "startup"), 0.0)

  def totals(self) -> dict[str, float]:
    """`<part>_time_s` and `wall_time_s` over every run of this workdir so far."""
    out = {f"{k}_time_s": self.before[k] + self.now[k] for k in PARTS}
    out["wall_time_s"] = self.before["wall"] + time.perf_counter() - self.start
    return out
