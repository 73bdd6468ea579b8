"""Imagewoof v2 (160 px) from the official `imagewoof2-160` folder or `imagewoof2-160.tgz` archive.

The layout is `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`; `val` is the data set's test split.
Classes are numbered in sorted WordNet-id order (as torchvision's ImageFolder and fastai do).

Each JPEG is decoded once, its short side resized to `stored_size` and centre-cropped square, so
the cache is one dense uint8 array and the random-resized crop can run on the accelerator.

Checksum. No full-file checksum of imagewoof2-160.tgz is published. fastai, which hosts the file,
publishes its exact size and the md5 of its first MiB (fastai/data/download_checks.py), and that is
what is checked, on downloads and on a local archive; the gzip CRC-32 in the archive's trailer then
covers the rest of the content as it is decoded. A local folder has no published checksum: it is
checked for the published image counts (9,025 train, 3,929 val) and 10 classes instead.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dnd_jax.data import files
from dnd_jax.data.files import DataError, RemoteFile

NAME = "imagewoof"
NUM_CLASSES = 10
FOLDER = "imagewoof2-160"
# ImageNet statistics: Imagewoof is an ImageNet subset and the paper's models use the ImageNet stem.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

ARCHIVE = RemoteFile("imagewoof2-160.tgz",
                     "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz",
                     size=92612825, head_md5="3559b194123981a540b87132dbda412f",
                     source="fastai/data/download_checks.py (size and md5 of the first MiB)")
EXPECTED_COUNTS = {"train": 9025, "val": 3929}
SPLITS = {"train": "train", "val": "test"}

FIX = ("set --config.data.dir=<the imagewoof2-160 folder, the imagewoof2-160.tgz archive, or the "
       "folder holding either>, or --config.data.source=download")

_EXTENSIONS = (".jpeg", ".jpg", ".png")


def locate(path: Path) -> Path:
  """Returns the archive or the `imagewoof2-160` folder that `path` names or contains."""
  files.require(path, FIX)
  if path.is_file():
    return path
  for candidate in (path, path / FOLDER):
    if (candidate / "train").is_dir() and (candidate / "val").is_dir():
      return candidate
  if (path / ARCHIVE.name).is_file():
    return path / ARCHIVE.name
  raise files.MissingDataError(f"{path / FOLDER / 'train'} not found (nor "
                               f"{path / ARCHIVE.name}). Fix: {FIX}.")


def source_files(path: Path) -> list[Path]:
  """The files `read(path)` reads: the archive, or the images of the folder's splits."""
  found = locate(path)
  if found.is_file():
    return [found]
  return [p for split in SPLITS for p in sorted((found / split).glob("*/*")) if p.is_file()]


def _entry(parts: tuple[str, ...]) -> tuple[str, str] | None:
  """(split, wnid) for a path ending in <split>/<wnid>/<image>, else None."""
  if len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(_EXTENSIONS):
    return parts[-3], parts[-2]
  return None


def _from_folder(folder: Path) -> list[tuple[str, str, str, bytes]]:
  items = []
  for split in SPLITS:
    for path in sorted((folder / split).glob("*/*")):
      entry = _entry(path.parts)
      if entry is not None:
        items.append((*entry, str(path), path.read_bytes()))
  return items


def _from_archive(archive: Path) -> list[tuple[str, str, str, bytes]]:
  items = []
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar:
        entry = _entry(Path(member.name).parts)
        if member.isfile() and entry is not None:
          items.append((*entry, f"{archive}:{member.name}", tar.extractfile(member).read()))
      tar.fileobj.read()  # reads to the end so that gzip checks the CRC-32 in the trailer
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(f"{archive} is truncated or not a tar.gz archive ({e}). Delete it and "
                    f"{FIX}.") from e
  return sorted(items, key=lambda item: item[2])


def decode(raw: bytes, where: str, size: int) -> np.ndarray:
  """Decodes one image to RGB, short side resized to `size`, centre-cropped to size x size."""
  try:
    with Image.open(io.BytesIO(raw)) as image:
      image.draft("RGB", (size, size))  # lets libjpeg decode big images at a reduced scale
      image = image.convert("RGB")
      return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"{where} is not a readable image ({e}). {FIX}.") from e


def read(path: Path, verify: bool, stored_size: int) -> dict[str, np.ndarray]:
  """Returns train/test images (N, stored_size, stored_size, 3) uint8, labels and class names."""
  source = locate(path)
  if source.is_file():
    if verify:
      files.verify(source, ARCHIVE, FIX)
    items = _from_archive(source)
  else:
    items = _from_folder(source)
  classes = sorted({wnid for split, wnid, _, _ in items if split == "train"})
  stray = sorted({wnid for split, wnid, _, _ in items if split == "val"} - set(classes))
  if not classes or stray:
    raise DataError(f"{source} has no train/<wnid>/ images, or val/ classes missing from train/ "
                    f"({stray[:3]}): not an Imagewoof copy. {FIX}.")
  counts = {split: sum(item[0] == split for item in items) for split in SPLITS}
  if verify and source.is_dir() and (counts != EXPECTED_COUNTS or len(classes) != NUM_CLASSES):
    raise DataError(
        f"{source} holds {counts} images in {len(classes)} classes, not the published "
        f"{EXPECTED_COUNTS} in {NUM_CLASSES}: it is incomplete or another version. {FIX}; or, if "
        "you trust this copy, set --config.data.verify_checksums=False.")
  index = {wnid: i for i, wnid in enumerate(classes)}
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes without the GIL
    images = list(pool.map(lambda item: decode(item[3], item[2], stored_size), items))
  arrays = {"class_names": np.array(classes)}
  for split, name in SPLITS.items():
    chosen = [i for i, item in enumerate(items) if item[0] == split]
    arrays[f"{name}_images"] = (np.stack([images[i] for i in chosen]) if chosen
                                else np.zeros((0, stored_size, stored_size, 3), np.uint8))
    arrays[f"{name}_labels"] = np.array([index[items[i][1]] for i in chosen], np.int32)
  return arrays


def download(folder: Path, mirror: str | None) -> Path:
  return files.download(ARCHIVE, folder, mirror, "check the network or the mirror URL, or use "
                        "--config.data.source=local")
