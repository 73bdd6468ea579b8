"""Figure 2a (paper section 4.1): stagewise consistency, a trained ResNet18 with one stage redone.

The paper trains a ResNet18 naively (cross-entropy), re-initialises its third stage, freezes the
rest, and trains stage 3 alone in two ways:

  feature   MSE between the new stage 3's output and the trained network's stage-3 output, on the
            trained stage 2's features: the stage sees well-trained inputs and no deep layers.
  end2end   cross-entropy of the whole network's logits with the labels, the gradient reaching
            stage 3 through the trained (frozen) stages 4-5.

Both curves, test accuracy of the whole network per epoch, are drawn against the naive run's own
curve: a stage between trained neighbours learns much faster than the whole network from scratch.

The naive run is an ordinary `train_and_evaluate` run (method "teacher", depth 18). The two
re-initialised runs need what the trainer deliberately lacks: gradients for one stage only, with
every other parameter frozen *and* outside the optimiser (weight decay would otherwise shrink the
frozen stages). So they get this small loop, built from the same pieces (models, augment, optim,
steps.make_evaluate, checkpoints) and writing the same metrics.jsonl and summary.json, so the
grid machinery skips, resumes and collects them like any other run.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnd_jax import checkpoints, losses, steps, workdir as run_folder
from dnd_jax.data import augment, load_dataset
from dnd_jax.models import build_model, init_variables
from dnd_jax.optim import make_optimizer, make_schedules
from dnd_jax.train import append_metrics, mean_metrics, resolve_dtype, resume_or_start

VARIANTS = ("feature", "end2end")
STAGE = 3  # the paper re-initialises the third stage


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run_variant(config, workdir: str, variant: str, naive_dir: str, train_fn) -> dict:
  """Run one Figure 2a curve: "naive" (via `train_fn`, the trainer) or a re-initialised one,
  training the naive run first when it is missing."""
  if variant == "naive":
    return train_fn(config, workdir)
  if not run_folder.is_finished(naive_dir):
    _log(f"Naive ResNet18 {naive_dir} not finished: training it first.")
    train_fn(config, naive_dir)
  return train_reinitialised_stage(config, workdir, run_folder.model_dir(naive_dir), variant)


def _split_stage(tree: dict, stage: int) -> tuple[dict, dict]:
  name = f"stage{stage}"
  return tree[name], {k: v for k, v in tree.items() if k != name}


def make_stage_step(model, variant: str, stage: int, data_config, tx, mean, std, batch_size: int,
                    steps_per_epoch: int):
  """(state, frozen, trained_stage, images, labels, perm) -> (state, metrics) for one stage.

  `state` holds only the stage's parameters and BatchNorm statistics; `frozen` holds the trained
  network's other stages and `trained_stage` its original version of the stage (the feature
  target). Frozen stages run in inference mode, the trained stage in training mode.
  """
  name = f"stage{stage}"

  def apply_range(variables, x, first, last, train=False):
    return model.apply(variables, x, first, last, train, method="stages")[-1]

  def step(state, frozen, trained_stage, images_u8, labels_all, perm):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    labels = labels_all[idx]
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = augment.train_preprocess(images_u8[idx], key, data_config, mean, std)
    h_in = jax.lax.stop_gradient(apply_range(frozen, images, 1, stage - 1))

    def loss_fn(params):
      variables = {"params": {name: params}, "batch_stats": {name: state.batch_stats}}
      out, updated = model.apply(variables, h_in, stage, stage, True, method="stages",
                                 mutable=["batch_stats"])
      out = out[-1]
      if variant == "feature":
        target = jax.lax.stop_gradient(apply_range(trained_stage, h_in, stage, stage))
        loss = losses.mse(out, target)
        logits = jax.lax.stop_gradient(apply_range(frozen, out, stage + 1, 5))
      else:
        logits = apply_range(frozen, out, stage + 1, 5)
        loss = losses.cross_entropy(logits, labels)
      metrics = {"loss": loss, "accuracy": losses.accuracy(logits, labels),
                 "count": jnp.ones((), jnp.float32)}
      return loss, (updated["batch_stats"][name], metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=stats, opt_state=opt_state)
    return new_state, metrics

  return step


def train_reinitialised_stage(config, workdir: str, trained_path: str, variant: str,
                              stage: int = STAGE) -> dict:
  """Re-initialise `stage` of the trained network at `trained_path`, train it alone with the
  `variant` loss for config.num_epochs epochs (config.optim's schedule), and evaluate the whole
  network on the test split after every epoch. Resumes from the workdir's checkpoints."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown stagewise variant {variant!r}; use one of {VARIANTS}.")
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  run_folder.record_config(config, workdir)
  dataset = load_dataset(config.data)
  model = build_model(config.model, dataset.num_classes, resolve_dtype(config.model.dtype))
  arch = checkpoints.architecture(config.model, dataset.num_classes, dataset.image_shape)
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), dataset.image_shape))
  trained, trained_meta = checkpoints.load_model(trained_path, arch, abstract)

  # The fresh stage: the network's own initialiser, from a key the naive run never used.
  fresh = init_variables(model, jax.random.fold_in(jax.random.key(config.seed), 1000 + stage),
                         dataset.image_shape)
  name = f"stage{stage}"
  stage_params, frozen_params = _split_stage(trained["params"], stage)
  stage_stats, frozen_stats = _split_stage(trained["batch_stats"], stage)
  frozen = {"params": frozen_params, "batch_stats": frozen_stats}
  trained_stage = {"params": {name: stage_params}, "batch_stats": {name: stage_stats}}

  n_train = len(dataset.train_labels)
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the {n_train} training "
                     "images.")
  total_steps = steps_per_epoch * config.num_epochs
  tx = make_optimizer(config.optim, total_steps, total_steps)
  lr_schedule, _ = make_schedules(config.optim, total_steps, total_steps)
  state = steps.create_train_state(
      {"params": fresh["params"][name], "batch_stats": fresh["batch_stats"][name]}, tx, config.seed)

  ckpts, state, meta, history = resume_or_start(workdir, config.checkpoint.keep, state)

  step_fn = make_stage_step(model, variant, stage, config.data, tx, dataset.mean, dataset.std,
                            config.batch_size, steps_per_epoch)
  train_images, train_labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  eval_images, eval_labels = jnp.asarray(dataset.eval_images), jnp.asarray(dataset.eval_labels)
  evaluate = jax.jit(steps.make_evaluate(model, config.data, dataset.mean, dataset.std,
                                         config.eval_batch_size))
  make_perm = jax.jit(lambda key: jax.random.permutation(key, n_train).astype(jnp.int32))
  perm_key = jax.random.fold_in(jax.random.key(config.seed), 2)

  def whole(state_):
    return {"params": {**frozen_params, name: state_.params},
            "batch_stats": {**frozen_stats, name: state_.batch_stats}}

  def accuracy_of(variables) -> tuple[float, float]:
    correct, ce = evaluate(variables, eval_images, eval_labels)
    n = len(dataset.eval_labels)
    return float(correct) / n, float(ce) / n

  if "start_accuracy" not in meta:
    # Accuracy with the fresh stage in place, before any training: where both curves start.
    meta["start_accuracy"] = accuracy_of(whole(state))[0]
    meta["trained_accuracy"] = float(trained_meta.get("accuracy", float("nan")))

  t0 = time.perf_counter()
  perm0 = make_perm(jax.random.fold_in(perm_key, 0))
  data = (frozen, trained_stage, train_images, train_labels)
  zero_sums = steps.zero_metrics_like(step_fn, state, *data, perm0)
  jitted = jax.jit(steps.accumulate_metrics(step_fn), donate_argnums=(0, 1)).lower(
      state, jax.device_put(zero_sums), *data, perm0).compile()
  meta["compile_time_s"] += time.perf_counter() - t0

  split = dataset.eval_split
  for epoch in range(meta["epoch"], config.num_epochs):
    perm = make_perm(jax.random.fold_in(perm_key, epoch))
    t0 = time.perf_counter()
    sums = jax.device_put(zero_sums)
    for _ in range(steps_per_epoch):
      state, sums = jitted(state, sums, *data, perm)
    train = mean_metrics([sums])  # waits for the epoch's last step
    epoch_time = time.perf_counter() - t0
    acc, eval_loss = accuracy_of(whole(state))
    meta["train_time_s"] += epoch_time
    meta["epoch"] = epoch + 1
    row = {"epoch": epoch + 1, "step": int((epoch + 1) * steps_per_epoch),
           "lr": float(lr_schedule((epoch + 1) * steps_per_epoch - 1)),
           **{f"train_{k}": v for k, v in train.items()},
           f"{split}_accuracy": acc, f"{split}_loss": eval_loss, "epoch_time_s": epoch_time,
           "images_per_s": steps_per_epoch * config.batch_size / epoch_time}
    history.append(row)
    append_metrics(workdir, row)
    _log(f"{variant} epoch {epoch + 1}/{config.num_epochs}  loss {train['loss']:.4f}  "
         f"{split} acc {acc:.4f}  {epoch_time:.1f}s")
    if acc > meta["best_accuracy"]:
      meta["best_accuracy"], meta["best_epoch"] = acc, epoch + 1
    ckpts.save(int(state.step), state, dict(meta))
  ckpts.wait()
  ckpts.close()

  summary = {
      "method": f"r{stage}_{variant}", "dataset": dataset.name, "epochs": config.num_epochs,
      "batch_size": config.batch_size, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "eval_split": split,
      "final_accuracy": history[-1][f"{split}_accuracy"] if history else float("nan"),
      "best_accuracy": meta["best_accuracy"], "best_epoch": meta["best_epoch"],
      "start_accuracy": meta["start_accuracy"], "trained_accuracy": meta["trained_accuracy"],
      "reinitialised_stage": stage, "trained_model": trained_path,
      "train_time_s": meta["train_time_s"], "compile_time_s": meta["compile_time_s"],
      "time_per_epoch_s": meta["train_time_s"] / max(len(history), 1),
      "images_per_s": float(np.median([r["images_per_s"] for r in history])) if history else 0.0,
      "wall_time_s": time.perf_counter() - wall_start,
  }
  run_folder.write_summary(workdir, summary)
  _log(f"== r{stage}_{variant}: final {split} accuracy {summary['final_accuracy']:.4f} (trained "
       f"network {meta['trained_accuracy']:.4f}, fresh stage {meta['start_accuracy']:.4f})")
  return summary

