"""The data layer: every reader on small files in the official formats, the real Fashion-MNIST,
downloads, checksums, the cache, and the seeded subsets."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd_jax import data
from dnd_jax.data import cifar100, fashion_mnist, files, imagewoof, sources

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def caplog(caplog, monkeypatch):
  """pytest's caplog, reached by the package's records: the `dnd_jax` logger does not propagate
  to the root logger, where caplog listens (dnd_jax/logs.py says why)."""
  monkeypatch.setattr(logging.getLogger("dnd_jax"), "propagate", True)
  return caplog


def md5(raw: bytes) -> str:
  return hashlib.md5(raw).hexdigest()


def config(name, tmp_path, **overrides):
  c = data.default_data_config(name)
  c.cache_dir = str(tmp_path / "cache")
  c.update(overrides)
  return c


def leftovers(folder: Path) -> list[str]:
  """Temporary files that a failed write must not leave behind."""
  return [p.name for p in folder.rglob("*") if p.name.endswith(".part")] if folder.exists() else []


# ---------------------------------------------------------------- Fashion-MNIST IDX files


def make_fashion(folder: Path, rng, n_train=40, n_test=20, size=28) -> dict[str, np.ndarray]:
  """Writes the four IDX .gz files; returns the arrays and the md5s of each .gz and its content."""
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {"train_images": rng.integers(0, 256, (n_train, size, size), np.uint8),
            "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
            "test_images": rng.integers(0, 256, (n_test, size, size), np.uint8),
            "test_labels": np.arange(n_test, dtype=np.uint8)[::-1] % 10}
  sums = {}
  for key, array in arrays.items():
    magic = 0x803 if key.endswith("images") else 0x801
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw += array.tobytes()
    gz = gzip.compress(raw)
    (folder / fashion_mnist.FILES[key].name).write_bytes(gz)
    sums[key] = (md5(gz), md5(raw))
  arrays["sums"] = sums
  return arrays


def trust_fashion(monkeypatch, sums):
  """Makes the synthetic files the 'published' ones, so the real checksum code runs on them."""
  for key, (gz_md5, content_md5) in sums.items():
    monkeypatch.setitem(fashion_mnist.FILES, key,
                        dataclasses.replace(fashion_mnist.FILES[key], md5=gz_md5))
    monkeypatch.setitem(fashion_mnist.CONTENT_MD5, key, content_md5)


def test_fashion_mnist_local_reads_idx_files(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])
  ds = data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm")))
  assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (40, 28, 28, 1)
  assert ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images[..., 0], made["train_images"])
  np.testing.assert_array_equal(ds.train_labels, made["train_labels"])
  np.testing.assert_array_equal(ds.test_images[..., 0], made["test_images"])
  np.testing.assert_array_equal(ds.test_labels, made["test_labels"])
  assert ds.eval_split == "test" and ds.eval_images is ds.test_images
  assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
  assert ds.mean == fashion_mnist.MEAN and ds.class_names[0] == "T-shirt/top"


def test_fashion_mnist_torchvision_layout_and_resize(tmp_path, monkeypatch):
  raw = tmp_path / "root" / "FashionMNIST" / "raw"
  made = make_fashion(raw, np.random.default_rng(1))
  trust_fashion(monkeypatch, made["sums"])
  for f in list(raw.iterdir())[:2]:  # torchvision keeps both; plain IDX must read the same
    f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
    f.unlink()
  ds = data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "root"),
                                image_size=8))
  assert ds.train_images.shape == (40, 8, 8, 1) and ds.image_shape == (8, 8, 1)
  expected = np.asarray(Image.fromarray(made["test_images"][3]).resize((8, 8),
                                                                      Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(ds.test_images[3, ..., 0], expected)


@pytest.mark.skipif(not REAL_FASHION.is_dir(),
                    reason=f"{REAL_FASHION} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
  """The real files, with their content checksums verified (the default)."""
  c = config("fashion_mnist", tmp_path, mean=None, std=None)
  ds = data.load_dataset(c)
  assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  np.testing.assert_allclose(ds.mean, fashion_mnist.MEAN, atol=1e-4)
  np.testing.assert_allclose(ds.std, fashion_mnist.STD, atol=1e-4)
  # Debian recompressed the .gz files: their own md5s are not torchvision's, the content is.
  assert files.md5_of(REAL_FASHION / fashion_mnist.FILES["test_labels"].name) != \
      fashion_mnist.FILES["test_labels"].md5


def test_missing_fashion_file_names_it_and_the_fix(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])
  (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.MissingDataError) as e:
    data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm")))
  assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, data.DataError)
  assert "t10k-labels-idx1-ubyte.gz" in str(e.value)
  assert "apt-get install dataset-fashion-mnist" in str(e.value)
  assert "--config.data.source=download" in str(e.value)


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.*dataset-fashion-mnist"):
    data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "nowhere")))


def test_truncated_gz_names_the_file_and_writes_no_cache(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])
  path = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz is truncated"):
    data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm")))
  assert not list((tmp_path / "cache").rglob("*.npz")) and not leftovers(tmp_path / "cache")


def test_altered_fashion_file_fails_its_checksum(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])
  make_fashion(tmp_path / "fm", np.random.default_rng(5))  # same shapes, other pixels
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"))
  with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz is not the official.*"
                     "verify_checksums=False"):
    data.load_dataset(c)
  c.verify_checksums = False
  assert data.load_dataset(c).train_images.shape == (40, 28, 28, 1)


def test_truncated_idx_content_is_detected(tmp_path, monkeypatch):
  """A file cut short before it was gzipped passes gzip's CRC; the IDX header still catches it."""
  make_fashion(tmp_path / "fm", np.random.default_rng(0))
  path = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
  with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz holds .* truncated"):
    data.load_dataset(config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"),
                             verify_checksums=False))


