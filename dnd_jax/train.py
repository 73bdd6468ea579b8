"""`train_and_evaluate(config, workdir)`: the one training loop behind every method.

It loads the data onto the device, loads (or first trains) the frozen teacher, builds one jitted,
donated step per stage partition of the method, and runs epochs of steps, evaluating the student
end to end after each epoch. Everything needed to resume lives in the workdir (see
`dnd_jax.checkpoints`); running the same command again on the same workdir continues the run and
ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from dnd_jax import checkpoints, parallel, profiling, steps, tb
from dnd_jax.runtime import is_primary
from dnd_jax.configs import load_config_file
from dnd_jax.data import Dataset, load_dataset
from dnd_jax.methods import Method, get_method
from dnd_jax.models import ResNet, build_model, init_variables, stage_output_shapes
from dnd_jax.optim import make_optimizer, make_schedules

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}.")
  return DTYPES[name]


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# --- teacher ------------------------------------------------------------------------------------


def check_stage_shapes(student: ResNet, teacher: ResNet, method: Method, image_shape) -> None:
  """Every stage boundary that a group crosses must have the same shape in both networks."""
  s_shapes = stage_output_shapes(student, image_shape)
  t_shapes = stage_output_shapes(teacher, image_shape)
  boundaries = sorted({last for _, groups in method.phases for _, last in groups})
  for k in boundaries:
    if s_shapes[k - 1][1:] != t_shapes[k - 1][1:]:
      raise ValueError(
          f"Stage {k} output shapes differ: student {s_shapes[k - 1][1:]} vs teacher "
          f"{t_shapes[k - 1][1:]} (per example). Method {method.name!r} matches the student to the "
          "teacher at this stage; give config.model and config.teacher the same width and stem.")


def prepare_teacher(config, dataset: Dataset, dtype) -> tuple[ResNet, dict, dict]:
  """The frozen teacher: loaded from `config.teacher.checkpoint`, or trained first if missing.

  Returns the model, its variables, and its `model.json` (plus `trained_here_wall_s` when this
  call trained it).
  """
  path = config.teacher.checkpoint
  if not os.path.isfile(os.path.join(path, checkpoints.MODEL_META)):
    if not config.teacher.config:
      raise checkpoints.CheckpointError(
          f"Teacher checkpoint {path!r} not found and config.teacher.config is empty. Train one "
          "with `python scripts/train.py --config configs/teacher_<data>.py --workdir <dir>` and "
          "set --config.teacher.checkpoint=<dir>/model, or import a PyTorch teacher with "
          "scripts/import_torch_teacher.py.")
    teacher_workdir = os.path.dirname(os.path.abspath(path))
    _log(f"Teacher checkpoint {path!r} not found: training the teacher first with "
         f"{config.teacher.config} in {teacher_workdir}.")
    teacher_config = load_config_file(config.teacher.config)
    summary = train_and_evaluate(teacher_config, teacher_workdir)
    exported = os.path.join(teacher_workdir, "model")
    if os.path.abspath(exported) != os.path.abspath(path):
      raise checkpoints.CheckpointError(
          f"Trained the teacher into {exported}, but config.teacher.checkpoint is {path!r}; "
          "point it at <teacher workdir>/model.")
    _log(f"Teacher trained: final accuracy {summary['final_accuracy']:.4f}.")
    trained_here_s = summary["wall_time_s"]
  else:
    trained_here_s = 0.0
  teacher = build_model(config.teacher, dataset.num_classes, dtype)
  arch = checkpoints.architecture(config.teacher, dataset.num_classes, dataset.image_shape)
  abstract = jax.eval_shape(lambda: init_variables(teacher, jax.random.key(0), dataset.image_shape))
  variables, meta = checkpoints.load_model(path, arch, abstract)
  if trained_here_s:
    meta = {**meta, "trained_here_wall_s": trained_here_s}
  return teacher, variables, meta


# --- bookkeeping --------------------------------------------------------------------------------


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_metrics(workdir: str, history: list[dict]) -> None:
  """Rewrite the metrics file atomically (used on resume to drop epochs that will be redone)."""
  if not is_primary():
    return
  path = os.path.join(workdir, METRICS_FILE)
  with open(path + ".tmp", "w") as f:
    for row in history:
      f.write(json.dumps(row) + "\n")
  os.replace(path + ".tmp", path)


def append_metrics(workdir: str, row: dict) -> None:
  if not is_primary():
    return
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(_flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def record_config(config, workdir: str) -> None:
  """Write the run's config to the workdir, warning when a resumed run's config has changed.

  Changing e.g. `num_epochs` or `optim.lr` between a run and its resumption changes the schedule
  from the resumed step on; that is allowed (it is how a run is extended) but worth a line.
  """
  if not is_primary():
    return
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      try:
        before = _flatten(json.load(f))
      except json.JSONDecodeError:
        before = {}
    now = _flatten(json.loads(text))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if before and changed:
      _log("Warning: the config differs from the one this workdir was started with: " +
           ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed))
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def mean_metrics(parts: list[dict]) -> dict:
  """Per-step means from running sums; with several partitions in one epoch, each metric is
  averaged over the steps that reported it."""
  totals, counts = {}, {}
  for part in jax.device_get(parts):
    count = float(part.pop("count"))
    for k, v in part.items():
      totals[k] = totals.get(k, 0.0) + float(v)
      counts[k] = counts.get(k, 0.0) + count
  return {k: totals[k] / max(counts[k], 1.0) for k in totals}


def resume_or_start(workdir: str, keep: int, state):
  """The run's checkpoints, and the state, bookkeeping and metrics history to continue from.

  With a checkpoint in the workdir, the state and `meta` (epoch, best accuracy, times) are
  restored and metrics of epochs after it (done by a run killed before its next checkpoint) are
  dropped, since they will be redone; without one, the run starts from `state` and any stray
  metrics are cleared.
  """
  ckpts = checkpoints.TrainCheckpoints(workdir, keep)
  meta = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0, "train_time_s": 0.0,
          "compile_time_s": 0.0}
  history: list[dict] = []
  latest = ckpts.latest_step()
  if latest is not None:
    state, meta = ckpts.restore(latest, jax.eval_shape(lambda: state))
    history = [row for row in read_metrics(workdir) if row["epoch"] <= meta["epoch"]]
    write_metrics(workdir, history)
    _log(f"Resuming {workdir} from epoch {meta['epoch']} (step {latest}).")
  elif read_metrics(workdir):
    write_metrics(workdir, [])
  return ckpts, state, meta, history


# --- the loop -----------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train `config.model` with `config.method` and return the run's summary (also in the workdir)."""
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  record_config(config, workdir)

  method = get_method(config.method.name)
  dtype = resolve_dtype(config.model.dtype)
  dataset = load_dataset(config.data)
  image_shape = dataset.image_shape
  model = build_model(config.model, dataset.num_classes, dtype)

  mesh = parallel.make_mesh()
  parallel.check_batch_divides(config.batch_size, mesh)
  repl, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  n_train = len(dataset.train_labels)
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size={config.batch_size} is larger than the training set "
                     f"({n_train} images); lower it or raise data.fraction.")
  total_steps = steps_per_epoch * config.num_epochs
  phase_starts = method.phase_starts(total_steps)
  tx = make_optimizer(config.optim, total_steps, total_steps / len(method.phases))
  lr_schedule, _ = make_schedules(config.optim, total_steps, total_steps / len(method.phases))

  teacher, teacher_vars, teacher_meta = None, None, {}
  if method.needs_teacher:
    teacher, teacher_vars, teacher_meta = prepare_teacher(config, dataset, dtype)
    check_stage_shapes(model, teacher, method, image_shape)

  root_key = jax.random.key(config.seed)
  variables = init_variables(model, jax.random.fold_in(root_key, 0), image_shape)
  state = steps.create_train_state(variables, tx, config.seed)

  ckpts, state, meta, history = resume_or_start(workdir, config.checkpoint.keep, state)
  tracer = profiling.StepTracer(workdir, config.log.get("profile_steps", ""))
  tb_writer = tb.Writer(workdir, config.log, meta["epoch"] * steps_per_epoch)

  put = lambda x: jax.device_put(x, repl)  # noqa: E731
  state = put(state)
  # replicated in one process; in a multi-host run each host places only its share of the rows
  train_images = parallel.put_dataset(dataset.train_images, mesh)
  train_labels = parallel.put_dataset(dataset.train_labels, mesh)
  eval_images, eval_labels = put(dataset.eval_images), put(dataset.eval_labels)
  teacher_vars = put(teacher_vars) if teacher_vars is not None else None

  evaluate = jax.jit(steps.make_evaluate(model, config.data, dataset.mean, dataset.std,
                                         config.eval_batch_size))

  def eval_accuracy(net_vars) -> tuple[float, float]:
    correct, ce = evaluate(net_vars, eval_images, eval_labels)
    n = len(dataset.eval_labels)
    return float(correct) / n, float(ce) / n

  if teacher is not None and "teacher_accuracy" not in meta:
    t_eval = jax.jit(steps.make_evaluate(teacher, config.data, dataset.mean, dataset.std,
                                         config.eval_batch_size))
    correct, _ = t_eval(teacher_vars, eval_images, eval_labels)
    meta["teacher_accuracy"] = float(correct) / len(dataset.eval_labels)
    _log(f"Teacher {dataset.eval_split} accuracy: {meta['teacher_accuracy']:.4f}")

  compiled: dict[tuple[int, int], Any] = {}

  def phase_step(phase: int, perm, n: int = 1):
    """The compiled step of a phase (n steps per dispatch), compiled (and timed) on first use."""
    if (phase, n) not in compiled:
      step_fn = steps.make_train_step(
          model=model, teacher=teacher, method=method, groups=method.partition(phase),
          method_config=config.method, data_config=config.data, tx=tx, mean=dataset.mean,
          std=dataset.std, batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
          batch_sharding=batch_sharding)
      sums = steps.zero_metrics_like(step_fn, state, train_images, train_labels, perm, teacher_vars)
      jitted = jax.jit(steps.repeat_steps(steps.accumulate_metrics(step_fn), n),
                       donate_argnums=(0, 1), out_shardings=(repl, repl))
      jax.block_until_ready(state)  # mid-epoch, the queued steps finish before compile time counts
      t0 = time.perf_counter()
      compiled[phase, n] = (jitted.lower(state, put(sums), train_images, train_labels, perm,
                                         teacher_vars).compile(), sums)
      meta["compile_time_s"] += time.perf_counter() - t0
    return compiled[phase, n]

  make_perm = jax.jit(lambda key: jax.random.permutation(key, n_train).astype(jnp.int32),
                      out_shardings=repl)
  perm_key = jax.random.fold_in(root_key, 2)
  per_dispatch = int(config.get("steps_per_dispatch", 1))

  for epoch in range(meta["epoch"], config.num_epochs):
    perm = make_perm(jax.random.fold_in(perm_key, epoch))
    first_step = epoch * steps_per_epoch
    phase = bisect.bisect_right(phase_starts, first_step) - 1
    step_fn, zero_sums = phase_step(phase, perm, per_dispatch)
    sums = put(zero_sums)
    finished_parts = []  # metric sums of earlier partitions, when a phase boundary falls mid-epoch
    compile_before = meta["compile_time_s"]
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.num_epochs}",
               disable=not config.log.progress_bar, file=sys.stderr, leave=False,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    i = 0
    while i < steps_per_epoch:
      global_step = first_step + i
      if phase + 1 < len(phase_starts) and global_step >= phase_starts[phase + 1]:
        phase += 1  # Progressive DnD changes partition mid-epoch when a boundary falls there
        finished_parts.append(sums)
        step_fn, zero_sums = phase_step(phase, perm, per_dispatch)
        sums = put(zero_sums)
      # several steps per dispatch while they stay inside the epoch and the partition, else one
      phase_end = phase_starts[phase + 1] if phase + 1 < len(phase_starts) else total_steps
      n = per_dispatch if min(steps_per_epoch - i, phase_end - global_step) >= per_dispatch else 1
      run = step_fn if n == per_dispatch else phase_step(phase, perm, 1)[0]
      tracer.before(global_step)
      state, sums = run(state, sums, train_images, train_labels, perm, teacher_vars)
      i += n
      tracer.after(first_step + i, state)
      bar.update(n)
      refresh = config.log.refresh_steps
      if (config.log.progress_bar or tb_writer.enabled) and i // refresh > (i - n) // refresh:
        m = mean_metrics([sums])
        rate = i * config.batch_size / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.3f}", img_s=f"{rate:.0f}")
        tb_writer.steps(first_step + i, m, float(lr_schedule(first_step + i - 1)), rate)
    train = mean_metrics(finished_parts + [sums])  # waits for the epoch's last step
    # a partition compiled mid-epoch is compile time, not training time
    epoch_time = time.perf_counter() - t0 - (meta["compile_time_s"] - compile_before)
    bar.close()
    if not math.isfinite(train["loss"]):
      ckpts.wait()
      raise FloatingPointError(
          f"The training loss became {train['loss']} in epoch {epoch + 1}; stopping. The last good "
          f"checkpoint (epoch {meta['epoch']}) in {workdir}/checkpoints is intact. Lower "
          "config.optim.lr or use float32, then run the same command to resume.")
    acc, eval_loss = eval_accuracy(state.variables)
    meta["train_time_s"] += epoch_time
    meta["epoch"] = epoch + 1
    row = {"epoch": epoch + 1, "step": int(first_step + steps_per_epoch), "phase": phase,
           "lr": float(lr_schedule(first_step + steps_per_epoch - 1)),
           **{f"train_{k}": v for k, v in train.items()},
           f"{dataset.eval_split}_accuracy": acc, f"{dataset.eval_split}_loss": eval_loss,
           "epoch_time_s": epoch_time,
           "images_per_s": steps_per_epoch * config.batch_size / epoch_time}
    history.append(row)
    append_metrics(workdir, row)
    tb_writer.epoch(row["step"], row)
    _log(f"epoch {epoch + 1}/{config.num_epochs}  loss {train['loss']:.4f}  train acc "
         f"{train['accuracy']:.4f}  {dataset.eval_split} acc {acc:.4f}  {epoch_time:.1f}s  "
         f"{row['images_per_s']:.0f} img/s")
    if acc > meta["best_accuracy"]:
      meta["best_accuracy"], meta["best_epoch"] = acc, epoch + 1
      ckpts.save_best(int(state.step), state.variables, dict(meta))
    if (epoch + 1) % config.checkpoint.every_epochs == 0 or epoch + 1 == config.num_epochs:
      ckpts.save(int(state.step), state, dict(meta))
  ckpts.wait()
  tracer.close()
  tb_writer.close()

  summary = finish(config, workdir, model, dataset, state, meta, history, ckpts, evaluate,
                   wall_start, teacher_meta)
  ckpts.close()
  return summary


