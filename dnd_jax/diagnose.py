"""Where a DnD student loses accuracy: hybrids, per-stage feature errors, BatchNorm re-estimation.

DnD trains each student stage on the teacher's feature at its input (docs/design.md section 1),
but the student is evaluated end to end, every stage fed by the student's own previous stage. This
measures the difference between the two, on the run's evaluation split (the test split unless
`data.val_fraction` holds out a validation split):

- hybrid k, k = 0..N-1: teacher stages 1..k, then student stages k+1..N (k = 0: the student
  alone; N = 5 for the paper's ResNets).
  Accuracy that climbs with k says the early student stages' errors compound downstream.
- the relative feature error of each student stage, ||s - t|| / ||t|| over the whole split (sums
  of squares over every example and element), once with the stage fed end to end and once fed the
  teacher's feature, what it was trained on; the head (stage N) compares logits.
- both again after re-estimating the student's BatchNorm statistics end to end (the student run
  in training mode on training batches, each stage on its own previous stage's output, as
  `torch.optim.swa_utils.update_bn` does): the statistics DnD learns are those of teacher
  features, which end-to-end evaluation does not feed them.

One compiled program evaluates every hybrid and every error in one pass over the data on the
device (`lax.map` over batches); it runs once with the trained statistics and once with the
re-estimated ones (same shapes, no second compile).
"""

from __future__ import annotations

import datetime
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax import checkpoints, steps, teacher as teacher_lib, workdir as run_folder
from dnd_jax.data import augment, load_dataset
from dnd_jax.models import BATCH_COUNTER, build_model, resolve_dtype


def _per_example_sq(a, b=None):
  """Sum of squares of a - b (or of a) per example, in fp32."""
  d = a.astype(jnp.float32) if b is None else a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.sum(jnp.square(d).reshape(d.shape[0], -1), axis=1)


def make_probe(student: nn.Module, teacher: nn.Module, data_config, mean, std, batch_size: int):
  """(student_vars, teacher_vars, images_u8, labels) -> sums over the split, on the device.

  Returns a dict of arrays: `hybrid_correct` (N,) for k = 0..N-1, `teacher_correct`, and per
  stage (N,) `err_end_to_end`, `err_teacher_input` (sums of ||s - t||^2) and `teacher_sq`
  (||t||^2), N the networks' stage count.
  The split is padded to whole batches with label -1, masked out of every sum; `batch_size` 0
  sizes the batches for the device.
  """

  def probe(s_vars, t_vars, images_u8, labels):
    def one_batch(xy):
      x, y = xy
      valid = y >= 0
      x = augment.eval_preprocess(x, data_config, mean, std)
      t = teacher.apply(t_vars, x, method="stages")
      end_to_end = student.apply(s_vars, x, method="stages")
      logits, fed = [end_to_end[-1]], [end_to_end[0]]  # stage 1's input is the image either way
      for k in range(1, student.num_stages):
        outs = student.apply(s_vars, t[k - 1], k + 1, student.num_stages, method="stages")
        fed.append(outs[0])
        logits.append(outs[-1])

      def masked(v):
        return jnp.sum(jnp.where(valid, v, 0.0))

      def correct(z):
        return jnp.sum((jnp.argmax(z, -1) == y) & valid)

      return {
          "hybrid_correct": jnp.stack([correct(z) for z in logits]),
          "teacher_correct": correct(t[-1]),
          "err_end_to_end": jnp.stack([masked(_per_example_sq(s, tk))
                                       for s, tk in zip(end_to_end, t)]),
          "err_teacher_input": jnp.stack([masked(_per_example_sq(s, tk)) for s, tk in zip(fed, t)]),
          "teacher_sq": jnp.stack([masked(_per_example_sq(tk)) for tk in t]),
      }

    size = steps.resolve_eval_batch_size(batch_size, images_u8.shape[0], images_u8.shape[1:],
                                         teacher)
    per_batch = jax.lax.map(one_batch, steps.padded_batches(images_u8, labels, size))
    return jax.tree.map(lambda v: jnp.sum(v, axis=0), per_batch)

  return probe


