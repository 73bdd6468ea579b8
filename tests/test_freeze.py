"""Figure 2a's methods on the one training step: what defines them.

A trained ResNet18 with stage 3 re-initialised: only stage 3 changes (parameters and BatchNorm
statistics of every other stage stay bit-identical), and the "feature" variant's target is the
trained network's own stage-3 output on its own stage-2 features.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import checkpoints, freeze, losses, steps
from dnd_jax.configs import base_config
from dnd_jax.data import augment
from dnd_jax.methods import REINIT_STAGE, get_method
from dnd_jax.models import ResNet, init_variables
from dnd_jax.optim import make_optimizer

IMAGE = (8, 8, 1)
BATCH = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A stand-in for the trained network (an initialisation with moved BatchNorm statistics),
  exported as a run exports its model, and a fresh initialisation of the same network."""
  model = ResNet(depth=18, num_classes=10, width=4)
  init = jax.jit(lambda key: init_variables(model, key, IMAGE))
  net = init(jax.random.key(0))
  net = {"params": net["params"],
         # moved statistics (and batch counters, which keep their integer type)
         "batch_stats": jax.tree.map(
             lambda x: x + (0.25 if jnp.issubdtype(x.dtype, jnp.floating) else 1),
             net["batch_stats"])}
  path = str(tmp_path_factory.mktemp("trained") / "model")
  config = base_config("fashion_mnist", "reinit_feature")
  config.model.width = 4
  checkpoints.save_model(path, net, checkpoints.architecture(config.model, 10, IMAGE))
  return model, jax.device_get(net), jax.device_get(init(jax.random.key(1))), path


def _run(trained, name, n_steps=2):
  model, net, fresh, path = trained
  method = get_method(name)
  config = base_config("fashion_mnist", name)
  config.model.width = 4
  config.method.init_from = path
  config.data.crop_padding, config.data.flip = 0, False
  method.check_config(config.method)
  start, _ = freeze.start_from_trained(method, config.method, config.model, fresh, 10, IMAGE)
  tx = freeze.mask_optimizer(make_optimizer(config.optim, 10, 10), method)
  step = jax.jit(freeze.keep_frozen_statistics(steps.make_train_step(
      model=model, teacher=model if method.needs_teacher else None, method=method,
      groups=method.partition(0), method_config=config.method, data_config=config.data, tx=tx,
      mean=(0.5,), std=(0.25,), batch_size=BATCH, steps_per_epoch=n_steps), method))
  images = jax.random.randint(jax.random.key(3), (n_steps * BATCH, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(n_steps * BATCH) % 10
  perm = jnp.arange(n_steps * BATCH, dtype=jnp.int32)
  state = steps.create_train_state(start, tx)
  history = []
  for _ in range(n_steps):
    state, metrics = step(state, images, labels, perm, net if method.needs_teacher else None)
    history.append(jax.device_get(metrics))
  return start, jax.device_get(state), history, (images, config)


@pytest.mark.parametrize("name", ["reinit_feature", "reinit_end2end"])
def test_only_the_reinitialised_stage_changes(trained, name):
  _, net, fresh, _ = trained
  start, state, _, _ = _run(trained, name)
  k = f"stage{REINIT_STAGE}"
  # the run starts from the trained network with a fresh stage 3
  jax.tree.map(np.testing.assert_array_equal, start["params"][k], fresh["params"][k])
  for collection in ("params", "batch_stats"):
    after = getattr(state, collection)
    for stage, tree in net[collection].items():
      if stage == k:
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), after[stage],
                                             fresh[collection][stage]))
        assert max(moved) > 0, f"{collection} of the re-initialised {stage} did not change"
      else:  # frozen: bit-identical to the trained network
        jax.tree.map(np.testing.assert_array_equal, after[stage], tree)


def test_feature_target_is_the_trained_stage_on_trained_features(trained):
  model, net, fresh, _ = trained
  start, _, history, (images, config) = _run(trained, "reinit_feature", n_steps=1)
  x = augment.train_preprocess(images[:BATCH], jax.random.key(0), config.data, (0.5,), (0.25,))
  k = REINIT_STAGE
  trained_feats = model.apply(net, x, method="stages")  # inference mode, as every teacher
  out, _ = model.apply(start, trained_feats[k - 2], k, k, True, method="stages",
                       mutable=["batch_stats"])
  expected = losses.mse(out[-1], trained_feats[k - 1])
  assert history[0][f"mse_{k}"] == pytest.approx(float(expected), rel=1e-5)
  assert history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)  # nothing else counts
  assert float(expected) > 1e-3  # a fresh stage is far from the trained one: the check has teeth


def test_reinit_methods_need_the_trained_network():
  method = get_method("reinit_end2end")
  with pytest.raises(ValueError, match="set config.method.init_from"):
    method.check_config(base_config("fashion_mnist", "reinit_end2end").method)
  assert freeze.frozen_stage_names(method) == {"stage1", "stage2", "stage4", "stage5"}
  assert freeze.frozen_stage_names(get_method("dnd")) == frozenset()
