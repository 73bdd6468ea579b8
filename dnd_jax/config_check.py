"""Checks of a whole config before any work: each bad value is one `ConfigError` that names the
field, the value, and what to set instead.

Without them a bad value surfaces late and far from its cause: batch_size 0 as a
ZeroDivisionError, a negative one as a JAX TypeError after the data and teacher are loaded, lr=nan
after a whole epoch. The checks cover the values the trainer divides by, loops over or feeds to
the optimiser, the names it looks up, and the workdir it will write.

This module is the one owner of those checks; the run (`dnd_jax.train`) calls each once, as soon
as what it needs exists: `check` (the values and the workdir) before JAX starts, `check_devices`
(the XLA options, the batch over the devices) once it has, `check_run_length` (the batch, the
profiled steps and the schedule against the training set) once the data is loaded.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from typing import Any

import jax

from dnd_jax import parallel, profiling, runtime, teacher as teacher_lib, workdir as run_folder
from dnd_jax.data.sources import READERS, SOURCES
from dnd_jax.data.stream import LOADERS, NAMES as STREAMED, ONLY_STREAMED
from dnd_jax.methods import get_method
from dnd_jax.models import (ARCHS, STAGE_SIZES, STEMS, build_arch, build_model, family_kwargs,
                            resolve_dtype)
from dnd_jax.optim import SCHEDULES, make_schedules


class ConfigError(ValueError):
  """A config value, field name or config file that cannot work."""


def field_names(config: Any, prefix: str = "") -> list[str]:
  """Every leaf field of a ConfigDict, dotted ("optim.lr"); an empty block is a leaf too (one set
  whole, as `model.arch_kwargs`)."""
  names = []
  for key in config.keys():
    value = config[key]
    if hasattr(value, "keys") and not isinstance(value, (str, bytes)) and len(value.keys()):
      names += field_names(value, f"{prefix}{key}.")
    else:
      names.append(f"{prefix}{key}")
  return names


def unknown_field(name: str, config: Any) -> str | None:
  """Why `name` (as in `--config.<name>=...`) is not a field of `config`, with the closest fields;
  None when it is one."""
  names = field_names(config)
  groups = {n.rsplit(".", 1)[0] for n in names if "." in n}
  if name in names or name in groups:
    return None
  if name == "workdir":
    return ("workdir is not a config field: it is its own flag. Use --workdir=<dir> instead of "
            "--config.workdir=<dir>.")
  last = name.rsplit(".", 1)[-1]
  near = [n for n in names if n.rsplit(".", 1)[-1] == last]
  near += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if n not in near]
  if not near:
    near = [n for n in difflib.get_close_matches(last, [n.rsplit(".", 1)[-1] for n in names],
                                                 n=1, cutoff=0.7)]
    near = [n for n in names if near and n.rsplit(".", 1)[-1] == near[0]]
  hint = f" Did you mean {' or '.join('--config.' + n for n in near[:2])}?" if near else ""
  return (f"--config.{name}: the config has no field {name!r}.{hint} The fields are those of "
          "the config file and of dnd_jax/configs/__init__.py's base_config.")


_ABSENT = object()


def _positive_int(config, name: str, problems: list[str]) -> None:
  value = _get(config, name)
  if value is _ABSENT:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    problems.append(f"config.{name}={value!r} must be a positive whole number.")


def _count(config, name: str, problems: list[str], what: str = "a whole number",
           zero: str = "") -> None:
  """A count that may be 0 (`zero` says what 0 means); `_positive_int` for one that may not."""
  value = _get(config, name)
  if value is _ABSENT:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    problems.append(f"config.{name}={value!r} must be {what}, 0 or more{zero}.")


def _finite(config, name: str, problems: list[str], positive: bool = False) -> None:
  value = _get(config, name)
  if value is _ABSENT:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or (positive and value <= 0):
    what = "a finite number above 0" if positive else "a finite number"
    problems.append(f"config.{name}={value!r} must be {what}.")


def _get(config, name: str) -> Any:
  node = config
  for part in name.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _ABSENT
    node = node[part]
  return node


def check(config, workdir: str | None = None) -> None:
  """Raise `ConfigError` for the first values that cannot work (all problems in one message).

  Reads no data and starts no JAX backend, so a command runs it first of all (scripts/train.py
  before `runtime.setup_runtime`); `check_devices` and `check_run_length` do the rest."""
  problems: list[str] = []
  for name in ("num_epochs", "batch_size", "checkpoint.every_epochs", "checkpoint.keep",
               "log.refresh_steps"):
    _positive_int(config, name, problems)
  _count(config, "checkpoint.every_steps", problems, "a whole number of steps",
         " (0: at epoch ends alone)")
  if config.get("eval_batch_size") != 0:  # 0: sized for the device
    _positive_int(config, "eval_batch_size", problems)
  _positive_int(config, "steps_per_dispatch", problems)
  try:
    profiling.parse_steps(config.get("log", {}).get("profile_steps", ""))
  except ValueError as e:
    problems.append(str(e))
  _finite(config, "optim.lr", problems, positive=True)
  schedule = _get(config, "optim.schedule")
  if schedule is not _ABSENT and schedule not in SCHEDULES:
    problems.append(f"config.optim.schedule={schedule!r}: use one of {list(SCHEDULES)}.")
  for name in ("momentum", "weight_decay", "max_lr_factor", "base_lr_factor", "pct_start",
               "div_factor", "final_div_factor", "base_momentum", "max_momentum"):
    _finite(config, f"optim.{name}", problems)
  for name in ("seed", "data.subset_seed"):  # JAX's and NumPy's generators take 0 .. 2**63 - 1
    value = _get(config, name)
    if value is not _ABSENT and (isinstance(value, bool) or not isinstance(value, int)
                                 or not 0 <= value < 2**63):
      problems.append(f"config.{name}={value!r} must be a whole number from 0 to 2**63 - 1.")
  try:
    method = get_method(config.method.name)  # the registry's own message
  except ValueError as e:
    problems.append(str(e))
  else:
    problems += method.config_problems(config.method)  # its fields' values, what it needs
    init_from = config.method.get("init_from")
    if (method.trained_stages is not None and method.needs_teacher and init_from
        and os.path.abspath(config.teacher.checkpoint) != os.path.abspath(init_from)):
      # its re-initialised stages learn the trained network's own features: any other teacher
      # would be an unrelated network (and a missing one would be trained first)
      problems.append(f"config.teacher.checkpoint={config.teacher.checkpoint!r} must be the "
                      f"network that method {method.name!r} re-trains, config.method.init_from="
                      f"{init_from!r}: set --config.teacher.checkpoint={init_from}.")
  try:
    resolve_dtype(config.model.dtype)  # its own message
  except ValueError as e:
    problems.append(str(e))
  problems += architecture_problems(config)
  for block in ("model", "teacher"):
    if block not in config:
      continue
    depth, stem = config[block].get("depth"), config[block].get("stem")
    if depth is not None and depth not in STAGE_SIZES:
      problems.append(f"config.{block}.depth={depth!r}: use one of {list(STAGE_SIZES)}.")
    if stem is not None and stem not in STEMS:
      problems.append(f"config.{block}.stem={stem!r}: use one of {list(STEMS)}.")
    if config[block].get("width") is not None:
      _positive_int(config, f"{block}.width", problems)
  data = config.data
  problems += _loader_problems(config)
  if data.name not in READERS and data.name not in STREAMED:
    problems.append(f"config.data.name={data.name!r}: use one of "
                    f"{sorted(READERS) + list(STREAMED)}.")
  if data.source not in SOURCES:
    problems.append(f"config.data.source={data.source!r}: use one of {list(SOURCES)}.")
  elif data.source == "tfds" and importlib.util.find_spec("tensorflow_datasets") is None:
    problems.append("config.data.source='tfds' needs tensorflow-datasets: pip install "
                    "'dnd_jax[tfds]', or use --config.data.source=local or download.")
  fraction, val_fraction = data.get("fraction", 1.0), data.get("val_fraction", 0.0)
  if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
    problems.append(f"config.data.fraction={fraction!r} must be in (0, 1].")
  if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
    problems.append(f"config.data.val_fraction={val_fraction!r} must be in [0, 1).")
  for name in ("image_size", "stored_size"):
    if data.get(name) is not None:
      _positive_int(config, f"data.{name}", problems)
  for name in ("mean", "std"):  # normalisation: (x - mean) / std, one value per channel
    values = data.get(name)
    if values is None:
      continue
    if not (isinstance(values, (list, tuple)) and values and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and (name == "mean" or v > 0) for v in values)):
      what = "finite numbers above 0" if name == "std" else "finite numbers"
      problems.append(f"config.data.{name}={values!r} must be a list of {what}, one per channel.")
  _count(config, "data.crop_padding", problems, "a whole number of pixels", " (0: no crop)")
  for name, top in (("rrc_scale", 1.0), ("rrc_ratio", math.inf)):  # (lo, hi) of a random draw
    pair = data.get(name)
    if pair is None:
      continue
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in pair) and 0 < pair[0] <= pair[1] <= top):
      bound = "0 < lo <= hi <= 1" if top == 1.0 else "0 < lo <= hi"
      problems.append(f"config.data.{name}={pair!r} must be two numbers (lo, hi) with {bound}, "
                      f"e.g. --config.data.{name}='({0.08 if top == 1.0 else 0.75}, "
                      f"{1.0 if top == 1.0 else 1.33})'.")
  if problems:
    raise ConfigError(" ".join(problems))
  if workdir is not None:
    try:
      run_folder.check_writable(workdir)
    except run_folder.WorkdirError as e:
      raise ConfigError(str(e)) from None


def _network(block_name: str, block, problems: list[str]):
  """The network of `config.<block_name>` (its `arch` or its ResNet fields), or None with the
  reason in `problems`: an unknown name, family keyword arguments it does not take, `remat` of a
  family without it. Only the module is made (no JAX computation), so this runs before JAX."""
  arch = block.get("arch") or ""
  if not arch:  # the ResNet: its fields' values are `check`'s to report
    try:
      return build_model(block, 10) if block.get("depth") in STAGE_SIZES else None
    except (TypeError, ValueError):
      return None
  if arch not in ARCHS:
    near = difflib.get_close_matches(arch, list(ARCHS), n=2)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    problems.append(f"config.{block_name}.arch={arch!r} is no known network{hint}: use one of "
                    f"{', '.join(ARCHS)}, or '' for the ResNet of config.{block_name}.depth.")
    return None
  try:
    model = build_arch(arch, 10, **family_kwargs(block.get("arch_kwargs")))
  except TypeError as e:
    problems.append(f"config.{block_name}.arch_kwargs={family_kwargs(block.get('arch_kwargs'))}: "
                    f"{arch!r} does not take them ({e}).")
    return None
  if block.get("remat", False) and not hasattr(model, "remat"):
    problems.append(f"config.{block_name}.remat=True: {arch!r} does not rematerialise (the ResNet "
                    "family does); set --config.model.remat=False.")
  return model


def _loader_problems(config) -> list[str]:
  """What a streamed run needs (`dnd_jax.data.stream`), and which data sets stream: ImageNet only
  does, Imagewoof may, the others never do. The streamed path draws no validation split and
  runs one step per dispatch (its batch is an argument of each step)."""
  data, problems = config.data, []
  loader = data.get("loader", "device")
  if loader not in LOADERS:
    return [f"config.data.loader={loader!r}: use one of {list(LOADERS)}."]
  if loader == "device":
    if data.name in ONLY_STREAMED:
      problems.append(f"config.data.name={data.name!r} is read as a stream: set "
                      "--config.data.loader=stream.")
    return problems
  if data.name not in STREAMED:
    return [f"config.data.loader='stream' reads {list(STREAMED)} (ImageNet-layout folders), "
            f"not {data.name!r}: use --config.data.loader=device for it."]
  if importlib.util.find_spec("grain") is None:
    problems.append("config.data.loader='stream' needs Grain: pip install 'dnd_jax[stream]'.")
  if data.source not in ("local", "tfds"):
    problems.append(f"config.data.source={data.source!r}: a streamed data set is read from a "
                    "folder (source 'local') or from TFDS's prepared records (source 'tfds').")
  if data.source == "tfds" and not data.get("tfds_name"):
    problems.append(f"config.data.source='tfds' streams the TFDS data set config.data.tfds_name, "
                    f"which {data.name!r} does not name: read it from its folder (source "
                    "'local').")
  if data.source == "tfds" and data.get("fraction", 1.0) != 1.0:
    problems.append(f"config.data.fraction={data.fraction!r} with source 'tfds': drawing a share "
                    "per class would read every record's label; train on a share of the "
                    "unpacked folders (source 'local') instead.")
  if data.get("val_fraction", 0.0) != 0.0:
    problems.append(f"config.data.val_fraction={data.get('val_fraction')!r}: a streamed data "
                    "set trains on train/ (or data.fraction of it) and evaluates on val/; leave "
                    "it at 0.0.")
  if data.get("mean") is None or data.get("std") is None:
    problems.append("config.data.mean and std must be set for a streamed data set (they are not "
                    "computed from its images).")
  if data.get("image_size") is None:
    problems.append("config.data.image_size must be set for a streamed data set.")
  if config.get("steps_per_dispatch", 1) != 1:
    problems.append(f"config.steps_per_dispatch={config.steps_per_dispatch!r}: a streamed run "
                    "dispatches one step per batch; use 1.")
  _count(config, "data.workers", problems, zero=" (0: decoded in the training process)")
  return problems


def architecture_problems(config) -> list[str]:
  """The student's and the teacher's architectures: known names, and, for a method with a
  teacher, the same number of stages, which is what makes them a pair (their stage shapes may
  differ: stage adapters connect them). The teacher's is `config.teacher.arch` when set, else
  its model.json's, else that of the teacher the run would train (`teacher.planned_architecture`)."""
  problems: list[str] = []
  if "model" not in config:
    return problems
  student = _network("model", config.model, problems)
  try:
    if not get_method(config.method.name).needs_teacher:
      return problems
  except ValueError:  # reported by `check`
    return problems
  teacher_block = config.get("teacher") or {}
  own = _network("teacher", teacher_block, problems) if teacher_block.get("arch") else None
  if student is None or (teacher_block.get("arch") and own is None):
    return problems
  if own is not None:
    where, record = f"config.teacher.arch={teacher_block.arch!r}", teacher_block
  else:
    record = teacher_lib.planned_architecture(config)
    if record is None:
      return problems
    path = config.teacher.checkpoint
    where = (f"the teacher at {path!r} (its model.json)" if run_folder.has_model(path) else
             f"the teacher that {config.teacher.config} would train at {path!r}")
  try:
    problem = teacher_lib.stage_count_problem(config.model, record, where)
  except (TypeError, ValueError) as e:  # a record naming no network this version knows
    problem = f"The teacher's architecture ({record}) cannot be built: {e}"
  if problem:
    problems.append(problem)
  return problems