# ---------------------------------------------------------------- CIFAR-100 pickles


def make_cifar(root: Path, rng, n_train=30, n_test=10, bytes_keys=False) -> dict:
  """Writes cifar-100-python/{train,test,meta} as Python-2-era pickles (protocol 2) do."""
  folder = root / cifar100.FOLDER
  folder.mkdir(parents=True, exist_ok=True)
  key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
  made = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    labels = list(rng.integers(0, 100, n))
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    entry = {key("data"): rows, key("fine_labels"): [int(x) for x in labels],
             key("coarse_labels"): [0] * n, key("filenames"): [b"x.png"] * n,
             key("batch_label"): b"training batch 1 of 1"}
    (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    made[split] = (images, np.array(labels, np.int32))
  meta = {key("fine_label_names"): [f"class{i}" for i in range(100)],
          key("coarse_label_names"): [f"super{i}" for i in range(20)]}
  (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
  return made


def tar_gz(source: Path, archive: Path, arcname: str) -> Path:
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(source, arcname=arcname)
  return archive


def trust_cifar(monkeypatch, root: Path, archive: Path | None = None):
  for member in cifar100.MEMBER_MD5:
    monkeypatch.setitem(cifar100.MEMBER_MD5, member,
                        md5((root / cifar100.FOLDER / member).read_bytes()))
  if archive is not None:
    monkeypatch.setattr(cifar100, "ARCHIVE",
                        dataclasses.replace(cifar100.ARCHIVE, md5=md5(archive.read_bytes())))


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar100_folder(tmp_path, monkeypatch, bytes_keys):
  made = make_cifar(tmp_path / "root", np.random.default_rng(0), bytes_keys=bytes_keys)
  trust_cifar(monkeypatch, tmp_path / "root")
  # torchvision's root, or the folder itself
  for where in (tmp_path / "root", tmp_path / "root" / cifar100.FOLDER):
    ds = data.load_dataset(config("cifar100", tmp_path, dir=str(where)))
    np.testing.assert_array_equal(ds.train_images, made["train"][0])
    np.testing.assert_array_equal(ds.train_labels, made["train"][1])
    np.testing.assert_array_equal(ds.test_images, made["test"][0])
    assert ds.train_labels.dtype == np.int32 and ds.image_shape == (32, 32, 3)
    assert ds.num_classes == 100 and ds.class_names[7] == "class7"


def test_cifar100_archive_matches_folder(tmp_path, monkeypatch):
  made = make_cifar(tmp_path / "src", np.random.default_rng(2))
  archive = tar_gz(tmp_path / "src" / cifar100.FOLDER, tmp_path / cifar100.ARCHIVE.name,
                   cifar100.FOLDER)
  trust_cifar(monkeypatch, tmp_path / "src", archive)
  for where in (archive, tmp_path):  # the archive itself, or the folder holding it
    ds = data.load_dataset(config("cifar100", tmp_path, dir=str(where), image_size=16))
    assert ds.train_images.shape == (30, 16, 16, 3)
  ds = data.load_dataset(config("cifar100", tmp_path, dir=str(archive)))
  np.testing.assert_array_equal(ds.train_images, made["train"][0])
  np.testing.assert_array_equal(ds.test_labels, made["test"][1])


def test_truncated_cifar_archive(tmp_path, monkeypatch):
  make_cifar(tmp_path / "src", np.random.default_rng(2))
  archive = tar_gz(tmp_path / "src" / cifar100.FOLDER, tmp_path / cifar100.ARCHIVE.name,
                   cifar100.FOLDER)
  trust_cifar(monkeypatch, tmp_path / "src", archive)
  archive.write_bytes(archive.read_bytes()[:-200])
  c = config("cifar100", tmp_path, dir=str(archive))
  with pytest.raises(data.DataError, match=r"cifar-100-python.tar.gz is not the published.*md5"):
    data.load_dataset(c)
  c.verify_checksums = False  # without the checksum, decoding itself must notice
  with pytest.raises(data.DataError, match=r"cifar-100-python.tar.gz is truncated"):
    data.load_dataset(c)
  assert not list((tmp_path / "cache").rglob("*.npz")) and not leftovers(tmp_path / "cache")


def test_cifar_pickle_cannot_run_code(tmp_path):
  make_cifar(tmp_path, np.random.default_rng(0))
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.mkdir, (str(marker),))

  (tmp_path / cifar100.FOLDER / "train").write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(data.DataError, match="train is not a CIFAR-100 pickle.*refusing"):
    data.load_dataset(config("cifar100", tmp_path, dir=str(tmp_path), verify_checksums=False))
  assert not marker.exists()


# ---------------------------------------------------------------- Imagewoof JPEG folders

WNIDS = ["n02115641", "n02086240", "n02093754", "n02088364", "n02111889", "n02087394",
         "n02105641", "n02096294", "n02099601", "n02089973"]  # not sorted, on purpose


def colour(wnid: str) -> tuple[int, int, int]:
  i = sorted(WNIDS).index(wnid)
  return (20 * i + 10, 250 - 20 * i, 128)


def make_woof(root: Path, per_class=(2, 1)) -> Path:
  """imagewoof2-160/{train,val}/<wnid>/*.JPEG: flat colours, non-square, one greyscale."""
  folder = root / imagewoof.FOLDER
  for split, n in zip(("train", "val"), per_class):
    for wnid in WNIDS:
      (folder / split / wnid).mkdir(parents=True, exist_ok=True)
      for k in range(n):
        image = Image.new("RGB", (40 + 10 * k, 30), colour(wnid))
        image.save(folder / split / wnid / f"ILSVRC2012_{split}_{k}.JPEG", quality=95)
  Image.new("L", (30, 45), 90).save(folder / "val" / WNIDS[0] / "grey.JPEG")
  (folder / "noisy_imagewoof.csv").write_text("path,noisy_labels_0\n")
  return folder


def trust_woof(monkeypatch, archive: Path | None = None):
  monkeypatch.setattr(imagewoof, "EXPECTED_COUNTS", {"train": 20, "val": 11})
  if archive is not None:
    monkeypatch.setattr(imagewoof, "ARCHIVE", dataclasses.replace(
        imagewoof.ARCHIVE, size=archive.stat().st_size,
        head_md5=md5(archive.read_bytes()[:1 << 20])))


def check_woof(ds, stored=16, size=12):
  assert ds.train_images.shape == (20, stored, stored, 3) and ds.test_images.shape == (11, stored,
                                                                                       stored, 3)
  assert ds.image_shape == (size, size, 3) and ds.num_classes == 10
  assert list(ds.class_names) == sorted(WNIDS)
  for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
    for image, label in zip(images, labels):
      wnid = ds.class_names[label]
      if image.std() > 0 or image[0, 0, 0] != 90:  # the greyscale image is grey in RGB
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colour(wnid), atol=3)
  assert np.bincount(ds.train_labels).tolist() == [2] * 10


