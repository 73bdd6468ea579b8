"""Where the arrays come from: which reader, which folder, and the decoded-array cache in front.

Decoding (gzip, pickles, 13k JPEGs) and resizing happen once; afterwards a run loads one .npz. The
cache is keyed by data set, source, stored size and the location read, so pointing `dir` at another
copy, or changing `image_size`, never returns stale arrays; it records the size and mtime of
every file the reader reads, so files replaced in the same folder are decoded again, and whether
the checksums were checked, so a cache decoded without them never passes for checked data. The
cache is only a speed-up: when it cannot be written, the run says so once and goes on without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from dnd_jax.data import cifar100, fashion_mnist, files, imagewoof, tfds_source
from dnd_jax.data.files import DataError

READERS: dict[str, ModuleType] = {m.NAME: m for m in (fashion_mnist, cifar100, imagewoof)}
SOURCES = ("local", "download", "tfds")
ENV_CACHE = "DND_JAX_CACHE"
log = logging.getLogger(__name__)
_unwritable: set[Path] = set()  # cache folders already reported as unwritable


def cache_root() -> Path:
  """$DND_JAX_CACHE, else ~/.cache/dnd_jax: the folder of this project's caches (decoded data
  sets here, XLA's compiled programs in `dnd_jax.runtime`), so that one variable moves them all."""
  return Path(os.environ.get(ENV_CACHE) or "~/.cache/dnd_jax").expanduser()


def cache_dir(data_config: Any) -> Path:
  """The configured cache_dir, else `cache_root()`."""
  configured = data_config.get("cache_dir")
  return Path(configured).expanduser() if configured else cache_root()


def stored_size(data_config: Any) -> int | None:
  """Side of the cached images: Imagewoof's stored_size, else image_size (None = native)."""
  if data_config.name == imagewoof.NAME:
    return int(data_config.get("stored_size") or 160)
  return data_config.get("image_size")


def location(data_config: Any) -> Path | None:
  """The folder or archive read: `dir` (where a download goes too, when set), or the download
  folder in the cache, or the default for the data set."""
  if data_config.get("dir"):
    return Path(data_config.dir).expanduser()
  if data_config.source == "download":
    return cache_dir(data_config) / data_config.name
  if data_config.source == "tfds":
    return None  # TFDS's own default data_dir
  if data_config.name == fashion_mnist.NAME:
    return fashion_mnist.DEFAULT_DIR
  return cache_dir(data_config) / data_config.name


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes square uint8 images with PIL's bilinear filter, which antialiases when shrinking."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)).reshape(out.shape[1:])
  return out


def _read(data_config: Any, where: Path | None, size: int | None) -> dict[str, np.ndarray]:
  name, verify = data_config.name, data_config.get("verify_checksums", True)
  reader = READERS[name]
  if data_config.source == "tfds":
    arrays = tfds_source.read(name, where)
  else:
    if data_config.source == "download":
      reader.download(where, data_config.get("mirror"))
    if name == imagewoof.NAME:
      return imagewoof.read(where, verify, size)
    arrays = reader.read(where, verify)
  if size is not None:
    for split in ("train", "test"):
      arrays[f"{split}_images"] = resize(arrays[f"{split}_images"], size)
  return arrays


def _check(arrays: dict[str, np.ndarray], name: str, where: Any) -> None:
  num_classes = READERS[name].NUM_CLASSES
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
      raise DataError(f"{where}: {split} images {images.shape} {images.dtype} do not match "
                      f"{labels.shape} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise DataError(f"{where}: {split} labels outside 0..{num_classes - 1}.")


def cache_path(data_config: Any) -> Path:
  where, size = location(data_config), stored_size(data_config)
  spot = str(where.resolve()) if where is not None else "default"
  digest = hashlib.sha1(spot.encode()).hexdigest()[:10]
  tag = f"{size}px" if size else "native"
  return (cache_dir(data_config) / "arrays" /
          f"{data_config.name}-{data_config.source}-{tag}-{digest}.npz")


def source_fingerprint(name: str, where: Path | None) -> str | None:
  """A digest of the path, size and mtime of each file the reader of `name` reads at `where`.

  Cheap (one stat per file, no reading) and it changes whenever one of them is replaced,
  truncated or added to, which is what makes a cached decode stale. Only the reader's own files
  count (`READERS[name].source_files`): a data root that also holds the cache, other data sets
  or a symlinked copy neither invalidates the cache nor costs a walk of everything below it. None
  where there is nothing local to look at, or the files are missing (the read then says which).
  """
  if where is None or not where.exists():
    return None
  try:
    paths = READERS[name].source_files(where)
  except files.MissingDataError:
    return None
  digest = hashlib.sha1()
  for p in paths:
    st = p.stat()  # follows symlinks: a linked file or folder counts with its target's state
    digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _save_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
  try:
    files.save_arrays(path, arrays, meta)
  except OSError as e:  # read-only or full cache folder: the cache is only a speed-up
    if path.parent not in _unwritable:
      _unwritable.add(path.parent)
      log.warning("Cannot write the data cache in %s (%s); training without it. Set "
                  "--config.data.cache_dir or $%s to a writable folder to cache decoded data.",
                  path.parent, e.strerror or e, ENV_CACHE)


def load_arrays(data_config: Any) -> dict[str, np.ndarray]:
  """Returns train/test images and labels and class names, from the cache when it is valid."""
  if data_config.name not in READERS:
    raise ValueError(f"data.name must be one of {sorted(READERS)}, not {data_config.name!r}")
  if data_config.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, not {data_config.source!r}")
  path = cache_path(data_config)
  where, name = location(data_config), data_config.name
  meta = {"name": name, "source": data_config.source, "stored_size": stored_size(data_config),
          "files": source_fingerprint(name, where)}
  # a cache decoded without the checksums does not stand in for a read that asks for them
  verified = bool(data_config.get("verify_checksums", True)) and data_config.source != "tfds"
  arrays = files.load_arrays(path, {**meta, "verified": True} if verified else meta)
  if arrays is None:
    arrays = _read(data_config, where, stored_size(data_config))
    _check(arrays, name, where)
    if data_config.source == "download":  # the files exist only now
      meta["files"] = source_fingerprint(name, where)
    _save_cache(path, arrays, {**meta, "verified": verified})
  return arrays
