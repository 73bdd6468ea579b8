"""Data sets as whole uint8 arrays in memory, with fixed seeded subsets and validation splits.

All three data sets fit in host memory once decoded (Imagewoof at 160 px is about 1 GB), so the
trainer batches from arrays and augments on the accelerator (`augment.py`): no input pipeline to
tune, and the same seed gives the same batches on any machine.

Config fields (`default_data_config(name)` gives the defaults for each data set):
  name              "fashion_mnist" | "cifar100" | "imagewoof" | "imagenet" (any ImageNet-layout
                    folder, streamed: `dnd_jax.data.stream`)
  loader            "device": the data set decoded whole, resident on the accelerator (this
                    module); "stream": read batch by batch from its files on Grain (`imagenet`,
                    and `imagewoof` from its unpacked folder).
  workers           streamed: Grain worker processes decoding batches (0: in the training process).
  skip_corrupt      streamed: skip (and count) images that do not decode instead of stopping.
  tfds_name         streamed with source "tfds": the prepared TFDS data set read ("imagenet2012";
                    any with `image` and `label` features and train/validation splits).
  source            "local": the official files in `dir`; "download": fetch them from the official
                    URL (or `mirror`) into `dir`, else <cache_dir>/<name>, check the published
                    checksum, then read them as "local" does; "tfds": TensorFlow Datasets (`pip
                    install 'dnd_jax[tfds]'`; `dir` is then TFDS's data_dir, None for its
                    default).
  dir               folder or archive; None = /usr/share/datasets/fashion-mnist for Fashion-MNIST
                    (Debian's dataset-fashion-mnist), <cache_dir>/<name> for the others.
  cache_dir         downloads and decoded-array caches; None = $DND_JAX_CACHE, else
                    ~/.cache/dnd_jax.
  mirror            a base URL holding the official file names, instead of the official URLs.
  verify_checksums  check local files against the published checksums (downloads always are).
  image_size        Fashion-MNIST, CIFAR-100: None = native, an int resizes once at load time.
                    Imagewoof: the side of the crops the model sees (128).
  stored_size       Imagewoof only: decoded images are cached with the short side resized to this
                    and centre-cropped square (160).
  fraction          a fixed, class-stratified random share of the training set (paper, Table 3),
                    of the rows left after the validation split when there is one.
  subset_seed       seeds `fraction` and `val_fraction`.
  val_fraction      share of the whole official training set held out as the validation split
                    (drawn before `fraction`, so it does not depend on it); > 0 makes the
                    evaluation split "validation" instead of "test".
  mean, std         per-channel normalisation on the [0, 1] scale; None = computed from the
                    training images.
  crop_padding      zero padding of the random crop (when random_resized_crop is False).
  flip              random horizontal flips.
  random_resized_crop, rrc_scale, rrc_ratio   the Inception-style crop (Imagewoof).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import ml_collections
import numpy as np

from dnd_jax.data import cifar100, fashion_mnist, image_folder, imagewoof, sources
from dnd_jax.data.files import DataError, MissingDataError

__all__ = ["DataError", "Dataset", "MissingDataError", "default_data_config", "load_dataset",
           "split_indices"]


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train_images: np.ndarray  # uint8 (N, H, W, C)
  train_labels: np.ndarray  # int32 (N,)
  eval_images: np.ndarray  # the validation split when val_fraction > 0, else the test split
  eval_labels: np.ndarray
  eval_split: str  # "validation" or "test"
  test_images: np.ndarray  # always the official test split
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]  # per channel, [0, 1] scale
  std: tuple[float, ...]
  input_size: int | None = None  # side the model sees; None = the stored images' side
  class_names: tuple[str, ...] = ()
  # which rows of the official training set train and which validate (`split_indices`), as a
  # digest: a resumed run must go on with the rows it started with
  rows_digest: str = ""

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of what the model sees, after the training crop (equal to evaluation's)."""
    _, h, w, c = self.test_images.shape
    if self.input_size is not None:
      h = w = self.input_size
    return (h, w, c)

  @property
  def n_train(self) -> int:
    return len(self.train_labels)

  @property
  def n_eval(self) -> int:
    return len(self.eval_labels)

  def eval_digest(self) -> str:
    """The SHA-256 of the evaluation split's images and labels: what an accuracy was measured on
    (`checkpoints.evaluation_record`)."""
    digest = hashlib.sha256()
    for array in (self.eval_images, self.eval_labels):
      digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