def test_imagewoof_folder(tmp_path, monkeypatch):
  make_woof(tmp_path)
  trust_woof(monkeypatch)
  ds = data.load_dataset(config("imagewoof", tmp_path, dir=str(tmp_path), stored_size=16,
                                image_size=12))
  check_woof(ds)
  assert ds.mean == imagewoof.MEAN and ds.eval_split == "test"


def test_imagewoof_archive(tmp_path, monkeypatch):
  archive = tar_gz(make_woof(tmp_path / "src"), tmp_path / imagewoof.ARCHIVE.name, imagewoof.FOLDER)
  trust_woof(monkeypatch, archive)
  ds = data.load_dataset(config("imagewoof", tmp_path, dir=str(archive), stored_size=16,
                                image_size=12))
  check_woof(ds)
  folder = data.load_dataset(config("imagewoof", tmp_path, dir=str(tmp_path / "src"),
                                    stored_size=16, image_size=12))
  np.testing.assert_array_equal(ds.train_images, folder.train_images)


def test_imagewoof_incomplete_folder_and_truncated_archive(tmp_path, monkeypatch):
  folder = make_woof(tmp_path / "src")
  archive = tar_gz(folder, tmp_path / imagewoof.ARCHIVE.name, imagewoof.FOLDER)
  trust_woof(monkeypatch, archive)
  next((folder / "train" / WNIDS[3]).iterdir()).unlink()
  with pytest.raises(data.DataError, match="imagewoof2-160 holds .*'train': 19.*not the published"):
    data.load_dataset(config("imagewoof", tmp_path, dir=str(folder), stored_size=16))
  archive.write_bytes(archive.read_bytes()[:-300])
  with pytest.raises(data.DataError, match="imagewoof2-160.tgz is not the published.*size"):
    data.load_dataset(config("imagewoof", tmp_path, dir=str(archive), stored_size=16))
  with pytest.raises(data.DataError, match="imagewoof2-160.tgz is truncated"):
    data.load_dataset(config("imagewoof", tmp_path, dir=str(archive), stored_size=16,
                             verify_checksums=False))


