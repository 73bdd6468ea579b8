"""Write a CIFAR-100 look-alike with random pixels in the official `cifar-100-python` format.

    python scripts/make_fake_cifar100.py /tmp/fake_cifar100           # 50,000 + 10,000 images
    python scripts/train.py --config configs/pdnd_cifar.py --config.data.dir=/tmp/fake_cifar100 \\
        --config.data.verify_checksums=False

For timing the main command where the real data set cannot be fetched (the GPU machine reaches
no network): the same shapes, the same files and the same reader as the real CIFAR-100, so the
wall clock is the real one; the accuracy is chance. The checksums are the real files', so a run
on this folder needs `data.verify_checksums=False`.
"""

import argparse
import os
import pickle

import numpy as np

FOLDER = "cifar-100-python"  # dnd_jax.data.cifar100.FOLDER, not imported: this runs without jax


def _pickle(path: str, obj: dict) -> None:
  # Protocol 2, as the official (Python 2) files: numpy arrays pickle as `_reconstruct` calls,
  # which the project's reader allows, where protocol 5 would need numpy's `_frombuffer`.
  with open(path + ".tmp", "wb") as f:
    pickle.dump(obj, f, protocol=2)
  os.replace(path + ".tmp", path)


def write_fake_cifar100(out: str, train: int = 50_000, test: int = 10_000, seed: int = 0) -> str:
  """Writes <out>/cifar-100-python/{train,test,meta}; returns that folder."""
  rng = np.random.default_rng(seed)
  folder = os.path.join(out, FOLDER)
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", train), ("test", test)):
    fine = rng.integers(0, 100, n)
    _pickle(os.path.join(folder, split), {
        "filenames": [f"fake_{split}_{i}.png" for i in range(n)],
        "batch_label": f"{split}ing batch 1 of 1 (random pixels)",
        "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
        # each row: the red plane, then green, then blue, each 32x32 row-major (as the official)
        "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)})
  _pickle(os.path.join(folder, "meta"), {
      "fine_label_names": [f"class_{i:02d}" for i in range(100)],
      "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)]})
  return folder


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("out", help="folder to write cifar-100-python/ into (data.dir)")
  p.add_argument("--train", type=int, default=50_000, help="training images (official: 50,000)")
  p.add_argument("--test", type=int, default=10_000, help="test images (official: 10,000)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  folder = write_fake_cifar100(args.out, args.train, args.test, args.seed)
  print(f"wrote {folder}: {args.train} + {args.test} random 32x32 images, 100 classes")


if __name__ == "__main__":
  main()