def reestimate_batch_stats(model: nn.Module, variables: dict, num_batches: int, batch_fn) -> dict:
  """The variables with BatchNorm statistics re-estimated end to end (traced; call under jit).

  Each of `num_batches` batches (`batch_fn(i)`: normalised inputs) runs through the whole model in
  training mode, every layer normalised by its batch's statistics; a layer's new running mean and
  variance are the averages over the batches of its batch mean and unbiased batch variance, which
  is what `torch.optim.swa_utils.update_bn` (momentum None: a cumulative average) computes. The
  batch counters are kept.
  """
  own_stats = model.clone(bn_momentum=1.0)  # momentum 1: the updated statistics are the batch's

  def body(sums, i):
    _, updated = own_stats.apply(variables, batch_fn(i), train=True, mutable=["batch_stats"])
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), sums, updated["batch_stats"]), None

  zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  sums, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
  stats = jax.tree_util.tree_map_with_path(
      lambda path, total, old: old if path[-1].key == BATCH_COUNTER else total / num_batches,
      sums, variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def _load(path: str, model_config, dataset) -> dict:
  if not run_folder.has_model(path):
    raise checkpoints.CheckpointError(
        f"No student model at {path!r} (expected {run_folder.model_meta_path(path)}); "
        f"pass the folder scripts/train.py wrote (<workdir>/model).")
  arch = checkpoints.architecture(model_config, dataset.num_classes, dataset.image_shape)
  return checkpoints.load_model_as(path, arch, dataset.image_shape)[1]


def _summarise(sums: dict, n: int) -> dict:
  sums = jax.device_get(sums)
  rel = lambda err: [float(np.sqrt(e / t)) for e, t in zip(err, sums["teacher_sq"])]  # noqa: E731
  stages = [str(k) for k in range(1, len(sums["teacher_sq"]) + 1)]
  return {
      "hybrid_accuracy": {str(k): float(c) / n for k, c in enumerate(sums["hybrid_correct"])},
      "relative_error_end_to_end": dict(zip(stages, rel(sums["err_end_to_end"]))),
      "relative_error_teacher_input": dict(zip(stages, rel(sums["err_teacher_input"]))),
  }


def _check_same_teacher(student_path: str, teacher_path: str, teacher_vars) -> None:
  """The hybrids splice the student to the teacher it was distilled from; another one (a config
  whose default teacher path is not the run's) would be measured without a word. The run's
  summary records its teacher's weights (`teacher_digest`)."""
  run = run_folder.workdir_of_model(student_path)
  summary = (run_folder.read_summary(run) if run else None) or {}
  recorded = summary.get("teacher_digest")
  if recorded and recorded != checkpoints.variables_digest(teacher_vars):
    raise checkpoints.CheckpointError(
        f"The student at {student_path} was distilled from another teacher "
        f"({summary.get('teacher_checkpoint')!r}) than the one at config.teacher.checkpoint="
        f"{teacher_path!r}: give --config.teacher.checkpoint={summary.get('teacher_checkpoint')} "
        "(the run's).")


def diagnose(config, student_path: str, *, bn_batches: int = 0, seed: int = 0) -> dict:
  """The diagnosis of the student at `student_path` (a model folder) for the run `config`.

  `config` is the run's config (data, model, teacher: the teacher loads from
  `config.teacher.checkpoint`); `bn_batches` training batches of `config.batch_size` re-estimate
  the BatchNorm statistics (0: one epoch's full batches), drawn with `seed`.
  """
  dtype = resolve_dtype(config.model.dtype)
  dataset = load_dataset(config.data)
  student = build_model(config.model, dataset.num_classes, dtype)
  # the teacher's architecture is its model.json's (dnd_jax.teacher)
  teacher, t_vars, _ = teacher_lib.load(config, dataset, dtype)
  _check_same_teacher(student_path, config.teacher.checkpoint, t_vars)
  # the hybrids splice teacher stages onto student stages: the exported student has no adapters
  teacher_lib.check_same_stage_shapes(student, teacher, dataset.image_shape,
                                      config.teacher.checkpoint)
  s_vars = _load(student_path, config.model, dataset)

  batch = int(config.batch_size)
  n_train = len(dataset.train_labels)
  num_batches = min(bn_batches or n_train // batch, n_train // batch)
  if num_batches < 1:
    raise ValueError(f"config.batch_size={batch} is larger than the training set ({n_train} "
                     "images): no batch to re-estimate BatchNorm statistics with.")

  probe = jax.jit(make_probe(student, teacher, config.data, dataset.mean, dataset.std,
                             int(config.eval_batch_size)))

  @jax.jit
  def reestimate(variables, images_u8, perm, key):
    def batch_fn(i):
      idx = jax.lax.dynamic_slice_in_dim(perm, i * batch, batch)
      return augment.train_preprocess(images_u8[idx], jax.random.fold_in(key, i), config.data,
                                      dataset.mean, dataset.std)

    return reestimate_batch_stats(student, variables, num_batches, batch_fn)

  eval_images, eval_labels = jax.device_put(dataset.eval_images), jax.device_put(dataset.eval_labels)
  n = len(dataset.eval_labels)
  trained = probe(s_vars, t_vars, eval_images, eval_labels)
  perm = np.random.default_rng(seed).permutation(n_train).astype(np.int32)
  re_vars = reestimate(s_vars, jax.device_put(dataset.train_images), perm,
                       jax.random.key_data(jax.random.key(seed)))
  re_estimated = probe(re_vars, t_vars, eval_images, eval_labels)
  sums = jax.device_get(trained)
  return {
      "student": os.path.abspath(student_path),
      "teacher": os.path.abspath(config.teacher.checkpoint),
      "split": dataset.eval_split,
      "num_examples": n,
      "teacher_accuracy": float(sums["teacher_correct"]) / n,
      "trained_statistics": _summarise(trained, n),
      "re_estimated_statistics": _summarise(re_estimated, n),
      "bn_reestimation": {"batches": num_batches, "batch_size": batch, "seed": seed,
                          "augmented": True},
      "date": datetime.date.today().isoformat(),
  }


def _pct(x: float) -> str:
  return f"{100 * x:.2f}%"


def format_markdown(d: dict) -> str:
  """The two tables of a diagnosis: hybrid accuracies, and relative errors per stage."""
  trained, re_est = d["trained_statistics"], d["re_estimated_statistics"]
  n = len(trained["relative_error_end_to_end"])  # the networks' stage count
  lines = [f"Student `{d['student']}`, teacher `{d['teacher']}`: {d['split']} split, "
           f"{d['num_examples']} images; teacher accuracy {_pct(d['teacher_accuracy'])}. BatchNorm "
           f"re-estimated on {d['bn_reestimation']['batches']} augmented training batches of "
           f"{d['bn_reestimation']['batch_size']}.", "",
           f"| hybrid k: teacher stages 1..k, then student stages k+1..{n} | accuracy | after BN "
           "re-estimation |", "|---|---|---|"]
  for k in range(n):
    name = ("student alone" if k == 0 else
            f"teacher 1{'-' + str(k) if k > 1 else ''}, student {k + 1}"
            f"{'-' + str(n) if k + 1 < n else ''}")
    lines.append(f"| k = {k}: {name} | {_pct(trained['hybrid_accuracy'][str(k)])} | "
                 f"{_pct(re_est['hybrid_accuracy'][str(k)])} |")
  lines += ["", "| stage | relative error, end to end | on teacher inputs | end to end after BN "
                "re-estimation |", "|---|---|---|---|"]
  for k in range(1, n + 1):
    name = f"{k} (logits)" if k == n else str(k)
    lines.append(f"| {name} | {trained['relative_error_end_to_end'][str(k)]:.4f} | "
                 f"{trained['relative_error_teacher_input'][str(k)]:.4f} | "
                 f"{re_est['relative_error_end_to_end'][str(k)]:.4f} |")
  return "\n".join(lines) + "\n"


def write_report(d: dict, prefix: str) -> tuple[str, str]:
  """`prefix`.json and `prefix`.md, each written whole or not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  paths = (prefix + ".json", prefix + ".md")
  for path, text in zip(paths, (json.dumps(d, indent=2) + "\n", format_markdown(d))):
    run_folder.write_atomic(path, text)
  return paths