_DEFAULTS = {
    fashion_mnist.NAME: dict(crop_padding=2, flip=True, random_resized_crop=False,
                             image_size=None, stored_size=None,
                             mean=fashion_mnist.MEAN, std=fashion_mnist.STD),
    cifar100.NAME: dict(crop_padding=4, flip=True, random_resized_crop=False,
                        image_size=None, stored_size=None, mean=cifar100.MEAN, std=cifar100.STD),
    # resident by default; `loader="stream"` reads the unpacked folder as ImageNet's is read
    imagewoof.NAME: dict(crop_padding=0, flip=True, random_resized_crop=True,
                         image_size=128, stored_size=160, mean=imagewoof.MEAN, std=imagewoof.STD,
                         workers=4, skip_corrupt=False),
    # torchvision's ImageNet recipe (RandomResizedCrop(224) with its default scale, a flip)
    image_folder.NAME: dict(loader="stream", workers=8, skip_corrupt=False, crop_padding=0,
                            flip=True, random_resized_crop=True, image_size=224, stored_size=None,
                            mean=image_folder.MEAN, std=image_folder.STD, rrc_scale=(0.08, 1.0),
                            tfds_name="imagenet2012"),
}


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """The defaults for data set `name`; experiment configs start here and override fields.

  Fashion-MNIST flips too: every class is left-right symmetric in meaning, so a flip never
  changes a label (the shoes all face left in both splits, so flipped shoes are views the test set
  never shows; set flip=False to train on the test distribution alone).
  """
  if name not in _DEFAULTS:
    raise ValueError(f"unknown data set {name!r}; known: {sorted(_DEFAULTS)}")
  config = ml_collections.ConfigDict(dict(
      name=name, loader="device", source="local", dir=None, cache_dir=None, mirror=None,
      verify_checksums=True,
      fraction=1.0, subset_seed=0, val_fraction=0.0,
      rrc_scale=(0.35, 1.0), rrc_ratio=(3 / 4, 4 / 3)))
  config.update(_DEFAULTS[name])
  # Fields that are None by default but may be set to another type from the command line.
  for field, kind in (("dir", str), ("cache_dir", str), ("mirror", str), ("image_size", int),
                      ("stored_size", int)):
    if config[field] is None:
      config[field] = ml_collections.FieldReference(None, field_type=kind)
  return config


def _stratified_take(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
  """Indices of `share` of each class, drawn with `rng`; each class keeps at least one example.

  One permutation is drawn for the whole set and each class takes its first examples in that
  order, so with the same seed a smaller share is a subset of a larger one.
  """
  order = rng.permutation(len(labels))
  chosen = []
  for c in np.unique(labels):
    members = order[labels[order] == c]
    chosen.append(members[:max(1, int(round(share * len(members))))])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def split_indices(labels: np.ndarray, fraction: float, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) indices into the official training set; disjoint, sorted, seeded.

  The validation rows are held out of the whole set first (`val_fraction` of each class, drawn
  with `seed`), then `fraction` of the rows that remain is drawn for training. So the held-out
  rows depend on `val_fraction` and `seed` alone: runs at any fraction that share those two (a
  teacher on all the data, its students on shares of it) never train on one another's
  validation rows. With the same seed, a smaller fraction is a subset of a larger one.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"data.fraction must be in (0, 1], not {fraction}")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.val_fraction must be in [0, 1), not {val_fraction}")
  subset_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
  rest = np.arange(len(labels))
  held = np.zeros(0, np.int64)
  if val_fraction > 0.0:
    held = _stratified_take(labels, val_fraction, val_rng)
    rest = np.setdiff1d(rest, held, assume_unique=True)
  train = rest if fraction == 1.0 else rest[_stratified_take(labels[rest], fraction, subset_rng)]
  if not len(train):
    raise ValueError(f"data.val_fraction={val_fraction} leaves no training example")
  return train, held


def _statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  pixels = images.reshape(-1, images.shape[-1])
  total = np.zeros(pixels.shape[1])
  squares = np.zeros(pixels.shape[1])
  for start in range(0, len(pixels), 1 << 22):  # float64 in chunks: exact, without a copy of all
    chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255.0
    total += chunk.sum(0)
    squares += (chunk ** 2).sum(0)
  mean = total / max(len(pixels), 1)
  std = np.sqrt(np.maximum(squares / max(len(pixels), 1) - mean ** 2, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_dataset(data_config: Any) -> Dataset:
  """Loads (from the cache when possible), subsets and splits the data set `data_config` names."""
  arrays = sources.load_arrays(data_config)
  train, held = split_indices(arrays["train_labels"], data_config.get("fraction", 1.0),
                              data_config.get("val_fraction", 0.0),
                              data_config.get("subset_seed", 0))
  images, labels = arrays["train_images"], arrays["train_labels"]
  train_images = images if len(train) == len(images) else images[train]
  train_labels = labels if len(train) == len(labels) else labels[train]
  if len(held):
    eval_images, eval_labels, eval_split = images[held], labels[held], "validation"
  else:
    eval_images, eval_labels, eval_split = arrays["test_images"], arrays["test_labels"], "test"
  mean, std = data_config.get("mean"), data_config.get("std")
  if mean is None or std is None:
    mean, std = _statistics(train_images)
  channels = train_images.shape[-1]
  if len(mean) != channels or len(std) != channels:
    raise ValueError(f"data.mean and data.std need {channels} values, got {mean} and {std}")
  image_size = data_config.get("image_size")
  return Dataset(
      name=data_config.name, train_images=train_images, train_labels=train_labels,
      eval_images=eval_images, eval_labels=eval_labels, eval_split=eval_split,
      test_images=arrays["test_images"], test_labels=arrays["test_labels"],
      num_classes=sources.READERS[data_config.name].NUM_CLASSES,
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      input_size=int(image_size) if image_size else None,
      class_names=tuple(str(n) for n in arrays["class_names"]),
      rows_digest=_rows_digest(len(labels), train, held))


def _rows_digest(n: int, train: np.ndarray, held: np.ndarray) -> str:
  digest = hashlib.sha256(f"{n}:{len(train)}:{len(held)}:".encode())
  for rows in (train, held):
    digest.update(np.ascontiguousarray(rows, np.int64).tobytes())
  return digest.hexdigest()[:16]
