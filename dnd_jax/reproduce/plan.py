"""A plan: an experiment at a scale with its overrides and output folder, and every run's config.

All experiments of one data set and scale share one output folder:

  <out>/teacher/            the teacher, trained once (unless --teacher points at one)
  <out>/teachers/<arch>/    a pair grid's teachers, one per teacher architecture (unless
                            --teacher-dir holds them)
  <out>/runs/<run name>/    one workdir per grid cell, e.g. runs/pdnd_e60_f1_s0 or, in a pair
                            grid, runs/wrn40_2-wrn16_2_pdnd_e240_f1_s0
  <out>/<experiment>.csv    one row per run of the experiment
  <out>/<experiment>.md     the report, figures under <out>/figures/

so a run that two experiments share (Table 2's 60-epoch runs are also Figure 4's) trains once.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Iterable, Sequence

import ml_collections

from dnd_jax.configs import SHORT_NAME, base_config, config_path, load_config_file
from dnd_jax.reproduce.grids import EXPERIMENTS, SCALES, Arm, Experiment, RunSpec, Scale
from dnd_jax.reproduce.records import exported_model, has_exported_model


# --- command-line values ------------------------------------------------------------------------


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


def apply_overrides(config: ml_collections.ConfigDict, overrides,
                    skip_other_methods_fields: bool = False) -> ml_collections.ConfigDict:
  """Set dotted fields (a dict or (key, value) pairs); an unknown field is an error (as
  `--config.x=y` makes it). With `skip_other_methods_fields`, a `method.<field>` that this
  config's method lacks is left out: a grid's override such as KD's `method.tau` applies to the
  methods that have it, not to the teacher or an AT run (`make_plan` checks that one has it)."""
  for key, value in dict(overrides).items():
    if (skip_other_methods_fields and key.startswith("method.") and key.count(".") == 1
        and key.split(".")[1] not in config.method):
      continue
    *path, leaf = key.split(".")
    node = config
    for part in path:
      if part not in node:
        raise ValueError(f"Override {key!r}: the config has no field {part!r}.")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"Override {key!r}: the config has no field {leaf!r}.")
    node[leaf] = value
  return config


def parse_seeds(text: str) -> tuple[int, ...]:
  """"3" means three seeds (0, 1, 2); "0,4" means seeds 0 and 4; "0," means seed 0 alone."""
  parts = parse_list(text, int, "--seeds")
  if len(parts) == 1 and "," not in text:
    if parts[0] < 1:  # a count of none would silently run the grid's own seeds
      raise ValueError(f"--seeds {text!r}: a count of seeds must be 1 or more; for seed 0 alone "
                       "write --seeds 0, (a list of one).")
    return tuple(range(parts[0]))
  return parts


def parse_list(text: str, kind=int, what: str = "the list") -> tuple:
  """"2,4" -> (2, 4); a bad item is a ValueError that names `what` and the item."""
  items = []
  for p in (p.strip() for p in text.split(",")):
    if not p:
      continue
    try:
      items.append(kind(p))
    except ValueError:
      noun = "an integer" if kind is int else "a number"
      raise ValueError(f"{what} {text!r}: {p!r} is not {noun}; give a comma list such as "
                       "2,4.") from None
  return tuple(items)


# --- plans --------------------------------------------------------------------------------------


def _check_grid_values(grid: dict) -> None:
  """Values of --epochs, --seeds, --fractions and --max-lrs that no run can use, and repeats
  (one run counted twice in a mean), before anything is trained."""
  valid = {"epochs": (lambda v: v >= 1, "1 or more"), "seeds": (lambda v: v >= 0, "0 or more"),
           "fractions": (lambda v: 0 < v <= 1, "in (0, 1]"),
           "max_lrs": (lambda v: math.isfinite(v) and v > 0, "finite and above 0")}
  for key, values in grid.items():
    ok, rule = valid[key]
    flag = "--" + key.replace("_", "-")
    bad = [v for v in values if not ok(v)]
    if bad:
      raise ValueError(f"{flag} {','.join(map(str, values))}: {bad[0]} is not {rule}.")
    _refuse_repeats(flag, values)


def _refuse_repeats(flag: str, values) -> None:
  """A value given twice would make (or report) its runs twice: one run counted twice in a mean."""
  repeated = sorted({v for v in values if list(values).count(v) > 1})
  if repeated:
    raise ValueError(f"{flag} {','.join(map(str, values))}: {repeated[0]} is given twice; each "
                     "value makes its own runs.")


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
  # a pair grid's existing teachers: <it>/<teacher arch> (or its model/) is an exported model
  teachers_path: str | None = None

  @property
  def teacher_dir(self) -> str:
    return os.path.join(self.out, "teacher")

  @property
  def teacher_checkpoint(self) -> str:
    return self.teacher_path or exported_model(self.teacher_dir)

  def pair_teacher_dir(self, arch: str) -> str:
    """Where a pair grid trains its teacher of architecture `arch` (shared by its pairs)."""
    return os.path.join(self.out, "teachers", arch)

  def pair_teacher_checkpoint(self, arch: str) -> str:
    """The exported teacher of architecture `arch`: --teacher-dir's <arch> folder (a model
    folder, or a run folder holding one), else the one the grid trains."""
    if self.teachers_path:
      given = os.path.join(self.teachers_path, arch)
      return given if has_exported_model(given) else exported_model(given)
    return exported_model(self.pair_teacher_dir(arch))

  def teacher_checkpoint_of(self, spec: RunSpec) -> str:
    """The exported teacher of a grid cell's distillation."""
    if spec.pair:
      return self.pair_teacher_checkpoint(self.experiment.pair(spec.pair).teacher)
    return self.teacher_checkpoint

  def run_dir(self, spec: RunSpec) -> str:
    return os.path.join(self.out, "runs", spec.name)

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
              fractions: Sequence[float] | None = None, max_lrs: Sequence[float] | None = None,
              teacher_epochs: int | None = None, teacher_path: str | None = None,
              pairs: Sequence[str] | None = None, teachers_path: str | None = None,
              out: str | None = None) -> Plan:
  """The experiment `name` shrunk by `scale`, then by the explicit grid arguments (`methods`
  picks arms by name, `pairs` a pair grid's pairs by `teacher:student`)."""
  if name not in EXPERIMENTS:
    raise ValueError(f"Unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}.")
  if scale not in SCALES:
    raise ValueError(f"Unknown scale {scale!r}; known: {', '.join(SCALES)}.")
  exp, sc = EXPERIMENTS[name], SCALES[scale]
  exp = dataclasses.replace(exp, **sc.grids.get(exp.grid_key, {}))
  changes = {k: tuple(v) for k, v in dict(epochs=epochs, seeds=seeds, fractions=fractions,
                                          max_lrs=max_lrs).items() if v}
  _check_grid_values(changes)
  # fields every cell sets for itself: an override of them would be listed in the report and
  # silently undone in every run
  owned = {"num_epochs": "--epochs", "seed": "--seeds"}
  if any(lr is not None for lr in changes.get("max_lrs", exp.max_lrs)):
    owned["optim.lr"] = "--max-lrs"
  if exp.pairs:
    owned.update({"model.arch": "--pairs", "model.arch_kwargs": "--pairs"})
  for key, flag in owned.items():
    if key in (overrides or {}):
      other = "" if flag == "--pairs" else " (or --teacher-override for the teacher)"
      raise ValueError(f"--override {key}: every run of the grid sets it from the grid; use "
                       f"{flag}{other}.")
  changes.update(_pair_changes(exp, pairs, teacher_overrides, teacher_path, teachers_path))
  if methods:
    _refuse_repeats("--methods", methods)
    unknown = [m for m in methods if m not in exp.arm_names]
    if unknown:
      raise ValueError(f"Unknown method(s) {unknown} for {name}; use some of {exp.arm_names}.")
    # an arm that starts from another arm's trained model needs that arm's runs too
    needed = set(methods)
    for m in methods:
      while (start := exp.arm(m).start_from) and start not in needed:
        needed.add(start)
        m = start
    changes["arms"] = tuple(a for a in exp.arms if a.name in needed)  # the grid's order
  exp = dataclasses.replace(exp, **changes)
  fields = {key: key.removeprefix("method.") for key in overrides or {}
            if key.startswith("method.")}
  if fields:  # each must be a field of some method of the grid (run_config skips the others)
    arm_methods = {a.method: method_config(a.method, exp.dataset).method for a in exp.arms}
    for key, field in fields.items():
      if not any(field in m for m in arm_methods.values()):
        raise ValueError(f"Override {key!r}: no method of this grid ({', '.join(arm_methods)}) "
                         f"has the field {field!r}.")
  extra = {**(overrides or {}), **{f"teacher:{k}": v for k, v in (teacher_overrides or {}).items()}}
  if teacher_epochs is not None:
    extra["teacher:num_epochs"] = teacher_epochs
  if teacher_path:
    extra["teacher:path"] = os.path.abspath(teacher_path)
  if teachers_path:
    extra["teacher:dir"] = os.path.abspath(teachers_path)
  return Plan(experiment=exp, scale=sc, out=out or default_out(exp, sc, extra),
              overrides={**sc.overrides, **(overrides or {})},
              teacher_overrides={**sc.teacher_overrides, **(teacher_overrides or {})},
              teacher_epochs=teacher_epochs if teacher_epochs is not None else sc.teacher_epochs,
              teacher_path=teacher_path, teachers_path=teachers_path)


