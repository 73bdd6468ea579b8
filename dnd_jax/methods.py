"""Training methods as data: a stage partition per phase, and one loss per group of stages.

docs/design.md section 1: every method (DnD, Progressive DnD, vanilla KD, AT+CE, Jacobian+CE, teacher
training) is a partition of the network's N stages (five for the paper's ResNets, four or five for
the other families) into contiguous groups plus a loss for each group. The trainer runs each
group's student stages on the *stopped teacher feature* at the group's input, sums the group
losses, and so every student parameter gets its gradient from its own group alone.

A method's partitions are a function of N (`Method.partitions`); a run resolves them once for
its networks (`Method.for_stages`), and everything downstream reads the resolved `phases`.

A `Method` also carries everything else that differs between methods, so that no other module
tests a method's name: its defaults (base learning rate, schedule and momentum range of paper
Table 5, the depth of the network it trains), its own fields of `config.method` with their
defaults, what it needs (a teacher, the whole student in its loss), which stages it trains, and
its label in reports.

To add a method: write its group loss (a function of `GroupOutputs` and `config.method` that
returns `(loss, metrics)`), call `register(Method(...))` with it (here, or in your own module
before the config is built), and write a config file that calls `base_config(data, name)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from dnd_jax import losses

Group = tuple[int, int]  # (first stage, last stage), both inclusive
Phases = tuple[tuple[float, tuple[Group, ...]], ...]  # (start as a fraction of training, partition)
PAPER_STAGES = 5  # the paper's ResNets': what a method not resolved for a network describes


@dataclasses.dataclass(frozen=True)
class GroupOutputs:
  """What a group loss can see. `student` holds this group's stage outputs (stages first..last);
  `teacher` the N teacher stage outputs, of which a loss may read only stages up to `last`: the
  memory-lean step computes the teacher stage by stage and leaves the later entries None
  (`teacher` is None when there is no teacher). `teacher_out`, the group's target, is teacher
  stage `last`'s output, or where the two networks' shapes differ after it, that output in the
  student's space (`adapted_target`: through the next stage's adapter, dnd_jax.adapters)."""

  first: int
  last: int
  num_stages: int  # N, the networks' stage count: stage N is the head (the logits)
  student: tuple
  teacher: tuple | None
  labels: jax.Array
  images: jax.Array
  student_logits_fn: Callable | None = None  # images -> logits, the whole student (training mode)
  teacher_logits_fn: Callable | None = None  # images -> logits, the frozen teacher
  adapted_target: jax.Array | None = None  # teacher_out in the student's shape, where they differ

  @property
  def is_head(self) -> bool:
    return self.last == self.num_stages

  @property
  def student_out(self):
    return self.student[-1]

  @property
  def teacher_out(self):
    return self.teacher[self.last - 1] if self.adapted_target is None else self.adapted_target


GroupLoss = Callable[[GroupOutputs, "ml_collections.ConfigDict"], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A named method: its phases (start as a fraction of training, partition) as a function of
  the stage count N (`partitions`), its group loss, and its defaults and needs.

  `num_stages` is the N that `phases`, `partition` and the rest describe: the paper's 5 as
  registered, a run's networks' once resolved with `for_stages`.

  `config` holds the method's own fields of `config.method` with their defaults (every method
  also has `name` and `memory_lean`). `trained_stages` (None: all) are the stages it updates;
  the others stay frozen, parameters and BatchNorm statistics alike, and the run starts from the
  trained network at `config.method.init_from` with the trained stages re-initialised
  (`dnd_jax.freeze`).
  """

  name: str
  partitions: Callable[[int], Phases]  # N -> phases, each partition tiling stages 1..N
  group_loss: GroupLoss
  label: str = ""                  # in reports; the name when empty
  config: dict = dataclasses.field(default_factory=dict)
  needs_teacher: bool = True
  needs_whole_student: bool = False  # its loss runs the whole student (no memory_lean)
  student_depth: int = 18          # depth of the network it trains
  base_lr: float = 0.01            # paper Table 5
  schedule: str = "onecycle"       # optim.schedule: "onecycle", "cyclic" or "constant"
  momentum_range: tuple[float, float] = (0.85, 0.95)  # PyTorch's: OneCycleLR 0.85-0.95
  paper_name: str | None = None    # its rows in the paper's published results, if any
  trained_stages: tuple[int, ...] | None = None
  choices: dict = dataclasses.field(default_factory=dict)  # field -> the values it may take
  positive: tuple[str, ...] = ()   # number fields that must be above 0 (a temperature divides)
  num_stages: int = PAPER_STAGES

  def for_stages(self, num_stages: int) -> "Method":
    """This method for networks of `num_stages` stages (a ValueError when its partitions do not
    tile them); the registry's entry is resolved once per run."""
    resolved = dataclasses.replace(self, num_stages=int(num_stages))
    for _, groups in resolved.phases:
      if not tiles_all_stages(groups, resolved.num_stages):
        raise ValueError(f"Method {self.name!r}: groups {groups} do not tile stages "
                         f"1..{resolved.num_stages} in order.")
    return resolved

  @property
  def phases(self) -> Phases:
    return self.partitions(self.num_stages)

  def phase_starts(self, total_steps: int) -> list[int]:
    """First step of each phase; `round` keeps 1/3 of 300 at 100, not 99."""
    return [int(round(frac * total_steps)) for frac, _ in self.phases]

  def phase_at(self, step: int, total_steps: int) -> int:
    starts = self.phase_starts(total_steps)
    return max(i for i, s in enumerate(starts) if s <= step)

  def stage_boundaries(self) -> list[int]:
    """The stages after which some group hands over to the next: where the student's features
    are matched to the teacher's, so the two networks' stage shapes must agree."""
    return sorted({last for _, groups in self.phases for _, last in groups})

  def partition(self, phase: int) -> tuple[Group, ...]:
    return self.phases[phase][1]

  @property
  def display_name(self) -> str:
    return self.label or self.name

  def config_problems(self, cfg) -> list[str]:
    """Every reason this method cannot run with the `config.method` block `cfg` (none: it can),
    each a line that says what to set; `config_check` reports them all at once."""
    missing = sorted(set(self.config) - set(cfg.keys()))
    if missing:  # the fields below would only repeat it
      return [f"config.method lacks {', '.join(missing)}, which method {self.name!r} needs: build "
              f"the config with base_config(<data>, {self.name!r}) rather than changing "
              "method.name."]
    problems = []
    if self.needs_whole_student and cfg.get("memory_lean", False):
      problems.append(f"Method {self.name!r} runs the whole student in its loss, which cannot "
                      "be split by group: set config.method.memory_lean=False.")
    for field, allowed in self.choices.items():
      if cfg.get(field) not in allowed:
        problems.append(f"config.method.{field}={cfg.get(field)!r}: use one of {list(allowed)}.")
    for field, default in self.config.items():  # its numbers (a NaN weight ends a run late)
      value = cfg.get(field)
      if not isinstance(default, float) or (
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (field not in self.positive or value > 0)):
        continue
      what = "a finite number above 0" if field in self.positive else "a finite number"
      problems.append(f"config.method.{field}={value!r} must be {what}.")
    if self.trained_stages is not None and not cfg.get("init_from"):
      problems.append(f"Method {self.name!r} retrains stages {self.trained_stages} of a trained "
                      "network: set config.method.init_from to its exported model folder "
                      "(<workdir>/model).")
    return problems

  def check_config(self, cfg) -> None:
    """A ValueError with every problem of `config_problems`, for callers outside config_check."""
    problems = self.config_problems(cfg)
    if problems:
      raise ValueError(" ".join(problems))


