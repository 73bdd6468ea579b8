"""The shared config skeleton that every `configs/*.py` file starts from, and config-file loading.

A config file is `get_config(arg=None) -> ml_collections.ConfigDict`; it calls `base_config` with
its data set and method and changes what differs (the paper's Table 5 values are the defaults
here). Fields are documented where they are defined.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from dnd_jax.data import default_data_config

# Paper Table 5: base lr 0.05 for DnD / Progressive DnD, 0.01 for the others; batch 128 (CIFAR-100)
# and 64 (Imagewoof); Fashion-MNIST (not in the paper) uses CIFAR's batch.
BASE_LR = {"dnd": 0.05, "pdnd": 0.05, "kd": 0.01, "at": 0.01, "jacobian": 0.01, "teacher": 0.01}
BATCH_SIZE = {"cifar100": 128, "imagewoof": 64, "fashion_mnist": 128}
STEM = {"cifar100": "cifar", "imagewoof": "imagenet", "fashion_mnist": "cifar"}
SHORT_NAME = {"cifar100": "cifar", "imagewoof": "imagewoof", "fashion_mnist": "fashion"}


def base_config(dataset: str, method: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 60
  c.batch_size = BATCH_SIZE[dataset]
  c.eval_batch_size = 500
  # Training steps per dispatch (a lax.scan in one compiled call): > 1 hides the host's per-step
  # overhead where the device outruns it (GPU, TPU; keep 1 on a CPU, see steps.repeat_steps);
  # steps before an epoch or phase end that do not fill a dispatch run one at a time (a second
  # compiled step).
  c.steps_per_dispatch = 1
  c.data = default_data_config(dataset)

  # The network being trained: the student, or the teacher itself for method "teacher".
  c.model = ml_collections.ConfigDict()
  c.model.depth = 34 if method == "teacher" else 18
  c.model.width = 64
  c.model.stem = STEM[dataset]
  c.model.dtype = "float32"  # "bfloat16": bf16 compute, fp32 parameters, statistics and losses

  # The frozen teacher: where its exported model lives, and the config that trains it when it
  # is missing (a path to a config file, optionally "file.py:arg"); "" means never train it here.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.depth = 34
  c.teacher.width = 64
  c.teacher.stem = STEM[dataset]
  c.teacher.checkpoint = f"runs/teacher_{SHORT_NAME[dataset]}/model"
  c.teacher.config = f"configs/teacher_{SHORT_NAME[dataset]}.py"

  c.method = ml_collections.ConfigDict()
  c.method.name = method
  c.method.head_mse_on = "probs"  # DnD head MSE on softmax probabilities (Table 4) or "logits"
  c.method.label_weight = 1.0     # weight of the head's CE with the labels (paper Eq. 4)
  c.method.hinton_weight = 0.0    # optional tau^2 * KL term at the DnD head
  c.method.tau = 4.0              # temperature (KD; DnD's optional Hinton term)
  c.method.alpha = 0.9            # vanilla KD: (1 - alpha) * CE + alpha * tau^2 * KL
  c.method.beta = 1000.0          # AT: CE + beta / 2 * sum of AT terms
  # Jacobian+CE weight lambda; see README "Jacobian matching" for where this value comes from.
  c.method.jacobian_weight = 1.0
  c.method.memory_lean = False    # DnD: update groups one after another (lower peak memory)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = BASE_LR[method]
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cyclic" if method == "pdnd" else "onecycle"
  c.optim.cycle_momentum = True
  c.optim.max_lr_factor = 10.0     # max_lr = 10 x lr (both schedules)
  c.optim.base_lr_factor = 3e-3    # CyclicLR base_lr = 3e-3 x lr
  c.optim.pct_start = 0.3          # OneCycleLR's PyTorch defaults from here on
  c.optim.div_factor = 25.0
  c.optim.final_div_factor = 1e4
  # PyTorch's momentum range: OneCycleLR 0.85-0.95, CyclicLR 0.8-0.9.
  c.optim.base_momentum = 0.8 if method == "pdnd" else 0.85
  c.optim.max_momentum = 0.9 if method == "pdnd" else 0.95

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_epochs = 1
  c.checkpoint.keep = 3

  c.log = ml_collections.ConfigDict()
  c.log.progress_bar = True
  c.log.refresh_steps = 25  # host reads the running metrics this often (progress bar, TensorBoard)
  c.log.tensorboard = True  # event files in <workdir>/tensorboard (needs tensorboardX), see tb.py
  c.log.profile_steps = ""  # e.g. "10-15": jax.profiler trace of those steps, see profiling.py
  return c


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Load "path/to/config.py" or "path/to/config.py:arg" as ml_collections' config flags do.

  A relative path is looked up from the current folder, then from the repository's configs/.
  """
  path, _, arg = spec.partition(":")
  candidates = [path, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"Config file {path!r} not found (looked in {candidates}).")
  module_spec = importlib.util.spec_from_file_location(f"_dnd_config_{abs(hash(found))}", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
