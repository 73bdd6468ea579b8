"""TensorFlow Datasets, for users who already keep their data sets in a TFDS folder: the resident
data sets' arrays (`read`), and a streamed one's records (`record_layout`: ImageNet as TFDS
prepares `imagenet2012`, or any prepared image data set with `image` and `label` features).

Only `tfds.data_source` is used: it reads prepared ArrayRecord files with NumPy and PIL, so reading
works without TensorFlow. Preparing a data set (TFDS's own download and conversion) is another
matter: the fashion_mnist and cifar100 builders call TensorFlow to parse and encode, so on a
machine without TensorFlow either prepare the data set elsewhere (or `pip install tensorflow`), or
use source=local/download, which need neither. TFDS has no Imagewoof builder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
from pathlib import Path

import numpy as np

from dnd_jax.data import image_folder
from dnd_jax.data.files import DataError, MissingPackageError

TFDS_NAMES = {"fashion_mnist": "fashion_mnist", "cifar100": "cifar100"}
_BATCH = 1024


def _import_tfds():
  try:
    return importlib.import_module("tensorflow_datasets")
  except ImportError as e:
    raise MissingPackageError(
        "source='tfds' needs tensorflow-datasets: pip install 'dnd_jax[tfds]' (or use "
        "--config.data.source=local or download, which need no extra package)") from e


def _split(tfds, name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
  try:
    source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else
                              str(data_dir), download=True)
  except ModuleNotFoundError as e:
    if e.name != "tensorflow":  # tensorflow-datasets installed without its own dependencies
      raise MissingPackageError(f"tensorflow-datasets needs {e.name}, which is not installed: "
                                f"pip install 'dnd_jax[tfds]' {e.name}") from e
    raise DataError(
        f"TFDS has no prepared {name} in {data_dir or 'its default data_dir'}, and preparing one "
        "needs TensorFlow. Fix: pip install tensorflow (or prepare it on a machine that has it and "
        "set --config.data.dir to that data_dir), or use --config.data.source=local or "
        "download.") from e
  images, labels = [], []
  for start in range(0, len(source), _BATCH):
    for example in source.__getitems__(list(range(start, min(start + _BATCH, len(source))))):
      images.append(np.asarray(example["image"], np.uint8))
      labels.append(int(example["label"]))
  if not images:
    raise DataError(f"TFDS {name}:{split} in {data_dir} is empty.")
  return np.stack(images), np.asarray(labels, np.int32)


def read(name: str, data_dir: Path | None) -> dict[str, np.ndarray]:
  """Returns train/test arrays and class names of `name` from TFDS's `data_dir`."""
  tfds = _import_tfds()
  if name not in TFDS_NAMES:
    raise DataError(f"TFDS has no {name} builder. Fix: use --config.data.source=local or "
                    "download.")
  arrays = {}
  for split in ("train", "test"):
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = _split(tfds, TFDS_NAMES[name], split,
                                                                  data_dir)
  builder = tfds.builder(TFDS_NAMES[name], data_dir=None if data_dir is None else str(data_dir))
  arrays["class_names"] = np.array(builder.info.features["label"].names)
  return arrays


# --- a streamed data set's records ---------------------------------------------------------------

# The splits a streamed data set reads: TFDS names ImageNet's evaluation split "validation" (the
# split the field reports, as the folder layout's val/).
STREAM_SPLITS = {"train": "train", "val": "validation"}


@dataclasses.dataclass(frozen=True)
class RecordSplit:
  """One split of a prepared TFDS data set, read record by record (`RecordFiles`), and what
  identifies it. Listing a split's labels would read every record (ImageNet's are ~140 GB), so
  its digest is of TFDS's own record of the split (its shards' lengths and bytes, the version)."""

  name: str
  data_dir: str | None
  split: str
  count: int
  info: str  # the split's entry in dataset_info.json, as JSON

  def __len__(self) -> int:
    return self.count

  def files(self, root) -> RecordFiles:
    del root  # the records are found by name in data_dir
    return RecordFiles(self)

  def digest(self) -> str:
    return hashlib.sha256(f"{self.name}\0{self.split}\0{self.info}".encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _source(name: str, data_dir: str | None, split: str):
  """The split's random-access records, opened once per process (Grain's workers each open
  theirs); images are left encoded, to be decoded as the folder's files are."""
  tfds = _import_tfds()
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})


@dataclasses.dataclass(frozen=True)
class RecordFiles:
  """`RecordSplit`'s rows as the stream reads them: row -> (decoded image, label), as
  `image_folder.FolderFiles` reads a folder's. Picklable (the records open in each process)."""

  split: RecordSplit

  def __len__(self) -> int:
    return len(self.split)

  def read(self, row: int):
    s = self.split
    record = _source(s.name, s.data_dir, s.split)[int(row)]
    return (image_folder.decode(bytes(record["image"]), f"{s.name} {s.split} record {row}"),
            int(record["label"]))


@dataclasses.dataclass(frozen=True)
class RecordLayout:
  """A prepared TFDS image data set as a stream reads it: `image_folder.Layout`'s fields, its
  classes the label feature's names (ImageNet's WordNet ids, in the folder layout's order)."""

  root: Path | None
  classes: tuple[str, ...]
  train: RecordSplit
  val: RecordSplit


def record_layout(name: str, data_dir: Path | None) -> RecordLayout:
  """The prepared data set `name` in TFDS's `data_dir` (None: TFDS's default); one `DataError`
  when it is not prepared there or lacks an `image` or `label` feature or a split."""
  tfds = _import_tfds()
  where = None if data_dir is None else str(data_dir)
  try:
    builder = tfds.builder(name, data_dir=where)
    info = builder.info
    prepared = builder.is_prepared() if hasattr(builder, "is_prepared") else True
  except Exception as e:  # TFDS raises several kinds for a name it cannot find
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # not its list
    raise DataError(f"TFDS has no prepared {name!r} in {where or 'its default data_dir'} ({why}). "
                    "Fix: set --config.data.dir to the data_dir where it was prepared, or "
                    "--config.data.tfds_name to its name.") from e
  if not prepared:
    raise DataError(f"TFDS {name!r} is not prepared in {where or 'its default data_dir'}: set "
                    "--config.data.dir to the data_dir where TFDS prepared it, or prepare it "
                    "(ImageNet's needs the ILSVRC2012 archives: "
                    "https://www.tensorflow.org/datasets/catalog/imagenet2012), or read the "
                    "unpacked folders with --config.data.source=local.")
  features = info.features
  if "image" not in features or "label" not in features:
    raise DataError(f"TFDS {name!r} has no 'image' and 'label' features (it has "
                    f"{sorted(features.keys())}): a streamed data set needs both.")
  splits = {}
  for ours, theirs in STREAM_SPLITS.items():
    if theirs not in info.splits:
      raise DataError(f"TFDS {name!r} has no {theirs!r} split (it has {sorted(info.splits)}).")
    entry = info.splits[theirs]
    record = {"shards": [int(n) for n in entry.shard_lengths], "bytes": int(entry.num_bytes),
              "version": str(info.version)}
    splits[ours] = RecordSplit(name, where, theirs, int(entry.num_examples),
                               json.dumps(record, sort_keys=True))
  return RecordLayout(data_dir, tuple(features["label"].names), splits["train"], splits["val"])
