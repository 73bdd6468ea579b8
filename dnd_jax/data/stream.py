"""Streaming input on Grain: a data set too large to hold decoded is read batch by batch.

`config.data.loader = "stream"` (the ImageNet configs; Imagewoof may) instead of the resident
`"device"`: the image files are listed once (`image_folder.scan`; or TFDS's prepared records,
`tfds_source.record_layout`, with `data.source="tfds"`), and each batch is decoded and cropped on
the host, in Grain's worker processes (`data.workers`; 0 decodes in the training process), then sent
to the devices as uint8, where the step normalises it as the resident path does.

What makes it reproducible and resumable: an epoch's order is Grain's index shuffle of the
training rows, seeded by (seed, epoch), and each image's random crop and flip are drawn from
(seed, epoch, its position in that order). So a batch is a function of the global step alone, not
of the number of processes or workers, nor of where a run was stopped: the pipeline's position is
the train state's step, and a run resumed at step s builds it from s and reads exactly the batches
an uninterrupted run reads (no iterator state of its own to checkpoint beside the step, and none
that could disagree with it). An epoch is `floor(N / batch)` global batches, as on the resident
path.

Sharding over processes: process p of P reads the p-th block of `batch / P` rows of every global
batch (`local_positions`), the block its devices hold in a mesh ordered by process. The processes'
shares tile the epoch without overlap, and the global batches are the ones one process would read.

Unreadable images: a file that does not decode stops the run with one line naming it; with
`data.skip_corrupt` it is skipped instead (a training row takes the next readable file's place,
an evaluation row is left out of the count) and counted.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from dnd_jax.data import image_folder, imagewoof, sources, split_indices, tfds_source
from dnd_jax.data.files import DataError, MissingPackageError

log = logging.getLogger(__name__)

LOADERS = ("device", "stream")
NAMES = (image_folder.NAME, imagewoof.NAME)  # the data sets that may stream
ONLY_STREAMED = (image_folder.NAME,)  # and those too large to be held whole
# Grain's in-process read-ahead: threads decoding whole batches, and how many batches they may
# hold ready (a few: an ImageNet batch of 256 at 224 px is 38 MB)
READ_THREADS, READ_BUFFER = 4, 8


def import_grain():
  """Grain, an optional dependency (the `stream` extra): only a streamed run needs it."""
  try:
    return importlib.import_module("grain")
  except ImportError as e:
    raise MissingPackageError(
        "config.data.loader='stream' needs Grain, which is not installed: pip install "
        "'dnd_jax[stream]'.") from e


@dataclasses.dataclass(frozen=True)
class StreamData:
  """What a run knows of a streamed data set before it reads an image: `Dataset`'s fields that
  are not arrays. The evaluation split is the folder's `val/`, reported as "test" (it is what the
  field reports ImageNet results on)."""

  name: str
  layout: image_folder.Layout | tfds_source.RecordLayout  # a folder, or TFDS's records
  mean: tuple[float, ...]
  std: tuple[float, ...]
  input_size: int
  eval_split: str = "test"

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.input_size, self.input_size, 3)

  @property
  def num_classes(self) -> int:
    return len(self.layout.classes)

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.layout.classes

  @property
  def n_train(self) -> int:
    return len(self.layout.train)

  @property
  def n_eval(self) -> int:
    return len(self.layout.val)

  @property
  def rows_digest(self) -> str:
    return self.layout.train.digest()[:16]

  def eval_digest(self) -> str:
    return self.layout.val.digest()


def open_stream(data_config: Any) -> StreamData:
  """The streamed data set `data_config` names (its folder `data.dir`, else `<cache>/imagenet`,
  as the resident data sets' default; with `data.source=tfds`, TFDS's prepared
  `data.tfds_name` in the data_dir `data.dir`), its files listed and checked (one `DataError`
  for a layout problem, before any work), its training files cut to `data.fraction`."""
  import_grain()  # a missing package is one line now, not at the first batch
  if data_config.source == "tfds":
    layout = tfds_source.record_layout(data_config.tfds_name, sources.location(data_config))
  elif data_config.name == imagewoof.NAME:
    layout = image_folder.scan(_imagewoof_folder(sources.location(data_config)))
  else:
    layout = image_folder.scan(sources.location(data_config))
  fraction = data_config.get("fraction", 1.0)
  if fraction != 1.0:
    layout = train_share(layout, fraction, data_config.get("subset_seed", 0))
  return StreamData(name=data_config.name, layout=layout,
                    mean=tuple(float(m) for m in data_config.mean),
                    std=tuple(float(s) for s in data_config.std),
                    input_size=int(data_config.image_size))


def _imagewoof_folder(where: Path) -> Path:
  """Imagewoof's `imagewoof2-160` folder at or in `where` (the resident reader's rule); its
  archive is read whole by the resident path only."""
  found = imagewoof.locate(where)
  if found.is_file():
    raise DataError(f"{found}: a streamed Imagewoof reads the unpacked imagewoof2-160 folder, "
                    f"not its archive. Unpack it (tar xzf {found.name} -C {found.parent}) and set "
                    "--config.data.dir to the folder, or use --config.data.loader=device.")
  return found


def train_share(layout: image_folder.Layout, fraction: float, seed: int) -> image_folder.Layout:
  """`layout` with `fraction` of its training files, drawn per class as the resident data sets
  draw theirs (`dnd_jax.data.split_indices`: seeded, and with one seed a smaller share is a
  subset of a larger one); val/ stays whole. The run's data digest is that of the share, so a
  run does not resume on another one."""
  rows, _ = split_indices(layout.train.labels, fraction, 0.0, seed)
  train = image_folder.Split(tuple(layout.train.paths[i] for i in rows), layout.train.labels[rows])
  return dataclasses.replace(layout, train=train)


def epoch_seed(seed: int, epoch: int) -> int:
  """The seed of an epoch's shuffle: a function of the run's seed and the epoch alone."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def local_positions(step_in_epoch: int, batch_size: int, process_index: int,
                    process_count: int) -> range:
  """The positions in the epoch's order that process `process_index` reads for one step: its
  block of `batch_size / process_count` rows of the step's global batch, the block its devices
  hold (a mesh's devices are ordered by process). Over the processes, the blocks tile the batch."""
  if batch_size % process_count:
    raise ValueError(f"config.batch_size={batch_size} does not divide over {process_count} "
                     "processes.")
  local = batch_size // process_count
  start = step_in_epoch * batch_size + process_index * local
  return range(start, start + local)