def _pair_changes(exp: Experiment, pairs, teacher_overrides, teacher_path,
                  teachers_path) -> dict:
  """The pairs `pairs` picks (`teacher:student`), and the flags that only one kind of grid
  takes: a pair grid has a teacher per pair (--teacher-dir), the others one (--teacher)."""
  name = exp.name
  if not exp.pairs:
    if pairs or teachers_path:
      pair_grids = ", ".join(e.name for e in EXPERIMENTS.values() if e.pairs)
      raise ValueError(f"{'--pairs' if pairs else '--teacher-dir'}: {name} is not a grid of "
                       f"teacher/student pairs (the pair grids: {pair_grids}); its one teacher "
                       "is --teacher.")
    return {}
  if teacher_path:
    raise ValueError(f"--teacher: {name} has a teacher per pair; give a folder holding one "
                     "exported teacher per teacher architecture with --teacher-dir.")
  for key in ("model.arch", "model.arch_kwargs"):
    if key in (teacher_overrides or {}):
      raise ValueError(f"--teacher-override {key}: every pair sets its teacher's architecture; "
                       "pick pairs with --pairs.")
  if not pairs:
    return {}
  _refuse_repeats("--pairs", pairs)
  known = {p.key: p for p in exp.pairs}
  unknown = [p for p in pairs if p not in known]
  if unknown:
    raise ValueError(f"--pairs: unknown pair {unknown[0]!r} for {name}; known (teacher:student): "
                     f"{', '.join(known)}.")
  return {"pairs": tuple(p for p in exp.pairs if p.key in pairs)}  # the grid's order


