"""Time every method's training step next to the PyTorch reference: `dnd_jax.bench`'s CLI.

    python scripts/benchmark.py                      # CPU: toy sizes; accelerator: CIFAR shapes
    python scripts/benchmark.py --methods pdnd_p3,kd --dtypes bfloat16 --batch-sizes 128 \\
        --torch eager,compile,cudagraphs --out runs/benchmark_gpu

Writes <out>/benchmark.json and benchmark.md after every row. The module docstring of
dnd_jax/bench/__init__.py defines every column; docs/benchmarks.md has the one-command GPU run
(scripts/gpu_bench.sh) and the figures measured so far.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import cli  # noqa: E402
from dnd_jax.bench.cli import main  # noqa: E402

if __name__ == "__main__":
  cli.guarded(main)()
