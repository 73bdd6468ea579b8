"""Fashion-MNIST from its four official IDX files (gzipped, or plain as torchvision leaves them).

Checksums. A download is checked against the md5 of each .gz file as torchvision lists them
(FashionMNIST.resources, which match the data set's README). Files already on disk are checked on
the md5 of their decompressed content instead, because Debian's `dataset-fashion-mnist` package
recompresses the .gz files (their gzip headers differ from the official ones, so the .gz md5s do not
match) while the IDX content is byte for byte the official one; the content md5s below are the ones
published next to torchvision's, and they match both the official files and Debian's.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from dnd_jax.data import files
from dnd_jax.data.files import DataError, RemoteFile

NAME = "fashion_mnist"
NUM_CLASSES = 10
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
# Per-channel statistics of the 60,000 training images on the [0, 1] scale (computed from the
# official files).
MEAN, STD = (0.2860,), (0.3530,)

_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_TORCHVISION = "torchvision.datasets.FashionMNIST.resources"
FILES = {
    "train_images": RemoteFile("train-images-idx3-ubyte.gz", _URL + "train-images-idx3-ubyte.gz",
                               md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d", source=_TORCHVISION),
    "train_labels": RemoteFile("train-labels-idx1-ubyte.gz", _URL + "train-labels-idx1-ubyte.gz",
                               md5="25c81989df183df01b3e8a0aad5dffbe", source=_TORCHVISION),
    "test_images": RemoteFile("t10k-images-idx3-ubyte.gz", _URL + "t10k-images-idx3-ubyte.gz",
                              md5="bef4ecab320f06d8554ea6380940ec79", source=_TORCHVISION),
    "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz", _URL + "t10k-labels-idx1-ubyte.gz",
                              md5="bb300cfdad3c16e7a12a480ee83cd310", source=_TORCHVISION),
}
# md5 of the decompressed IDX files, keyed like FILES.
CONTENT_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}

FIX = ("apt-get install dataset-fashion-mnist, or set --config.data.dir=<folder with the four IDX "
       ".gz files>, or --config.data.source=download")

_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def locate(folder: Path) -> dict[str, Path]:
  """Finds the four files in `folder`, or in torchvision's `FashionMNIST/raw` below it."""
  files.require(folder, FIX)
  candidates = [folder, folder / "FashionMNIST" / "raw"]
  found = {}
  for key, remote in FILES.items():
    for base in candidates:
      for name in (remote.name, remote.name[:-len(".gz")]):
        if (base / name).is_file():
          found[key] = base / name
          break
      if key in found:
        break
    else:
      raise files.MissingDataError(f"{folder / remote.name} not found. Fix: {FIX}.")
  return found


def source_files(folder: Path) -> list[Path]:
  """The four files `read(folder)` reads."""
  return list(locate(folder).values())


def _read_bytes(path: Path) -> bytes:
  if path.suffix != ".gz":
    return path.read_bytes()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()  # gzip checks the CRC-32 and length in the trailer, so truncation is seen
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(f"{path} is truncated or not a gzip file ({e}). Delete it and {FIX}.") from e


def _parse_idx(raw: bytes, path: Path, magic: int, ndim: int) -> np.ndarray:
  header = 4 + 4 * ndim
  if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
    raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes. {FIX}.")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(raw) != header + int(np.prod(shape)):
    raise DataError(f"{path} holds {len(raw) - header} data bytes, but its header says "
                    f"{shape}: the file is truncated. Delete it and {FIX}.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read(folder: Path, verify: bool) -> dict[str, np.ndarray]:
  """Returns train/test images (N, 28, 28, 1) uint8 and labels int32 from the files in `folder`."""
  paths = locate(folder)
  arrays = {}
  for key, path in paths.items():
    raw = _read_bytes(path)
    if verify:
      got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
      if got != CONTENT_MD5[key]:
        raise DataError(
            f"{path} is not the official {FILES[key].name}: the md5 of its content is {got}, "
            f"expected {CONTENT_MD5[key]}. Delete it and {FIX}; or, if you trust this copy, set "
            "--config.data.verify_checksums=False.")
    if key.endswith("images"):
      arrays[key] = _parse_idx(raw, path, _IMAGES_MAGIC, 3)[..., None]
    else:
      arrays[key] = _parse_idx(raw, path, _LABELS_MAGIC, 1).astype(np.int32)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) != len(labels) or (labels.size and labels.max() >= NUM_CLASSES):
      raise DataError(f"{paths[split + '_images']} and {paths[split + '_labels']} do not belong "
                      f"together ({len(images)} images, {len(labels)} labels). {FIX}.")
  arrays["class_names"] = np.array(CLASS_NAMES)
  return arrays


def download(folder: Path, mirror: str | None) -> Path:
  """Fetches the four .gz files into `folder` (checked against torchvision's md5s)."""
  for remote in FILES.values():
    files.download(remote, folder, mirror, "check the network or the mirror URL, or use "
                   "--config.data.source=local")
  return folder