# --- group losses -------------------------------------------------------------------------------


def dnd_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Paper Eq. 3 for every group, plus Eq. 4 (labels) and an optional Hinton term at the head.

  The head's MSE compares softmax probabilities by default, as Table 4 puts the softmax inside
  stage 5 (`cfg.head_mse_on = "probs"`); "logits" compares the logits instead.
  """
  s, t = g.student_out, g.teacher_out
  tag = f"{g.first}" if g.first == g.last else f"{g.first}-{g.last}"
  metrics = {}
  if g.is_head:
    if cfg.head_mse_on == "probs":
      feature_loss = losses.mse(jax.nn.softmax(s), jax.nn.softmax(t))
    else:  # "logits" (check_config allows no other value)
      feature_loss = losses.mse(s, t)
  else:
    feature_loss = losses.mse(s, t)
  metrics[f"mse_{tag}"] = feature_loss
  loss = feature_loss
  if g.is_head:
    ce = losses.cross_entropy(s, g.labels)
    metrics["ce"] = ce
    loss = loss + cfg.label_weight * ce
    if cfg.hinton_weight:
      kl = losses.hinton_kl(s, t, cfg.tau)
      metrics["kl"] = kl
      loss = loss + cfg.hinton_weight * kl
  return loss, metrics


def ce_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Plain cross-entropy: teacher training."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  return ce, {"ce": ce}


def kd_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Hinton et al. (2015): (1 - alpha) * CE + alpha * tau^2 * KL(teacher || student)."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  kl = losses.hinton_kl(g.student_out, g.teacher_out, cfg.tau)
  return (1.0 - cfg.alpha) * ce + cfg.alpha * kl, {"ce": ce, "kl": kl}


def at_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Zagoruyko & Komodakis (2016): CE + beta / 2 * sum of the AT terms after the body stages
  1..N-1 (1-4 in the paper's ResNets), each at the student's spatial size."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  at_terms = [losses.attention_transfer(g.student[k - g.first], g.teacher[k - 1])
              for k in range(max(g.first, 1), min(g.last, g.num_stages - 1) + 1)]
  at = sum(at_terms)
  return ce + cfg.beta / 2.0 * at, {"ce": ce, "at": at}


def jacobian_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Srinivas & Fleuret (2018): CE + lambda * ||normalised d s_y/dx - normalised d t_y/dx||^2.

  `cfg.jacobian_reduction` sums the squared difference over the input's elements or averages it
  (the public implementation's form, with its lambda 20 as the default; docs/running.md,
  "Jacobian matching").

  The student's input gradient depends on its parameters, so the loss's gradient is a
  second-order backward pass (the paper's Table 2 shows it about 3x slower than KD).
  """
  ce = losses.cross_entropy(g.student_out, g.labels)
  student_grad = losses.true_class_input_gradient(g.student_logits_fn, g.images, g.labels)
  teacher_grad = jax.lax.stop_gradient(
      losses.true_class_input_gradient(g.teacher_logits_fn, g.images, g.labels))
  jac = losses.jacobian_matching(student_grad, teacher_grad, cfg.jacobian_reduction)
  return ce + cfg.jacobian_weight * jac, {"ce": ce, "jacobian": jac}