# --- configs ------------------------------------------------------------------------------------


def method_config(method: str, dataset: str) -> ml_collections.ConfigDict:
  """The packaged configs/<method>_<data>.py, or the method's base config when it has none."""
  path = config_path(f"{method}_{SHORT_NAME[dataset]}")
  return load_config_file(path) if os.path.isfile(path) else base_config(dataset, method)


def arch_overrides(plan: Plan, arch: str) -> dict:
  """model.arch (and its family keyword arguments at the plan's scale) of a pair's network."""
  return {"model.arch": arch, "model.arch_kwargs": dict(plan.scale.arch_kwargs.get(arch, {}))}


def teacher_config(plan: Plan, arch: str = "") -> ml_collections.ConfigDict:
  """The teacher's training config: configs/teacher_<data>.py, the plan's overrides (so a
  narrower student gets an equally narrow teacher), a pair grid's teacher architecture `arch`,
  then the teacher-only overrides."""
  config = method_config("teacher", plan.experiment.dataset)
  apply_overrides(config, plan.overrides, skip_other_methods_fields=True)
  if arch:
    apply_overrides(config, arch_overrides(plan, arch))
  apply_overrides(config, plan.teacher_overrides)
  if plan.teacher_epochs is not None:
    config.num_epochs = int(plan.teacher_epochs)
  return config


