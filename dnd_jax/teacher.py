"""The frozen teacher of a distillation run: provisioned (trained if missing) as its own step, then
loaded with the architecture its `model.json` records.

Provisioning is separate from the student's training: `scripts/train.py` (`train.train_command`) and
the reproduction grids call `provision` before `train_and_evaluate`, which only loads a teacher that
exists. This module sits below the run: the trainer of a missing teacher is passed in (`train_fn`,
the run's `train_and_evaluate`). A teacher that a student run trains for itself gets the student's
data (name, folder, source, checksums, image size, normalisation, the rows held out for validation)
and every data override of the command line (a share of the data, say), the student's width and stem
(so that a ResNet pair meets stage for stage without adapters), and any `config.teacher.{arch,
arch_kwargs}` or `{depth,width,stem}` that is set; it trains in its own workdir (the folder that `config.teacher.checkpoint` names as
`<workdir>/model`), and never writes into a folder that holds another run.
"""

from __future__ import annotations

import copy
import logging
import os

import flax.linen as nn
import ml_collections

from dnd_jax import checkpoints, workdir as run_folder
from dnd_jax.configs import load_config_file
from dnd_jax.methods import get_method
from dnd_jax.models import build_model, family_kwargs, stage_output_shapes

log = logging.getLogger(__name__)

ARCH_FIELDS = ("depth", "width", "stem")  # the paper's ResNet's; `arch` names any other network


def requested_architecture(config) -> dict:
  """The teacher's architecture as `config.teacher` sets it explicitly (what it leaves unset is
  taken from the teacher's record): its `arch` and `arch_kwargs` when `arch` is set, else the
  ResNet fields that are set."""
  block = config.get("teacher", {})
  if block.get("arch"):
    return {"arch": str(block.arch), "arch_kwargs": family_kwargs(block.get("arch_kwargs"))}
  return {k: block.get(k) for k in ARCH_FIELDS if block.get(k) is not None}


def architecture_to_build(config) -> ml_collections.ConfigDict:
  """The architecture of a teacher that is about to be made (trained or imported): the fields
  `config.teacher` sets, else those a teacher trained for this run gets (`config_for_training`):
  the `arch` of the model block of `config.teacher.config` when it has one, else a ResNet with
  the student's width and stem and the depth of that model block."""
  requested = requested_architecture(config)
  if "arch" in requested:
    return ml_collections.ConfigDict(requested)
  own = load_config_file(config.teacher.config).model if config.teacher.get("config") else None
  if own is not None and own.get("arch"):
    return ml_collections.ConfigDict({"arch": own.arch,
                                      "arch_kwargs": family_kwargs(own.get("arch_kwargs"))})
  student = config.get("model") or {}
  arch = {k: student.get(k) for k in ("width", "stem") if student.get(k) is not None}
  if own is not None and "depth" not in requested:
    arch["depth"] = own.depth
  arch.update(requested)
  missing = [k for k in ARCH_FIELDS if k not in arch]
  if missing:
    raise checkpoints.CheckpointError(
        f"The teacher's {', '.join(missing)} are not known: set config.teacher.config to the "
        f"teacher's config file, or set {', '.join('config.teacher.' + k for k in missing)} (or "
        "config.teacher.arch).")
  return ml_collections.ConfigDict(arch)