def reinit_feature_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Figure 2a "feature": MSE between the re-initialised stage's output and the trained network's
  own output of that stage (the teacher here is the trained network), on the trained network's
  features at the stage's input. Groups without the stage add nothing (they are frozen)."""
  k = REINIT_STAGE
  if not g.first <= k <= g.last:
    return jnp.zeros((), jnp.float32), {}
  mse = losses.mse(g.student[k - g.first], g.teacher[k - 1])
  return mse, {f"mse_{k}": mse}


# --- the registry -------------------------------------------------------------------------------


def one_group(n: int) -> Phases:
  """The whole network as one group {1..N}: teacher training, KD, AT+CE, Jacobian+CE."""
  return ((0.0, ((1, n),)),)


def every_stage(n: int) -> Phases:
  """DnD: every stage its own group {1}{2}..{N}."""
  return ((0.0, tuple((k, k) for k in range(1, n + 1))),)


def progressive(n: int) -> Phases:
  """Progressive DnD: the body stages 1..N-1 start as groups of one; each phase merges the
  previous phase's body groups in neighbouring pairs, until one group holds them all; the head
  stays its own group throughout, and the phases start at equal fractions of training. For the
  paper's N = 5: {1}{2}{3}{4}{5}, {1,2}{3,4}{5} at 1/3, {1-4}{5} at 2/3; for N = 4: {1}{2}{3}{4},
  {1,2}{3}{4} at 1/3, {1-3}{4} at 2/3."""
  body, size, partitions = n - 1, 1, []
  while True:
    groups = tuple((first, min(first + size - 1, body)) for first in range(1, body + 1, size))
    partitions.append(groups + ((n, n),))
    if len(groups) <= 1:
      break
    size *= 2
  return tuple((i / len(partitions), groups) for i, groups in enumerate(partitions))


