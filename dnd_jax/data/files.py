"""Files on disk: checksums, downloads and the decoded-array cache, all written atomically.

Every failure a user can fix (a missing, truncated or altered file) is a `DataError` whose message
names the file and says what to do, because the usual alternative, a traceback from deep inside
gzip or pickle, leaves people guessing which of several files is at fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

# Indirection so that tests can prove a cached or local file is used without touching the network.
urlopen = urllib.request.urlopen

CACHE_FORMAT = 1
_CHUNK = 1 << 20


class DataError(ValueError):
  """A data file is missing, truncated, corrupt or not the published one."""


class MissingDataError(DataError, FileNotFoundError):
  """A data file or folder is not there; also a FileNotFoundError so generic handlers catch it."""


class MissingPackageError(DataError, ImportError):
  """A data source's optional package is not installed: bad input (the fix is an install or
  another source), so a command says it in one line; also an ImportError."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """An official file and the published checksum that identifies it.

  `head_md5` is fastai's format (the md5 of the first MiB, together with the exact size): it is the
  only checksum published for the Imagewoof archives, so it is what we can check for them.
  """

  name: str
  url: str
  md5: str | None = None
  size: int | None = None
  head_md5: str | None = None
  source: str = ""  # where the checksum is published, for error messages and the docs


def md5_of(path: Path, limit: int | None = None) -> str:
  digest = hashlib.md5(usedforsecurity=False)
  remaining = limit
  with open(path, "rb") as f:
    while remaining is None or remaining > 0:
      chunk = f.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
      if not chunk:
        break
      digest.update(chunk)
      if remaining is not None:
        remaining -= len(chunk)
  return digest.hexdigest()


def checksum_problem(path: Path, remote: RemoteFile) -> str | None:
  """Returns why `path` is not the published file, or None when it matches."""
  if remote.size is not None:
    size = path.stat().st_size
    if size != remote.size:
      return f"size {size} bytes, expected {remote.size}"
  if remote.head_md5 is not None:
    got = md5_of(path, limit=_CHUNK)
    if got != remote.head_md5:
      return f"md5 of the first MiB {got}, expected {remote.head_md5}"
  if remote.md5 is not None:
    got = md5_of(path)
    if got != remote.md5:
      return f"md5 {got}, expected {remote.md5}"
  return None


def verify(path: Path, remote: RemoteFile, fix: str) -> None:
  problem = checksum_problem(path, remote)
  if problem is not None:
    raise DataError(
        f"{path} is not the published {remote.name}: {problem} (checksum from {remote.source}). "
        f"It may be truncated or altered: delete it and {fix}, or, if you trust this copy, set "
        "--config.data.verify_checksums=False.")


def require(path: Path, fix: str) -> Path:
  if not path.exists():
    raise MissingDataError(f"{path} not found. Fix: {fix}.")
  return path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
  """Yields a temporary path beside `path` and renames it over `path` only if the block succeeds.

  The temporary file lives in the same folder so that os.replace is an atomic rename: a reader, or
  a process killed half-way, never sees a partial `path`.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
  os.close(fd)
  tmp = Path(tmp_name)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    # mkstemp's file is private (0600); the final file gets a new file's usual mode, so a cache
    # or download folder shared by several users stays readable to them
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def download(remote: RemoteFile, folder: Path, mirror: str | None, fix: str) -> Path:
  """Returns `folder/remote.name`, fetching it first unless a verified copy is already there.

  The checksum is checked on the temporary file, so a wrong or interrupted download never takes
  the final name (and is deleted).
  """
  path = folder / remote.name
  if path.exists():
    problem = checksum_problem(path, remote)
    if problem is None:
      return path
    log.warning("%s does not match its checksum (%s); downloading it again.", path, problem)
  url = mirror.rstrip("/") + "/" + remote.name if mirror else remote.url
  log.info("Downloading %s to %s", url, path)
  with atomic_path(path) as tmp:
    try:
      with urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
    except OSError as e:  # URLError is an OSError
      raise MissingDataError(f"could not download {url} to {path}: {e}. Fix: {fix}.") from e
    problem = checksum_problem(tmp, remote)
    if problem is not None:
      raise DataError(
          f"the download of {url} for {path} does not match its published checksum "
          f"({problem}; checksum from {remote.source}); nothing was kept. Try again later, or "
          f"{fix}.")
  return path


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
  """Writes `arrays` as an uncompressed .npz, atomically.

  A .npz is a zip archive, which stores a CRC-32 of every member; zipfile checks it when np.load
  reads a member to its end, so damaged bytes anywhere in an array are seen on load.
  """
  header = dict(meta, format=CACHE_FORMAT, arrays=sorted(arrays))
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, __meta__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)


def load_arrays(path: Path, meta: dict) -> dict[str, np.ndarray] | None:
  """Returns the cached arrays, or None (and deletes the file) when it is absent, stale or damaged.

  Stale: its header differs from `meta` in any key `meta` has (a key it lacks matches anything).

  A damaged cache is rebuilt rather than reported: it holds nothing that the official files cannot
  give again, and the usual cause (a full disk, a copy cut short) is not something to fix by hand.
  """
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      header = json.loads(npz["__meta__"].tobytes().decode())
      if header.get("format") != CACHE_FORMAT or any(header.get(k) != v for k, v in meta.items()):
        raise ValueError("written for another configuration or format")
      arrays = {k: npz[k] for k in header["arrays"]}  # reads each member whole: checks its CRC
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
    log.warning("Cache %s is unusable (%s); rebuilding it.", path, e)
    try:
      path.unlink(missing_ok=True)
    except OSError:  # a read-only cache folder: the rebuilt arrays are then used uncached
      pass
    return None
  return arrays