def recorded_architecture(config, saved: dict, path: str) -> dict:
  """The architecture a teacher whose model.json records `saved` is loaded as: `saved`, checked
  against what `config.teacher` sets (`requested_architecture`; a difference is an error when
  the model is loaded). A ResNet's fields set in config.teacher do not describe a teacher of
  another architecture, which is said here rather than as a list of fields it lacks."""
  requested = requested_architecture(config)
  if "arch" in requested:
    return requested
  if saved.get("arch"):
    if requested:
      raise checkpoints.CheckpointError(
          f"The teacher at {path!r} is {checkpoints.describe(saved)} (its model.json), which "
          f"config.teacher.{', .'.join(requested)} (the ResNet's fields) do not describe: unset "
          f"them, or set --config.teacher.arch={saved['arch']}.")
    return {"arch": saved["arch"], "arch_kwargs": saved.get("arch_kwargs") or {}}
  arch = {**{k: saved.get(k) for k in ARCH_FIELDS}, **requested}
  if any(arch[k] is None for k in ARCH_FIELDS):
    raise checkpoints.CheckpointError(
        f"{run_folder.model_meta_path(path)} records no architecture ({saved}); re-export the "
        "teacher, or set config.teacher.depth, .width and .stem (or config.teacher.arch).")
  return arch


def planned_architecture(config) -> dict | None:
  """The architecture the run's teacher will have, as far as it is known before any work: that
  of the teacher at `config.teacher.checkpoint` (`recorded_architecture`), or else of the one the
  run would train (`architecture_to_build`). None when neither can be known yet: the missing or
  unreadable teacher is reported where it is loaded or trained."""
  path = config.teacher.checkpoint
  try:
    if run_folder.has_model(path):
      saved = checkpoints.read_model_meta(path).get("architecture", {})
      return recorded_architecture(config, saved, path)
    return architecture_to_build(config).to_dict() if config.teacher.get("config") else None
  except (checkpoints.CheckpointError, FileNotFoundError):
    return None


# What the data is, where and how it is read, the input the networks see, and the rows held out
# for validation: a teacher trained for a student run takes these from the student always (the
# teacher's features are computed on the student's inputs, and it must not train on the images
# the student validates on). The rest of the data block (the share of the data, the augmentation) is
# the teacher config's own recipe unless the command line overrides it for the student run.
DATA_ALWAYS_INHERITED = ("name", "loader", "source", "dir", "cache_dir", "mirror",
                         "verify_checksums", "image_size", "stored_size", "mean", "std",
                         "val_fraction", "subset_seed")


def config_for_training(config, overrides=()) -> tuple[ml_collections.ConfigDict, list[str]]:
  """The teacher's own config (`config.teacher.config`), with what the student run imposes on it:
  the data fields of `DATA_ALWAYS_INHERITED`, every `data.*` field among `overrides` (the names
  the command line set, e.g. "data.fraction"), the student's width and stem (with which a ResNet
  pair needs no stage adapters) and any `config.teacher.{arch,arch_kwargs}` or
  `{depth,width,stem}` that is set.

  Returns the config and the inherited settings that differ from the teacher config's own, as
  "field=value" strings for the message that says so.
  """
  teacher_config = load_config_file(config.teacher.config)
  fields = set(DATA_ALWAYS_INHERITED)
  fields |= {name.split(".", 1)[1].split(".")[0] for name in overrides if name.startswith("data.")}
  wanted = {f"data.{k}": config.data[k] for k in sorted(fields) if k in config.data}
  wanted.update({"model.width": config.model.width, "model.stem": config.model.stem})
  wanted.update({f"model.{k}": v for k, v in requested_architecture(config).items()})
  inherited = []
  for name, value in wanted.items():
    block, field = name.split(".")
    current = teacher_config[block].get(field)
    if field == "arch_kwargs":  # a ConfigDict, equal to no dict
      current = family_kwargs(current)
    if current != value:
      inherited.append(f"{name}={value!r}")
      with teacher_config.unlocked():
        teacher_config[block][field] = copy.deepcopy(value)
  return teacher_config, inherited


_TRAIN_ONE = (" Train one with `python scripts/train.py --config configs/teacher_<data>.py "
              "--workdir <dir>` and set --config.teacher.checkpoint=<dir>/model, or import a "
              "PyTorch teacher with scripts/import_torch_teacher.py.")


def _missing(config) -> str:
  path = config.teacher.checkpoint
  near = run_folder.nearby_models(path)
  hint = f" Did you mean {near[0]!r}?" if near else ""
  return f"Teacher checkpoint {path!r} not found (no {run_folder.MODEL_META} there).{hint}"