@dataclasses.dataclass(frozen=True)
class _Reader:
  """Decodes a row's image (a folder's file or a TFDS record: `files`); with `skip`, an
  unreadable one is logged, counted and replaced by the next readable row (training) or left out
  (evaluation). Picklable, for Grain's workers."""

  files: image_folder.FolderFiles | tfds_source.RecordFiles
  skip: bool

  def __len__(self) -> int:
    return len(self.files)

  def open(self, row: int, replace: bool):
    """(image, label, files skipped); image None when an evaluation row is skipped."""
    skipped = 0
    while True:
      try:
        return (*self.files.read(row), skipped)
      except DataError as e:
        if not self.skip:
          raise
        log.warning("Skipped an unreadable image: %s", str(e).split(": cannot decode")[0])
        skipped += 1
        if not replace or skipped >= len(self.files):
          return None, -1, skipped
        row = (row + 1) % len(self.files)


def _stack(examples: list[dict]) -> dict:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
  """Global step -> this process's share of its batch: the rows at its `local_positions` in the
  epoch's order (`train_rows`), each cropped and flipped with a generator seeded by (seed, epoch,
  position). Picklable, for Grain's workers."""

  reader: _Reader
  size: int
  scale: tuple[float, float]
  ratio: tuple[float, float]
  flip: bool
  seed: int
  batch_size: int
  steps_per_epoch: int
  process_index: int
  process_count: int

  def example(self, epoch: int, position: int, row: int) -> dict:
    image, label, skipped = self.reader.open(int(row), replace=True)
    rng = np.random.default_rng([self.seed, epoch, position])
    return {"image": image_folder.train_view(image, self.size, rng, self.scale, self.ratio,
                                             self.flip),
            "label": np.int32(label), "skipped": np.int32(skipped)}

  def __call__(self, step: int) -> dict:
    epoch, i = divmod(int(step), self.steps_per_epoch)
    order = train_rows(len(self.reader), self.seed, epoch)
    return _stack([self.example(epoch, p, order[p]) for p in local_positions(
        i, self.batch_size, self.process_index, self.process_count)])


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
  """Batch index -> this process's share of that evaluation batch, rows past the split padded
  with label -1 (never counted)."""

  reader: _Reader
  size: int
  batch_size: int
  process_index: int
  process_count: int

  def example(self, row: int) -> dict:
    if row >= len(self.reader):
      return {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(-1),
              "skipped": np.int32(0)}
    image, label, skipped = self.reader.open(row, replace=False)
    view = (np.zeros((self.size, self.size, 3), np.uint8) if image is None
            else image_folder.eval_view(image, self.size))
    return {"image": view, "label": np.int32(label), "skipped": np.int32(skipped)}

  def __call__(self, index: int) -> dict:
    return _stack([self.example(row) for row in local_positions(
        int(index), self.batch_size, self.process_index, self.process_count)])