# ---------------------------------------------------------------- downloads


def test_download_checks_then_caches(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "server", np.random.default_rng(3))
  trust_fashion(monkeypatch, made["sums"])
  c = config("fashion_mnist", tmp_path, source="download", mirror=(tmp_path / "server").as_uri())
  ds = data.load_dataset(c)
  np.testing.assert_array_equal(ds.train_images[..., 0], made["train_images"])
  kept = tmp_path / "cache" / "fashion_mnist"
  assert sorted(p.name for p in kept.iterdir()) == sorted(f.name for f in
                                                         fashion_mnist.FILES.values())

  def offline(*args, **kwargs):
    raise AssertionError("the network was used although everything is cached")

  monkeypatch.setattr(files, "urlopen", offline)
  np.testing.assert_array_equal(data.load_dataset(c).train_labels, made["train_labels"])
  sources.cache_path(c).unlink()  # the decoded cache is gone; the verified downloads are reused
  np.testing.assert_array_equal(data.load_dataset(c).test_labels, made["test_labels"])


def test_download_goes_into_data_dir_when_it_is_set(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "server", np.random.default_rng(3))
  trust_fashion(monkeypatch, made["sums"])
  c = config("fashion_mnist", tmp_path, source="download", mirror=(tmp_path / "server").as_uri(),
             dir=str(tmp_path / "mine"))
  np.testing.assert_array_equal(data.load_dataset(c).train_labels, made["train_labels"])
  assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == sorted(
      f.name for f in fashion_mnist.FILES.values())
  assert not (tmp_path / "cache" / "fashion_mnist").exists()


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
  make_fashion(tmp_path / "server", np.random.default_rng(3))  # not trusted: official md5s stay
  c = config("fashion_mnist", tmp_path, source="download", mirror=(tmp_path / "server").as_uri())
  with pytest.raises(data.DataError, match=r"server/train-images-idx3-ubyte.gz for .*"
                     r"does not match its published checksum.*md5 .* expected "
                     + fashion_mnist.FILES["train_images"].md5):
    data.load_dataset(c)
  kept = tmp_path / "cache" / "fashion_mnist"
  assert not kept.exists() or not list(kept.iterdir())


def test_download_of_missing_url(tmp_path):
  c = config("cifar100", tmp_path, source="download", mirror=(tmp_path / "empty").as_uri())
  with pytest.raises(data.MissingDataError, match="could not download .*cifar-100-python.tar.gz"):
    data.load_dataset(c)
  assert not leftovers(tmp_path / "cache")


