"""The paper's experiments as named grids of runs, and the machinery that runs and collects them.

An experiment is a grid (method x epoch budget x seed x data fraction) on one data set; every
cell is an ordinary `train_and_evaluate` run in its own workdir, so a grid inherits the trainer's
resume and its summaries. A *scale* shrinks a grid (narrower networks, smaller images, a share of
the data, fewer epochs and seeds) so the same experiment can be looked at on a CPU; the paper's
own sizes are the scale "paper".

All experiments of one data set and scale share one output folder:

  <out>/teacher/            the teacher, trained once (unless --teacher points at one)
  <out>/runs/<run name>/    one workdir per grid cell, e.g. runs/pdnd_e60_f1_s0
  <out>/stagewise/...       the Figure 2a runs
  <out>/<experiment>.csv    one row per run of the experiment
  <out>/<experiment>.md     the report (see `dnd_jax.report`), figures under <out>/figures/

so a run that two experiments share (Table 2's 60-epoch runs are also Figure 4's) trains once. A
run whose summary.json exists is skipped; one without resumes from its checkpoint. Before either,
the run's config is compared with the one stored in its workdir, so a changed override can never
be silently mixed with old results.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

import ml_collections

from dnd_jax import workdir as run_folder
from dnd_jax.configs import SHORT_NAME, load_config_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("kd", "at", "jacobian", "dnd", "pdnd")
# Roles: "budgets" (accuracy against epoch budget: Tables 1-2, Figures 2b and 4), "fractions"
# (accuracy against data fraction: Table 3), "stagewise" (Figure 2a).
ROLES = ("budgets", "fractions", "stagewise")
STAGEWISE_VARIANTS = ("naive", "feature", "end2end")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One named grid. `paper` names the published figures it is compared with: (table number in
  docs/paper_results.csv, data set of that table), or None where the paper has no numbers."""

  name: str
  dataset: str
  role: str
  methods: tuple[str, ...]
  epochs: tuple[int, ...]
  seeds: tuple[int, ...]
  fractions: tuple[float, ...] = (1.0,)
  paper: tuple[int, str] | None = None
  title: str = ""
  # The grid this experiment is at the scale that reproduces it on a CPU, keyed like the fields.
  grid_key: str = ""


@dataclasses.dataclass(frozen=True)
class Scale:
  """A way to shrink every experiment: config overrides for all runs (students and teacher), the
  teacher's epochs, and replacement grids keyed by `Experiment.grid_key`."""

  name: str
  description: str
  overrides: dict
  teacher_epochs: int | None = None  # None: the teacher config file's num_epochs
  grids: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One grid cell. `fraction` is relative to the data.fraction the scale sets (1.0 = all of it)."""

  method: str
  epochs: int
  seed: int
  fraction: float = 1.0

  @property
  def name(self) -> str:
    return run_name(self.method, self.epochs, self.seed, self.fraction)


def run_name(method: str, epochs: int, seed: int, fraction: float = 1.0) -> str:
  """`<method>_e<epochs>_f<fraction>_s<seed>`, e.g. `pdnd_e60_f0.2_s1`; the workdir's name."""
  return f"{method}_e{int(epochs)}_f{float(fraction):g}_s{int(seed)}"


