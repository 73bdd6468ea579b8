"""BatchNorm is torch.nn.BatchNorm2d: outputs, running mean and (unbiased) variance, batch counter.

And checkpoints written before the counter existed (an exported model, a training checkpoint)
still load, with the counter at 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import checkpoints, steps
from dnd_jax.models import (BATCH_COUNTER, BatchNorm, ResNet, init_variables,
                            with_batch_counters, without_batch_counters)

CHANNELS = 5


def _torch_bn():
  torch = pytest.importorskip("torch")
  bn = torch.nn.BatchNorm2d(CHANNELS)
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    bn.weight.copy_(torch.rand(CHANNELS, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(CHANNELS, generator=g))
  return bn


@pytest.mark.parametrize("shape", [(4, 3, 3), (6, 1, 1)])  # n = 36 and n = 6 values per channel
def test_several_training_steps_match_torch_batchnorm2d(shape):
  torch = pytest.importorskip("torch")
  bn_t = _torch_bn().train()
  variables = {"params": {"scale": jnp.asarray(bn_t.weight.detach().numpy()),
                          "bias": jnp.asarray(bn_t.bias.detach().numpy())},
               "batch_stats": BatchNorm(True).init(jax.random.key(0),
                                                   jnp.zeros((2, 1, 1, CHANNELS)))["batch_stats"]}
  train = jax.jit(lambda v, x: BatchNorm(False).apply(v, x, mutable=["batch_stats"]))
  rng = np.random.default_rng(1)
  for step in range(4):
    x = (rng.normal(size=(shape[0], CHANNELS, *shape[1:])) * (step + 1) + step).astype(np.float32)
    expected = bn_t(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    y, updated = train(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    variables = {**variables, **updated}
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)
  stats = variables["batch_stats"]
  np.testing.assert_allclose(stats["mean"], bn_t.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], bn_t.running_var.numpy(), rtol=1e-5)
  assert int(stats[BATCH_COUNTER]) == int(bn_t.num_batches_tracked) == 4
  # evaluation with the running statistics
  x = rng.normal(size=(3, CHANNELS, 2, 2)).astype(np.float32)
  with torch.no_grad():
    expected = bn_t.eval()(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(BatchNorm(True).apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))),
                             expected, rtol=1e-5, atol=2e-5)


def test_one_value_per_channel_is_refused_in_training_as_pytorch_does():
  v = BatchNorm(True).init(jax.random.key(0), jnp.zeros((1, 1, 1, CHANNELS)))
  with pytest.raises(ValueError, match="more than one value per channel"):
    BatchNorm(False).apply(v, jnp.ones((1, 1, 1, CHANNELS)), mutable=["batch_stats"])


def test_bf16_computes_in_bf16_with_fp32_statistics():
  v = BatchNorm(True).init(jax.random.key(0), jnp.zeros((2, 1, 1, CHANNELS)))
  x = jax.random.normal(jax.random.key(1), (4, 2, 2, CHANNELS))
  y16, s16 = BatchNorm(False, dtype=jnp.bfloat16).apply(v, x.astype(jnp.bfloat16),
                                                        mutable=["batch_stats"])
  y32, s32 = BatchNorm(False).apply(v, x, mutable=["batch_stats"])
  assert y16.dtype == jnp.bfloat16 and s16["batch_stats"]["var"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=5e-2)
  np.testing.assert_allclose(s16["batch_stats"]["var"], s32["batch_stats"]["var"], rtol=2e-2)


# --- checkpoints written before the counter existed -------------------------------------------


def _model_and_variables():
  model = ResNet(depth=18, num_classes=10, width=4)
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (8, 8, 1)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(a.dtype), abstract)
  return model, abstract, without_batch_counters(variables)


def _assert_loaded_as_zero_counters(loaded, old, abstract):
  assert jax.tree.structure(loaded) == jax.tree.structure(abstract)
  jax.tree.map(np.testing.assert_array_equal, without_batch_counters(loaded), old)
  counters = [v for p, v in jax.tree_util.tree_leaves_with_path(loaded) if p[-1].key == BATCH_COUNTER]
  assert len(counters) == 20 and all(int(c) == 0 and c.dtype == np.int32 for c in counters)


def test_an_exported_model_without_counters_still_loads(tmp_path):
  model, abstract, old = _model_and_variables()
  arch = {"depth": 18, "width": 4, "stem": "cifar", "num_classes": 10, "in_channels": 1}
  checkpoints.save_model(str(tmp_path / "model"), old, arch)
  loaded, _ = checkpoints.load_model(str(tmp_path / "model"), arch, abstract)
  _assert_loaded_as_zero_counters(jax.device_get(loaded), old, abstract)
  model.apply(loaded, jnp.zeros((2, 8, 8, 1)))


def test_a_training_checkpoint_without_counters_still_resumes(tmp_path):
  import optax  # noqa: PLC0415
  _, abstract, old = _model_and_variables()
  tx = optax.sgd(0.1, momentum=0.9)
  old_state = steps.create_train_state(old, tx)
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=1)
  ckpts.save(3, old_state, {"epoch": 1})
  ckpts.save_best(3, old, {"best_epoch": 1})
  ckpts.wait()
  new_abstract = jax.eval_shape(lambda: steps.create_train_state(
      jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract), tx))
  state, meta = ckpts.restore(3, new_abstract)
  assert meta == {"epoch": 1}
  _assert_loaded_as_zero_counters(jax.device_get(state.variables), old, abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), old_state.opt_state)
  best, _ = ckpts.restore_best(abstract)
  _assert_loaded_as_zero_counters(jax.device_get(best), old, abstract)
  ckpts.close()


def test_with_batch_counters_leaves_present_counters_alone():
  tree = {"bn": {"mean": np.zeros(2), BATCH_COUNTER: np.int32(7)}}
  assert with_batch_counters(tree, tree)["bn"][BATCH_COUNTER] == 7
