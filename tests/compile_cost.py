"""What one training step costs XLA to compile on this machine, under given XLA options: for work
on the suite's time, where compiling tiny networks is most of it (docs/development.md).

  python tests/compile_cost.py                        # the default options, then level 1 and 0
  python tests/compile_cost.py --options '{"lean": {"xla_cpu_use_fusion_emitters": false}}'
  python tests/compile_cost.py --trace /tmp/compile_trace   # where the compile's time goes

The step is the trainer's (`steps.compile_partition_step`'s program) for one Progressive DnD
partition of the tests' tiny networks (width-4 ResNet18 student and teacher, 8-pixel images, batch
32). Each variant is compiled once in this process, with the persistent compilation cache off, and
timed in process CPU seconds (XLA compiles on several threads, and CPU time is less sensitive than
wall time to other work on the machine), then run for a few steps, since an option that compiles
faster may run slower. `--trace` records the first variant's compile with `jax.profiler` and
prints the longest host events (XLA's own passes, the fusions' code generation, LLVM).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dnd_jax import parallel, steps  # noqa: E402
from dnd_jax.configs import base_config  # noqa: E402
from dnd_jax.methods import get_method  # noqa: E402
from dnd_jax.models import ResNet, init_variables  # noqa: E402
from dnd_jax.optim import make_optimizer  # noqa: E402

DEFAULT_VARIANTS = {"default": {}, "level 1": {"xla_backend_optimization_level": 1},
                    "level 0": {"xla_backend_optimization_level": 0}}


def lowered_step(phase: int, batch: int = 32, n_images: int = 64):
  """The lowered program of Progressive DnD's partition `phase`, and its arguments."""
  image = (8, 8, 3)
  config = base_config("cifar100", "pdnd")
  method = get_method("pdnd")
  student = teacher = ResNet(depth=18, num_classes=100, width=4)
  tx = make_optimizer(config.optim, total_steps=100, phase_steps=100 / len(method.phases))
  spec = steps.StepSpec(model=student, teacher=teacher, method=method,
                        method_config=config.method, data_config=config.data, tx=tx,
                        mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=batch,
                        steps_per_epoch=n_images // batch)
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  rng = np.random.default_rng(0)
  images = parallel.put_dataset(rng.integers(0, 256, (n_images, *image), dtype=np.uint8), mesh)
  labels = parallel.put_dataset(rng.integers(0, 100, (n_images,), dtype=np.int32), mesh)
  perm = jax.device_put(rng.permutation(n_images).astype(np.int32), repl)
  state = jax.device_put(steps.create_train_state(
      init_variables(student, jax.random.key(0), image), tx), repl)
  t_vars = jax.device_put(init_variables(teacher, jax.random.key(1), image), repl)
  step_fn = steps.partition_step(spec, phase, mesh)
  sums = jax.device_put(steps.zero_metrics_like(step_fn, state, images, labels, perm, t_vars),
                        repl)
  args = (state, sums, images, labels, perm, t_vars)
  return steps.dispatched_step(step_fn, 1, repl).lower(*args), args


def longest_host_events(trace_dir: str, top: int = 25) -> list[tuple[float, int, str]]:
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  total, count = collections.Counter(), collections.Counter()
  for event in json.load(gzip.open(path))["traceEvents"]:
    if event.get("ph") == "X":
      total[event["name"]] += event["dur"] / 1e6
      count[event["name"]] += 1
  return [(seconds, count[name], name) for name, seconds in total.most_common(top)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--options", default=json.dumps(DEFAULT_VARIANTS),
                      help='JSON {"label": {XLA option: value}}, compiled in this order')
  parser.add_argument("--phase", type=int, default=2, help="the Progressive DnD partition")
  parser.add_argument("--steps", type=int, default=5, help="steps run after each compile")
  parser.add_argument("--trace", default="", help="folder for a profile of the first compile")
  args = parser.parse_args()
  variants = json.loads(args.options)
  lowered, step_args = lowered_step(args.phase)
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; Progressive DnD partition {args.phase}")
  width = max(map(len, variants))
  for i, (label, options) in enumerate(variants.items()):
    if i == 0 and args.trace:
      jax.profiler.start_trace(args.trace)
    cpu, wall = time.process_time(), time.perf_counter()
    compiled = lowered.compile(compiler_options=options or None)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if i == 0 and args.trace:
      jax.profiler.stop_trace()
    state, sums, *data = jax.tree.map(lambda x: x.copy(), step_args)
    state, sums = compiled(state, sums, *data)  # the first run, not timed
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, sums = compiled(state, sums, *data)
    jax.block_until_ready(state)
    ms = (time.perf_counter() - t0) / args.steps * 1000
    print(f"{label:{width}s}  compile {cpu:6.2f} s CPU ({wall:5.2f} s wall), run {ms:7.2f} ms/step")
  if args.trace:
    print(f"\nlongest host events of the first compile ({args.trace}):")
    for seconds, n, name in longest_host_events(args.trace):
      print(f"  {seconds:7.2f} s {n:5d}  {name[:100]}")


if __name__ == "__main__":
  main()