_PAPER_BUDGETS = (60, 100, 200)
_PAPER_FIG4 = (20, 40, 60, 100, 150, 200)
_PAPER_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
# Fashion-MNIST is not in the paper. Its full-size grids divide the paper's epoch budgets by ten
# (the project's Fashion-MNIST configs train students for 20 epochs, the teacher for 30).
_FASHION_BUDGETS = (6, 10, 20)
_FASHION_FIG4 = (2, 4, 6, 10, 15, 20)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("table1_imagewoof", "imagewoof", "budgets", METHODS, _PAPER_BUDGETS, (0, 1, 2),
               paper=(1, "imagewoof"), grid_key="table",
               title="Table 1: Imagewoof, ResNet34 -> ResNet18, 60/100/200 epochs"),
    Experiment("table2_cifar100", "cifar100", "budgets", METHODS, _PAPER_BUDGETS, (0, 1, 2),
               paper=(2, "cifar100"), grid_key="table",
               title="Table 2: CIFAR-100, ResNet34 -> ResNet18, 60/100/200 epochs"),
    # The paper gives Table 3 without a spread, so one seed; 200 epochs at every fraction.
    Experiment("table3_data_efficiency", "cifar100", "fractions", METHODS, (200,), (0,),
               _PAPER_FRACTIONS, paper=(3, "cifar100"), grid_key="fractions",
               title="Table 3: data efficiency on CIFAR-100, 20-100% of the data, 200 epochs"),
    Experiment("figure4_epochs", "cifar100", "budgets", METHODS, _PAPER_FIG4, (0,),
               paper=(2, "cifar100"), grid_key="epochs",
               title="Figure 4: CIFAR-100 accuracy against the epoch budget"),
    Experiment("figure2a_stagewise_consistency", "cifar100", "stagewise", STAGEWISE_VARIANTS,
               (200,), (0,), grid_key="stagewise",
               title="Figure 2a: stagewise consistency (ResNet18, stage 3 re-initialised)"),
    Experiment("table2_fashion", "fashion_mnist", "budgets", METHODS, _FASHION_BUDGETS, (0, 1, 2),
               paper=(2, "cifar100"), grid_key="table",
               title="Tables 1-2 grid on Fashion-MNIST (not in the paper)"),
    Experiment("table3_fashion", "fashion_mnist", "fractions", METHODS, (20,), (0,),
               _PAPER_FRACTIONS, paper=(3, "cifar100"), grid_key="fractions",
               title="Table 3 grid (data efficiency) on Fashion-MNIST (not in the paper)"),
    Experiment("figure4_fashion", "fashion_mnist", "budgets", METHODS, _FASHION_FIG4, (0,),
               paper=(2, "cifar100"), grid_key="epochs",
               title="Figure 4 grid (accuracy against epoch budget) on Fashion-MNIST"),
    Experiment("figure2a_fashion", "fashion_mnist", "stagewise", STAGEWISE_VARIANTS, (20,), (0,),
               grid_key="stagewise",
               title="Figure 2a (stagewise consistency) on Fashion-MNIST"),
]}

# The CPU scale: width-8 networks on 16 px images and 10% of the training set. On a 2-core CPU
# a width-8 ResNet34 teacher trains at about 680 images/s and a width-8 student at 700-1000
# (Jacobian+CE about a third of that), so an epoch of 6,000 images is 6-25 s.
_CPU = dict(overrides={"model.width": 8, "data.image_size": 16, "data.fraction": 0.1,
                       "eval_batch_size": 1000, "log.progress_bar": False},
            teacher_epochs=8)

SCALES: dict[str, Scale] = {s.name: s for s in [
    Scale("paper", "the experiment's own size: full-width networks, native images, all the data",
          {}),
    Scale("cpu", "width 8, 16 px images, 10% of the training set (6,000 images); an 8-epoch "
          "teacher; budgets 2 and 4 epochs (Figure 4: 1/2/4), 2 seeds for the tables",
          teacher_epochs=_CPU["teacher_epochs"], overrides=_CPU["overrides"],
          grids={"table": dict(epochs=(2, 4), seeds=(0, 1)),
                 "epochs": dict(epochs=(1, 2, 4), seeds=(0,)),
                 "fractions": dict(epochs=(4,), seeds=(0,), fractions=(0.2, 0.6, 1.0)),
                 "stagewise": dict(epochs=(4,), seeds=(0,))}),
    Scale("tiny", "width 4, 8 px images, 2% of the training set, 1 epoch: a smoke test",
          teacher_epochs=1,
          overrides={"model.width": 4, "data.image_size": 8, "data.fraction": 0.02,
                     "eval_batch_size": 1000, "log.progress_bar": False},
          grids={key: dict(epochs=(1,), seeds=(0,)) for key in
                 ("table", "epochs", "fractions", "stagewise")}),
]}


