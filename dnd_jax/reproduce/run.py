"""Running a plan (the teacher first, then every unfinished cell) and collecting its results.

Every cell is an ordinary `train_and_evaluate` run in its own workdir, so a grid inherits the
trainer's resume and summaries. A run whose summary exists is skipped; one without resumes from
its checkpoint. Before either, the run's config is compared with the one stored in its workdir,
so a changed override can never be silently mixed with old results.

"""

from __future__ import annotations

import csv
import io
import logging
import os

import ml_collections

from dnd_jax import config_check, workdir as run_folder
from dnd_jax.methods import get_method
from dnd_jax.reproduce.grids import RunSpec, expand
from dnd_jax.reproduce.plan import Plan, run_config, start_spec, teacher_config
from dnd_jax.reproduce.records import config_record_of, has_exported_model, summary_of

log = logging.getLogger(__name__)


def is_finished(workdir: str) -> bool:
  return summary_of(workdir) is not None


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuse to skip or resume a run whose workdir was made by a different config."""
  stored = config_record_of(workdir)
  # a grid sets method.init_from to the run of its own it starts from: a path that differs only
  # where the --out folder is (a copied or moved grid), like teacher.checkpoint
  ignore = run_folder.RESULT_NEUTRAL + ("method.init_from",)
  diffs = run_folder.config_changes(stored, config, ignore) if stored is not None else []
  if diffs:
    raise ValueError(
        f"{workdir} holds a run with a different config ({'; '.join(diffs[:6])}). Use another "
        "--out folder for these settings, or delete that run folder to redo it.")


def _teacher_digest(path: str) -> str:
  """The digest of the teacher's weights (`checkpoints.variables_digest`), "" when none is there."""
  if not has_exported_model(path):
    return ""
  from dnd_jax import checkpoints  # noqa: PLC0415 (orbax: see _train)
  meta = checkpoints.read_model_meta(path)
  variables, _ = checkpoints.load_model(path, meta["architecture"], None)
  return checkpoints.variables_digest(variables)


def pair_teachers(plan: Plan) -> list[str]:
  """A pair grid's teacher architectures, each once, in the grid's order ([] elsewhere)."""
  return list(dict.fromkeys(p.teacher for p in plan.experiment.pairs))


def _check_given_pair_teachers(plan: Plan) -> None:
  """--teacher-dir holds every teacher the pairs need, each of its pair's architecture."""
  from dnd_jax import checkpoints  # noqa: PLC0415 (orbax: see _train)
  for arch in pair_teachers(plan):
    path = plan.pair_teacher_checkpoint(arch)
    if not has_exported_model(path):
      raise FileNotFoundError(
          f"--teacher-dir {plan.teachers_path!r} holds no exported {arch} teacher "
          f"({os.path.join(plan.teachers_path, arch)}/model.json); write one there with "
          "scripts/import_torch_teacher.py --output, or leave out --teacher-dir to train it.")
    found = checkpoints.read_model_meta(path)["architecture"].get("arch")
    if found != arch:
      raise ValueError(f"--teacher-dir: {path} holds a {found or 'ResNet'} network, not the "
                       f"{arch} teacher its folder name says.")


def check_plan(plan: Plan) -> None:
  """What a plan's runs can be found wrong with before any is trained, or reported: each cell's
  config (its values, and the config stored in its workdir), the grid teachers' configs (or the
  teachers --teacher-dir gives), and the teacher each finished cell was distilled from (another
  --teacher, or a retrained one, in the same --out would otherwise mix two teachers' runs in one
  table)."""
  if plan.teachers_path:
    _check_given_pair_teachers(plan)
  elif plan.experiment.pairs:
    for arch in pair_teachers(plan):
      check_same_config(plan.pair_teacher_dir(arch), teacher_config(plan, arch))
  elif not plan.teacher_path:
    check_same_config(plan.teacher_dir, teacher_config(plan))
  digests: dict[str, str] = {}
  for spec in expand(plan.experiment):
    config, workdir = run_config(plan, spec), plan.run_dir(spec)
    config_check.check(config)
    check_same_config(workdir, config)
    recorded = (summary_of(workdir) or {}).get("teacher_digest")
    if recorded and needs_grid_teacher(plan.experiment.arm(spec.method)):
      checkpoint = plan.teacher_checkpoint_of(spec)
      if checkpoint not in digests:
        digests[checkpoint] = _teacher_digest(checkpoint)
      if digests[checkpoint] and recorded != digests[checkpoint]:
        raise ValueError(
            f"{workdir} holds a run distilled from another teacher than this grid's "
            f"({checkpoint}). Use another --out folder for this teacher, or delete "
            "that run folder to redo it.")


