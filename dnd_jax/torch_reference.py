"""PyTorch reference of dnd_jax's models and training steps, to time both frameworks side by side.

docs/design.md section 4 measures the speed claim "next to a PyTorch implementation of the same steps".
This module is that implementation, written the way a PyTorch user would (channels_last on a GPU, optional
bf16 autocast, optional torch.compile), and tests/test_torch_reference.py checks that one step of
it gives the same loss and the same updated parameters as dnd_jax, so a timing comparison is a
comparison of the same computation.

* Models: a torchvision-compatible ResNet18/34 (identical module and parameter names to
  `torchvision.models.resnet18/34`, so state_dicts are interchangeable), with a `cifar_stem`
  option (3x3 stride-1 conv1, max-pool replaced by `nn.Identity`) and `width`/`in_channels`
  options; `stages(x, first, last)` runs a range of the five stages, as in dnd_jax.
* Steps: teacher training (CE), vanilla KD, DnD and Progressive DnD (any partition of the five
  stages into contiguous groups, each group fed the detached teacher feature), with PyTorch's SGD
  and OneCycleLR / CyclicLR(triangular2) as docs/design.md section 2 sets them.

    step = make_torch_step("dnd", student, teacher, batch_size=128, total_steps=390 * 60)
    loss = step(images, labels)   # one optimiser step; returns the loss, detached
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NUM_STAGES = 5
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
# Paper Table 5: base lr and schedule per method (DnD / Progressive DnD 0.05, the others 0.01).
BASE_LR = {"dnd": 0.05, "pdnd": 0.05, "kd": 0.01, "teacher": 0.01}
SCHEDULE = {"dnd": "onecycle", "pdnd": "cyclic", "kd": "onecycle", "teacher": "onecycle"}
METHODS = tuple(BASE_LR)
# dnd_jax.configs.base_config's method defaults (the paper's reading; docs/design.md section 1).
METHOD_DEFAULTS = {"head_mse_on": "probs", "label_weight": 1.0, "hinton_weight": 0.0, "tau": 4.0,
                   "alpha": 0.9}


# --- models -------------------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  """torchvision's BasicBlock, with the same attribute names (conv1, bn1, relu, conv2, bn2,
  downsample)."""

  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(out + identity)


class ResNet(nn.Module):
  """torchvision's ResNet (BasicBlock only) plus width, input channels, the CIFAR stem, and
  `stages` for stage-wise distillation. Parameter names and initialisation are torchvision's."""

  num_stages = NUM_STAGES  # the stage interface's count, as dnd_jax's networks have it

  def __init__(self, layers: Sequence[int], num_classes: int = 1000, *, width: int = 64,
               in_channels: int = 3, cifar_stem: bool = False):
    super().__init__()
    self.inplanes = width
    self.cifar_stem = cifar_stem
    if cifar_stem:
      self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    else:
      self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(width, layers[0])
    self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
    self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def stage(self, k: int, x: torch.Tensor) -> torch.Tensor:
    """Stage k of docs/design.md section 1 (1: stem + layer1, 2-4: layer2-4, 5: pool + fc)."""
    if k == 1:
      return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
    if k in (2, 3, 4):
      return getattr(self, f"layer{k}")(x)
    if k == NUM_STAGES:
      return self.fc(torch.flatten(self.avgpool(x), 1))
    raise ValueError(f"Stage {k} is not within 1..{NUM_STAGES}.")

  def stages(self, x: torch.Tensor, first: int = 1, last: int = NUM_STAGES) -> list[torch.Tensor]:
    """Outputs of stages first..last, given the input of stage `first`."""
    if not 1 <= first <= last <= NUM_STAGES:
      raise ValueError(f"Stage range {first}..{last} is not within 1..{NUM_STAGES}.")
    outputs = []
    for k in range(first, last + 1):
      x = self.stage(k, x)
      outputs.append(x)
    return outputs

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.stages(x)[-1]


