"""Measure the streaming input pipeline alone (no training): images/s, and images/s per core.

  python scripts/stream_throughput.py --dir /data/imagenet --image-size 224 --workers 16

Two figures. The pipeline's: the training batches as a streamed run reads them
(`dnd_jax.data.stream.train_batches`: Grain, `--workers` decoding processes, batches of
`--batch-size`), the first batch left out (it includes starting the workers). One core's: the
same decode and random resized crop (`dnd_jax.data.image_folder`) of `--images` images, one after
another in this process, which is what each worker process does. A training step never waits on
input when the host's cores give more images/s than the accelerator trains: the cores one
accelerator needs are its training images/s (the run's `images_per_s`) over the per-core figure.
Prints both, and `--json FILE` writes them.
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import cli  # noqa: E402
from dnd_jax.data import default_data_config, image_folder, stream  # noqa: E402


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise ValueError(f"{value} is not a positive number")
  return value


def main() -> None:
  parser = cli.ArgumentParser(prog="scripts/stream_throughput.py", description=__doc__.split(
      "\n")[0])
  parser.add_argument("--dir", required=True, help="an ImageNet-layout folder (train/<class>/)")
  parser.add_argument("--image-size", type=_positive, default=224)
  parser.add_argument("--workers", type=int, default=0, help="Grain worker processes")
  parser.add_argument("--batch-size", type=_positive, default=256)
  parser.add_argument("--batches", type=_positive, default=50,
                      help="batches timed after the first (many more than the workers read "
                      "ahead, or the figure counts batches read before the clock started)")
  parser.add_argument("--images", type=_positive, default=200,
                      help="images decoded for the per-core figure")
  parser.add_argument("--json", help="also write the figures to this JSON file")
  args = parser.parse_args()
  if args.workers < 0:
    parser.error(f"argument --workers: {args.workers} is not 0 or more")

  config = default_data_config(image_folder.NAME)
  config.dir, config.image_size, config.workers = args.dir, args.image_size, args.workers
  data = stream.open_stream(config)
  if data.n_train < args.batch_size:
    parser.error(f"argument --batch-size: {args.batch_size} is more than the "
                 f"{data.n_train} training images")

  root, paths = data.layout.root, data.layout.train.paths
  rng = np.random.default_rng(0)
  count = min(args.images, len(paths))
  t0 = time.perf_counter()
  for path in paths[:count]:
    image_folder.train_view(image_folder.decode(root / path), args.image_size, rng,
                            tuple(config.rrc_scale), tuple(config.rrc_ratio), True)
  per_core = count / (time.perf_counter() - t0)

  batches = iter(stream.train_batches(data, config, seed=0, batch_size=args.batch_size,
                                      first_step=0, total_steps=args.batches + 1))
  next(batches)  # starts the workers and fills their buffers
  t0 = time.perf_counter()
  images = sum(len(next(batches)["label"]) for _ in range(args.batches))
  pipeline = images / (time.perf_counter() - t0)
  batches.close()  # the workers stop now, not in the interpreter's exit (Grain's noise)
  del batches

  figures = {"images_per_s": pipeline, "images_per_s_per_core": per_core,
             "workers": args.workers, "batch_size": args.batch_size,
             "image_size": args.image_size, "host_cores": os.cpu_count()}
  print(f"pipeline: {pipeline:.0f} images/s ({args.workers} workers, batch {args.batch_size}, "
        f"{args.image_size} px, {args.batches} batches)")
  print(f"one core: {per_core:.0f} images/s per core (decode + random resized crop, "
        f"{count} images)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=1)


if __name__ == "__main__":
  cli.guarded(main)()