# --- running ------------------------------------------------------------------------------------



def _train(config, workdir):
  # orbax (checkpoints) is imported once a run or a teacher's weights need it, not for --help
  from dnd_jax.train import train_and_evaluate  # noqa: PLC0415
  return train_and_evaluate(config, workdir)


def ensure_teacher(plan: Plan, train_fn=None, arch: str = "") -> str:
  """The teacher's exported model folder, trained into <out>/teacher (a pair grid's teacher of
  architecture `arch`: <out>/teachers/<arch>) first if it is missing."""
  if arch and plan.teachers_path:  # checked by check_plan
    return plan.pair_teacher_checkpoint(arch)
  if not arch and plan.teacher_path:
    if not has_exported_model(plan.teacher_path):
      raise FileNotFoundError(f"--teacher {plan.teacher_path!r} holds no exported model "
                              "(model.json); give the <workdir>/model folder of a teacher run.")
    return plan.teacher_path
  from dnd_jax import teacher  # noqa: PLC0415 (orbax: see _train)
  config = teacher_config(plan, arch)
  workdir = plan.pair_teacher_dir(arch) if arch else plan.teacher_dir
  check_same_config(workdir, config)
  return teacher.train_into(
      config, workdir, train_fn or _train,
      why=f"== teacher: training the {_network_name(config.model)} teacher for "
          f"{config.num_epochs} epochs")


def _network_name(model_config) -> str:
  """"resnet32x4", or the paper's ResNet as "34-layer width-64"."""
  if model_config.get("arch"):
    return str(model_config.arch)
  return f"{model_config.depth}-layer width-{model_config.width}"


def needs_grid_teacher(arm) -> bool:
  """Whether the arm is taught by the grid's teacher (an arm that starts from another run is
  taught, if at all, by that run's network)."""
  return get_method(arm.method).needs_teacher and not arm.start_from


def run_cell(plan: Plan, spec: RunSpec, train_fn=None) -> None:
  """Train one cell unless it is finished, training the cell it starts from first. Its config
  and workdir were checked by `check_plan`, which `run_plan` runs before any cell."""
  workdir = plan.run_dir(spec)
  config = run_config(plan, spec)
  if is_finished(workdir):
    return
  arm = plan.experiment.arm(spec.method)
  if arm.start_from:
    run_cell(plan, start_spec(spec, arm), train_fn)
  log.info(f"== {spec.name} -> {workdir}")
  (train_fn or _train)(config, workdir)