def _reader(data: StreamData, split, data_config) -> _Reader:
  return _Reader(split.files(data.layout.root), bool(data_config.get("skip_corrupt", False)))


def _iterate(batches, workers: int):
  grain = import_grain()
  iterable = batches.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                       prefetch_buffer_size=READ_BUFFER))
  if workers > 0:
    # Grain's worker processes read its absl flags, which a library caller (a test, a notebook)
    # has not parsed; the defaults are what they need
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iterable


def train_rows(n: int, seed: int, epoch: int):
  """The epoch's order of the training rows: Grain's index shuffle, seeded by (seed, epoch)."""
  return import_grain().MapDataset.range(n).shuffle(seed=epoch_seed(seed, epoch))


def train_batches(data: StreamData, data_config, *, seed: int, batch_size: int, first_step: int,
                  total_steps: int, process_index: int = 0, process_count: int = 1):
  """The run's training batches from global step `first_step` to `total_steps` (an epoch is
  `floor(N / batch_size)` steps), this process's share of each: a Grain `IterDataset` of
  {"image": uint8 (b, H, W, 3), "label": int32 (b,), "skipped": int32 (b,)},
  b = batch_size / process_count. One pipeline for the whole run, so its worker processes
  start once; a run resumed at step s starts it at s and reads what an uninterrupted run reads
  from there."""
  batch = _TrainBatch(_reader(data, data.layout.train, data_config), data.input_size,
                      tuple(data_config.rrc_scale), tuple(data_config.rrc_ratio),
                      bool(data_config.get("flip", True)), seed, batch_size,
                      data.n_train // batch_size, process_index, process_count)
  steps = import_grain().MapDataset.range(first_step, total_steps).map(batch)
  return _iterate(steps, int(data_config.get("workers", 0)))


def eval_batch_count(data: StreamData, batch_size: int) -> int:
  """The batches of one pass over the evaluation split (the last padded)."""
  return -(-data.n_eval // batch_size)


def eval_batches(data: StreamData, data_config, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, passes: int | None = 1):
  """The evaluation split in batches of `batch_size`, the last padded with label -1, this
  process's share of each, as `train_batches` yields them; `passes` times over (None: without
  end, each pass `eval_batch_count` batches in the same order)."""
  batch = _EvalBatch(_reader(data, data.layout.val, data_config), data.input_size, batch_size,
                     process_index, process_count)
  batches = import_grain().MapDataset.range(eval_batch_count(data, batch_size)).map(batch)
  if passes != 1:
    batches = batches.repeat(passes)
  return _iterate(batches, int(data_config.get("workers", 0)))
