"""The epochs of a run: steps, metrics, an evaluation and checkpoints per epoch.

The run (`dnd_jax.train`) resolves everything the loop needs from the config, the data and the
workdir (the model, the method's steps, the optimiser, the teacher, the restored state) and hands
it over; the loop reads no config, so what a run does is decided in one place and the loop only
does it. It compiles one program per partition of the method on first use
(`steps.compile_partition_step`), changes partition where the method's phases change (mid-epoch
if need be), and records each epoch as it ends. Its batches come from a resident training set or
a stream (`dnd_jax.batches`), behind one interface.

With `checkpoint.every_steps` it also checkpoints inside epochs: the state, and in `meta` under
`PARTIAL` the epoch so far (its steps, the running metric sums as the device holds them, its
training time), so that a run resumed there ends the epoch with the metrics of an uninterrupted
one. Both sources of batches start at any step (`dnd_jax.batches`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dnd_jax import batches as batch_sources, checkpoints, parallel, profiling, steps, tb
from dnd_jax import workdir as run_folder
from dnd_jax.timing import TimeSplit

log = logging.getLogger(__name__)

PARTIAL = "partial_epoch"  # meta of a mid-epoch checkpoint: the epoch so far (`run_epochs`)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the loop takes from the config, resolved by the run."""

  num_epochs: int
  batch_size: int
  steps_per_epoch: int  # the training set over the batch
  steps_per_dispatch: int  # config.steps_per_dispatch
  checkpoint_every: int  # config.checkpoint.every_epochs
  checkpoint_every_steps: int  # config.checkpoint.every_steps: also inside epochs (0: never)
  refresh_steps: int  # config.log.refresh_steps: the progress bar's and TensorBoard's
  progress_bar: bool
  compiler_options: dict | None  # the training steps' (`runtime.compiler_options`)

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs


def mean_metrics(parts: list[dict]) -> dict:
  """Per-step means from running sums; with several partitions in one epoch, each metric is
  averaged over the steps that reported it."""
  totals, counts = {}, {}
  for part in jax.device_get(parts):
    count = float(part.pop("count"))
    for k, v in part.items():
      totals[k] = totals.get(k, 0.0) + float(v)
      counts[k] = counts.get(k, 0.0) + count
  return {k: totals[k] / max(counts[k], 1.0) for k in totals}