def reinit_split(n: int) -> Phases:
  """Figure 2a "feature": the trained stages before the re-initialised one, and it with the
  rest (frozen) after it."""
  return ((0.0, ((1, REINIT_STAGE - 1), (REINIT_STAGE, n))),)


REINIT_STAGE = 3  # Figure 2a re-initialises the third stage
_DND_CONFIG = {
    "head_mse_on": "probs",  # head MSE on softmax probabilities (Table 4) or "logits"
    "label_weight": 1.0,     # weight of the head's CE with the labels (paper Eq. 4)
    "hinton_weight": 0.0,    # optional tau^2 * KL term at the head
    "tau": 4.0,              # temperature of that term
}
_DND_CHOICES = {"head_mse_on": ("probs", "logits")}
_REINIT_CONFIG = {"init_from": ""}  # the trained network's exported model folder (<workdir>/model)

METHODS: dict[str, Method] = {}


def tiles_all_stages(groups: tuple[Group, ...], num_stages: int) -> bool:
  """True when the groups tile stages 1..num_stages in order, which every method must."""
  expected = 1
  for first, last in groups:
    if first != expected or last < first:
      return False
    expected = last + 1
  return expected == num_stages + 1


def register(method: Method) -> Method:
  """Add a method to the registry, checked for the paper's five stages (every phase's groups
  tile them; `Method.for_stages` checks a run's stage count)."""
  method.for_stages(PAPER_STAGES)
  METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; config.method.name must be one of {sorted(METHODS)}.")
  return METHODS[name]


register(Method("teacher", one_group, ce_loss, label="Teacher (cross-entropy)",
                needs_teacher=False, student_depth=34))
register(Method("kd", one_group, kd_loss, label="Vanilla KD",
                config={"tau": 4.0, "alpha": 0.9},  # (1 - alpha) * CE + alpha * tau^2 * KL
                positive=("tau",), paper_name="vanilla_kd"))
register(Method("at", one_group, at_loss, label="AT+CE",
                config={"beta": 1000.0},  # CE + beta / 2 * sum of AT terms
                paper_name="at_ce"))
register(Method("jacobian", one_group, jacobian_loss, label="Jacobian+CE",
                # lambda, and the squared difference of normalised input gradients summed ("sum")
                # or averaged ("mean") over the input's elements: lambda 20 on the mean is the one
                # public implementation's (docs/running.md, "Jacobian matching", says where it
                # comes from)
                config={"jacobian_weight": 20.0, "jacobian_reduction": "mean"},
                choices={"jacobian_reduction": losses.JACOBIAN_REDUCTIONS},
                needs_whole_student=True, paper_name="jacobian_ce"))
register(Method("dnd", every_stage, dnd_loss, label="DnD", config=_DND_CONFIG,
                choices=_DND_CHOICES, positive=("tau",), base_lr=0.05, paper_name="dnd"))
register(Method("pdnd", progressive, dnd_loss, label="Progressive DnD",
                config=_DND_CONFIG, choices=_DND_CHOICES, positive=("tau",), base_lr=0.05,
                schedule="cyclic",
                momentum_range=(0.8, 0.9),  # PyTorch's CyclicLR
                paper_name="pdnd"))
# Figure 2a: a trained ResNet18 with stage 3 re-initialised, trained alone (the rest frozen)
# on the trained stage's output ("feature") or on the labels through the whole network ("end2end").
register(Method("reinit_feature", reinit_split, reinit_feature_loss,
                label=f"R{REINIT_STAGE}-ResNet18 (feature)", config=_REINIT_CONFIG,
                trained_stages=(REINIT_STAGE,)))
register(Method("reinit_end2end", one_group, ce_loss,
                label=f"R{REINIT_STAGE}-ResNet18 (end2end)", config=_REINIT_CONFIG,
                needs_teacher=False, trained_stages=(REINIT_STAGE,)))