# --- overrides ----------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
  """A Python literal when `text` is one (8, 0.1, True, None, (1, 2)), else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_overrides(items: Iterable[str]) -> dict:
  """["model.width=8", ...] -> {"model.width": 8, ...}."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"Override {item!r} is not of the form key.path=value.")
    out[key.strip()] = parse_value(value.strip())
  return out


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict) -> ml_collections.ConfigDict:
  """Set dotted fields; an unknown field is an error (as `--config.x=y` makes it)."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      if part not in node:
        raise KeyError(f"Override {key!r}: the config has no field {part!r}.")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"Override {key!r}: the config has no field {leaf!r}.")
    node[leaf] = value
  return config


def parse_seeds(text: str) -> tuple[int, ...]:
  """"3" means three seeds (0, 1, 2); "0,4" means seeds 0 and 4."""
  parts = [p for p in text.split(",") if p.strip()]
  if len(parts) == 1 and "," not in text:
    return tuple(range(int(parts[0])))
  return tuple(int(p) for p in parts)


def parse_list(text: str, kind=int) -> tuple:
  return tuple(kind(p) for p in text.split(",") if p.strip())


# --- plans --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """An experiment at a scale with its overrides and output folder: everything needed to run it
  or report on it."""

  experiment: Experiment
  scale: Scale
  out: str
  overrides: dict  # the scale's overrides, then the command line's
  teacher_overrides: dict
  teacher_epochs: int | None
  teacher_path: str | None  # an existing teacher (an exported model folder); None = train one

  @property
  def teacher_dir(self) -> str:
    return os.path.join(self.out, "teacher")

  @property
  def teacher_checkpoint(self) -> str:
    return self.teacher_path or run_folder.model_dir(self.teacher_dir)

  def run_dir(self, spec: RunSpec) -> str:
    sub = "stagewise" if self.experiment.role == "stagewise" else "runs"
    return os.path.join(self.out, sub, spec.name)

  @property
  def csv_path(self) -> str:
    return os.path.join(self.out, f"{self.experiment.name}.csv")

  @property
  def report_path(self) -> str:
    return os.path.join(self.out, f"{self.experiment.name}.md")

  @property
  def figures_dir(self) -> str:
    return os.path.join(self.out, "figures")


def default_out(experiment: Experiment, scale: Scale, extra: dict) -> str:
  """runs/reproduce/<dataset>_<scale>, plus a short hash of any command-line overrides, so runs
  with different settings never share a folder while every experiment of one setting does."""
  name = f"{experiment.dataset}_{scale.name}"
  if extra:
    digest = hashlib.sha1(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()
    name += "_" + digest[:8]
  return os.path.join("runs", "reproduce", name)


def make_plan(name: str, scale: str = "paper", *, overrides: dict | None = None,
              teacher_overrides: dict | None = None, methods: Sequence[str] | None = None,
              epochs: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
              fractions: Sequence[float] | None = None, teacher_epochs: int | None = None,
              teacher_path: str | None = None, out: str | None = None) -> Plan:
  """The experiment `name` shrunk by `scale`, then by the explicit grid arguments."""
  if name not in EXPERIMENTS:
    raise KeyError(f"Unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}.")
  if scale not in SCALES:
    raise KeyError(f"Unknown scale {scale!r}; known: {', '.join(SCALES)}.")
  exp, sc = EXPERIMENTS[name], SCALES[scale]
  exp = dataclasses.replace(exp, **sc.grids.get(exp.grid_key, {}))
  changes = {k: tuple(v) for k, v in dict(methods=methods, epochs=epochs, seeds=seeds,
                                          fractions=fractions).items() if v}
  if "methods" in changes:
    valid = STAGEWISE_VARIANTS if exp.role == "stagewise" else METHODS
    unknown = [m for m in changes["methods"] if m not in valid]
    if unknown:
      raise ValueError(f"Unknown method(s) {unknown} for {name}; use some of {valid}.")
  exp = dataclasses.replace(exp, **changes)
  extra = {**(overrides or {}), **{f"teacher:{k}": v for k, v in (teacher_overrides or {}).items()}}
  if teacher_epochs is not None:
    extra["teacher:num_epochs"] = teacher_epochs
  if teacher_path:
    extra["teacher:path"] = os.path.abspath(teacher_path)
  return Plan(experiment=exp, scale=sc, out=out or default_out(exp, sc, extra),
              overrides={**sc.overrides, **(overrides or {})},
              teacher_overrides=dict(teacher_overrides or {}),
              teacher_epochs=teacher_epochs if teacher_epochs is not None else sc.teacher_epochs,
              teacher_path=teacher_path)


def expand(experiment: Experiment) -> list[RunSpec]:
  """Every cell of the grid, ordered seed by seed and cheap budgets first, so that an interrupted
  grid has whole seeds of results rather than one method at every budget."""
  return [RunSpec(method, epochs, seed, fraction)
          for seed in experiment.seeds
          for fraction in sorted(experiment.fractions)
          for epochs in sorted(experiment.epochs)
          for method in experiment.methods]


# --- configs ------------------------------------------------------------------------------------


def _config_file(method: str, dataset: str) -> str:
  return os.path.join(REPO_ROOT, "configs", f"{method}_{SHORT_NAME[dataset]}.py")


def teacher_config(plan: Plan) -> ml_collections.ConfigDict:
  """The teacher's training config: configs/teacher_<data>.py, the plan's overrides (so a
  narrower student gets an equally narrow teacher), then the teacher-only overrides."""
  config = load_config_file(_config_file("teacher", plan.experiment.dataset))
  apply_overrides(config, plan.overrides)
  apply_overrides(config, plan.teacher_overrides)
  if plan.teacher_epochs is not None:
    config.num_epochs = int(plan.teacher_epochs)
  return config


def _base_fraction(config) -> float:
  return float(config.data.fraction)


def run_config(plan: Plan, spec: RunSpec) -> ml_collections.ConfigDict:
  """The config of one grid cell: configs/<method>_<data>.py with the plan's overrides, the
  cell's budget, seed and data share, and the plan's teacher.

  The student's teacher block copies the teacher's architecture, which stage-for-stage transfer
  needs. The data subset is drawn with data.subset_seed (not the run's seed), so every method and
  seed sees the same images and a smaller share is a subset of a larger one.
  """
  config = load_config_file(_config_file(spec.method, plan.experiment.dataset))
  apply_overrides(config, plan.overrides)
  config.num_epochs = int(spec.epochs)
  config.seed = int(spec.seed)
  config.data.fraction = _base_fraction(config) * float(spec.fraction)
  t = teacher_config(plan)
  config.teacher.depth, config.teacher.width = t.model.depth, t.model.width
  config.teacher.stem = t.model.stem
  config.teacher.checkpoint = plan.teacher_checkpoint
  config.teacher.config = ""  # the grid trains its teacher itself, once (see `ensure_teacher`)
  return config


def stagewise_config(plan: Plan, spec: RunSpec) -> ml_collections.ConfigDict:
  """Figure 2a's naive ResNet18: cross-entropy training from configs/teacher_<data>.py with a
  depth-18 network, at the plan's scale. The re-initialised runs use its optimiser settings."""
  config = load_config_file(_config_file("teacher", plan.experiment.dataset))
  apply_overrides(config, plan.overrides)
  config.model.depth = 18
  config.num_epochs = int(spec.epochs)
  config.seed = int(spec.seed)
  config.data.fraction = _base_fraction(config) * float(spec.fraction)
  return config


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuse to skip or resume a run whose workdir was made by a different config."""
  stored = run_folder.read_config(workdir)
  diffs = run_folder.config_changes(stored, config) if stored else []
  if diffs:
    raise ValueError(
        f"{workdir} holds a run with a different config ({'; '.join(diffs[:6])}). Use another "
        "--out folder for these settings, or delete that run folder to redo it.")


is_finished = run_folder.is_finished
read_summary = run_folder.read_summary


# --- running ------------------------------------------------------------------------------------


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def ensure_teacher(plan: Plan, train_fn=None) -> str:
  """The teacher's exported model folder, trained into <out>/teacher first if it is missing."""
  if plan.teacher_path:
    if not run_folder.has_model(plan.teacher_path):
      raise FileNotFoundError(f"--teacher {plan.teacher_path!r} holds no exported model "
                              "(model.json); give the <workdir>/model folder of a teacher run.")
    return plan.teacher_path
  from dnd_jax import teacher  # noqa: PLC0415 (keeps `--help` and tests light)
  config = teacher_config(plan)
  check_same_config(plan.teacher_dir, config)
  return teacher.train_into(
      config, plan.teacher_dir, train_fn or _train,
      why=f"== teacher: training {config.model.depth}-layer width-{config.model.width} teacher "
          f"for {config.num_epochs} epochs")


def _train(config, workdir):
  from dnd_jax.train import train_and_evaluate  # noqa: PLC0415 (keeps `--help` and tests light)
  return train_and_evaluate(config, workdir)


def run_plan(plan: Plan, train_fn=None, stagewise_fn=None, dry_run: bool = False) -> list[dict]:
  """Train every unfinished cell of the plan (the teacher first) and return the collected rows.

  `train_fn(config, workdir)` defaults to `train_and_evaluate`; tests pass a fake.
  """
  exp = plan.experiment
  specs = expand(exp)
  todo = [s for s in specs if not is_finished(plan.run_dir(s))]
  _log(f"== {exp.name} at scale {plan.scale.name!r} in {plan.out}: {len(specs)} runs, "
       f"{len(specs) - len(todo)} already finished")
  if dry_run:
    for s in specs:
      _log(f"   {'done' if is_finished(plan.run_dir(s)) else 'todo'}  {plan.run_dir(s)}")
    return collect(plan)
  os.makedirs(plan.out, exist_ok=True)
  if exp.role == "stagewise":
    from dnd_jax import stagewise  # noqa: PLC0415
    stagewise_fn = stagewise_fn or stagewise.run_variant
  elif todo:
    ensure_teacher(plan, train_fn)
  for i, spec in enumerate(specs):
    workdir = plan.run_dir(spec)
    if exp.role == "stagewise":
      naive = RunSpec("naive", spec.epochs, spec.seed, spec.fraction)
      config = stagewise_config(plan, naive)
    else:
      config = run_config(plan, spec)
    check_same_config(workdir, config)
    if is_finished(workdir):
      continue
    _log(f"== [{i + 1}/{len(specs)}] {spec.name} -> {workdir}")
    if exp.role == "stagewise":
      stagewise_fn(config, workdir, spec.method, plan.run_dir(naive), train_fn or _train)
    else:
      (train_fn or _train)(config, workdir)
  rows = collect(plan)
  write_csv(rows, plan.csv_path)
  return rows


# --- collecting ---------------------------------------------------------------------------------

CSV_FIELDS = ("experiment", "scale", "dataset", "method", "epochs", "seed", "fraction",
              "data_fraction", "status", "final_accuracy", "best_accuracy", "best_epoch",
              "eval_split", "final_test_accuracy", "best_test_accuracy", "teacher_accuracy",
              "train_time_s", "compile_time_s", "wall_time_s", "time_per_epoch_s",
              "images_per_s", "device_kind", "workdir")


def collect(plan: Plan) -> list[dict]:
  """One row per grid cell, from its summary.json (status "finished") or "missing"."""
  rows = []
  for spec in expand(plan.experiment):
    workdir = plan.run_dir(spec)
    summary = read_summary(workdir) or {}
    data_fraction = (run_folder.read_config(workdir) or {}).get("data", {}).get("fraction")
    row = {"experiment": plan.experiment.name, "scale": plan.scale.name,
           "dataset": plan.experiment.dataset, "method": spec.method, "epochs": spec.epochs,
           "seed": spec.seed, "fraction": spec.fraction, "data_fraction": data_fraction,
           "status": "finished" if summary else "missing", "workdir": workdir}
    for key in CSV_FIELDS:
      if key not in row:
        row[key] = summary.get(key)
    rows.append(row)
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
  os.replace(path + ".tmp", path)


_INT_FIELDS = ("epochs", "seed", "best_epoch")
_TEXT_FIELDS = ("experiment", "scale", "dataset", "method", "status", "eval_split",
                "device_kind", "workdir")


def read_csv(path: str) -> list[dict]:
  """Rows as written by `write_csv`, numbers parsed back; empty cells become None."""
  rows = []
  with open(path, newline="") as f:
    for raw in csv.DictReader(f):
      row = {}
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


def finite(x) -> bool:
  return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
