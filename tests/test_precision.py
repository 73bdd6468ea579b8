"""Mixed precision: `model.dtype = bfloat16` computes in bf16 and keeps everything else in fp32.

One DnD step (teacher and student both in bf16, as the trainer builds them) from the same fp32
parameters as an fp32 step: the parameters, BatchNorm statistics and optimiser state stay fp32,
the features really are bf16, and the losses are fp32 and close to the fp32 step's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import steps
from dnd_jax.configs import base_config
from dnd_jax.methods import get_method
from dnd_jax.models import ResNet, init_variables, stage_output_shapes
from dnd_jax.optim import make_optimizer

DND_GROUPS = get_method("dnd").partition(0)  # {1}..{5}: the paper's ResNets

IMAGE = (8, 8, 3)
BATCH = 8


def _model(dtype):
  return ResNet(depth=18, num_classes=10, width=4, dtype=dtype)


@pytest.fixture(scope="module")
def results():
  init = jax.jit(lambda key: init_variables(_model(jnp.float32), key, IMAGE))
  s_vars, t_vars = init(jax.random.key(0)), init(jax.random.key(1))
  images = jax.random.randint(jax.random.key(2), (2 * BATCH, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(2 * BATCH, dtype=jnp.int32) % 10
  perm = jnp.arange(2 * BATCH, dtype=jnp.int32)
  config = base_config("cifar100", "dnd")
  tx = make_optimizer(config.optim, total_steps=6, phase_steps=6)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _model(dtype)  # the trainer builds student and teacher with the same dtype
    step = jax.jit(steps.make_train_step(
        model=model, teacher=model, method=get_method("dnd"), groups=DND_GROUPS,
        method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
        std=(0.25,) * 3, batch_size=BATCH, steps_per_epoch=2))
    out[dtype] = jax.device_get(step(steps.create_train_state(s_vars, tx), images, labels, perm,
                                     t_vars))
  return s_vars, out


def test_bf16_model_computes_in_bf16_and_returns_fp32_logits():
  dtypes = jax.eval_shape(
      lambda v, x: _model(jnp.bfloat16).apply(v, x, method="stages"),
      jax.eval_shape(lambda: init_variables(_model(jnp.float32), jax.random.key(0), IMAGE)),
      jax.ShapeDtypeStruct((2, *IMAGE), jnp.float32))
  assert [o.dtype for o in dtypes] == [jnp.bfloat16] * 4 + [jnp.float32]
  assert len(stage_output_shapes(_model(jnp.bfloat16), IMAGE)) == 5


def test_bf16_step_keeps_fp32_state_and_losses_close_to_fp32(results):
  s_vars, out = results
  (state32, metrics32), (state16, metrics16) = out[jnp.float32], out[jnp.bfloat16]
  for name in ("params", "batch_stats", "opt_state"):
    leaves = [x for x in jax.tree.leaves(getattr(state16, name)) if np.ndim(x) > 0]
    assert leaves and all(x.dtype == np.float32 for x in leaves), name
  assert sorted(metrics16) == sorted(metrics32)
  for k in metrics32:
    assert metrics16[k].dtype == np.float32, k
    assert np.isfinite(metrics16[k]), k
  # bf16 has an 8-bit mantissa: about 0.1-0.5% off on losses built from hundreds of bf16 ops
  for k in [k for k in metrics32 if k.startswith(("mse", "ce", "loss"))]:
    np.testing.assert_allclose(metrics16[k], metrics32[k], rtol=1e-2, err_msg=k)
  # ... but not bit-equal, which would mean bf16 never ran
  assert any(float(metrics16[k]) != float(metrics32[k]) for k in metrics32 if k.startswith("mse"))
  # BatchNorm running statistics moved in fp32, to about where fp32's moved
  for stage in ("stage1", "stage4"):
    for a, b, before in zip(jax.tree.leaves(state16.batch_stats[stage]),
                            jax.tree.leaves(state32.batch_stats[stage]),
                            jax.tree.leaves(s_vars["batch_stats"][stage])):
      assert np.abs(a - before).max() > 0
      np.testing.assert_allclose(a, b, rtol=5e-2, atol=2e-2)
