"""`train_and_evaluate(config, workdir)`: a run of any method, from its config to its summary.

This module owns a run's lifecycle: the config is checked (`dnd_jax.config_check`, each check once,
as soon as what it needs exists), the teacher is provisioned (`train_command`: a missing one is
trained first, as its own run), the run resumes from its workdir or starts, the epochs run
(`dnd_jax.loop`, which is handed resolved objects and reads no config), and the run is finished:
the final model exported, the summary written. Everything needed to resume lives in the workdir
(see `dnd_jax.workdir`); running the same command again on the same workdir continues the run and
ends with the same metrics as an uninterrupted run. One process at a time trains in a workdir
(`dnd_jax.workdir.lock`), and a finished run is never trained or rewritten again.
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import ml_collections
import numpy as np

from dnd_jax import adapters, batches as batch_sources, checkpoints, config_check, freeze, loop
from dnd_jax import parallel, profiling, runtime, steps
from dnd_jax import tb, teacher as teacher_lib, workdir as run_folder
from dnd_jax.data import load_dataset, stream
from dnd_jax.runtime import is_primary
from dnd_jax.methods import get_method
from dnd_jax.models import build_model, init_variables, resolve_dtype
from dnd_jax.optim import make_optimizer, make_schedules, with_config_hyperparameters
from dnd_jax.timing import PARTS, TimeSplit
from dnd_jax.workdir import read_metrics, write_metrics

log = logging.getLogger(__name__)


# --- bookkeeping --------------------------------------------------------------------------------


def resume_or_start(ckpts: checkpoints.TrainCheckpoints, workdir: str, state, sharding,
                    accept=None):
  """The state, bookkeeping and metrics history to continue from.

  With a checkpoint in the workdir, the state and `meta` (epoch, best accuracy, times) of the
  newest one that restores are restored (a damaged newer one is moved aside, with a line) and
  metrics of epochs after it (done by a run killed before its next checkpoint) are dropped, since
  they will be redone; without one, the run starts from `state` and any stray metrics are cleared.
  `accept(state, meta)` may refuse the restored run by raising, before any of that is written.
  The state is restored straight into `sharding` (this run's mesh): left to itself, Orbax would
  place it as it was saved, which fails when the run resumes on another number of devices.
  """
  meta = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0, "train_time_s": 0.0,
          "compile_time_s": 0.0}
  history: list[dict] = []
  restored = ckpts.restore_latest_intact(
      checkpoints.restore_target(jax.eval_shape(lambda: state), sharding), accept)
  if restored is not None:
    latest, state, meta = restored
    history = [row for row in read_metrics(workdir) if row["epoch"] <= meta["epoch"]]
    write_metrics(workdir, history)
    log.info(f"Resuming {workdir} from epoch {meta['epoch']} (step {latest}).")
  elif run_folder.is_finished(workdir):  # a larger num_epochs, but nothing to extend from
    raise run_folder.WorkdirError(
        f"{workdir} holds a finished run without a checkpoint to extend it from (its "
        f"{run_folder.CHECKPOINTS_DIR}/ is gone): extended, it would start over and replace its "
        "records. Use another --workdir, or its own num_epochs to see its summary.")
  elif stray := read_metrics(workdir):  # epochs of a run killed before its first checkpoint
    log.info(f"No checkpoint in {workdir}: starting over (the {len(stray)} epoch(s) in "
             f"{run_folder.METRICS_FILE} had none).")
    write_metrics(workdir, [])
  return state, meta, history


# What a checkpoint records of the run's inputs (its meta), which a resume may not change: why not,
# and the fix.
RUN_IDENTITY = {
    "data_rows": "trained and validated on other rows of the training set than this config draws "
                 "(data.fraction, data.val_fraction or data.subset_seed differ from its "
                 "config.json's): resumed, it would mix two splits. Resume with the data.* of its "
                 "config.json",
    "teacher": "was distilled from another teacher than the one at config.teacher.checkpoint (its "
               "weights differ): resumed, it would change teachers midway. Point "
               "--config.teacher.checkpoint at the teacher its config.json names",
}


def check_resumable(workdir: str, config, epoch: int, step: int, steps_per_epoch: int,
                    n_train: int, recorded: dict | None = None,
                    current: dict | None = None) -> None:
  """A checkpoint of `epoch` done at `step` can go on with `config`: the same steps per epoch
  (its step counts the schedules' steps, and the partition switches fall at the config's steps;
  a mid-epoch checkpoint records the steps of its epoch so far, and its steps per epoch),
  the same inputs where its meta (`recorded`) records them (`RUN_IDENTITY`: the training and
  validation rows, `Dataset.rows_digest`, and the teacher's weights) and no fewer epochs than it
  has done."""
  recorded, current = recorded or {}, current or {}
  for key, why in RUN_IDENTITY.items():
    if recorded.get(key) and current.get(key) and recorded[key] != current[key]:
      raise run_folder.WorkdirError(f"{workdir} holds a run that {why}, or use another --workdir.")
  partial = recorded.get(loop.PARTIAL) or {}
  done = step - partial.get("steps", 0)  # the steps of the epochs done
  if step != epoch * steps_per_epoch + partial.get("steps", 0) or partial.get(
      "steps_per_epoch", steps_per_epoch) != steps_per_epoch:
    per_epoch = partial.get("steps_per_epoch") or done // max(epoch, 1)
    raise run_folder.WorkdirError(
        f"{workdir} holds a run at epoch {epoch}, step {step} ({per_epoch} steps per epoch), "
        f"but this config gives {steps_per_epoch} steps per epoch (batch_size "
        f"{config.batch_size} over {n_train} training images): a run cannot change its batch "
        "size or training set midway. Resume with the batch_size and data.* of its config.json, "
        "or use another --workdir.")
  if epoch > config.num_epochs:
    raise run_folder.WorkdirError(
        f"{workdir} holds a run that has done {epoch} epochs; num_epochs={config.num_epochs} "
        f"would not undo them. Use --config.num_epochs={epoch} or more, or another --workdir.")


# --- the run ------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during a run; carries the epoch it stopped in (the checkpoints before it are intact)."""

  def __init__(self, workdir: str, epoch: int):
    super().__init__(f"interrupted at epoch {epoch}; rerun the same command to resume")
    self.workdir, self.epoch = workdir, epoch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train `config.model` with `config.method` and return the run's summary (also in the workdir).

  The config is checked first (nothing is written for a bad one), its XLA options by XLA. A
  finished run is not trained again: its summary is printed and returned (a larger num_epochs
  extends it instead). The workdir is locked for this process while it trains. The teacher must
  exist (`provision_teacher` trains a missing one; `train_command` does both).
  """
  check_before_start(config, workdir)
  return _train_checked(config, workdir)


def train_command(config: ml_collections.ConfigDict, workdir: str, overrides=()) -> dict:
  """scripts/train.py's run: `train_and_evaluate`, with a missing teacher trained first.

  `config` and `workdir` are checked by `config_check.check` already (the script does it before
  JAX starts); the rest of the checks that need no data run here, before a teacher is trained
  (hours, at full scale). `overrides` are the fields the command line set
  (`teacher.config_for_training`)."""
  config_check.check_devices(config)
  if finished_run(config, workdir) is None:  # a finished run needs no teacher to print its summary
    provision_teacher(config, overrides, resuming=run_folder.has_progress(workdir))
  return _train_checked(config, workdir)


def provision_teacher(config: ml_collections.ConfigDict, overrides=(),
                      resuming: bool = False) -> str | None:
  """`teacher.provision` with this module's run as the trainer of a missing teacher."""
  return teacher_lib.provision(config, train_and_evaluate, overrides, resuming)


def _train_checked(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`train_and_evaluate` of a config checked as far as it can be without its data."""
  summary = finished_run(config, workdir)
  if summary is not None:
    log.info(f"{workdir} holds this run, finished; not training it again (use another --workdir "
             "to train anew).")
    print(format_summary(summary), flush=True)
    return summary
  os.makedirs(workdir, exist_ok=True)
  # one process holds the lock for a multi-host run (its peers write no records)
  lock = run_folder.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, contextlib.ExitStack() as closing:
    try:
      return _train_and_evaluate(config, workdir, closing)
    except jax.errors.JaxRuntimeError as e:
      fix = runtime.graph_capture_failure(e, config.get("compiler_options"))
      if fix is None:
        raise
      raise config_check.ConfigError(fix) from e
    except KeyboardInterrupt:
      done = len(read_metrics(workdir))
      raise Interrupted(workdir, min(done + 1, config.num_epochs)) from None


def check_before_start(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """All that can be found wrong with `config` before any data is read or a teacher is trained:
  its values (`config_check.check`), its XLA options (by XLA) and its batch over this process's
  devices (`config_check.check_devices`)."""
  config_check.check(config, workdir)
  config_check.check_devices(config)


def finished_run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The summary of the finished run in `workdir` when `config` is its config; None when there is
  none or `config` extends it (a larger `num_epochs`). Any other difference is an error: a
  finished run stays as it is."""
  summary = run_folder.read_summary(workdir)
  if summary is None:
    return None
  stored = run_folder.read_config(workdir) or {}
  # a larger num_epochs extends the run, a smaller one is refused below
  changed = run_folder.config_changes(stored, config, run_folder.RESULT_NEUTRAL + ("num_epochs",))
  if changed:
    raise run_folder.WorkdirError(
        f"{workdir} holds a finished run with another config ({'; '.join(changed[:6])}); it is "
        "left as it is. Use another --workdir for this config.")
  if config.num_epochs < summary.get("epochs", 0):
    raise run_folder.WorkdirError(
        f"{workdir} holds a run finished after {summary['epochs']} epochs; "
        f"num_epochs={config.num_epochs} would not undo them, and it is left as it is. Use "
        f"--config.num_epochs={summary['epochs']} to see its summary, a larger value to extend "
        "it, or another --workdir.")
  return summary if config.num_epochs == summary.get("epochs") else None


def _teacher_accuracy(config, dataset, teacher_meta, eval_record: dict, measure) -> float:
  """The teacher's accuracy on this run's evaluation split, said once with any warning about it.

  Its model.json holds it when it was measured on the same data (`eval_record`,
  `checkpoints.recorded_accuracy`); only otherwise is an evaluation of the teacher compiled and
  run (`measure()`, compile and eval time)."""
  recorded = checkpoints.recorded_accuracy(teacher_meta, eval_record)
  if recorded is not None:
    accuracy, source = recorded, "as recorded in its model.json"
  else:
    accuracy, source = measure(), "measured"
  log.info(f"Teacher {dataset.eval_split} accuracy: {accuracy:.4f} ({source})")
  for warning in (teacher_lib.chance_warning(accuracy, dataset.num_classes),
                  teacher_lib.held_out_warning(config, teacher_meta, dataset)):
    if warning:
      log.warning(warning)
  return accuracy


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        closing: contextlib.ExitStack) -> dict:
  """The run itself; what it opens that must be closed however it ends goes on `closing`."""
  clock = TimeSplit()
  runtime.enable_compilation_cache()

  dtype = resolve_dtype(config.model.dtype)
  # resident arrays, or a streamed data set's files listed and checked (`dnd_jax.data.stream`)
  streamed = config.data.get("loader", "device") == "stream"
  dataset = stream.open_stream(config.data) if streamed else load_dataset(config.data)
  image_shape = dataset.image_shape
  model = build_model(config.model, dataset.num_classes, dtype)
  # its config checked by check_before_start; its partitions for the networks' stage count
  method = get_method(config.method.name).for_stages(model.num_stages)

  mesh = parallel.make_mesh()  # the batch divides over it (check_before_start)
  repl = parallel.replicated(mesh)

  n_train = dataset.n_train
  config_check.check_run_length(config, n_train, len(method.phases))
  steps_per_epoch = n_train // config.batch_size
  total_steps = steps_per_epoch * config.num_epochs
  phase_steps = total_steps / len(method.phases)
  lr_schedule, _ = make_schedules(config.optim, total_steps, phase_steps)
  # The schedule's length and learning rates live in the optimiser state, not in the compiled
  # step, so other budgets, learning rates and seeds reuse the same programs (dnd_jax.optim).
  tx = freeze.mask_optimizer(make_optimizer(config.optim, total_steps, phase_steps), method)

  teacher, teacher_vars, teacher_meta = None, None, {}
  stage_adapters = adapters.NONE
  if method.needs_teacher:
    teacher, teacher_vars, teacher_meta = teacher_lib.load(config, dataset, dtype)
    # where the two networks' stage shapes differ (none for a pair of equal shapes)
    stage_adapters = adapters.for_pair(model, teacher, method, image_shape)

  root_key = jax.random.key(config.seed)
  variables = init_variables(model, jax.random.fold_in(root_key, 0), image_shape)
  if method.trained_stages is not None:
    variables, start_meta = freeze.start_from_trained(method, config.method, config.model,
                                                      variables, dataset.num_classes, image_shape)
    teacher_lib.check_inputs(config, start_meta, dataset, field="method.init_from")
  # trained, checkpointed and resumed with the student, never exported (dnd_jax.adapters)
  variables = adapters.attach(variables, stage_adapters.init(jax.random.fold_in(root_key, 3)))
  state = steps.create_train_state(variables, tx, config.seed)
  fresh_opt_state = state.opt_state

  identity = {"data_rows": dataset.rows_digest,
              "teacher": (checkpoints.variables_digest(teacher_vars) if teacher_vars is not None
                          else None)}

  def resumable(restored_state, restored_meta) -> None:
    check_resumable(workdir, config, restored_meta["epoch"], int(restored_state.step),
                    steps_per_epoch, n_train, restored_meta, identity)

  ckpts = checkpoints.TrainCheckpoints(workdir, config.checkpoint.keep,
                                       config.checkpoint.every_epochs)
  # closed however the run ends (Orbax first commits the save in flight: after a Ctrl-C, the
  # epoch just done; left to interpreter exit, its threads could no longer commit)
  closing.callback(ckpts.close)
  state, meta, history = resume_or_start(ckpts, workdir, state, repl, accept=resumable)
  # recorded once the run is known to continue with it (a refused resume changes nothing)
  run_folder.record_config(config, workdir)
  meta.update(identity)  # saved with every checkpoint (see check_resumable)
  clock.resume(meta)
  # a resumed run continues its schedule with this config's budget and learning rate
  state = state.replace(opt_state=with_config_hyperparameters(state.opt_state, fresh_opt_state))
  tracer = profiling.StepTracer(workdir, config.log.get("profile_steps", ""))
  tb_writer = tb.Writer(workdir, config.log, int(state.step))  # mid-epoch after a mid-epoch save

  put = lambda x: jax.device_put(x, repl)  # noqa: E731
  state = put(state)
  if streamed:
    batches = batch_sources.StreamedBatches(dataset, config.data, seed=config.seed,
                                            batch_size=config.batch_size,
                                            steps_per_epoch=steps_per_epoch,
                                            total_steps=total_steps, mesh=mesh)
    closing.callback(batches.close)
    evaluate = None  # a streamed run has no validation split to evaluate the test split after
  else:
    # replicated in one process; in a multi-host run each host places only its share of the rows
    train_images = parallel.put_dataset(dataset.train_images, mesh)
    train_labels = parallel.put_dataset(dataset.train_labels, mesh)
    # each epoch's permutation of the rows derives from the seed
    batches = batch_sources.ResidentBatches(train_images, train_labels, n_train, config.seed,
                                            mesh, clock)
    eval_images, eval_labels = put(dataset.eval_images), put(dataset.eval_labels)
    evaluate = jax.jit(steps.make_evaluate(model, config.data, dataset.mean, dataset.std,
                                           config.eval_batch_size))
  teacher_vars = put(teacher_vars) if teacher_vars is not None else None

  def evaluation(net, variables, jitted=None):
    """(variables -> (accuracy, loss)) of `net` on the evaluation split, compiled now for
    `variables` (`jitted`: the resident evaluation of `net`, when already made)."""
    if streamed:
      over_stream = batch_sources.StreamedEvaluation(dataset, config.data, net,
                                                     config.eval_batch_size, mesh)
      closing.callback(over_stream.close)
      with clock("compile"):
        over_stream.compile(variables)

      def run(net_vars) -> tuple[float, float]:
        with clock("eval"):
          correct, ce, n = over_stream(net_vars)
          return correct / n, ce / n

      return run
    jitted = jitted or jax.jit(steps.make_evaluate(net, config.data, dataset.mean, dataset.std,
                                                   config.eval_batch_size))
    with clock("compile"):
      compiled = jitted.lower(variables, eval_images, eval_labels).compile()

    def run(net_vars) -> tuple[float, float]:
      with clock("eval"):
        correct, ce = compiled(net_vars, eval_images, eval_labels)
        n = len(dataset.eval_labels)
        return float(correct) / n, float(ce) / n

    return run

  eval_accuracy = evaluation(model, state.variables, evaluate)
  eval_record = checkpoints.evaluation_record(dataset, config.model.dtype)  # hashes the images
  if teacher is not None and "teacher_accuracy" not in meta:
    meta["teacher_accuracy"] = _teacher_accuracy(
        config, dataset, teacher_meta, eval_record,
        lambda: evaluation(teacher, teacher_vars)(teacher_vars)[0])
  if method.trained_stages is not None and "start_accuracy" not in meta:
    # the trained network with its re-initialised stages, before any step: where the curve starts
    meta["start_accuracy"] = eval_accuracy(state.variables)[0]

  settings = loop.LoopSettings(
      num_epochs=config.num_epochs, batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch,
      steps_per_dispatch=int(config.get("steps_per_dispatch", 1)),
      checkpoint_every=config.checkpoint.every_epochs,
      checkpoint_every_steps=int(config.checkpoint.get("every_steps", 0)),
      refresh_steps=config.log.refresh_steps,
      progress_bar=config.log.progress_bar,
      compiler_options=runtime.compiler_options(config.get("compiler_options")))
  spec = steps.StepSpec(model=model, teacher=teacher, method=method, method_config=config.method,
                        data_config=config.data, tx=tx, mean=dataset.mean, std=dataset.std,
                        batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
                        adapters=stage_adapters, streamed=streamed)
  state, history = loop.run_epochs(
      settings, spec, workdir=workdir, mesh=mesh, state=state, meta=meta, history=history,
      batches=batches, teacher_vars=teacher_vars, evaluate=eval_accuracy,
      eval_split=dataset.eval_split,
      lr_schedule=lr_schedule, ckpts=ckpts, tracer=tracer, tb_writer=tb_writer, clock=clock)
  tracer.close()
  tb_writer.close()

  return finish(config, workdir, dataset, state, meta, history, ckpts, evaluate, clock,
                teacher_meta, eval_record, repl)


def finish(config, workdir, dataset, state, meta, history, ckpts, evaluate, clock: TimeSplit,
           teacher_meta, eval_record: dict, repl) -> dict:
  """Export the final model, report final and best accuracy (and test accuracy when selecting on
  a validation split), and write the summary with the split of the wall time.

  The test set, the final and the best model are evaluated as the epochs' evaluation was: placed
  with `repl` (replicated over the mesh), so with several devices or processes the compiled
  evaluation and its arguments agree on where they live."""
  arch = checkpoints.architecture(config.model, dataset.num_classes, dataset.image_shape)
  final_vars = jax.device_get(state.variables)
  split = dataset.eval_split
  final_acc = history[-1][f"{split}_accuracy"] if history else float("nan")
  with clock("checkpoint"):
    checkpoints.save_model(run_folder.model_dir(workdir), final_vars, arch,
                           {"accuracy": final_acc, "split": split, "epoch": meta["epoch"],
                            "method": config.method.name, "evaluation": eval_record,
                            "held_out": teacher_lib.held_out_record(config.data)})
  summary = {
      "method": config.method.name, "dataset": dataset.name, "epochs": config.num_epochs,
      "batch_size": config.batch_size, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "eval_split": split,
      "final_accuracy": final_acc, "best_accuracy": meta["best_accuracy"],
      "best_epoch": meta["best_epoch"], "teacher_accuracy": meta.get("teacher_accuracy"),
      "images_per_s": (float(np.median([r["images_per_s"] for r in history])) if history else 0.0),
  }
  if split == "validation":
    n_test = len(dataset.test_labels)
    test_images, test_labels = jax.device_put((dataset.test_images, dataset.test_labels), repl)
    with clock("compile"):
      evaluate_test = evaluate.lower(state.variables, test_images, test_labels).compile()
    with clock("eval"):
      correct, _ = evaluate_test(state.variables, test_images, test_labels)
      summary["final_test_accuracy"] = float(correct) / n_test
      best = ckpts.restore_best(checkpoints.restore_target(state.variables, repl))
      if best is not None:
        correct, _ = evaluate_test(best[0], test_images, test_labels)
        summary["best_test_accuracy"] = float(correct) / n_test
  if "start_accuracy" in meta:
    summary["start_accuracy"] = meta["start_accuracy"]
  if teacher_meta:
    summary["teacher_checkpoint"] = config.teacher.checkpoint
    summary["teacher_digest"] = meta.get("teacher")  # the weights, wherever they were read from
  # wall time and its split (dnd_jax.timing) over every run of this workdir
  summary.update(clock.totals())
  summary["time_per_epoch_s"] = summary["train_time_s"] / max(len(history), 1)
  if is_primary():
    run_folder.write_summary(workdir, summary)
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
  parts = [(name, s.get(f"{name}_time_s", 0.0)) for name in PARTS]
  rest = s["wall_time_s"] - sum(t for _, t in parts)
  split = " + ".join(f"{name} {t:.1f}s" for name, t in parts)
  lines.append(f"   time: {s['wall_time_s']:.1f}s wall = {split} + other {rest:.1f}s; "
               f"{s['time_per_epoch_s']:.2f}s/epoch, {s['images_per_s']:.0f} images/s")
  return "\n".join(lines)
