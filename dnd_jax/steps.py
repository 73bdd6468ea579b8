"""The jitted training step (one per stage partition) and the evaluation pass.

One step does everything on the device: it slices its batch out of the resident uint8 training set
with the epoch's permutation, augments it from a key derived from the step number, runs the frozen
teacher once (inference mode) for every stage output, and then, for each group of the partition,
runs the student's stages on the stopped teacher feature at the group's input. The group losses
are summed and differentiated once; since no group sees another group's student output, each
parameter's gradient comes from its own group (DESIGN section 1). The host only dispatches.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dnd_jax import losses
from dnd_jax.data import augment
from dnd_jax.methods import Group, GroupOutputs, Method
from dnd_jax.models import NUM_STAGES, ResNet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]))


def group_losses(params, batch_stats, *, model: ResNet, groups: tuple[Group, ...], method: Method,
                 method_config, images, labels, teacher_feats, teacher_logits_fn):
  """Sum of the group losses, the student's updated BatchNorm statistics, and named metrics."""
  new_stats = dict(batch_stats)
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  head_logits = None

  def student_logits_fn(x):
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                       mutable=["batch_stats"])[0]

  for first, last in groups:
    inputs = images if first == 1 else teacher_feats[first - 2]
    outs, updated = model.apply({"params": params, "batch_stats": batch_stats}, inputs, first,
                                last, True, method="stages", mutable=["batch_stats"])
    for k in range(first, last + 1):
      if f"stage{k}" in updated["batch_stats"]:
        new_stats[f"stage{k}"] = updated["batch_stats"][f"stage{k}"]
    loss, group_metrics = method.group_loss(
        GroupOutputs(first, last, outs, teacher_feats, labels, images, student_logits_fn,
                     teacher_logits_fn), method_config)
    total = total + loss
    metrics.update(group_metrics)
    if last == NUM_STAGES:
      head_logits = outs[-1]
  metrics["loss"] = total
  if head_logits is not None:
    metrics["accuracy"] = losses.accuracy(head_logits, labels)
  return total, (new_stats, metrics)


def make_train_step(*, model: ResNet, teacher: ResNet | None, method: Method,
                    groups: tuple[Group, ...], method_config, data_config, tx, mean, std,
                    batch_size: int, steps_per_epoch: int, seed: int, batch_sharding=None):
  """A pure function (state, images, labels, perm, teacher_vars) -> (new state, metrics)."""

  def step(state: TrainState, images_u8, labels_all, perm, teacher_vars):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    batch_u8, labels = images_u8[idx], labels_all[idx]
    if batch_sharding is not None:
      batch_u8 = jax.lax.with_sharding_constraint(batch_u8, batch_sharding)
      labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    images = augment.train_preprocess(batch_u8, key, data_config, mean, std)

    teacher_feats, teacher_logits_fn = None, None
    if teacher is not None:
      teacher_feats = jax.lax.stop_gradient(
          teacher.apply(teacher_vars, images, method="stages", train=False))
      teacher_logits_fn = functools.partial(teacher.apply, teacher_vars, train=False)

    grad_fn = jax.grad(group_losses, has_aux=True)
    grads, (new_stats, metrics) = grad_fn(
        state.params, state.batch_stats, model=model, groups=groups, method=method,
        method_config=method_config, images=images, labels=labels, teacher_feats=teacher_feats,
        teacher_logits_fn=teacher_logits_fn)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=new_stats, opt_state=opt_state)
    metrics["count"] = jnp.ones((), jnp.float32)
    return new_state, metrics

  return step


def accumulate_metrics(step_fn):
  """Wraps a step so it adds its metrics into running sums kept on the device.

  Summing inside the jitted step means the host reads metrics once per epoch (or per progress
  bar refresh) instead of synchronising on every step.
  """

  def step(state: TrainState, sums: dict, *args):
    new_state, metrics = step_fn(state, *args)
    return new_state, jax.tree.map(lambda s, m: s + m.astype(jnp.float32), sums, metrics)

  return step


def zero_metrics_like(step_fn, state, *args) -> dict:
  """Zeroed running sums with the names of the metrics `step_fn` reports (traced, not run)."""
  shapes = jax.eval_shape(step_fn, state, *args)[1]
  return {k: jnp.zeros((), jnp.float32) for k in shapes}


def make_evaluate(model: ResNet, data_config, mean, std, batch_size: int):
  """(variables, images_u8, labels) -> (number correct, summed CE) over padded batches.

  The evaluation set is padded to whole batches with label -1, which never counts as correct and
  is masked out of the loss; `lax.map` runs every batch in one dispatch.
  """

  def evaluate(variables, images_u8, labels):
    n = images_u8.shape[0]
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    images_u8 = jnp.pad(images_u8, ((0, pad),) + ((0, 0),) * (images_u8.ndim - 1))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)

    def one_batch(xy):
      x, y = xy
      logits = model.apply(variables, augment.eval_preprocess(x, data_config, mean, std))
      valid = y >= 0
      correct = jnp.sum((jnp.argmax(logits, -1) == y) & valid)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
      return correct, jnp.sum(jnp.where(valid, ce, 0.0))

    correct, ce = jax.lax.map(one_batch, (images_u8.reshape(nb, batch_size, *images_u8.shape[1:]),
                                          labels.reshape(nb, batch_size)))
    return jnp.sum(correct), jnp.sum(ce)

  return evaluate