def provision(config, train_fn, overrides=(), resuming: bool = False) -> str | None:
  """Make sure the teacher that `config` distils from exists, training it first (with
  `train_fn(config, workdir)`) if it may.

  Returns the teacher's model path (None when the method needs no teacher). Training happens only
  when `config.teacher.checkpoint` is missing, `config.teacher.config` names the config that
  trains it, the path is a `<workdir>/model`, and that workdir holds no other run. `overrides`
  are the names of the fields the command line set (see `config_for_training`). A run that is
  `resuming` has trained with a teacher already: a missing one is an error, never replaced by a
  new one (a relative path read from another folder would otherwise train a second teacher).
  """
  if not get_method(config.method.name).needs_teacher:
    return None
  path = config.teacher.checkpoint
  if run_folder.has_model(path):
    return path
  if resuming:
    raise checkpoints.CheckpointError(
        _missing(config) + f" The run resumed here has trained with the teacher at "
        f"{os.path.abspath(path)!r}, so no other is trained in its place: restore that teacher "
        "or point --config.teacher.checkpoint at it (a relative path is read from the current "
        "folder), or start over in another --workdir.")
  if not config.teacher.get("config"):
    raise checkpoints.CheckpointError(
        _missing(config) + _TRAIN_ONE)
  teacher_workdir = run_folder.workdir_of_model(path)
  if teacher_workdir is None:
    raise checkpoints.CheckpointError(
        _missing(config) + f" To train it here, point config.teacher.checkpoint at <a new "
        f"workdir>/{run_folder.MODEL_DIR}.")
  teacher_config, inherited = config_for_training(config, overrides)
  problem = stage_count_problem(config.model, teacher_config.model,
                                f"the teacher to be trained at {path}")
  if problem:  # before training it, not after (config_check says it first for a command)
    raise ValueError(problem)
  return train_into(teacher_config, teacher_workdir, train_fn,
                    why=f"Teacher checkpoint {path!r} not found: training the teacher first with "
                        f"{config.teacher.config}", inherited=inherited,
                    config_file=config.teacher.config)


def stage_count_problem(student_block, teacher_block, teacher_where: str) -> str | None:
  """Why a student and a teacher (config blocks or architecture records) cannot make a pair,
  or None: DnD pairs stage k of one with stage k of the other, so both need as many stages
  (their shapes may differ: `dnd_jax.adapters` connects them). `teacher_where` names the
  teacher in the message ("config.teacher.arch='vgg13'", "the teacher at runs/t/model")."""
  student_block, teacher_block = (ml_collections.ConfigDict(b) if isinstance(b, dict) else b
                                  for b in (student_block, teacher_block))
  student, teacher = build_model(student_block, 10), build_model(teacher_block, 10)
  if student.num_stages == teacher.num_stages:
    return None
  describe = lambda block: checkpoints.describe(checkpoints.architecture(block, 10, (1,)))  # noqa: E731
  return (f"The student, {describe(student_block)}, has {student.num_stages} stages and "
          f"{teacher_where}, {describe(teacher_block)}, has {teacher.num_stages}: distillation "
          f"pairs stage k of one with stage k of the other. Set --config.model.arch to a network "
          f"of {teacher.num_stages} stages or --config.teacher.arch to one of "
          f"{student.num_stages} (docs/models.md lists each network's stages).")


def check_same_stage_shapes(student, teacher, image_shape, teacher_path: str) -> None:
  """Every stage output of the two networks has the same shape, else a ValueError: what splices
  one network's stages onto the other's without adapters needs (the diagnosis's hybrids; a
  run's adapters are dropped when its student is exported)."""
  s_shapes = stage_output_shapes(student, image_shape)
  t_shapes = stage_output_shapes(teacher, image_shape)
  if len(s_shapes) != len(t_shapes):
    raise ValueError(f"The student has {len(s_shapes)} stages and the teacher at {teacher_path} "
                     f"{len(t_shapes)}: they cannot be spliced stage for stage.")
  for k, (s, t) in enumerate(zip(s_shapes, t_shapes), start=1):
    if s[1:] != t[1:]:
      raise ValueError(
          f"Stage {k} output shapes differ: student {s[1:]} vs teacher {t[1:]} (per example), "
          f"for the teacher at {teacher_path}. Splicing the two networks' stages needs equal "
          "shapes at every stage (a run's stage adapters are not exported with its student).")


