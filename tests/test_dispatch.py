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
      std=(0.25,) * 3, batch_size=BATCH, steps_per_epoch=STEPS, seed=0)
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