def _set_teacher(config, model_config, checkpoint: str) -> None:
  """The student's teacher block names the teacher's architecture (checked against its
  model.json when it is loaded); the grid provides its teacher itself (config.teacher.config is
  emptied)."""
  if model_config.get("arch"):
    config.teacher.arch, config.teacher.arch_kwargs = model_config.arch, model_config.arch_kwargs
  else:
    config.teacher.depth, config.teacher.width = model_config.depth, model_config.width
    config.teacher.stem = model_config.stem
  config.teacher.checkpoint = checkpoint
  config.teacher.config = ""


def run_config(plan: Plan, spec: RunSpec) -> ml_collections.ConfigDict:
  """The config of one grid cell: the arm's method config, the plan's overrides, the
  experiment's and the arm's, then the cell's budget, seed, data share and max lr; its teacher
  is the plan's, or the arm it starts from; in a pair grid the network is the pair's student and
  the teacher is of the pair's teacher architecture.

  The data subset is drawn with data.subset_seed (not the run's seed), so every method and seed
  sees the same images and a smaller share is a subset of a larger one.
  """
  arm = plan.experiment.arm(spec.method)
  config = method_config(arm.method, plan.experiment.dataset)
  apply_overrides(config, plan.overrides, skip_other_methods_fields=True)
  pair = plan.experiment.pair(spec.pair) if spec.pair else None
  if pair:
    apply_overrides(config, arch_overrides(plan, pair.student))
  apply_overrides(config, plan.experiment.overrides)
  apply_overrides(config, arm.overrides)
  config.num_epochs = int(spec.epochs)
  config.seed = int(spec.seed)
  config.data.fraction = float(config.data.fraction) * float(spec.fraction)
  if spec.max_lr is not None:
    config.optim.lr = float(spec.max_lr) / float(config.optim.max_lr_factor)
  if arm.start_from:
    start = start_spec(spec, arm)
    trained = exported_model(plan.run_dir(start))
    config.method.init_from = trained
    _set_teacher(config, run_config(plan, start).model, trained)
  elif pair and plan.teachers_path:
    # an imported teacher's architecture is its model.json's (checked against the pair's by
    # run.check_plan), whatever family keyword arguments the scale would give a trained one
    config.teacher.checkpoint = plan.pair_teacher_checkpoint(pair.teacher)
    config.teacher.config = ""
  elif pair:
    _set_teacher(config, teacher_config(plan, pair.teacher).model,
                 plan.pair_teacher_checkpoint(pair.teacher))
  elif plan.teacher_path:
    # a given teacher's architecture is its model.json's (dnd_jax.teacher.load), not that of the
    # teacher the grid would train; an override of teacher.{depth,width,stem} is checked against it
    config.teacher.checkpoint, config.teacher.config = plan.teacher_checkpoint, ""
  else:
    _set_teacher(config, teacher_config(plan).model, plan.teacher_checkpoint)
  return config


def start_spec(spec: RunSpec, arm: Arm) -> RunSpec:
  """The cell of the arm that `arm` starts from."""
  return dataclasses.replace(spec, method=arm.start_from)
