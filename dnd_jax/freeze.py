"""Training some stages of a trained network while the rest stays frozen (paper Figure 2a).

A method with `trained_stages` (`dnd_jax.methods.Method`) runs on the one training loop with three
changes, all made here:

* it starts from the trained network at `config.method.init_from`, with its trained stages
  replaced by freshly initialised ones (`start_from_trained`);
* the optimiser's update of every other stage is set to zero with an Optax mask
  (`optax.masked(optax.set_to_zero(), frozen)` after the optimiser, as big_vision freezes
  parameters), so neither the gradient nor the weight decay moves a frozen parameter;
* the step's new BatchNorm statistics of frozen stages are replaced by the old ones
  (`keep_frozen_statistics`), so their running statistics stay those of the trained network.

The frozen stages still run in training mode inside the step (batch statistics in the forward
pass), as a PyTorch network in `train()` mode with `requires_grad=False` stages does; evaluation
runs the whole network in inference mode as always.
"""

from __future__ import annotations

import jax
import optax

from dnd_jax import checkpoints
from dnd_jax.methods import Method


def frozen_stage_names(method: Method) -> frozenset[str]:
  """The stages (`stage{k}` entries of the variables) that `method`, resolved for the network's
  stage count (`Method.for_stages`), keeps frozen."""
  if method.trained_stages is None:
    return frozenset()
  return frozenset(f"stage{k}" for k in range(1, method.num_stages + 1)
                   if k not in method.trained_stages)


def mask_optimizer(tx: optax.GradientTransformation,
                   method: Method) -> optax.GradientTransformation:
  """`tx`, with the updates of the method's frozen stages set to zero (unchanged if none)."""
  frozen = frozen_stage_names(method)
  if not frozen:
    return tx
  mask = lambda params: {k: jax.tree.map(lambda _: k in frozen, v)  # noqa: E731
                         for k, v in params.items()}
  return optax.chain(tx, optax.masked(optax.set_to_zero(), mask))


def keep_frozen_statistics(step_fn, method: Method):
  """Wraps a train step (state, ...) -> (state, metrics) so that the frozen stages' BatchNorm
  statistics leave it as they came in (unchanged if the method freezes nothing)."""
  frozen = frozen_stage_names(method)
  if not frozen:
    return step_fn

  def step(state, *args):
    new_state, metrics = step_fn(state, *args)
    stats = {k: state.batch_stats[k] if k in frozen else v
             for k, v in new_state.batch_stats.items()}
    return new_state.replace(batch_stats=stats), metrics

  return step


def start_from_trained(method: Method, method_config, model_config, fresh: dict, num_classes: int,
                       image_shape) -> tuple[dict, dict]:
  """The trained network at `method_config.init_from` (same architecture as `model_config`) with
  the method's trained stages taken from `fresh` (the run's own initialisation), and the trained
  network's model.json."""
  arch = checkpoints.architecture(model_config, num_classes, image_shape)
  trained, meta = checkpoints.load_model(method_config.init_from, arch, jax.eval_shape(lambda: fresh))
  mixed = {}
  for collection, tree in trained.items():
    mixed[collection] = {k: fresh[collection][k] if int(k.removeprefix("stage")) in
                         method.trained_stages else v for k, v in tree.items()}
  return mixed, meta
