"""Several steps per dispatch (`config.steps_per_dispatch`): a `lax.scan` of the step that must
equal the same number of single dispatches, state and running metric sums alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import steps
from dnd_jax.configs import base_config
from dnd_jax.methods import get_method
from dnd_jax.models import ResNet, init_variables
from dnd_jax.optim import make_optimizer

IMAGE = (8, 8, 3)
BATCH = 8
STEPS = 3


def test_three_steps_in_one_dispatch_equal_three_dispatches():
  model = ResNet(depth=18, num_classes=10, width=4)
  variables = init_variables(model, jax.random.key(0), IMAGE)
  images = jax.random.randint(jax.random.key(1), (STEPS * BATCH, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(STEPS * BATCH, dtype=jnp.int32) % 10
  perm = jax.random.permutation(jax.random.key(2), STEPS * BATCH).astype(jnp.int32)
  config = base_config("cifar100", "teacher")
  tx = make_optimizer(config.optim, total_steps=10, phase_steps=10)
  raw = steps.make_train_step(
      model=model, teacher=None, method=get_method("teacher"), groups=((1, 5),),
      method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
      std=(0.25,) * 3, batch_size=BATCH, steps_per_epoch=STEPS)
  state = steps.create_train_state(variables, tx)
  args = (images, labels, perm, None)
  sums = steps.zero_metrics_like(raw, state, *args)
  step = steps.accumulate_metrics(raw)

  single = jax.jit(step)
  s1, m1 = state, sums
  for _ in range(STEPS):
    s1, m1 = single(s1, m1, *args)
  s3, m3 = jax.jit(steps.repeat_steps(step, STEPS))(state, sums, *args)

  assert int(s3.step) == int(s1.step) == STEPS
  assert float(m3["count"]) == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), m3, m1)
  # XLA fuses the scan body differently from the lone step: rounding-level differences only
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
               (s3.params, s3.batch_stats, s3.opt_state), (s1.params, s1.batch_stats, s1.opt_state))


def test_steps_per_dispatch_must_be_positive():
  assert steps.repeat_steps(len, 1) is len
  with pytest.raises(ValueError, match="steps_per_dispatch must be at least 1"):
    steps.repeat_steps(len, 0)


@pytest.mark.slow
def test_training_loop_with_several_steps_per_dispatch_matches_one_per_dispatch(tmp_path):
  """The loop's wiring: 18 steps an epoch at 4 per dispatch is 4 dispatches of 4, then 2 single
  steps; two epochs of that end where two epochs of single steps do.

  The scan body rounds differently from the lone step, and at a normal learning rate the width-4
  network's near-degenerate BatchNorm channels blow such differences up within a few steps; a
  tiny learning rate keeps them at rounding level, so a wrong batch, a skipped step or a miscounted
  sum stands out.
  """
  from conftest import tiny_config  # noqa: PLC0415
  from dnd_jax import checkpoints  # noqa: PLC0415
  from dnd_jax.train import read_metrics, train_and_evaluate  # noqa: PLC0415

  histories = {}
  for k in (1, 4):
    config = tiny_config("teacher", **{"model.depth": 18, "data.fraction": 0.01,
                                        "num_epochs": 2, "steps_per_dispatch": k,
                                        "optim.lr": 1e-6})
    train_and_evaluate(config, str(tmp_path / f"k{k}"))
    histories[k] = read_metrics(str(tmp_path / f"k{k}"))
  # the state's own step counter (the checkpoint's step), not the loop's host-side count
  for k in (1, 4):
    assert checkpoints.TrainCheckpoints(str(tmp_path / f"k{k}"), keep=2).latest_step() == 36
  for one, four in zip(histories[1], histories[4]):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
      assert four[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
