"""The jitted training step (one per stage partition) and the evaluation pass.

One step does everything on the device: it slices its batch out of the resident uint8 training set
with the epoch's permutation, augments it from a key derived from the step number, runs the frozen
teacher once (inference mode) for every stage output, and then, for each group of the partition,
runs the student's stages on the stopped teacher feature at the group's input. The group losses
are summed and differentiated once; since no group sees another group's student output, each
parameter's gradient comes from its own group (docs/design.md section 1). Where the teacher's and
the student's stage shapes differ, a group's input passes through the stage adapter at its start
(the group's own parameters too), and the group before it is trained towards that adapted feature
(`dnd_jax.adapters`). The host only dispatches. A streamed run's step (`StepSpec.streamed`) takes
its batch, cropped on the host by the streaming pipeline, as an argument instead; the rest is the
same program.

With `method.memory_lean` the groups are instead differentiated one after another
(`sequential_group_grads`), so only one group's activations are alive at a time; `repeat_steps`
runs several steps per dispatch with `lax.scan` where the host's per-step overhead shows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnd_jax import adapters as adapters_lib, freeze, losses, parallel
from dnd_jax.adapters import StageAdapters
from dnd_jax.data import augment
from dnd_jax.methods import Group, GroupOutputs, Method
from dnd_jax.models import stage_output_shapes


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Key data of the augmentation stream (step i uses fold_in(key, i)). Held in the state rather
  # than baked into the compiled step, so runs that differ only in their seed share one compiled
  # program (and hit the persistent compilation cache).
  rng: jax.Array

  @property
  def variables(self) -> dict:
    """The student's variables alone: any stage adapters are left out (evaluation, the best and
    the exported models run the student end to end without them; `dnd_jax.adapters`)."""
    return {"params": adapters_lib.split(self.params)[0],
            "batch_stats": adapters_lib.split(self.batch_stats)[0]}


def create_train_state(variables: dict, tx: optax.GradientTransformation,
                       seed: int = 0) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]),
                    rng=jax.random.key_data(jax.random.key(seed)))


def group_losses(params, batch_stats, *, model: nn.Module, groups: tuple[Group, ...],
                 method: Method, method_config, images, labels, teacher_feats, teacher_logits_fn,
                 adapters: StageAdapters = adapters_lib.NONE):
  """Sum of the group losses, the student's (and its adapters') updated BatchNorm statistics,
  and named metrics. Where the pair has a stage adapter at a group's start, the group runs on the
  teacher feature through it, and the group before it is trained towards that same adapted
  feature, its gradient stopped (`dnd_jax.adapters`)."""
  student_params, adapter_params = adapters_lib.split(params)
  student_stats, adapter_stats = adapters_lib.split(batch_stats)
  student_vars = {"params": student_params, "batch_stats": student_stats}
  adapter_vars = {"params": adapter_params, "batch_stats": adapter_stats}
  new_stats = dict(batch_stats)
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  head_logits = None

  def student_logits_fn(x):
    return model.apply(student_vars, x, train=True, mutable=["batch_stats"])[0]

  # each group's input: the image, or the teacher feature (through the group's adapter, if any)
  inputs = {}
  for first, _ in groups:
    if first == 1:
      inputs[first] = images
      continue
    inputs[first], updated = adapters.to_student(adapter_vars, first, teacher_feats[first - 2])
    if updated:
      new_stats = adapters_lib.merge(new_stats, {adapters_lib.ADAPTERS: updated})

  for first, last in groups:
    outs, updated = model.apply(student_vars, inputs[first], first, last, True, method="stages",
                                mutable=["batch_stats"])
    for k in range(first, last + 1):
      if f"stage{k}" in updated["batch_stats"]:
        new_stats[f"stage{k}"] = updated["batch_stats"][f"stage{k}"]
    # the target in the student's space where the next stage's adapter makes it (its gradient
    # stopped: that adapter is the next group's to train)
    adapted = (adapters.target(adapter_vars, last, teacher_feats[last - 1])
               if adapters and last < model.num_stages else None)
    loss, group_metrics = method.group_loss(
        GroupOutputs(first, last, model.num_stages, outs, teacher_feats, labels, images,
                     student_logits_fn, teacher_logits_fn, adapted), method_config)
    total = total + loss
    metrics.update(group_metrics)
    if last == model.num_stages:
      head_logits = outs[-1]
  metrics["loss"] = total
  if head_logits is not None:
    metrics["accuracy"] = losses.accuracy(head_logits, labels)
  return total, (new_stats, metrics)


def _stage_subtree(tree: dict, first: int, last: int,
                   adapters: StageAdapters = adapters_lib.NONE) -> dict:
  """The entries of stages first..last (a head has no BatchNorm statistics) and of the adapter
  that group trains."""
  return {**{f"stage{k}": tree[f"stage{k}"] for k in range(first, last + 1) if f"stage{k}" in tree},
          **adapters_lib.group_share(tree, adapters, first)}


def _whole_student_unavailable(images):
  raise ValueError(
      "This method's loss runs the whole student (student_logits_fn), which cannot be split by "
      "group: set config.method.memory_lean=False for it.")


def sequential_group_grads(params, batch_stats, *, model: nn.Module, teacher: nn.Module,
                           teacher_vars, groups: tuple[Group, ...], method: Method, method_config,
                           images, labels, teacher_logits_fn,
                           adapters: StageAdapters = adapters_lib.NONE):
  """`jax.grad(group_losses)`, computed one group at a time to bound peak memory.

  The paper's conclusion: since each group's gradient stays inside the group, the groups can be
  updated in turn from one teacher forward pass, and only one group's activations need to exist
  at a time. Here the teacher also runs one stage at a time, interleaved with the groups, so a
  teacher feature is dropped once the groups reading it are done. The order is enforced with
  `lax.optimization_barrier`: the next teacher stage and the next group read their input only
  after this group's gradient exists, so no scheduler can run every group's forward pass first.
  The sum is the same as the default step's; only the schedule differs. On a GPU it does not pay:
  XLA already runs the default step group by group (deepest groups first), and these barriers,
  which put group 1 first and leave the parameters' bf16 copies free to be made early, raise the
  peak by 125 MiB at batch 512 (XLA's buffer assignment, docs/benchmarks-log.md); `model.remat`
  is what lowers it there.

  Each group's loss sees the teacher's outputs up to its last stage (later entries are None):
  every loss in `methods` reads only those.
  """
  teacher_feats: list = [None] * teacher.num_stages
  done = 0  # teacher stages computed so far
  grads, new_stats, metrics = {}, dict(batch_stats), {}
  total = jnp.zeros((), jnp.float32)
  head_logits = None
  for first, last in groups:
    while done < last:
      x = images if done == 0 else teacher_feats[done - 1]
      teacher_feats[done] = jax.lax.stop_gradient(
          teacher.apply(teacher_vars, x, done + 1, done + 1, False, method="stages")[0])
      done += 1
    inputs = images if first == 1 else teacher_feats[first - 2]
    feats = tuple(teacher_feats)
    stats = _stage_subtree(batch_stats, first, last, adapters)
    # the target in the student's space, where the next stage's adapter makes it: that adapter is
    # the next group's to train, so its variables are constants here
    adapted = None
    if adapters and last < model.num_stages:
      adapted = adapters.target({"params": adapters_lib.split(params)[1],
                                 "batch_stats": adapters_lib.split(batch_stats)[1]},
                                last, teacher_feats[last - 1])

    def loss_fn(sub_params, inputs=inputs, feats=feats, stats=stats, first=first, last=last,
                adapted=adapted):
      student_params, adapter_params = adapters_lib.split(sub_params)
      student_stats, adapter_stats = adapters_lib.split(stats)
      updated = {}
      if first > 1:
        inputs, updated = adapters.to_student(
            {"params": adapter_params, "batch_stats": adapter_stats}, first, inputs)
      outs, new = model.apply({"params": student_params, "batch_stats": student_stats},
                              inputs, first, last, True, method="stages", mutable=["batch_stats"])
      new = dict(new["batch_stats"])
      if updated:
        new[adapters_lib.ADAPTERS] = updated
      loss, group_metrics = method.group_loss(
          GroupOutputs(first, last, model.num_stages, outs, feats, labels, images,
                       _whole_student_unavailable, teacher_logits_fn, adapted), method_config)
      return loss, (new, group_metrics, outs[-1])

    (loss, (updated, group_metrics, out)), group_grads = jax.value_and_grad(
        loss_fn, has_aux=True)(_stage_subtree(params, first, last, adapters))
    # What comes next (the next teacher stage, the next group) starts from teacher_feats[last-1]:
    # tie it to this group's gradient so that it cannot start before this group is finished.
    group_grads, teacher_feats[last - 1] = jax.lax.optimization_barrier(
        (group_grads, teacher_feats[last - 1]))
    grads = adapters_lib.merge(grads, group_grads)
    new_stats = adapters_lib.merge(new_stats, updated)
    metrics.update(group_metrics)
    total = total + loss
    if last == model.num_stages:
      head_logits = out
  metrics["loss"] = total
  if head_logits is not None:
    metrics["accuracy"] = losses.accuracy(head_logits, labels)
  return adapters_lib.fill_unused(grads, params), (new_stats, metrics)


def make_train_step(*, model: nn.Module, teacher: nn.Module | None, method: Method,
                    groups: tuple[Group, ...], method_config, data_config, tx, mean, std,
                    batch_size: int, steps_per_epoch: int, batch_sharding=None,
                    adapters: StageAdapters = adapters_lib.NONE, streamed: bool = False):
  """A pure function (state, images, labels, perm, teacher_vars) -> (new state, metrics).

  `streamed`: (state, batch, labels, teacher_vars) -> (new state, metrics) instead, for batches
  read by the streaming pipeline (`dnd_jax.data.stream`), which crops and flips them on the host:
  the step only normalises them. Both share everything after the batch.

  `adapters` are the pair's stage adapters (`dnd_jax.adapters.for_pair`), whose variables the
  state holds beside the student's; none for a pair of equal stage shapes.

  `method_config.memory_lean` (when the partition has several groups) differentiates the groups
  one after another (`sequential_group_grads`): the same update, a lower peak memory.
  `batch_sharding` splits the batch over the mesh's devices; the step itself is written for the
  global batch, so BatchNorm statistics are those of the global batch.

  Compiled in are only shapes and structure: `batch_size`, `steps_per_epoch` (the training set's
  size over the batch: the epoch's permutation has that many batches), the models, the partition.
  What differs between runs of one config (epoch budget, learning rate, seed) reaches the step
  through `state` (`dnd_jax.optim`, `TrainState.rng`), so such runs share one compiled program.
  """
  if batch_sharding is not None:
    parallel.check_batch_divides(batch_size, batch_sharding.mesh)
  lean = bool(method_config.get("memory_lean", False)) and len(groups) > 1
  if lean and teacher is None:
    raise ValueError("config.method.memory_lean needs a teacher: its groups start from teacher "
                     "features.")

  def step(state: TrainState, images_u8, labels_all, perm, teacher_vars):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    return batch_step(state, images_u8[idx], labels_all[idx], teacher_vars)

  def batch_step(state: TrainState, batch_u8, labels, teacher_vars):
    if batch_sharding is not None:
      batch_u8 = jax.lax.with_sharding_constraint(batch_u8, batch_sharding)
      labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    if streamed:
      images = augment.normalise(batch_u8, mean, std)
    else:
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      images = augment.train_preprocess(batch_u8, key, data_config, mean, std)

    teacher_feats, teacher_logits_fn = None, None
    if teacher is not None:
      teacher_logits_fn = functools.partial(teacher.apply, teacher_vars, train=False)
    if lean:
      grads, (new_stats, metrics) = sequential_group_grads(
          state.params, state.batch_stats, model=model, teacher=teacher,
          teacher_vars=teacher_vars, groups=groups, method=method, method_config=method_config,
          images=images, labels=labels, teacher_logits_fn=teacher_logits_fn, adapters=adapters)
    else:
      if teacher is not None:
        teacher_feats = jax.lax.stop_gradient(
            teacher.apply(teacher_vars, images, method="stages", train=False))
      grad_fn = jax.grad(group_losses, has_aux=True)
      grads, (new_stats, metrics) = grad_fn(
          state.params, state.batch_stats, model=model, groups=groups, method=method,
          method_config=method_config, images=images, labels=labels,
          teacher_feats=teacher_feats, teacher_logits_fn=teacher_logits_fn, adapters=adapters)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=new_stats, opt_state=opt_state)
    metrics["count"] = jnp.ones((), jnp.float32)
    return new_state, metrics

  # Jitted only so that it is traced once: `zero_metrics_like` traces it for the metric names and
  # the caller's jitted, donated program (`accumulate_metrics`, `repeat_steps`) calls it with the
  # same shapes, so that trace is reused (a ResNet18 and a ResNet34 traced again cost seconds of
  # startup); XLA inlines the call, so the compiled program is the same.
  return jax.jit(batch_step if streamed else step)


def accumulate_metrics(step_fn):
  """Wraps a step so it adds its metrics into running sums kept on the device.

  Summing inside the jitted step means the host reads metrics once per epoch (or per progress
  bar refresh) instead of synchronising on every step.
  """

  def step(state: TrainState, sums: dict, *args):
    new_state, metrics = step_fn(state, *args)
    return new_state, jax.tree.map(lambda s, m: s + m.astype(jnp.float32), sums, metrics)

  return step


def repeat_steps(step_fn, n: int):
  """`n` consecutive steps in one dispatch: (state, sums, *args) -> (state, sums) after n steps.

  For an `accumulate_metrics` step. A `lax.scan` over the step (compiled once, not unrolled), so
  the host dispatches once per n steps; worth it where the per-step host overhead is not hidden
  behind the device's work (small models, fast devices). The step reads its batch and its
  augmentation key from `state.step`, so n steps here equal n single dispatches, provided they
  stay within one epoch (one permutation) and one partition, as the training loop arranges.

  Not on a CPU: XLA:CPU runs this step far slower inside a rolled loop than on its own, while
  there the host's dispatch cost is hidden behind a long step anyway; unrolling restores the speed
  but grows compile time with n (docs/benchmarks-log.md, the CPU results).
  """
  if n < 1:
    raise ValueError(f"config.steps_per_dispatch must be at least 1, got {n}.")
  if n == 1:
    return step_fn

  def steps(state: TrainState, sums: dict, *args):
    def body(carry, _):
      return step_fn(*carry, *args), None

    return jax.lax.scan(body, (state, sums), None, length=n)[0]

  return steps


def dispatched_step(step_fn, n: int, out_sharding):
  """The program the training loop dispatches: `n` steps of `step_fn` (one `make_train_step`)
  with their metrics summed on the device, the train state and the sums donated (updated in
  place), both placed by `out_sharding`. The benchmark times this same program."""
  return jax.jit(repeat_steps(accumulate_metrics(step_fn), n), donate_argnums=(0, 1),
                 out_shardings=(out_sharding, out_sharding))


def zero_metrics_like(step_fn, state, *args) -> dict:
  """Zeroed running sums with the names of the metrics `step_fn` reports (traced, not run).

  Host arrays, so that every `device_put` of them makes a fresh buffer for the step to donate.
  """
  shapes = jax.eval_shape(step_fn, state, *args)[1]
  return {k: np.zeros((), np.float32) for k in shapes}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What a run's training steps are built from, one step per partition of `method`: the
  training loop and the benchmark both build theirs from one (`compile_partition_step`), so the
  benchmark times the program that trains."""

  model: nn.Module
  teacher: nn.Module | None
  method: Method  # resolved for the networks' stage count (`Method.for_stages`)
  method_config: Any  # config.method
  data_config: Any  # config.data: the augmentation
  tx: optax.GradientTransformation
  mean: Any
  std: Any
  batch_size: int
  steps_per_epoch: int
  adapters: StageAdapters = adapters_lib.NONE  # the pair's stage adapters
  streamed: bool = False  # batches from the streaming pipeline (`make_train_step`)


def partition_step(spec: StepSpec, phase: int, mesh):
  """One step of the partition of `phase` (`make_train_step`), the frozen stages' BatchNorm
  statistics kept (`freeze.keep_frozen_statistics`), the batch split over `mesh`."""
  step_fn = make_train_step(
      model=spec.model, teacher=spec.teacher, method=spec.method,
      groups=spec.method.partition(phase), method_config=spec.method_config,
      data_config=spec.data_config, tx=spec.tx, mean=spec.mean, std=spec.std,
      batch_size=spec.batch_size, steps_per_epoch=spec.steps_per_epoch,
      batch_sharding=parallel.batch_sharded(mesh), adapters=spec.adapters,
      streamed=spec.streamed)
  return freeze.keep_frozen_statistics(step_fn, spec.method)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A partition's dispatched program (`dispatched_step`), with what its callers read of it."""

  step_fn: Any  # one step (`partition_step`), for a FLOP count of one step
  lowered: Any
  compiled: Any
  zero_sums: dict  # host arrays: `device_put` them afresh for each run of steps (donated)


def compile_partition_step(spec: StepSpec, phase: int, n: int, mesh, state, *args,
                           compiler_options: dict | None = None) -> CompiledStep:
  """The program the training loop dispatches for the partition of `phase`: `n` steps
  (`dispatched_step`) with their metric sums, the state and sums replicated over `mesh`, lowered
  for `state` and `args` (images, labels, permutation, teacher variables; a streamed step's batch,
  labels and teacher variables) and compiled with
  `compiler_options` (`runtime.compiler_options` of the config's)."""
  step_fn = partition_step(spec, phase, mesh)
  sums = zero_metrics_like(step_fn, state, *args)
  repl = parallel.replicated(mesh)
  lowered = dispatched_step(step_fn, n, repl).lower(state, jax.device_put(sums, repl), *args)
  return CompiledStep(step_fn, lowered, lowered.compile(compiler_options=compiler_options), sums)


AUTO_EVAL_BATCH_WITHOUT_MEMORY_STATS = 500


def eval_batch_size(num_images: int, image_shape, model: nn.Module, device=None) -> int:
  """An evaluation batch sized for the device: what `config.eval_batch_size = 0` means.

  An inference pass keeps few activations alive at once; the largest per image is about
  H x W x C values, C the channels of stage 1's output (its width for a ResNet), at the input's
  resolution (found by an abstract evaluation). The batch gives each image eight of those, within an eighth of the device's memory (its `bytes_limit`, fixed per device kind, so
  the size and hence the compiled evaluation do not change from run to run); a device that
  reports no limit (a CPU) gets 500. The evaluation set is then cut into equal batches, so that
  padding the last one costs less than one image per batch.
  """
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() or {}
  cap = AUTO_EVAL_BATCH_WITHOUT_MEMORY_STATS
  if stats.get("bytes_limit"):
    h, w, c = image_shape
    stage1_channels = stage_output_shapes(model, image_shape)[0][-1]
    per_image = 8 * h * w * max(stage1_channels, c) * np.dtype(model.dtype).itemsize
    cap = max(int(stats["bytes_limit"] / 8 // per_image), 8)
  batches = max(-(-num_images // cap), 1)
  return max(-(-num_images // batches), 1)


def resolve_eval_batch_size(batch_size: int, num_images: int, image_shape,
                            model: nn.Module) -> int:
  """`batch_size`, or for 0 (the configs' default) a batch sized for the device
  (`eval_batch_size`): what every evaluation over a split (training's, scripts/evaluate.py's,
  the diagnosis's) takes from `config.eval_batch_size`. Never more than the split: a larger batch
  would only be padding to compute (and to hold in memory)."""
  if batch_size > 0:
    return max(min(batch_size, num_images), 1)
  return eval_batch_size(num_images, image_shape, model)


def padded_batches(images_u8, labels, batch_size: int):
  """(images, labels) cut into whole batches of `batch_size`, the last padded with label -1.

  Label -1 never counts as correct and is masked out of sums, so one `lax.map` over the batches
  covers every example exactly once.
  """
  n = images_u8.shape[0]
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  images_u8 = jnp.pad(images_u8, ((0, pad),) + ((0, 0),) * (images_u8.ndim - 1))
  labels = jnp.pad(labels, (0, pad), constant_values=-1)
  return (images_u8.reshape(nb, batch_size, *images_u8.shape[1:]),
          labels.reshape(nb, batch_size))


def make_evaluate(model: nn.Module, data_config, mean, std, batch_size: int = 0):
  """(variables, images_u8, labels) -> (number correct, summed CE) over padded batches.

  The evaluation set is padded to whole batches with label -1, which never counts as correct and
  is masked out of the loss; `lax.map` runs every batch in one dispatch. `batch_size` 0 sizes the
  batch for the device (`eval_batch_size`).
  """

  def evaluate(variables, images_u8, labels):
    n = images_u8.shape[0]
    size = resolve_eval_batch_size(batch_size, n, images_u8.shape[1:], model)

    def one_batch(xy):
      x, y = xy
      logits = model.apply(variables, augment.eval_preprocess(x, data_config, mean, std))
      valid = y >= 0
      correct = jnp.sum((jnp.argmax(logits, -1) == y) & valid)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
      return correct, jnp.sum(jnp.where(valid, ce, 0.0))

    correct, ce = jax.lax.map(one_batch, padded_batches(images_u8, labels, size))
    return jnp.sum(correct), jnp.sum(ce)

  return evaluate