def test_download_archive_with_fastai_size_check(tmp_path, monkeypatch):
  server = tmp_path / "server"
  server.mkdir()
  archive = tar_gz(make_woof(tmp_path / "src"), server / imagewoof.ARCHIVE.name, imagewoof.FOLDER)
  c = config("imagewoof", tmp_path, source="download", mirror=server.as_uri(), stored_size=16,
             image_size=12)
  with pytest.raises(data.DataError, match=f"size {archive.stat().st_size} bytes, expected "
                     f"{imagewoof.ARCHIVE.size}"):
    data.load_dataset(c)
  trust_woof(monkeypatch, archive)
  check_woof(data.load_dataset(c))
  assert (tmp_path / "cache" / "imagewoof" / imagewoof.ARCHIVE.name).read_bytes() == \
      archive.read_bytes()


def test_download_replaces_a_bad_local_copy(tmp_path, monkeypatch):
  make_cifar(tmp_path / "src", np.random.default_rng(4))
  server = tmp_path / "server"
  server.mkdir()
  archive = tar_gz(tmp_path / "src" / cifar100.FOLDER, server / cifar100.ARCHIVE.name,
                   cifar100.FOLDER)
  trust_cifar(monkeypatch, tmp_path / "src", archive)
  stale = tmp_path / "cache" / "cifar100" / cifar100.ARCHIVE.name
  stale.parent.mkdir(parents=True)
  stale.write_bytes(b"half a download")
  ds = data.load_dataset(config("cifar100", tmp_path, source="download", mirror=server.as_uri()))
  assert len(ds.train_images) == 30 and stale.read_bytes() == archive.read_bytes()


# ---------------------------------------------------------------- the decoded-array cache


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"))
  data.load_dataset(c)
  path = sources.cache_path(c)
  raw = bytearray(path.read_bytes())
  at = raw.find(made["train_images"][5].tobytes())
  assert at > 0
  raw[at:at + 50] = bytes(50)  # damaged pixels: the zip still opens, the CRC does not match
  path.write_bytes(bytes(raw))
  with caplog.at_level(logging.WARNING):
    ds = data.load_dataset(c)
  assert "rebuilding" in caplog.text and str(path) in caplog.text
  np.testing.assert_array_equal(ds.train_images[..., 0], made["train_images"])
  assert files.load_arrays(path, {"name": "fashion_mnist"}) is not None
  path.write_bytes(path.read_bytes()[:1000])  # truncated
  np.testing.assert_array_equal(data.load_dataset(c).test_labels, made["test_labels"])


def test_cache_is_keyed_by_size_and_location(tmp_path, monkeypatch):
  make_fashion(tmp_path / "a", np.random.default_rng(0))
  make_fashion(tmp_path / "b", np.random.default_rng(1))
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "a"), verify_checksums=False)
  paths = {sources.cache_path(c)}
  a = data.load_dataset(c)
  c.dir = str(tmp_path / "b")
  paths.add(sources.cache_path(c))
  assert not np.array_equal(data.load_dataset(c).train_images, a.train_images)
  c.image_size = 8
  paths.add(sources.cache_path(c))
  assert data.load_dataset(c).train_images.shape[1:] == (8, 8, 1)
  assert len(paths) == 3 and all(p.exists() for p in paths)


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  trust_fashion(monkeypatch, made["sums"])

  def dies_half_way(f, **arrays):
    f.write(b"PK\x03\x04 some of the bytes")
    raise KeyboardInterrupt  # what a Ctrl-C during the write looks like

  monkeypatch.setattr(files.np, "savez", dies_half_way)
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"))
  with pytest.raises(KeyboardInterrupt):
    data.load_dataset(c)
  arrays_dir = tmp_path / "cache" / "arrays"
  assert arrays_dir.is_dir() and not list(arrays_dir.iterdir())


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("DND_JAX_CACHE", str(tmp_path / "env"))
  c = data.default_data_config("cifar100")
  assert sources.cache_dir(c) == tmp_path / "env"
  assert sources.location(c) == tmp_path / "env" / "cifar100"
  c.cache_dir = str(tmp_path / "explicit")
  assert sources.cache_dir(c) == tmp_path / "explicit"
  monkeypatch.delenv("DND_JAX_CACHE")
  assert sources.cache_dir(data.default_data_config("cifar100")) == \
      Path("~/.cache/dnd_jax").expanduser()