def run_plan(plan: Plan, train_fn=None, dry_run: bool = False) -> list[dict]:
  """Train every unfinished cell of the plan (the teacher first) and return the collected rows.

  `train_fn(config, workdir)` defaults to `train_and_evaluate`; tests pass a fake.
  """
  exp = plan.experiment
  specs = expand(exp)
  check_plan(plan)  # before the teacher: a bad override would otherwise show after it trained
  todo = [s for s in specs if not is_finished(plan.run_dir(s))]
  log.info(f"== {exp.name} at scale {plan.scale.name!r} in {plan.out}: {len(specs)} runs, "
           f"{len(specs) - len(todo)} already finished")
  if dry_run:
    for s in specs:
      log.info(f"   {'done' if is_finished(plan.run_dir(s)) else 'todo'}  {plan.run_dir(s)}")
    return collect(plan)
  os.makedirs(plan.out, exist_ok=True)
  taught = [s for s in todo if needs_grid_teacher(exp.arm(s.method))]
  if taught and not exp.pairs:
    ensure_teacher(plan, train_fn)
  # a pair grid's teachers: each trained just before the first cell it teaches, so that a grid
  # cut short has whole pairs rather than only teachers
  ready = set()
  rows = []
  for spec in specs:
    if exp.pairs and spec in taught:
      arch = exp.pair(spec.pair).teacher
      if arch not in ready:
        ensure_teacher(plan, train_fn, arch)
        ready.add(arch)
    run_cell(plan, spec, train_fn)
    # after every cell: a grid cut off (a time limit, a lost machine) leaves a CSV of every run
    # it finished
    rows = collect(plan)
    write_csv(rows, plan.csv_path)
  return rows


# --- collecting ---------------------------------------------------------------------------------

# a pair grid's CSV has a "pair" column (`Pair.name`) after "dataset"; the others have none, so
# the committed CSVs of the other grids read and redraw as they are
PAIR_FIELD = "pair"
CSV_FIELDS = ("experiment", "scale", "dataset", "method", "epochs", "seed", "fraction", "max_lr",
              "data_fraction", "status", "final_accuracy", "best_accuracy", "best_epoch",
              "start_accuracy", "eval_split", "final_test_accuracy", "best_test_accuracy",
              "teacher_accuracy", "train_time_s", "compile_time_s", "wall_time_s",
              "time_per_epoch_s", "images_per_s", "device_kind", "workdir")


def collect(plan: Plan) -> list[dict]:
  """One row per grid cell, from its summary (status "finished") or "missing"."""
  rows = []
  for spec in expand(plan.experiment):
    workdir = plan.run_dir(spec)
    summary = summary_of(workdir) or {}
    record = config_record_of(workdir) or {}
    row = {"experiment": plan.experiment.name, "scale": plan.scale.name,
           "dataset": plan.experiment.dataset, "method": spec.method, "epochs": spec.epochs,
           **({PAIR_FIELD: spec.pair} if spec.pair else {}),
           "seed": spec.seed, "fraction": spec.fraction, "max_lr": spec.max_lr,
           "data_fraction": record.get("data", {}).get("fraction"),
           "status": "finished" if summary else "missing", "workdir": workdir}
    for key in CSV_FIELDS:
      if key not in row:
        row[key] = summary.get(key)
    rows.append(row)
  return rows


def csv_fields(rows: list[dict]) -> tuple[str, ...]:
  """CSV_FIELDS, with the pair column where a row has a pair."""
  if not any(row.get(PAIR_FIELD) for row in rows):
    return CSV_FIELDS
  at = CSV_FIELDS.index("dataset") + 1
  return CSV_FIELDS[:at] + (PAIR_FIELD,) + CSV_FIELDS[at:]


def write_csv(rows: list[dict], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  text = io.StringIO(newline="")
  fields = csv_fields(rows)
  writer = csv.DictWriter(text, fieldnames=fields)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
  run_folder.write_atomic(path, text.getvalue())


_INT_FIELDS = ("epochs", "seed", "best_epoch")
_TEXT_FIELDS = ("experiment", "scale", "dataset", PAIR_FIELD, "method", "status", "eval_split",
                "device_kind", "workdir")


def read_csv(path: str) -> list[dict]:
  """Rows as written by `write_csv`, numbers parsed back; empty cells become None."""
  rows = []
  with open(path, newline="") as f:
    for raw in csv.DictReader(f):
      row = {k: None for k in CSV_FIELDS}  # a CSV from before a column existed
      for k, v in raw.items():
        if v in ("", None):
          row[k] = None
        elif k in _TEXT_FIELDS:
          row[k] = v
        elif k in _INT_FIELDS:
          row[k] = int(float(v))
        else:
          row[k] = float(v)
      rows.append(row)
  return rows