def run_epochs(settings: LoopSettings, spec: steps.StepSpec, *, workdir: str, mesh,
               state: steps.TrainState, meta: dict, history: list[dict],
               batches: batch_sources.ResidentBatches | batch_sources.StreamedBatches,
               teacher_vars, evaluate: Callable[[Any], tuple],
               eval_split: str, lr_schedule, ckpts: checkpoints.TrainCheckpoints,
               tracer: profiling.StepTracer, tb_writer: tb.Writer, clock: TimeSplit):
  """Train from epoch `meta["epoch"]` to `settings.num_epochs`; return the state and history.

  `batches` gives each dispatch its batch's arguments (`dnd_jax.batches`), the other arrays are
  replicated over `mesh`; `evaluate(variables)` is the (accuracy, loss) on the `eval_split`.
  Each epoch adds its row to `history` and the metrics file, and updates `meta` (the epoch, the
  best accuracy, the time split), which every checkpoint saves. A `meta` restored from a
  mid-epoch checkpoint holds that epoch so far (`PARTIAL`), and the epoch goes on from there.
  Returns once the last checkpoint is written.
  """
  repl = parallel.replicated(mesh)
  method = spec.method
  steps_per_epoch, total_steps = settings.steps_per_epoch, settings.total_steps
  phase_starts = method.phase_starts(total_steps)
  compiled: dict[tuple[int, int], Any] = {}

  def phase_step(phase: int, n: int = 1):
    """The compiled step of a phase (n steps per dispatch), compiled (and timed) on first use."""
    if (phase, n) not in compiled:
      jax.block_until_ready(state)  # mid-epoch, the queued steps finish before compile time counts
      with clock("compile"):  # tracing included
        step = steps.compile_partition_step(
            spec, phase, n, mesh, state, *batches.example_args(), teacher_vars,
            compiler_options=settings.compiler_options)
        compiled[phase, n] = (step.compiled, step.zero_sums)
    return compiled[phase, n]

  put = lambda x: jax.device_put(x, repl)  # noqa: E731
  per_dispatch = settings.steps_per_dispatch
  refresh = settings.refresh_steps
  running_means = settings.progress_bar or tb_writer.enabled

  def on_host(part: dict) -> dict:  # metric sums as a checkpoint's meta holds them
    return {k: float(v) for k, v in jax.device_get(part).items()}

  def restored(part: dict) -> dict:  # ... and as the device held them, so they add up exactly
    return {k: np.float32(v) for k, v in part.items()}

  def train_time() -> float:
    """The epoch's training time so far: a partition compiled mid-epoch is compile time, writing
    a profile is no training time, and a mid-epoch checkpoint is checkpoint time."""
    return (time.perf_counter() - t0 - (clock.now["compile"] - compile_before)
            - (tracer.overhead_s - trace_before) - (clock.now["checkpoint"] - checkpoint_before))

  def save_mid_epoch(epoch: int, i: int, sums, finished_parts) -> None:
    """A checkpoint `i` steps into `epoch`, with the epoch so far in its meta (`PARTIAL`)."""
    time_s = train_time()  # as dispatched, before waiting for the sums
    partial = {"epoch": epoch, "steps": i, "steps_per_epoch": steps_per_epoch,
               "sums": on_host(sums), "finished_parts": [on_host(p) for p in finished_parts],
               "train_time_s": time_s}
    with clock("checkpoint"):
      ckpts.save(int(state.step), state, {**meta, **clock.totals(), PARTIAL: partial})

  partial = meta.pop(PARTIAL, None)  # restored from a mid-epoch checkpoint
  every_steps = settings.checkpoint_every_steps
  clock.startup_done()
  for epoch in range(meta["epoch"], settings.num_epochs):
    first_step = epoch * steps_per_epoch
    i = partial["steps"] if partial else 0
    batches.start_epoch(epoch, first_step + i)
    phase = method.phase_at(first_step + i, total_steps)
    step_fn, zero_sums = phase_step(phase, per_dispatch)
    sums = put(restored(partial["sums"]) if partial else zero_sums)
    # metric sums of earlier partitions, when a phase boundary falls mid-epoch
    finished_parts = [restored(p) for p in partial["finished_parts"]] if partial else []
    compile_before, trace_before = clock.now["compile"], tracer.overhead_s
    checkpoint_before = clock.now["checkpoint"]
    bar = tqdm(total=steps_per_epoch, initial=i,
               desc=f"epoch {epoch + 1}/{settings.num_epochs}",
               disable=not settings.progress_bar, file=sys.stderr, leave=False,
               dynamic_ncols=True)
    t0 = time.perf_counter() - (partial["train_time_s"] if partial else 0.0)
    partial = None
    while i < steps_per_epoch:
      global_step = first_step + i
      if phase + 1 < len(phase_starts) and global_step >= phase_starts[phase + 1]:
        phase += 1  # Progressive DnD changes partition mid-epoch when a boundary falls there
        finished_parts.append(sums)
        step_fn, zero_sums = phase_step(phase, per_dispatch)
        sums = put(zero_sums)
      # several steps per dispatch while they stay inside the epoch and the partition, else one
      phase_end = phase_starts[phase + 1] if phase + 1 < len(phase_starts) else total_steps
      n = per_dispatch if min(steps_per_epoch - i, phase_end - global_step) >= per_dispatch else 1
      run = step_fn if n == per_dispatch else phase_step(phase, 1)[0]
      tracer.before(global_step, n)
      state, sums = run(state, sums, *batches.step_args(), teacher_vars)
      batches.prefetch()  # the next batch is read and placed while this step runs
      i += n
      tracer.after(first_step + i, state)
      bar.update(n)
      if running_means and i // refresh > (i - n) // refresh:
        m = mean_metrics(finished_parts + [sums])  # the epoch so far, every partition of it
        rate = i * settings.batch_size / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.3f}", img_s=f"{rate:.0f}")
        tb_writer.steps(first_step + i, m, float(lr_schedule(first_step + i - 1)), rate)
      if (every_steps and i < steps_per_epoch
          and (first_step + i) // every_steps > (first_step + i - n) // every_steps):
        save_mid_epoch(epoch, i, sums, finished_parts)
    train = mean_metrics(finished_parts + [sums])  # waits for the epoch's last step
    epoch_time = train_time()
    bar.close()
    if not math.isfinite(train["loss"]):  # the run's `closing` commits the saves in flight
      raise FloatingPointError(
          f"The training loss became {train['loss']} in epoch {epoch + 1}; stopping. The last good "
          f"checkpoint (epoch {meta['epoch']}) in {run_folder.checkpoints_dir(workdir)} is "
          "intact. Lower config.optim.lr or use float32, then run the same command to resume.")
    clock.add("train", epoch_time)
    acc, eval_loss = evaluate(state.variables)
    meta["epoch"] = epoch + 1
    row = {"epoch": epoch + 1, "step": int(first_step + steps_per_epoch), "phase": phase,
           "lr": float(lr_schedule(first_step + steps_per_epoch - 1)),
           **{f"train_{k}": v for k, v in train.items()},
           f"{eval_split}_accuracy": acc, f"{eval_split}_loss": eval_loss,
           "epoch_time_s": epoch_time,
           "images_per_s": steps_per_epoch * settings.batch_size / epoch_time}
    history.append(row)
    run_folder.append_metrics(workdir, row)
    tb_writer.epoch(row["step"], row)
    log.info(f"epoch {epoch + 1}/{settings.num_epochs}  loss {train['loss']:.4f}  train acc "
             f"{train['accuracy']:.4f}  {eval_split} acc {acc:.4f}  {epoch_time:.1f}s  "
             f"{row['images_per_s']:.0f} img/s")
    if acc > meta["best_accuracy"]:
      meta["best_accuracy"], meta["best_epoch"] = acc, epoch + 1
      with clock("checkpoint"):  # returns once copied to host; written while training goes on
        ckpts.save_best(int(state.step), state.variables, dict(meta))
    if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.num_epochs:
      meta.update(clock.totals())  # the time split so far, continued by a resumed run
      with clock("checkpoint"):
        ckpts.save(int(state.step), state, dict(meta))
  with clock("checkpoint"):
    ckpts.wait()
  return state, history