def finish(config, workdir, model, dataset, state, meta, history, ckpts, evaluate, wall_start,
           teacher_meta) -> dict:
  """Export the final model, report final and best accuracy (and test accuracy when selecting on
  a validation split), and write the summary."""
  arch = checkpoints.architecture(config.model, dataset.num_classes, dataset.image_shape)
  final_vars = jax.device_get(state.variables)
  split = dataset.eval_split
  final_acc = history[-1][f"{split}_accuracy"] if history else float("nan")
  checkpoints.save_model(os.path.join(workdir, "model"), final_vars, arch,
                         {"accuracy": final_acc, "split": split, "epoch": meta["epoch"],
                          "method": config.method.name})
  summary = {
      "method": config.method.name, "dataset": dataset.name, "epochs": config.num_epochs,
      "batch_size": config.batch_size, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "eval_split": split,
      "final_accuracy": final_acc, "best_accuracy": meta["best_accuracy"],
      "best_epoch": meta["best_epoch"], "teacher_accuracy": meta.get("teacher_accuracy"),
      "train_time_s": meta["train_time_s"], "compile_time_s": meta["compile_time_s"],
      "time_per_epoch_s": meta["train_time_s"] / max(len(history), 1),
      "images_per_s": (float(np.median([r["images_per_s"] for r in history])) if history else 0.0),
      # this run's own wall time; a teacher trained first by this command is reported apart
      "wall_time_s": time.perf_counter() - wall_start - teacher_meta.get("trained_here_wall_s", 0.0),
  }
  if split == "validation":
    test_images, test_labels = jax.device_put(dataset.test_images), dataset.test_labels
    correct, _ = evaluate(final_vars, test_images, test_labels)
    summary["final_test_accuracy"] = float(correct) / len(test_labels)
    best = ckpts.restore_best(jax.eval_shape(lambda: final_vars))
    if best is not None:
      correct, _ = evaluate(best[0], test_images, test_labels)
      summary["best_test_accuracy"] = float(correct) / len(test_labels)
  if teacher_meta:
    summary["teacher_checkpoint"] = config.teacher.checkpoint
    if "trained_here_wall_s" in teacher_meta:
      summary["teacher_training_wall_s"] = teacher_meta["trained_here_wall_s"]
  if is_primary():
    with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2)
    print(format_summary(summary), flush=True)
  return summary


def format_summary(s: dict) -> str:
  pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
  lines = [
      f"== {s['method']} on {s['dataset']}: {s['epochs']} epochs, batch {s['batch_size']}, "
      f"{s['devices']} x {s['device_kind']}",
      f"   {s['eval_split']} accuracy: final {pct(s['final_accuracy'])}, best "
      f"{pct(s['best_accuracy'])} (epoch {s['best_epoch']})",
  ]
  if "final_test_accuracy" in s:
    lines.append(f"   test accuracy: final model {pct(s['final_test_accuracy'])}, best-on-validation "
                 f"model {pct(s.get('best_test_accuracy'))}")
  if s.get("teacher_accuracy") is not None:
    lines.append(f"   teacher {s['eval_split']} accuracy: {pct(s['teacher_accuracy'])}")
  lines.append(f"   time: {s['wall_time_s']:.1f}s wall, {s['train_time_s']:.1f}s training, "
               f"{s['time_per_epoch_s']:.2f}s/epoch, compile {s['compile_time_s']:.1f}s, "
               f"{s['images_per_s']:.0f} images/s")
  if "teacher_training_wall_s" in s:
    lines.append(f"   (+ {s['teacher_training_wall_s']:.1f}s to train the teacher first)")
  return "\n".join(lines)
