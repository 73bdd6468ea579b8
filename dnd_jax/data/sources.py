"""Where the arrays come from: which reader, which folder, and the decoded-array cache in front.

Decoding (gzip, pickles, 13k JPEGs) and resizing happen once; afterwards a run loads one .npz. The
cache is keyed by data set, source, stored size and the location read, so pointing `dir` at another
copy, or changing `image_size`, never returns stale arrays.
"""

from __future__ import annotations

import hashlib
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


def cache_dir(data_config: Any) -> Path:
  """The configured cache_dir, else $DND_JAX_CACHE, else ~/.cache/dnd_jax."""
  configured = data_config.get("cache_dir")
  return Path(configured or os.environ.get(ENV_CACHE) or "~/.cache/dnd_jax").expanduser()


def stored_size(data_config: Any) -> int | None:
  """Side of the cached images: Imagewoof's stored_size, else image_size (None = native)."""
  if data_config.name == imagewoof.NAME:
    return int(data_config.get("stored_size") or 160)
  return data_config.get("image_size")


def location(data_config: Any) -> Path | None:
  """The folder or archive read: `dir`, or the download folder, or the default for the data set."""
  if data_config.source == "download":
    return cache_dir(data_config) / data_config.name
  if data_config.get("dir"):
    return Path(data_config.dir).expanduser()
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


def load_arrays(data_config: Any) -> dict[str, np.ndarray]:
  """Returns train/test images and labels and class names, from the cache when it is valid."""
  if data_config.name not in READERS:
    raise ValueError(f"data.name must be one of {sorted(READERS)}, not {data_config.name!r}")
  if data_config.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, not {data_config.source!r}")
  path = cache_path(data_config)
  meta = {"name": data_config.name, "source": data_config.source,
          "stored_size": stored_size(data_config)}
  arrays = files.load_arrays(path, meta)
  if arrays is None:
    where = location(data_config)
    arrays = _read(data_config, where, stored_size(data_config))
    _check(arrays, data_config.name, where)
    files.save_arrays(path, arrays, meta)
  return arrays
