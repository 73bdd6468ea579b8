"""The shared config skeleton that every config file starts from, the packaged configs, and loading.

The configs ship inside the package (`dnd_jax/configs/<method>_<data>.py`); the repository's
top-level `configs/` holds one-line files that import them, for `scripts/train.py --config`.

A config file is `get_config(arg=None) -> ml_collections.ConfigDict`; it calls `base_config` with
its data set and method and changes what differs (the paper's Table 5 values are the defaults
here). Fields are documented where they are defined.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from dnd_jax import runtime
from dnd_jax.data import default_data_config
from dnd_jax.methods import get_method

# Paper Table 5: batch 128 (CIFAR-100) and 64 (Imagewoof); Fashion-MNIST (not in the paper) uses
# CIFAR's batch. What differs by method (base lr, schedule, depth, its loss's fields) is the
# method's own (`dnd_jax.methods.Method`).
# ImageNet (not in the paper): Imagewoof's batch scaled by 4, torchvision's ImageNet batch.
BATCH_SIZE = {"cifar100": 128, "imagewoof": 64, "fashion_mnist": 128, "imagenet": 256}
STEM = {"cifar100": "cifar", "imagewoof": "imagenet", "fashion_mnist": "cifar",
        "imagenet": "imagenet"}
SHORT_NAME = {"cifar100": "cifar", "imagewoof": "imagewoof", "fashion_mnist": "fashion",
              "imagenet": "imagenet"}


def base_config(dataset: str, method: str) -> ml_collections.ConfigDict:
  m = get_method(method)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 60
  c.batch_size = BATCH_SIZE[dataset]
  c.eval_batch_size = 0  # 0: sized for the device's memory (steps.eval_batch_size)
  # Training steps per dispatch (a lax.scan in one compiled call): > 1 hides the host's per-step
  # overhead where the device outruns it (GPU, TPU; keep 1 on a CPU, see steps.repeat_steps);
  # steps before an epoch or phase end that do not fill a dispatch run one at a time (a second
  # compiled step).
  c.steps_per_dispatch = 1
  # XLA options of the compiled training steps (dnd_jax.runtime.compiler_options). The default
  # is XLA's own list of CUDA-graph commands; adding ",CONVOLUTION" puts the convolutions into
  # the graphs too (faster where cuDNN allows it: runtime.GPU_COMMAND_BUFFER says why it is not
  # the default), and "" turns CUDA graphs off.
  c.compiler_options = ml_collections.ConfigDict(
      {"xla_gpu_enable_command_buffer": runtime.GPU_COMMAND_BUFFER})
  c.data = default_data_config(dataset)

  # The network being trained: the student, or the teacher itself for method "teacher". `arch`
  # names a network of dnd_jax.models.ARCHS (docs/models.md: "resnet32x4", "shufflev2", ...),
  # with `arch_kwargs` its family's keyword arguments (e.g. {'widths': (4, 4, 8, 16)} for a small
  # CIFAR ResNet; empty: the published network); left empty, the network is the paper's ResNet
  # of `depth`, `width` and `stem`, which an `arch` ignores. A teacher and a student of any
  # architectures with the same number of stages make a pair; where their stage shapes differ,
  # stage adapters connect them (dnd_jax.adapters).
  c.model = ml_collections.ConfigDict()
  c.model.arch = ""
  c.model.arch_kwargs = ml_collections.ConfigDict()
  c.model.depth = m.student_depth
  c.model.width = 64
  c.model.stem = STEM[dataset]
  c.model.dtype = "float32"  # "bfloat16": bf16 compute, fp32 parameters, statistics and losses
  # Recompute each residual block in the backward pass instead of keeping its activations
  # (jax.checkpoint): lower peak memory for one more forward pass of the student's blocks.
  c.model.remat = False

  # The frozen teacher: where its exported model lives, and the config that trains it when it
  # is missing (a path to a config file, optionally "file.py:arg"); "" means never train it here.
  # Its architecture comes from its model.json; set `arch` (with `arch_kwargs`, as model's) or the
  # ResNet's depth, width and stem to check that, or to shape a teacher that a run trains (or
  # imports) for itself (see dnd_jax.teacher).
  c.teacher = ml_collections.ConfigDict()
  c.teacher.arch = ml_collections.FieldReference(None, field_type=str)
  c.teacher.arch_kwargs = ml_collections.ConfigDict()
  c.teacher.depth = ml_collections.FieldReference(None, field_type=int)
  c.teacher.width = ml_collections.FieldReference(None, field_type=int)
  c.teacher.stem = ml_collections.FieldReference(None, field_type=str)
  c.teacher.checkpoint = f"runs/teacher_{SHORT_NAME[dataset]}/model"
  c.teacher.config = f"configs/teacher_{SHORT_NAME[dataset]}.py"
  # A teacher whose model.json says it was trained on other inputs than this run's (another data
  # set, image size or normalisation) is an error unless this is True (dnd_jax.teacher).
  c.teacher.allow_other_inputs = False

  # The method's name, the shared switch below, then the method's own fields (see its `config`).
  c.method = ml_collections.ConfigDict()
  c.method.name = method
  c.method.memory_lean = False    # groups updated one after another (lower peak memory)
  c.method.update(dict(m.config))

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = m.base_lr
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = m.schedule
  c.optim.cycle_momentum = True
  c.optim.max_lr_factor = 10.0     # max_lr = 10 x lr (both schedules)
  c.optim.base_lr_factor = 3e-3    # CyclicLR base_lr = 3e-3 x lr
  c.optim.pct_start = 0.3          # OneCycleLR's PyTorch defaults from here on
  c.optim.div_factor = 25.0
  c.optim.final_div_factor = 1e4
  # the momentum range cycled by the schedule (PyTorch's: OneCycleLR 0.85-0.95, CyclicLR 0.8-0.9)
  c.optim.base_momentum, c.optim.max_momentum = m.momentum_range

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_epochs = 1
  # also every this many steps inside an epoch (0: at epoch ends alone): a run killed mid-epoch
  # then loses at most these steps, not the epoch (an epoch of ImageNet is hours on one GPU)
  c.checkpoint.every_steps = 0
  c.checkpoint.keep = 3

  c.log = ml_collections.ConfigDict()
  c.log.progress_bar = True
  c.log.refresh_steps = 25  # host reads the running metrics this often (progress bar, TensorBoard)
  c.log.tensorboard = True  # event files in <workdir>/tensorboard (needs tensorboardX), see tb.py
  c.log.profile_steps = ""  # e.g. "10-15": jax.profiler trace of those steps, see profiling.py
  return c


def imagenet_config(method: str, num_epochs: int) -> ml_collections.ConfigDict:
  """A streamed ImageNet run of `method` (configs/*_imagenet.py): the paper's Imagewoof setting
  scaled to ImageNet, that is the ImageNet stem, batch 256 and the paper's learning rate scaled by
  the batch (64 -> 256: x4, the README's rule), for `num_epochs` (mdistiller's ImageNet budget of
  100 for the students; torchvision's 90 for a teacher trained here)."""
  config = base_config("imagenet", method)
  config.num_epochs = num_epochs
  config.optim.lr *= config.batch_size / BATCH_SIZE["imagewoof"]
  return config


CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def config_path(name: str) -> str:
  """The packaged config file `name` (e.g. "pdnd_cifar"), readable after any install."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Load "path/to/config.py" or "path/to/config.py:arg" as ml_collections' config flags do.

  A relative path is looked up from the current folder, then among the packaged configs by its
  file name, so "configs/teacher_cifar.py" (the name every config uses for its teacher) resolves
  from any folder and after a non-editable install.
  """
  path, _, arg = spec.partition(":")
  candidates = [path] if os.path.isabs(path) else [path, os.path.join(CONFIG_DIR,
                                                                       os.path.basename(path))]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"Config file {path!r} not found (looked in {candidates}).")
  module_spec = importlib.util.spec_from_file_location(f"_dnd_config_{abs(hash(found))}", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
