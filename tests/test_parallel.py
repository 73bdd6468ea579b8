"""Data parallelism: one step on 4 devices equals the same step on 1 device (stage adapters too).

JAX fixes its device count when it starts, so the 4-device half runs in a subprocess started
with `--xla_force_host_platform_device_count=4` (this file, run as a script); it prints its
measurements as JSON and the tests here judge them. The step is the trainer's: batch split over
the mesh's "data" axis, state replicated, BatchNorm statistics over the global batch (so a
per-device BatchNorm would fail the comparison). Two steps: KD, with the training set replicated,
and DnD with tests/test_pairs.py's cross-family pair, whose stage adapters make it the DnD step and
more (a plain DnD step would add two programs to compile and check nothing the pair does not),
with the training set sharded over the devices by `parallel.put_dataset(shard=True)`, the layout
a multi-host run uses, and a row count that needs padding.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dnd_jax import parallel

DEVICES = 4
IMAGE = (8, 8, 3)
BATCH = 8
N_TRAIN = 18  # not a multiple of the 4 devices: put_dataset pads it to 20


def _max_diffs(a, b) -> dict:
  """Largest absolute and relative difference over all leaves of two pytrees."""
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))
  scale = jax.tree.leaves(jax.tree.map(lambda y: float(np.abs(y).max()), b))
  return {"abs": max(diffs), "rel": max(d / max(s, 1e-6) for d, s in zip(diffs, scale))}


def _random_like(shapes, seed: int):
  """Weights of the shapes of `shapes` (a tree of jax.ShapeDtypeStruct) drawn on the host: the
  comparison needs some weights, not the initialisers', and the initialisers' programs cost
  seconds each to compile here. Kernels at He scale, BatchNorm's scale near 1 and its variance 1."""
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = getattr(path[-1], "key", "")
    if name == "var":
      values = np.ones(shape.shape)
    elif name == "scale":
      values = 1 + 0.1 * rng.standard_normal(shape.shape)
    elif name == "kernel":
      values = rng.standard_normal(shape.shape) * np.sqrt(2 / max(np.prod(shape.shape[:-1]), 1))
    else:  # biases, BatchNorm's shift and mean
      values = 0.1 * rng.standard_normal(shape.shape)
    return values.astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _worker() -> dict:
  """Runs under 4 forced CPU devices: one KD and one DnD step (the pair's) on 1 and on 4
  devices."""

  from dnd_jax import adapters, steps  # noqa: PLC0415
  from dnd_jax.configs import base_config  # noqa: PLC0415
  from dnd_jax.methods import get_method  # noqa: PLC0415
  from dnd_jax.models import ResNet, abstract_variables, build_arch  # noqa: PLC0415
  from dnd_jax.optim import make_optimizer  # noqa: PLC0415
  from test_pairs import STUDENT, TEACHER  # noqa: PLC0415

  assert jax.device_count() == DEVICES, jax.devices()
  report = {}
  model = ResNet(depth=18, num_classes=10, width=4)  # KD's student, and a teacher of its shape
  s_vars, t_vars = (_random_like(abstract_variables(model, IMAGE), seed) for seed in (0, 1))
  images = np.asarray(jax.random.randint(jax.random.key(2), (N_TRAIN, *IMAGE), 0, 256), np.uint8)
  labels = np.arange(N_TRAIN, dtype=np.int32) % 10
  perm = np.asarray(jax.random.permutation(jax.random.key(3), N_TRAIN), np.int32)

  # the cross-family pair of tests/test_pairs.py, with its stage adapters in the state
  pair_student = build_arch(STUDENT["arch"], 10, **STUDENT["arch_kwargs"])
  pair_teacher = build_arch(TEACHER["arch"], 10, **TEACHER["arch_kwargs"])
  pair = adapters.for_pair(pair_student, pair_teacher, get_method("dnd").for_stages(4), IMAGE)
  pair_vars = adapters.attach(_random_like(abstract_variables(pair_student, IMAGE), 2),
                              _random_like(jax.eval_shape(pair.init, jax.random.key(4)), 3))
  pair_t_vars = _random_like(abstract_variables(pair_teacher, IMAGE), 4)
  cases = {"kd": (model, model, s_vars, t_vars, adapters.NONE),
           "pair": (pair_student, pair_teacher, pair_vars, pair_t_vars, pair)}

  for name, (student, teacher, s_vars, t_vars, stage_adapters) in cases.items():
    config = base_config("cifar100", "dnd" if name == "pair" else name)
    tx = make_optimizer(config.optim, total_steps=6, phase_steps=6)
    method = get_method(config.method.name).for_stages(student.num_stages)

    def build(batch_sharding, batch_size=BATCH, method=method, config=config, tx=tx,
              student=student, teacher=teacher, stage_adapters=stage_adapters):
      return steps.make_train_step(
          model=student, teacher=teacher, method=method, groups=method.partition(0),
          method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
          std=(0.25,) * 3, batch_size=batch_size, steps_per_epoch=2,
          batch_sharding=batch_sharding, adapters=stage_adapters)

    state = steps.create_train_state(s_vars, tx)
    one = jax.device_get(jax.jit(build(None))(state, images, labels, perm, t_vars))

    mesh = parallel.make_mesh(DEVICES)
    repl = parallel.replicated(mesh)
    put = lambda x: jax.device_put(x, repl)  # noqa: E731
    shard_data = name != "kd"
    data_images = parallel.put_dataset(images, mesh, shard=shard_data)
    data_labels = parallel.put_dataset(labels, mesh, shard=shard_data)
    args = (put(state), data_images, data_labels, put(perm), put(t_vars))
    compiled = jax.jit(build(parallel.batch_sharded(mesh)), donate_argnums=(0,),
                       out_shardings=(repl, repl)).lower(*args).compile()
    hlo = compiled.as_text()
    four = jax.device_get(compiled(*args))
    report[name] = {
        "params": _max_diffs(four[0].params, one[0].params),
        "batch_stats": _max_diffs(four[0].batch_stats, one[0].batch_stats),
        "opt_state": _max_diffs(four[0].opt_state, one[0].opt_state),
        "metrics": _max_diffs(four[1], one[1]),
        "moved": _max_diffs(one[0].params, s_vars["params"])["abs"],
        "all_reduce": "all-reduce" in hlo,
        "data_shape": list(data_images.shape),
        "data_spec": str(data_images.sharding.spec),
        "data_rows_equal": bool(np.array_equal(np.asarray(data_images)[:N_TRAIN], images)),
    }

  try:
    build(parallel.batch_sharded(parallel.make_mesh(DEVICES)), batch_size=6)
    report["indivisible"] = None
  except ValueError as e:
    report["indivisible"] = str(e)
  return report


