"""Where a training step's batch comes from: the epoch batches the loop (`dnd_jax.loop`) runs on.

Two sources behind one small interface, so that the loop is one loop:
  ResidentBatches  the training set lives on the devices (`data.loader = "device"`); each step
                   gathers its batch inside the compiled step by the epoch's permutation, so every
                   dispatch takes the same arguments (the arrays and the permutation).
  StreamedBatches  batches read by the Grain pipeline (`data.loader = "stream"`,
                   `dnd_jax.data.stream`) and placed on the mesh, one per step; the next one is
                   read and placed while the step runs.
Either way the loop calls `start_epoch(epoch, step)` (the epoch's first step to run: mid-epoch
when the run resumes from a mid-epoch checkpoint), then per dispatch `step_args()` (what the step
takes besides the state, its sums and the teacher), then `prefetch()` once the step is dispatched;
`example_args()` are the next dispatch's arguments without taking them, to compile a step for.

`StreamedEvaluation` is the streamed counterpart of the resident evaluation: the same compiled
evaluation of a batch (`steps.make_evaluate`), run over the evaluation split batch by batch.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax import parallel, steps
from dnd_jax.data import stream

log = logging.getLogger(__name__)


def _place(sharding, batch: dict) -> tuple[jax.Array, jax.Array]:
  """A batch of this process's rows as global arrays split over the mesh (one process: the whole
  batch)."""
  return tuple(jax.make_array_from_process_local_data(sharding, batch[k])
               for k in ("image", "label"))


class ResidentBatches:
  """The resident training set (placed with `parallel.put_dataset`) and the epoch's permutation
  of it, drawn on the devices from the run's seed."""

  def __init__(self, images, labels, n_train: int, seed: int, mesh, clock):
    self.images, self.labels = images, labels
    repl = parallel.replicated(mesh)
    self._key = jax.random.fold_in(jax.random.key(seed), 2)
    with clock("compile"):
      self._make_perm = jax.jit(
          lambda key: jax.random.permutation(key, n_train).astype(jnp.int32),
          out_shardings=repl).lower(self._key).compile()
    self._perm = None

  def start_epoch(self, epoch: int, step: int) -> None:
    """The epoch's permutation; the step reads its own batch of it from the state's step."""
    self._perm = self._make_perm(jax.random.fold_in(self._key, epoch))

  def example_args(self) -> tuple:
    return self.images, self.labels, self._perm

  def step_args(self) -> tuple:
    return self.images, self.labels, self._perm

  def prefetch(self) -> None:
    pass


class StreamedBatches:
  """This process's share of each global batch from the Grain pipeline, placed on the mesh; one
  batch per step (a streamed run dispatches one step at a time). One pipeline for the rest of
  the run, started at the first epoch the loop runs (`stream.train_batches`), so the next epoch's
  first batch is read while the last step of an epoch runs, and worker processes start once."""

  def __init__(self, data: stream.StreamData, data_config, *, seed: int, batch_size: int,
               steps_per_epoch: int, total_steps: int, mesh):
    self._data, self._data_config = data, data_config
    self._seed, self._batch_size = seed, batch_size
    self._steps_per_epoch, self._total_steps = steps_per_epoch, total_steps
    self._sharding = parallel.batch_sharded(mesh)
    self._reader = None
    self._next = None
    self._left = 0
    self.skipped = 0  # unreadable training images skipped (data.skip_corrupt), this process

  def start_epoch(self, epoch: int, step: int) -> None:
    if self._reader is None:
      first_step = step
      self._reader = iter(stream.train_batches(
          self._data, self._data_config, seed=self._seed, batch_size=self._batch_size,
          first_step=first_step, total_steps=self._total_steps,
          process_index=jax.process_index(), process_count=jax.process_count()))
      self._left = self._total_steps - first_step
    self.prefetch()

  def prefetch(self) -> None:
    """Reads and places the next batch of the run, if there is one and it is not read yet."""
    if self._next is not None or self._left == 0:
      return
    batch = next(self._reader)
    skipped = int(np.sum(batch["skipped"]))
    if skipped:
      self.skipped += skipped
      log.warning(f"Skipped {self.skipped} unreadable training image(s) so far "
                  "(data.skip_corrupt).")
    self._next = _place(self._sharding, batch)
    self._left -= 1

  def example_args(self) -> tuple:
    return self._next

  def step_args(self) -> tuple:
    args, self._next = self._next, None
    return args

  def close(self) -> None:
    """Stops the pipeline's workers now: left to the interpreter's exit, Grain's clean-up runs
    after the modules it needs are gone and prints tracebacks after the run's last line."""
    if self._reader is not None:
      self._reader.close()
      self._reader = None


class StreamedEvaluation:
  """A network's (correct, summed cross-entropy, images counted) over the streamed evaluation
  split. The batch is `eval_batch_size` (0: sized for the device, as the resident evaluation
  sizes it) made to divide over the mesh.

  One pipeline reads the split over and over, each call one whole pass: a pipeline per call
  would start its worker processes (`data.workers`) at every evaluation, seconds each time.
  `close` stops it."""

  def __init__(self, data: stream.StreamData, data_config, model, eval_batch_size: int, mesh):
    n = data.n_eval
    size = steps.resolve_eval_batch_size(eval_batch_size, n, data.image_shape, model)
    devices = mesh.devices.size
    self.batch_size = -(-size // devices) * devices
    self._data, self._data_config = data, data_config
    self._sharding = parallel.batch_sharded(mesh)
    self._evaluate = jax.jit(steps.make_evaluate(model, data_config, data.mean, data.std,
                                                 self.batch_size))
    self._compiled = None
    self._batches = None  # the pipeline, started at the first evaluation

  def compile(self, variables) -> None:
    """Compiles the batch's evaluation for `variables` (placed as they will be)."""
    shape = (self.batch_size, *self._data.image_shape)
    images = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=self._sharding)
    labels = jax.ShapeDtypeStruct(shape[:1], jnp.int32, sharding=self._sharding)
    self._compiled = self._evaluate.lower(variables, images, labels).compile()

  def __call__(self, variables) -> tuple[float, float, int]:
    if self._compiled is None:
      self.compile(variables)
    if self._batches is None:
      self._batches = iter(stream.eval_batches(
          self._data, self._data_config, batch_size=self.batch_size,
          process_index=jax.process_index(), process_count=jax.process_count(), passes=None))
    correct, ce, skipped = 0, 0.0, 0
    sums = []
    for _ in range(stream.eval_batch_count(self._data, self.batch_size)):
      batch = next(self._batches)
      skipped += int(np.sum(batch["skipped"]))
      sums.append(self._compiled(variables, *_place(self._sharding, batch)))
    for c, e in jax.device_get(sums):
      correct, ce = correct + int(c), ce + float(e)
    if skipped:
      log.warning(f"Skipped {skipped} unreadable evaluation image(s) (data.skip_corrupt); the "
                  "accuracy is over the rest.")
    return correct, ce, self._data.n_eval - skipped

  def close(self) -> None:
    """Stops the pipeline's workers (as `StreamedBatches.close`)."""
    if self._batches is not None:
      self._batches.close()
      self._batches = None