def check_devices(config) -> None:
  """What `check` cannot know before JAX's backends start: the XLA options (by XLA) and the batch
  over this process's devices. Runs after `runtime.start_distributed`, before any data is read or
  a teacher is trained for the run."""
  check_compiler_options(config.get("compiler_options"))
  parallel.check_batch_divides(config.batch_size, parallel.make_mesh())


def _options_check(x):
  return x + 1


def check_compiler_options(config_options) -> None:
  """Compile a trivial program with `config.compiler_options` as this backend takes them
  (`runtime.compiler_options`), so that an unknown option or a bad value is one clear line (a
  `ConfigError`) before any data is loaded, not an XLA error at the first training step. It
  starts JAX's backends, so it runs after `runtime.start_distributed` (`check_devices`)."""
  options = runtime.compiler_options(config_options)
  if not options:
    return
  try:
    jax.jit(_options_check).lower(jax.numpy.zeros(())).compile(compiler_options=options)
  except Exception as e:  # XLA raises JaxRuntimeError (INVALID_ARGUMENT) for either mistake
    detail = str(e).splitlines()[0].removeprefix("INVALID_ARGUMENT: ").rstrip(".")
    raise ConfigError(f"config.compiler_options: {detail}. Set an option XLA knows "
                     f"(e.g. --config.compiler_options.xla_gpu_enable_command_buffer="
                     f"{runtime.GPU_COMMAND_BUFFER}), or leave it out.") from None