@pytest.fixture(scope="module")
def report():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={DEVICES}").strip(),
             PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                         os.path.dirname(__file__),
                                         os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["kd", "pair"])
def test_step_on_4_devices_equals_step_on_1_device(report, method):
  """`pair`: DnD with tests/test_pairs.py's cross-family pair and its stage adapters."""
  r = report[method]
  assert r["all_reduce"], "the 4-device step has no all-reduce: it did not run split"
  assert r["moved"] > 1e-4  # the step changed the parameters, so equality means something
  for part in ("params", "batch_stats", "opt_state", "metrics"):
    assert r[part]["abs"] < 1e-5 or r[part]["rel"] < 2e-4, (part, r[part])


def test_sharded_data_set_is_padded_and_split_over_the_data_axis(report):
  r = report["pair"]
  assert r["data_shape"] == [20, *IMAGE]
  assert "data" in r["data_spec"]
  assert r["data_rows_equal"]


def test_batch_that_does_not_divide_over_the_devices_is_a_clear_error(report):
  assert report["indivisible"] is not None
  assert "batch_size=6 does not divide over the 4 devices" in report["indivisible"]


def test_put_dataset_replicates_in_a_single_process():
  mesh = parallel.make_mesh(1)
  data = np.arange(5 * 2, dtype=np.int32).reshape(5, 2)
  put = parallel.put_dataset(data, mesh)
  assert put.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(put), data)
  sharded = parallel.put_dataset(data, mesh, shard=True)
  assert parallel.local_rows(5, mesh) == slice(0, 5)
  np.testing.assert_array_equal(np.asarray(sharded), data)


if __name__ == "__main__":
  print(json.dumps(_worker()))