def train_into(teacher_config, teacher_workdir: str, train_fn, why: str = "Training the teacher",
               inherited: list[str] = (), config_file: str = "") -> str:
  """Train `teacher_config` in `teacher_workdir` (`train_fn(config, workdir)`, the run's
  `train_and_evaluate`) unless it holds that finished run already; return the exported model's
  path. Refuses a folder that holds a different run (never writes there).

  Bad input met by the teacher's own run (a batch larger than a small share of the data, say)
  is reported as the teacher's, with where its recipe comes from (`config_file`, when it is one):
  the user typed the student's command, and the fix is in the teacher's config."""
  stored = run_folder.read_config(teacher_workdir)
  if stored is not None and run_folder.has_progress(teacher_workdir):
    changed = run_folder.config_changes(stored, teacher_config)
    if changed or stored.get("method", {}).get("name") != teacher_config.method.name:
      raise run_folder.WorkdirError(
          f"{teacher_workdir} holds another run ({'; '.join(changed[:6]) or 'another method'}), "
          "so the teacher is not trained there. Point config.teacher.checkpoint at "
          f"<a new folder>/{run_folder.MODEL_DIR}, or at that run's model if it is the teacher.")
  model_path = run_folder.model_dir(teacher_workdir)
  if run_folder.is_finished(teacher_workdir) and run_folder.has_model(model_path):
    return model_path
  with_data = f", with the student's {', '.join(inherited)}" if inherited else ""
  log.info(f"{why} in {teacher_workdir}{with_data}.")
  try:
    summary = train_fn(teacher_config, teacher_workdir)
  except ValueError as e:
    recipe = config_file or "the teacher's config"
    command = (f" run `python scripts/train.py --config {config_file} --workdir {teacher_workdir}`"
               " with --config.<field> overrides, then this command again" if config_file
               else " change that config")
    raise type(e)(f"Training the teacher in {teacher_workdir} stopped: {e} (Its batch size, "
                  f"epochs and optimiser are those of {recipe}; to train it with others,"
                  f"{command}.)") from e
  if summary and "final_accuracy" in summary:
    log.info(f"Teacher trained: final accuracy {summary['final_accuracy']:.4f}.")
  return model_path


def check_inputs(config, meta: dict, dataset, field: str = "teacher.checkpoint") -> None:
  """Refuse a teacher trained on other inputs (another data set, image size or normalisation)
  unless `config.teacher.allow_other_inputs`: its features on this run's images are not the ones
  it learned, and a run distilling from it would train to the end without saying so. A run
  whose teacher path holds a teacher made for other settings (an earlier run's automatic
  teacher, say) is the usual way to get here. `field` "method.init_from" checks the trained
  network a re-initialising method starts from, by the same rule and the same switch."""
  differences = checkpoints.input_differences(meta, dataset)
  if not differences:
    return
  block, name = field.split(".")
  path = config[block][name]
  what = "teacher at" if field == "teacher.checkpoint" else f"network at {field}"
  if config.teacher.get("allow_other_inputs", False):
    log.warning(f"The {what} {path!r} was trained on other inputs ({'; '.join(differences)}); "
                "using it as config.teacher.allow_other_inputs asks.")
    return
  fix = ("Point --config.teacher.checkpoint at a new <folder>/model (with config.teacher.config "
         "set, the run trains a teacher for this data there)" if field == "teacher.checkpoint"
         else f"Point --config.{field} at a network trained on this run's data")
  raise checkpoints.CheckpointError(
      f"The {what} {path!r} was trained on other inputs than this run's: "
      f"{'; '.join(differences)}. {fix}, or set --config.teacher.allow_other_inputs=True to use "
      "it anyway.")