def resnet18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
  return ResNet(STAGE_SIZES[18], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
  return ResNet(STAGE_SIZES[34], num_classes, **kwargs)


def build_resnet(depth: int, num_classes: int, *, width: int = 64, stem: str = "cifar",
                 in_channels: int = 3) -> ResNet:
  """The PyTorch twin of `dnd_jax.models.ResNet(depth, num_classes, width, stem)`."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"ResNet depth {depth} is not supported; use one of {sorted(STAGE_SIZES)}.")
  if stem not in ("cifar", "imagenet"):
    raise ValueError(f"Unknown stem {stem!r}; use 'cifar' or 'imagenet'.")
  return ResNet(STAGE_SIZES[depth], num_classes, width=width, in_channels=in_channels,
                cifar_stem=stem == "cifar")


def from_variables(variables: Mapping) -> ResNet:
  """A PyTorch ResNet holding dnd_jax variables (exactly; see dnd_jax.torch_bridge)."""
  from dnd_jax import torch_bridge  # noqa: PLC0415 (no JAX code at the reference's top)

  arch = torch_bridge.variables_architecture(variables)
  model = build_resnet(arch["depth"], arch["num_classes"], width=arch["width"], stem=arch["stem"],
                       in_channels=arch["in_channels"])
  model.load_state_dict(torch_bridge.variables_to_torch_state_dict(variables), strict=True)
  return model


# --- losses (dnd_jax.losses / dnd_jax.methods in PyTorch) ---------------------------------------


def hinton_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
  """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), batch mean (Hinton et al. 2015)."""
  return F.kl_div(F.log_softmax(student_logits.float() / tau, dim=-1),
                  F.log_softmax(teacher_logits.float() / tau, dim=-1), reduction="batchmean",
                  log_target=True) * tau ** 2


def dnd_group_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor,
                   is_head: bool, cfg: Mapping[str, Any]) -> torch.Tensor:
  """`dnd_jax.methods.dnd_loss`: MSE to the teacher's stage output; at the head, MSE on softmax
  probabilities (or logits) plus the labels' CE and the optional Hinton term."""
  s, t = student_out.float(), teacher_out.float()
  if is_head and cfg["head_mse_on"] == "probs":
    loss = F.mse_loss(F.softmax(s, dim=-1), F.softmax(t, dim=-1))
  else:
    loss = F.mse_loss(s, t)
  if is_head:
    loss = loss + cfg["label_weight"] * F.cross_entropy(s, labels)
    if cfg["hinton_weight"]:
      loss = loss + cfg["hinton_weight"] * hinton_kl(s, t, cfg["tau"])
  return loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            cfg: Mapping[str, Any]) -> torch.Tensor:
  """(1 - alpha) * CE + alpha * tau^2 * KL (Hinton et al. 2015), as dnd_jax.methods.kd_loss."""
  ce = F.cross_entropy(student_logits.float(), labels)
  return (1.0 - cfg["alpha"]) * ce + cfg["alpha"] * hinton_kl(student_logits, teacher_logits,
                                                              cfg["tau"])


# --- optimiser (docs/design.md section 2) ---------------------------------------------------------------