def check_run_length(config, n_train: int, num_phases: int) -> None:
  """What only the data can tell: the run's steps, from the batch over `n_train` training images.
  A batch larger than the training set, a profiled range past the last step or a schedule too
  short for the run (over `num_phases` phases of the method) would otherwise fail, or do
  nothing, far from its cause."""
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training set "
                      f"({n_train} images); lower it or raise data.fraction.")
  total_steps = steps_per_epoch * config.num_epochs
  traced = profiling.parse_steps(config.log.get("profile_steps", ""))
  if traced and traced[1] > total_steps:  # a trace never taken, or one left running to the end
    raise ConfigError(
        f"config.log.profile_steps={config.log.profile_steps!r} ends after the run's last step: "
        f"it has {total_steps} ({config.num_epochs} epochs of {steps_per_epoch}); give a range "
        f"within 0-{total_steps}.")
  try:
    make_schedules(config.optim, total_steps, total_steps / num_phases)
  except ValueError as e:  # a schedule too short for this run (OneCycle needs 2 steps)
    raise ConfigError(
        f"{e} This run has {total_steps} training step{'s' * (total_steps != 1)} "
        f"({config.num_epochs} epochs of {steps_per_epoch}: batch_size {config.batch_size} over "
        f"{n_train} training images); raise num_epochs or data.fraction, or lower batch_size."
    ) from None