def chance_warning(accuracy: float, num_classes: int) -> str | None:
  """A line for a teacher whose accuracy is within 1.5x of chance: one that has no record of its
  inputs to check (an imported PyTorch teacher trained with another normalisation, say), or that
  was allowed other inputs, can still be useless, and the run should say so before it trains."""
  chance = 1.0 / num_classes
  if accuracy > 1.5 * chance:
    return None
  return (f"Warning: the teacher's accuracy {accuracy:.4f} is about chance ({chance:.4f} for "
          f"{num_classes} classes), so the student learns little from it. Check "
          "config.teacher.checkpoint, and for an imported teacher config.data.mean and std.")


def held_out_record(data_config) -> dict:
  """The training rows a run held out for validation (`dnd_jax.data.split_indices`: they depend
  on these two alone), as its model.json records them."""
  return {"val_fraction": float(data_config.get("val_fraction", 0.0)),
          "subset_seed": int(data_config.get("subset_seed", 0))}


def held_out_difference(meta: dict, data_config) -> tuple[dict, dict] | None:
  """(the model's held-out record, this config's) when they differ: the model trained on some of
  the rows this config validates on. None when they agree or the model has no record (imported,
  or exported before it was kept): nothing is known of what it trained on."""
  theirs, ours = meta.get("held_out"), held_out_record(data_config)
  return (theirs, ours) if isinstance(theirs, dict) and theirs != ours else None


def held_out_warning(config, meta: dict, dataset) -> str | None:
  """A line for a run that selects on a validation split with a teacher that held out other rows
  (one trained on all the data, say): the teacher has trained on some of the images the run
  validates on, so its validation accuracy is no held-out figure. The student never trains on
  them, so its own accuracy and selection stay honest; hence a warning, not an error."""
  differ = held_out_difference(meta, config.data)
  if dataset.eval_split != "validation" or differ is None:
    return None
  theirs, ours = differ
  return (f"Warning: the teacher held out other training rows than this run validates on (its "
          f"data.val_fraction={theirs.get('val_fraction')}, subset_seed="
          f"{theirs.get('subset_seed')}; this run's {ours['val_fraction']}, "
          f"{ours['subset_seed']}), so it has trained on some of this run's validation images: "
          "its validation accuracy is not a held-out figure (the student's is). Train the teacher "
          f"with --config.data.val_fraction={ours['val_fraction']} and "
          f"--config.data.subset_seed={ours['subset_seed']} for one that is.")


def load(config, dataset, dtype) -> tuple[nn.Module, dict, dict]:
  """The frozen teacher at `config.teacher.checkpoint` for a run on `dataset`: the model built
  from its `model.json` architecture (checked against any `config.teacher.{arch,arch_kwargs}` or
  `{depth,width,stem}` that is set, and its inputs against `dataset`'s: `check_inputs`), its
  variables, and its `model.json`."""
  num_classes, image_shape = dataset.num_classes, dataset.image_shape
  path = config.teacher.checkpoint
  if not run_folder.has_model(path):
    hint = (" `python scripts/train.py` trains it first from config.teacher.config; a library "
            "caller runs `dnd_jax.train.provision_teacher(config)`."
            if config.teacher.get("config") else _TRAIN_ONE)
    raise checkpoints.CheckpointError(_missing(config) + hint)
  saved_meta = checkpoints.read_model_meta(path)
  check_inputs(config, saved_meta, dataset)
  arch = recorded_architecture(config, saved_meta.get("architecture", {}), path)
  expected = checkpoints.architecture(ml_collections.ConfigDict(arch), num_classes, image_shape)
  return checkpoints.load_model_as(path, expected, image_shape, dtype)