# ---------------------------------------------------------------- subsets and validation splits


def test_fraction_is_a_fixed_stratified_subset():
  labels = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
  a, _ = data.split_indices(labels, 0.1, 0.0, seed=0)
  b, _ = data.split_indices(labels, 0.1, 0.0, seed=0)
  c, _ = data.split_indices(labels, 0.1, 0.0, seed=1)
  larger, _ = data.split_indices(labels, 0.3, 0.0, seed=0)
  np.testing.assert_array_equal(a, b)
  assert len(a) == 100 and len(set(a) ^ set(c)) > 0
  assert np.bincount(labels[a]).tolist() == [10] * 10
  assert set(a) <= set(larger) and len(larger) == 300
  full, none = data.split_indices(labels, 1.0, 0.0, seed=3)
  np.testing.assert_array_equal(full, np.arange(1000))
  assert len(none) == 0


def test_validation_split_is_disjoint_and_seeded():
  labels = np.repeat(np.arange(10), 100)
  train, held = data.split_indices(labels, 0.5, 0.2, seed=7)
  assert len(train) == 400 and len(held) == 200  # a fifth of the whole set, half of the rest
  assert not set(train) & set(held)
  assert np.bincount(labels[held]).tolist() == [20] * 10
  assert np.bincount(labels[train]).tolist() == [40] * 10
  # the held-out rows do not depend on the fraction: a teacher trained on all the rest never saw
  # the validation rows of a student on a share of it (they overlapped when the split was drawn
  # from the share)
  whole, held_too = data.split_indices(labels, 1.0, 0.2, seed=7)
  np.testing.assert_array_equal(held_too, held)
  assert set(train) < set(whole) and not set(whole) & set(held)
  assert set(data.split_indices(labels, 0.1, 0.2, seed=7)[0]) < set(train)
  again = data.split_indices(labels, 0.5, 0.2, seed=7)
  np.testing.assert_array_equal(again[1], held)
  with pytest.raises(ValueError, match="fraction"):
    data.split_indices(labels, 0.0, 0.0, seed=0)
  with pytest.raises(ValueError, match="val_fraction"):
    data.split_indices(labels, 1.0, 1.0, seed=0)


def test_load_dataset_with_fraction_and_validation(tmp_path, monkeypatch):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0), n_train=200)
  trust_fashion(monkeypatch, made["sums"])
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), fraction=0.5, val_fraction=0.2,
             mean=None, std=None)
  ds = data.load_dataset(c)
  assert len(ds.train_images) == 80 and len(ds.eval_images) == 40  # half of what 0.2 leaves
  assert ds.eval_split == "validation" and len(ds.test_images) == 20
  pool = {img.tobytes() for img in made["train_images"]}  # images are distinct random noise
  train, held = ({img.tobytes() for img in x[..., 0]} for x in (ds.train_images, ds.eval_images))
  assert train <= pool and held <= pool and not train & held
  np.testing.assert_allclose(ds.mean, [ds.train_images.mean() / 255], rtol=1e-6)
  np.testing.assert_allclose(ds.std, [(ds.train_images / 255).std()], rtol=1e-6)
  again = data.load_dataset(c)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  assert again.rows_digest == ds.rows_digest
  c.subset_seed = 1  # the same counts, other rows (a resume compares the digests)
  assert data.load_dataset(c).rows_digest != ds.rows_digest


def test_default_configs():
  fm, cifar, woof = (data.default_data_config(n) for n in ("fashion_mnist", "cifar100",
                                                          "imagewoof"))
  assert (fm.crop_padding, cifar.crop_padding, woof.random_resized_crop) == (2, 4, True)
  assert (woof.image_size, woof.stored_size, cifar.image_size) == (128, 160, None)
  assert sources.location(fm) == fashion_mnist.DEFAULT_DIR
  fm.image_size = 16  # None-valued fields still accept a value from the command line
  assert fm.image_size == 16
  with pytest.raises(ValueError, match="unknown data set"):
    data.default_data_config("mnist")
  cifar.source = "hub"
  with pytest.raises(ValueError, match="data.source"):
    data.load_dataset(cifar)