def make_torch_optimizer(parameters, *, schedule: str, lr: float, total_steps: int,
                         phase_steps: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                         max_lr_factor: float = 10.0, base_lr_factor: float = 3e-3,
                         pct_start: float = 0.3, div_factor: float = 25.0,
                         final_div_factor: float = 1e4, base_momentum: float | None = None,
                         max_momentum: float | None = None, cycle_momentum: bool = True,
                         ) -> tuple[torch.optim.SGD, Any]:
  """SGD (momentum 0.9, coupled weight decay) and its per-step scheduler (None for "constant").

  OneCycleLR: max_lr = 10 x lr over total_steps, PyTorch's defaults otherwise. CyclicLR
  (triangular2): base_lr = 3e-3 x lr, max_lr = 10 x lr, one triangle per Progressive-DnD phase
  (step_size_up = phase_steps / 2). Momentum ranges default to PyTorch's (0.85-0.95 for
  OneCycleLR, 0.8-0.9 for CyclicLR).
  """
  optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
  if schedule == "onecycle":
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr_factor * lr, total_steps=total_steps, pct_start=pct_start,
        anneal_strategy="cos", div_factor=div_factor, final_div_factor=final_div_factor,
        cycle_momentum=cycle_momentum,
        base_momentum=0.85 if base_momentum is None else base_momentum,
        max_momentum=0.95 if max_momentum is None else max_momentum)
  elif schedule == "cyclic":
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=base_lr_factor * lr, max_lr=max_lr_factor * lr,
        step_size_up=phase_steps / 2.0, mode="triangular2", cycle_momentum=cycle_momentum,
        base_momentum=0.8 if base_momentum is None else base_momentum,
        max_momentum=0.9 if max_momentum is None else max_momentum)
  elif schedule == "constant":
    scheduler = None
  else:
    raise ValueError(f"Unknown schedule {schedule!r}; use 'onecycle', 'cyclic' or 'constant'.")
  return optimizer, scheduler


def optim_kwargs(optim_config: Mapping[str, Any]) -> dict:
  """`make_torch_optimizer` keyword arguments from a dnd_jax `config.optim` block."""
  keys = ("schedule", "lr", "momentum", "weight_decay", "max_lr_factor", "base_lr_factor",
          "pct_start", "div_factor", "final_div_factor", "base_momentum", "max_momentum",
          "cycle_momentum")
  return {k: optim_config[k] for k in keys if k in optim_config}


# --- training steps -----------------------------------------------------------------------------


def method_partitions(method: str, num_stages: int = NUM_STAGES,
                      ) -> list[tuple[float, tuple[tuple[int, int], ...]]]:
  """(start fraction, partition) of each phase for networks of `num_stages` stages: the same data
  as dnd_jax.methods."""
  from dnd_jax.methods import get_method  # noqa: PLC0415 (no JAX code at the reference's top)

  return list(get_method(method).for_stages(num_stages).phases)


