"""An ImageNet-layout folder, read image by image: `train/<class>/*.JPEG`, `val/<class>/*.JPEG`.

The layout torchvision's ImageFolder reads and the official ILSVRC2012 archives unpack to (with
the validation images sorted into class folders, as every ImageNet recipe does). Classes are the
sorted folder names of `train/`, numbered in that order, as ImageFolder numbers them; `val/` is
the evaluation split, the one the field reports ImageNet results on.

Unlike the resident data sets this one is never decoded whole (ImageNet-1k is about 140 GB of
JPEGs): `scan` lists the files once, and the streaming pipeline (`dnd_jax.data.stream`) decodes
each image when a batch needs it, with torchvision's ImageNet transforms:
  training    RandomResizedCrop(image_size, scale, ratio) and a horizontal flip (p = 1/2);
  evaluation  the short side resized to image_size * 256 / 224, a centre crop of image_size.
Everything a layout problem can be (a missing split, an empty class folder, classes that differ
between the splits) is one `DataError` from `scan`, before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dnd_jax.data import files
from dnd_jax.data.files import DataError

NAME = "imagenet"
SPLITS = ("train", "val")
# torchvision's ImageNet statistics, which its published weights (the KD teachers) expect
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# what torchvision's ImageFolder accepts (has_file_allowed_extension, case-insensitive)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# the evaluation resize: 256 for 224 crops, the ratio torchvision's reference recipe uses
EVAL_RESIZE_RATIO = 256 / 224

FIX = ("set --config.data.dir to a folder holding train/<class>/*.JPEG and val/<class>/*.JPEG "
       "(as torchvision's ImageFolder reads)")


@dataclasses.dataclass(frozen=True)
class Split:
  """The files of one split, in sorted (class, file name) order, and their labels."""

  paths: tuple[str, ...]  # relative to the folder
  labels: np.ndarray  # int32

  def __len__(self) -> int:
    return len(self.paths)

  def files(self, root: Path) -> FolderFiles:
    return FolderFiles(root, self)

  def digest(self) -> str:
    """Which files, under which labels: what a resumed run must go on with, and what a model's
    evaluation record says it was measured on."""
    h = hashlib.sha256()
    for path, label in zip(self.paths, self.labels):
      h.update(f"{path}\0{int(label)}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FolderFiles:
  """A split's rows as the stream reads them: row -> (decoded image, label). Picklable, for
  Grain's workers."""

  root: Path
  split: Split

  def __len__(self) -> int:
    return len(self.split)

  def read(self, row: int) -> tuple[Image.Image, int]:
    return decode(self.root / self.split.paths[row]), int(self.split.labels[row])


@dataclasses.dataclass(frozen=True)
class Layout:
  root: Path
  classes: tuple[str, ...]
  train: Split
  val: Split


def _images(folder: Path) -> list[str]:
  with os.scandir(folder) as entries:
    return sorted(e.name for e in entries
                  if e.name.lower().endswith(EXTENSIONS) and e.is_file())


def _class_folders(split_dir: Path) -> list[str]:
  with os.scandir(split_dir) as entries:
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def scan(where: Path) -> Layout:
  """The folder's classes and files; a `DataError` naming the first layout problem."""
  files.require(where, FIX)
  for split in SPLITS:
    if not (where / split).is_dir():
      raise files.MissingDataError(f"{where / split} not found: the folder has no {split} split; "
                                   f"{FIX}.")
  classes = {split: _class_folders(where / split) for split in SPLITS}
  if not classes["train"]:
    raise DataError(f"{where / 'train'} holds no class folders; {FIX}.")
  if classes["train"] != classes["val"]:
    only_train = sorted(set(classes["train"]) - set(classes["val"]))
    only_val = sorted(set(classes["val"]) - set(classes["train"]))
    raise DataError(
        f"{where}: the classes of train/ and val/ differ (only in train: "
        f"{', '.join(only_train[:5]) or 'none'}{' ...' if len(only_train) > 5 else ''}; only in "
        f"val: {', '.join(only_val[:5]) or 'none'}{' ...' if len(only_val) > 5 else ''}): every "
        "class needs a folder in both splits.")
  splits = {}
  for split in SPLITS:
    paths, labels = [], []
    for label, name in enumerate(classes["train"]):
      images = _images(where / split / name)
      if not images:
        raise DataError(f"{where / split / name} holds no images (files ending in "
                        f"{', '.join(EXTENSIONS[:3])}, ...): add its images or remove the class "
                        "from both splits.")
      paths += [f"{split}/{name}/{image}" for image in images]
      labels += [label] * len(images)
    splits[split] = Split(tuple(paths), np.asarray(labels, np.int32))
  return Layout(where, tuple(classes["train"]), splits["train"], splits["val"])


def decode(path: Path | bytes, name: str | None = None) -> Image.Image:
  """The image at `path` (or encoded in `path`'s bytes, a record named `name`) as RGB, read
  whole; a `DataError` naming the file when it does not decode (truncated, corrupt, not an
  image)."""
  try:
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
      image.load()  # decodes now: a truncated file fails here rather than half-read later
      return image.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"{name or path}: cannot decode this image ({e}); replace or remove it, or "
                    "set --config.data.skip_corrupt=True to skip unreadable images.") from e


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) as torchvision's `RandomResizedCrop.get_params` draws it: ten tries at a
  box of random area and log-uniform aspect that fits, else the whole image's centre at the
  aspect clamped to `ratio`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def train_view(image: Image.Image, size: int, rng: np.random.Generator, scale, ratio,
               flip: bool) -> np.ndarray:
  """torchvision's training transform: a random resized crop to size x size, then maybe a flip;
  uint8 (size, size, 3)."""
  top, left, h, w = random_resized_crop_box(image.height, image.width, rng, scale, ratio)
  out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
  array = np.asarray(out, np.uint8)
  if flip and rng.random() < 0.5:
    array = array[:, ::-1]
  return np.ascontiguousarray(array)


def eval_view(image: Image.Image, size: int) -> np.ndarray:
  """torchvision's evaluation transform: Resize(size * 256 / 224) of the short side, then
  CenterCrop(size); uint8 (size, size, 3)."""
  short = int(size * EVAL_RESIZE_RATIO)
  if image.width <= image.height:
    new = (short, int(short * image.height / image.width))
  else:
    new = (int(short * image.width / image.height), short)
  image = image.resize(new, Image.Resampling.BILINEAR)
  top = int(round((image.height - size) / 2.0))
  left = int(round((image.width - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