# ---------------------------------------------------------------- TensorFlow Datasets


def test_tfds_missing_is_a_clear_import_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'dnd_jax\[tfds\]'") as info:
    data.load_dataset(config("cifar100", tmp_path, source="tfds", dir=str(tmp_path / "tfds")))
  assert isinstance(info.value, ValueError)  # bad input: a command's one `error:` line


def test_tfds_has_no_imagewoof(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="TFDS has no imagewoof"):
    data.load_dataset(config("imagewoof", tmp_path, source="tfds", dir=str(tmp_path)))


def _tfds_prepare_without_tensorflow(tfds, monkeypatch, served: dict[str, Path], tfds_dir: Path):
  """Prepares fashion_mnist from local files; the builder's TensorFlow calls are bypassed."""
  from tensorflow_datasets.image_classification import mnist
  names = {"train_data": "train_images", "train_labels": "train_labels",
           "test_data": "test_images", "test_labels": "test_labels"}
  with monkeypatch.context() as m:
    m.setattr(tfds.download.DownloadManager, "download_and_extract",
              lambda self, urls: {k: str(served[names[k]]) for k in urls})
    m.setattr(mnist, "_extract_mnist_images", lambda path, n: [
        Image.fromarray(x[..., 0]) for x in np.load(path)])
    m.setattr(mnist, "_extract_mnist_labels", lambda path, n: np.load(path).astype(np.int64))
    tfds.builder("fashion_mnist", data_dir=str(tfds_dir), file_format="array_record") \
        .download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))


def test_tfds_reads_prepared_data_without_tensorflow(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  arrays = {"train_images": rng.integers(0, 256, (12, 28, 28, 1), np.uint8),
            "train_labels": np.arange(12) % 10, "test_images": rng.integers(0, 256, (5, 28, 28, 1),
                                                                            np.uint8),
            "test_labels": np.arange(5)}
  served = {}
  for key, value in arrays.items():
    served[key] = tmp_path / f"{key}.npy"
    np.save(served[key], value)
  try:
    _tfds_prepare_without_tensorflow(tfds, monkeypatch, served, tmp_path / "tfds")
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"this tensorflow-datasets cannot prepare a fixture without TensorFlow: {e!r}")
  ds = data.load_dataset(config("fashion_mnist", tmp_path, source="tfds",
                                dir=str(tmp_path / "tfds")))
  for split in ("train", "test"):  # TFDS stores examples in its own shuffled order

    def pairs(images, labels):
      return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))

    assert pairs(getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")) == pairs(
        arrays[f"{split}_images"], arrays[f"{split}_labels"])
  assert ds.train_images.shape == (12, 28, 28, 1) and ds.train_labels.dtype == np.int32
  assert ds.class_names[-1] == "Ankle boot" and "tensorflow" not in sys.modules


def test_tfds_prepare_needs_tensorflow(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("importlib_resources", reason="tensorflow-datasets' etils[epath] needs it")
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    pytest.skip("TensorFlow is installed here, so preparing works")
  except ImportError:
    pass
  make_fashion(tmp_path / "fm", np.random.default_rng(0))
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, urls: {k: str(tmp_path / "fm" / Path(v).name)
                                          for k, v in urls.items()})
  with pytest.raises(data.DataError, match="preparing one needs TensorFlow.*source=local"):
    data.load_dataset(config("fashion_mnist", tmp_path, source="tfds", dir=str(tmp_path / "tfds")))


def test_cache_goes_stale_when_a_source_file_changes_in_place(tmp_path):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), verify_checksums=False)
  np.testing.assert_array_equal(data.load_dataset(c).train_images[..., 0], made["train_images"])
  remade = make_fashion(tmp_path / "fm", np.random.default_rng(1))  # same names, same folder
  assert sources.cache_path(c).exists()
  np.testing.assert_array_equal(data.load_dataset(c).train_images[..., 0], remade["train_images"])


def test_unwritable_cache_warns_once_and_loads_without_it(tmp_path, caplog):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  (tmp_path / "blocked").write_text("a file where the cache folder should be")
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), verify_checksums=False,
             cache_dir=str(tmp_path / "blocked" / "cache"))  # unwritable even for root
  with caplog.at_level(logging.WARNING):
    for _ in range(2):
      ds = data.load_dataset(c)
      np.testing.assert_array_equal(ds.train_images[..., 0], made["train_images"])
  assert caplog.text.count("Cannot write the data cache") == 1


