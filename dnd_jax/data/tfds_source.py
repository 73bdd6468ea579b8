"""Arrays from TensorFlow Datasets, for users who already keep their data sets in a TFDS folder.

Only `tfds.data_source` is used: it reads prepared ArrayRecord files with NumPy and PIL, so reading
works without TensorFlow. Preparing a data set (TFDS's own download and conversion) is another
matter: the fashion_mnist and cifar100 builders call TensorFlow to parse and encode, so on a
machine without TensorFlow either prepare the data set elsewhere (or `pip install tensorflow`), or
use source=local/download, which need neither. TFDS has no Imagewoof builder.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

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