class TorchStep:
  """One optimiser step of a method on a batch: `step(images, labels) -> loss` (detached).

  The teacher runs in eval mode under no_grad (frozen BatchNorm statistics); the student in train
  mode. For DnD-style methods each group of the partition runs the student's stages on the
  detached teacher feature at its input, and the group losses are summed before one backward
  pass. With `phase=None` the partition follows the step count through the method's phases
  (Progressive DnD switches at 1/3 and 2/3 of `total_steps`); an int fixes one phase, and
  `groups` fixes any partition.

  `channels_last` defaults to the student's device: on a GPU it is what a PyTorch user would time;
  on the CPU (torch 2.13.0+cpu) the channels-last kernels at these tiny widths give a different
  loss on every call from the same seed and, single-threaded, corrupted the heap inside
  `optimizer.step()`, so the CPU computes in the contiguous layout.
  """

  def __init__(self, method: str, student: ResNet, teacher: ResNet | None, batch_size: int, *,
               total_steps: int, phase: int | None = None,
               groups: Sequence[tuple[int, int]] | None = None, phase_steps: float | None = None,
               optim: Mapping[str, Any] | None = None,
               method_config: Mapping[str, Any] | None = None, channels_last: bool | None = None,
               bf16: bool = False, compile: bool = False, compile_mode: str | None = None):
    if method not in METHODS:
      raise ValueError(f"The PyTorch reference has no method {method!r}; use one of {METHODS}.")
    if method != "teacher" and teacher is None:
      raise ValueError(f"Method {method!r} needs a teacher.")
    self.method, self.student, self.teacher = method, student, teacher
    self.batch_size = int(batch_size)
    self.total_steps = int(total_steps)
    self.phases = method_partitions(method, student.num_stages)
    self.phase = phase
    self.groups = tuple(tuple(g) for g in groups) if groups is not None else None
    self.cfg = {**METHOD_DEFAULTS, **{k: method_config[k] for k in METHOD_DEFAULTS
                                      if method_config is not None and k in method_config}}
    if channels_last is None:  # a GPU speed option; see the class docstring
      channels_last = next(student.parameters()).device.type == "cuda"
    self.channels_last, self.bf16 = channels_last, bf16
    self.compile, self.compile_mode = compile, compile_mode
    self.step_count = 0

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    student.to(memory_format=memory_format).train()
    if teacher is not None:
      teacher.to(memory_format=memory_format).eval()
      for p in teacher.parameters():
        p.requires_grad_(False)
    kwargs = {"schedule": SCHEDULE[method], "lr": BASE_LR[method], **dict(optim or {})}
    if phase_steps is None:
      phase_steps = self.total_steps / len(self.phases)
    self.optimizer, self.scheduler = make_torch_optimizer(
        student.parameters(), total_steps=self.total_steps, phase_steps=phase_steps, **kwargs)
    self._loss_fns: dict[tuple, Callable] = {}

  def partition(self, step: int) -> tuple[tuple[int, int], ...]:
    """The groups used at `step`."""
    if self.groups is not None:
      return self.groups
    if self.phase is not None:
      return tuple(self.phases[self.phase][1])
    starts = [int(round(frac * self.total_steps)) for frac, _ in self.phases]
    return tuple(self.phases[max(i for i, s in enumerate(starts) if s <= step)][1])

  def _autocast(self, device: torch.device):
    if not self.bf16:
      return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

  def _make_loss_fn(self, groups: tuple[tuple[int, int], ...]) -> Callable:
    student, teacher, cfg = self.student, self.teacher, self.cfg

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
      with self._autocast(images.device):
        if self.method == "teacher":
          return F.cross_entropy(student(images).float(), labels)
        if self.method == "kd":
          with torch.no_grad():
            teacher_logits = teacher(images)
          return kd_loss(student(images), teacher_logits, labels, cfg)
        with torch.no_grad():
          teacher_feats = teacher.stages(images)
        total = images.new_zeros((), dtype=torch.float32)
        for first, last in groups:
          inputs = images if first == 1 else teacher_feats[first - 2].detach()
          out = student.stages(inputs, first, last)[-1]
          total = total + dnd_group_loss(out, teacher_feats[last - 1], labels,
                                         last == student.num_stages, cfg)
        return total

    if self.compile:
      return torch.compile(loss_fn, mode=self.compile_mode, dynamic=False)
    return loss_fn

  def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if images.shape[0] != self.batch_size:
      raise ValueError(f"This step is built for batches of {self.batch_size} (torch.compile "
                       f"specialises on it); got {images.shape[0]}.")
    if self.channels_last:
      images = images.contiguous(memory_format=torch.channels_last)
    groups = self.partition(self.step_count)
    if groups not in self._loss_fns:
      self._loss_fns[groups] = self._make_loss_fn(groups)
    loss = self._loss_fns[groups](images, labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    if self.scheduler is not None:
      self.scheduler.step()
    self.step_count += 1
    return loss.detach()


def make_torch_step(method: str, student: ResNet, teacher: ResNet | None, batch_size: int,
                    **kwargs: Any) -> TorchStep:
  """`TorchStep(method, student, teacher, batch_size, **kwargs)`; see its docstring."""
  return TorchStep(method, student, teacher, batch_size, **kwargs)


def build_models(depth: int = 18, teacher_depth: int = 34, num_classes: int = 100, *,
                 width: int = 64, stem: str = "cifar", in_channels: int = 3,
                 device: str | torch.device = "cpu", seed: int = 0) -> tuple[ResNet, ResNet]:
  """A freshly initialised (student, teacher) pair on `device`, as the benchmark times them."""
  torch.manual_seed(seed)
  student = build_resnet(depth, num_classes, width=width, stem=stem, in_channels=in_channels)
  teacher = build_resnet(teacher_depth, num_classes, width=width, stem=stem,
                         in_channels=in_channels)
  return student.to(device), teacher.to(device)