def test_a_cache_decoded_unchecked_does_not_pass_for_checked_data(tmp_path, monkeypatch):
  """verify_checksums=True used to take a cache written with it off, so altered files passed."""
  make_fashion(tmp_path / "fm", np.random.default_rng(0))  # not the published files
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), verify_checksums=False)
  data.load_dataset(c)
  c.verify_checksums = True
  with pytest.raises(data.DataError, match="checksum|md5"):
    data.load_dataset(c)
  made = make_fashion(tmp_path / "fm", np.random.default_rng(1))
  trust_fashion(monkeypatch, made["sums"])
  data.load_dataset(c)  # checked, then cached as checked: an unchecked read may use it too
  mtime = sources.cache_path(c).stat().st_mtime_ns
  c.verify_checksums = False
  data.load_dataset(c)
  assert sources.cache_path(c).stat().st_mtime_ns == mtime


def test_the_cache_fingerprints_only_the_files_its_reader_reads(tmp_path, monkeypatch):
  """A data root that also holds the cache (or other data sets) kept invalidating it, a symlinked
  copy was never fingerprinted (a stale cache), and `dir=/` walked the whole disk."""
  made = make_cifar(tmp_path / "root", np.random.default_rng(0))
  trust_cifar(monkeypatch, tmp_path / "root")
  c = config("cifar100", tmp_path, dir=str(tmp_path / "root"), cache_dir=str(tmp_path / "root"))
  data.load_dataset(c)
  mtime = sources.cache_path(c).stat().st_mtime_ns
  (tmp_path / "root" / "other_data_set.bin").write_bytes(b"x")
  np.testing.assert_array_equal(data.load_dataset(c).train_images, made["train"][0])
  assert sources.cache_path(c).stat().st_mtime_ns == mtime  # a hit: not decoded again

  (tmp_path / "linked").mkdir()
  (tmp_path / "linked" / cifar100.FOLDER).symlink_to(tmp_path / "root" / cifar100.FOLDER)
  linked = config("cifar100", tmp_path, dir=str(tmp_path / "linked"))
  data.load_dataset(linked)
  remade = make_cifar(tmp_path / "root", np.random.default_rng(1))  # replaced behind the link
  trust_cifar(monkeypatch, tmp_path / "root")
  np.testing.assert_array_equal(data.load_dataset(linked).train_images, remade["train"][0])
  assert sources.source_fingerprint("cifar100", Path("/")) is None  # no walk: nothing there


def test_a_cifar_pickle_named_as_the_folder_reads_its_folder(tmp_path, monkeypatch):
  made = make_cifar(tmp_path / "root", np.random.default_rng(0))
  trust_cifar(monkeypatch, tmp_path / "root")
  c = config("cifar100", tmp_path, dir=str(tmp_path / "root" / cifar100.FOLDER / "train"))
  np.testing.assert_array_equal(data.load_dataset(c).test_labels, made["test"][1])


def test_a_read_only_cache_with_a_stale_file_loads_without_it(tmp_path, monkeypatch, caplog):
  made = make_fashion(tmp_path / "fm", np.random.default_rng(0))
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), verify_checksums=False)
  data.load_dataset(c)
  make_fashion(tmp_path / "fm", np.random.default_rng(1))  # the cache is now stale

  def read_only(self, missing_ok=False):
    raise PermissionError(30, "Read-only file system", str(self))

  monkeypatch.setattr(Path, "unlink", read_only)  # root may write anywhere: simulate the mount
  monkeypatch.setattr(files.os, "replace", lambda *a: read_only(Path(a[1])))
  with caplog.at_level(logging.WARNING):
    ds = data.load_dataset(c)
  assert not np.array_equal(ds.train_images[..., 0], made["train_images"])
  assert "Cannot write the data cache" in caplog.text


def test_cache_files_get_a_new_files_usual_mode(tmp_path):
  make_fashion(tmp_path / "fm", np.random.default_rng(0))
  c = config("fashion_mnist", tmp_path, dir=str(tmp_path / "fm"), verify_checksums=False)
  data.load_dataset(c)
  old = os.umask(0o022)
  os.umask(old)
  assert sources.cache_path(c).stat().st_mode & 0o777 == 0o666 & ~old
