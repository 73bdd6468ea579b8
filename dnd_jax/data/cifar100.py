"""CIFAR-100 from the official `cifar-100-python` pickles, in a folder or in the .tar.gz archive.

`dir` may name the archive, the `cifar-100-python` folder, or the folder holding either of them
(torchvision's `root`), so a copy that torchvision downloaded is read where it lies.
Checksums are torchvision's (datasets/cifar.py, CIFAR100): the archive's md5 when reading the
archive, the md5 of each pickle when reading the folder.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from dnd_jax.data import files
from dnd_jax.data.files import DataError, RemoteFile

NAME = "cifar100"
NUM_CLASSES = 100
FOLDER = "cifar-100-python"
# The statistics the distillation literature normalises CIFAR-100 with (RepDistiller, mdistiller).
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

_TORCHVISION = "torchvision.datasets.CIFAR100"
ARCHIVE = RemoteFile("cifar-100-python.tar.gz",
                     "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85", source=_TORCHVISION)
MEMBER_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d",
              "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
              "meta": "7973b15100ade9c7d40fb424638fde48"}

FIX = ("set --config.data.dir=<the cifar-100-python folder, the cifar-100-python.tar.gz archive, "
       "or the folder holding either>, or --config.data.source=download")

# A pickle can run arbitrary code; the CIFAR pickles need nothing beyond rebuilding numpy arrays.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    if module == "numpy.core.multiarray":  # written by numpy 1; numpy 2 keeps it in numpy._core
      module = "numpy._core.multiarray"
    return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
  try:
    # latin1 keeps Python 2's byte strings (the official files) readable, as torchvision does.
    obj = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise DataError(f"{where} is not a CIFAR-100 pickle or is truncated ({e}). {FIX}.") from e
  if not isinstance(obj, dict):
    raise DataError(f"{where} is not a CIFAR-100 pickle (a {type(obj).__name__}). {FIX}.")
  return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def locate(path: Path) -> Path:
  """Returns the archive or the `cifar-100-python` folder that `path` names or contains."""
  files.require(path, FIX)
  if path.is_file() and path.name in MEMBER_MD5:  # one of the folder's files: its folder
    path = path.parent
  if path.is_file():
    return path
  for candidate in (path, path / FOLDER):
    if all((candidate / m).is_file() for m in MEMBER_MD5):
      return candidate
  if (path / ARCHIVE.name).is_file():
    return path / ARCHIVE.name
  missing = next(path / FOLDER / m for m in MEMBER_MD5 if not (path / FOLDER / m).is_file())
  raise files.MissingDataError(f"{missing} not found (nor {path / ARCHIVE.name}). Fix: {FIX}.")


def source_files(path: Path) -> list[Path]:
  """The files `read(path)` reads: the archive, or the folder's three pickles."""
  found = locate(path)
  return [found] if found.is_file() else [found / m for m in MEMBER_MD5]


def _members_from_archive(archive: Path) -> dict[str, bytes]:
  raw = {}
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar:
        parts = Path(member.name).parts
        if member.isfile() and len(parts) == 2 and parts[0] == FOLDER and parts[1] in MEMBER_MD5:
          raw[parts[1]] = tar.extractfile(member).read()
      tar.fileobj.read()  # reads to the end so that gzip checks the CRC-32 in the trailer
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(f"{archive} is truncated or not a tar.gz archive ({e}). Delete it and "
                    f"{FIX}.") from e
  missing = [m for m in MEMBER_MD5 if m not in raw]
  if missing:
    raise DataError(f"{archive} has no {FOLDER}/{missing[0]}: it is not the CIFAR-100 python "
                    f"archive. {FIX}.")
  return raw


def _members_from_folder(folder: Path, verify: bool) -> dict[str, bytes]:
  raw = {}
  for member, md5 in MEMBER_MD5.items():
    path = folder / member
    if verify:
      files.verify(path, RemoteFile(member, ARCHIVE.url, md5=md5, source=_TORCHVISION), FIX)
    raw[member] = path.read_bytes()
  return raw


def _split(entry: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    data = np.asarray(entry["data"], np.uint8)
    labels = np.asarray(entry["fine_labels"], np.int32)
  except KeyError as e:
    raise DataError(f"{where} has no {e} entry: not a CIFAR-100 pickle. {FIX}.") from e
  if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
    raise DataError(f"{where} holds data of shape {data.shape} and {len(labels)} labels, not "
                    f"N x 3072 and N. {FIX}.")
  # Each row is the red plane, then green, then blue, each 32x32 row-major.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read(path: Path, verify: bool) -> dict[str, np.ndarray]:
  """Returns train/test images (N, 32, 32, 3) uint8, fine labels int32 and the class names."""
  source = locate(path)
  if source.is_file():
    if verify:
      files.verify(source, ARCHIVE, FIX)
    raw, where = _members_from_archive(source), f"{source}:{FOLDER}/"
  else:
    raw, where = _members_from_folder(source, verify), f"{source}/"
  arrays = {}
  for split in ("train", "test"):
    images, labels = _split(_unpickle(raw[split], where + split), where + split)
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
  names = _unpickle(raw["meta"], where + "meta").get("fine_label_names")
  if names is None or len(names) != NUM_CLASSES:
    raise DataError(f"{where}meta does not list {NUM_CLASSES} fine_label_names. {FIX}.")
  arrays["class_names"] = np.array(names)
  return arrays


def download(folder: Path, mirror: str | None) -> Path:
  return files.download(ARCHIVE, folder, mirror, "check the network or the mirror URL, or use "
                        "--config.data.source=local")
