"""The paper's experiments as named grids, and the scales that shrink them.

An experiment is a grid (arm x epoch budget x seed x data fraction x maximal learning rate, and,
for a table of teacher/student pairs, x pair) on one data set. An *arm* is one row of a table or
one curve of a figure: a method, how its config differs from the method's own, and optionally the
arm whose trained network it starts from (Figure 2a's re-initialised runs start from the naive
one). What the report shows is part of the
experiment (`sections`, `figures`), so nothing downstream branches on the kind of experiment.
"""

from __future__ import annotations

import dataclasses

from dnd_jax.methods import get_method


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row or curve: `method` (a registry name) with `overrides` on its config; `start_from`
  names the arm (same budget, seed and share) whose exported model this one starts from and,
  when the method needs a teacher, is taught by."""

  name: str
  method: str
  label: str = ""
  overrides: tuple[tuple[str, object], ...] = ()
  start_from: str | None = None

  @property
  def display(self) -> str:
    return self.label or get_method(self.method).display_name


def arms(*methods: str) -> tuple[Arm, ...]:
  """Plain arms: each method with its own config."""
  return tuple(Arm(m, m) for m in methods)


@dataclasses.dataclass(frozen=True)
class Pair:
  """A teacher and a student of `models.ARCHS`, each with its own teacher (trained per teacher
  architecture, or imported); written `teacher:student` on the command line."""

  teacher: str
  student: str

  @property
  def key(self) -> str:
    return f"{self.teacher}:{self.student}"

  @property
  def name(self) -> str:
    """`teacher-student`: the prefix of its runs' folders (the names hold no "-")."""
    return f"{self.teacher}-{self.student}"

  @property
  def display(self) -> str:
    return f"{self.teacher} -> {self.student}"


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One named grid. `paper` names the published figures it is compared with: (table number in
  the paper's results, data set of that table), or None where the paper has no numbers.
  `baseline` and `proposed` name the arms the paper's claims compare. `overrides` apply to
  every run of the grid (teacher excluded); a `max_lrs` entry sets optim.lr so that the
  schedule's maximum is that value (None: the method's own lr). `pairs`, when given, makes every
  cell once per pair (model.arch the pair's student, taught by a teacher of the pair's teacher
  architecture) instead of the data set's ResNet pair."""

  name: str
  dataset: str
  arms: tuple[Arm, ...]
  epochs: tuple[int, ...]
  seeds: tuple[int, ...]
  sections: tuple[str, ...] = ()  # names of its report's sections (`report.SECTIONS`)
  figures: tuple[str, ...] = ()  # names of its figures, their files' suffix (`report.FIGURES`)
  fractions: tuple[float, ...] = (1.0,)
  max_lrs: tuple[float | None, ...] = (None,)
  overrides: tuple[tuple[str, object], ...] = ()
  pairs: tuple[Pair, ...] = ()
  paper: tuple[int, str] | None = None
  title: str = ""
  baseline: str = "kd"
  proposed: tuple[str, ...] = ("dnd", "pdnd")
  # The grid this experiment is at a scale that shrinks it, keyed like the fields.
  grid_key: str = ""

  def arm(self, name: str) -> Arm:
    return next(a for a in self.arms if a.name == name)

  @property
  def arm_names(self) -> tuple[str, ...]:
    return tuple(a.name for a in self.arms)

  def label(self, arm_name: str) -> str:
    return self.arm(arm_name).display if arm_name in self.arm_names else arm_name

  def pair(self, name: str) -> Pair:
    return next(p for p in self.pairs if p.name == name)


@dataclasses.dataclass(frozen=True)
class Scale:
  """A way to shrink every experiment: config overrides for all runs (students and teacher), the
  teacher's own overrides and epochs, and replacement grids keyed by `Experiment.grid_key`."""

  name: str
  description: str
  overrides: dict
  teacher_epochs: int | None = None  # None: the teacher config file's num_epochs
  teacher_overrides: dict = dataclasses.field(default_factory=dict)
  grids: dict = dataclasses.field(default_factory=dict)
  # a pair grid's architectures: {name: family keyword arguments} (a name absent: the published
  # network), for the teacher and the student alike
  arch_kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One grid cell. `fraction` is relative to the data.fraction the scale sets (1.0 = all of it);
  `pair` is a `Pair.name` in a pair grid, "" elsewhere."""

  method: str  # the arm's name
  epochs: int
  seed: int
  fraction: float = 1.0
  max_lr: float | None = None
  pair: str = ""

  @property
  def name(self) -> str:
    return run_name(self.method, self.epochs, self.seed, self.fraction, self.max_lr, self.pair)


def run_name(arm: str, epochs: int, seed: int, fraction: float = 1.0,
             max_lr: float | None = None, pair: str = "") -> str:
  """`[<pair>_]<arm>_e<epochs>_f<fraction>[_lr<max lr>]_s<seed>`, e.g. `pdnd_e60_f0.2_s1` or
  `wrn40_2-wrn16_2_kd_e240_f1_s0`; the workdir's name."""
  lr = f"_lr{float(max_lr):g}" if max_lr is not None else ""
  return f"{pair + '_' if pair else ''}{arm}_e{int(epochs)}_f{float(fraction):g}{lr}_s{int(seed)}"


def expand(experiment: Experiment) -> list[RunSpec]:
  """Every cell of the grid, ordered seed by seed, pair by pair and cheap budgets first (so that an
  interrupted grid has whole seeds, and whole pairs, of results), arms in their order (so a
  start_from arm comes first)."""
  return [RunSpec(arm.name, epochs, seed, fraction, lr, pair)
          for seed in experiment.seeds
          for pair in [p.name for p in experiment.pairs] or [""]
          for fraction in sorted(experiment.fractions)
          for epochs in sorted(experiment.epochs)
          for lr in experiment.max_lrs
          for arm in experiment.arms]


# --- the experiments ----------------------------------------------------------------------------

METHODS = ("kd", "at", "jacobian", "dnd", "pdnd")
_BUDGETS = dict(sections=("budgets",), figures=("curves", "budgets"))
_FRACTIONS = dict(sections=("fractions",), figures=("fractions",))
_CURVES = dict(sections=("curves",), figures=("curves",))
_LRS = dict(sections=("lr",), figures=("lr",))

# Figure 2a: a ResNet18 trained with cross-entropy, then stage 3 re-initialised and retrained.
_STAGEWISE_ARMS = (
    Arm("naive", "teacher", "ResNet18 (naive)", (("model.depth", 18),)),
    Arm("feature", "reinit_feature", start_from="naive"),
    Arm("end2end", "reinit_end2end", start_from="naive"),
)
# Figures 2b and 3 train every method under OneCycle (PyTorch's momentum range for it).
_ONECYCLE = (("optim.schedule", "onecycle"), ("optim.base_momentum", 0.85),
             ("optim.max_momentum", 0.95))

_PAPER_BUDGETS = (60, 100, 200)
_PAPER_FIG4 = (20, 40, 60, 100, 150, 200)
_PAPER_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
# The paper names no grid of Figure 3's maximal learning rates in the text read here; these
# bracket the two it uses (0.1 for the baselines, 0.5 for DnD: 10 x the Table 5 base lr).
_FIG3_LRS = (0.05, 0.1, 0.2, 0.5, 1.0)
# Fashion-MNIST is not in the paper. Its full-size grids divide the paper's epoch budgets by ten
# (the project's Fashion-MNIST configs train students for 20 epochs, the teacher for 30).
_FASHION_BUDGETS = (6, 10, 20)
_FASHION_FIG4 = (2, 4, 6, 10, 15, 20)

# The CIFAR-100 distillation benchmark's teacher -> student pairs (the table of
# megvii-research/mdistiller's README, the pairs of HobbitLong/RepDistiller), in its order; their
# published vanilla-KD figures are pairs_published.csv. Those were trained for 240 epochs.
CIFAR100_PAIRS = tuple(Pair(*p.split(":")) for p in (
    "resnet56:resnet20", "resnet110:resnet32", "resnet32x4:resnet8x4", "wrn40_2:wrn16_2",
    "wrn40_2:wrn40_1", "vgg13:vgg8", "resnet32x4:shufflev1", "wrn40_2:shufflev1",
    "vgg13:mobilenetv2", "resnet50_cifar:mobilenetv2", "resnet32x4:shufflev2"))
_PAIR_BUDGETS = (240,)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("table1_imagewoof", "imagewoof", arms(*METHODS), _PAPER_BUDGETS, (0, 1, 2),
               paper=(1, "imagewoof"), grid_key="table", **_BUDGETS,
               title="Table 1: Imagewoof, ResNet34 -> ResNet18, 60/100/200 epochs"),
    Experiment("table2_cifar100", "cifar100", arms(*METHODS), _PAPER_BUDGETS, (0, 1, 2),
               paper=(2, "cifar100"), grid_key="table", **_BUDGETS,
               title="Table 2: CIFAR-100, ResNet34 -> ResNet18, 60/100/200 epochs"),
    # The paper gives Table 3 without a spread, so one seed; 200 epochs at every fraction.
    Experiment("table3_data_efficiency", "cifar100", arms(*METHODS), (200,), (0,),
               fractions=_PAPER_FRACTIONS, paper=(3, "cifar100"), grid_key="fractions",
               **_FRACTIONS,
               title="Table 3: data efficiency on CIFAR-100, 20-100% of the data, 200 epochs"),
    Experiment("figure4_epochs", "cifar100", arms(*METHODS), _PAPER_FIG4, (0,),
               paper=(2, "cifar100"), grid_key="epochs", **_BUDGETS,
               title="Figure 4: CIFAR-100 accuracy against the epoch budget"),
    Experiment("figure2a_stagewise_consistency", "cifar100", _STAGEWISE_ARMS, (200,), (0,),
               grid_key="stagewise", **_CURVES,
               title="Figure 2a: stagewise consistency (ResNet18, stage 3 re-initialised)"),
    Experiment("figure2b_convergence", "cifar100", arms(*METHODS), (200,), (0,),
               max_lrs=(0.1,), overrides=_ONECYCLE, grid_key="convergence", **_CURVES,
               title="Figure 2b: convergence of every method, OneCycle with max lr 0.1"),
    Experiment("figure3_lr_tuning", "cifar100", arms("kd", "dnd"), (200,), (0,),
               max_lrs=_FIG3_LRS, overrides=_ONECYCLE, grid_key="lr", **_LRS,
               title="Figure 3: learning-rate tuning, DnD and vanilla KD under OneCycle"),
    Experiment("table2_fashion", "fashion_mnist", arms(*METHODS), _FASHION_BUDGETS, (0, 1, 2),
               paper=(2, "cifar100"), grid_key="table", **_BUDGETS,
               title="Tables 1-2 grid on Fashion-MNIST (not in the paper)"),
    Experiment("table3_fashion", "fashion_mnist", arms(*METHODS), (20,), (0,),
               fractions=_PAPER_FRACTIONS, paper=(3, "cifar100"), grid_key="fractions",
               **_FRACTIONS,
               title="Table 3 grid (data efficiency) on Fashion-MNIST (not in the paper)"),
    Experiment("figure4_fashion", "fashion_mnist", arms(*METHODS), _FASHION_FIG4, (0,),
               paper=(2, "cifar100"), grid_key="epochs", **_BUDGETS,
               title="Figure 4 grid (accuracy against epoch budget) on Fashion-MNIST"),
    Experiment("figure2a_fashion", "fashion_mnist", _STAGEWISE_ARMS, (20,), (0,),
               grid_key="stagewise", **_CURVES,
               title="Figure 2a (stagewise consistency) on Fashion-MNIST"),
    Experiment("figure2b_fashion", "fashion_mnist", arms(*METHODS), (20,), (0,),
               max_lrs=(0.1,), overrides=_ONECYCLE, grid_key="convergence", **_CURVES,
               title="Figure 2b (convergence, OneCycle max lr 0.1) on Fashion-MNIST"),
    Experiment("figure3_fashion", "fashion_mnist", arms("kd", "dnd"), (20,), (0,),
               max_lrs=_FIG3_LRS, overrides=_ONECYCLE, grid_key="lr", **_LRS,
               title="Figure 3 (learning-rate tuning, OneCycle) on Fashion-MNIST"),
    Experiment("pairs_cifar100", "cifar100", arms("kd", "dnd", "pdnd"), _PAIR_BUDGETS, (0, 1, 2),
               pairs=CIFAR100_PAIRS, grid_key="pairs", sections=("pairs",),
               title="CIFAR-100 teacher -> student pairs (mdistiller's KD table), 240 epochs"),
]}

# The CPU scale: width-8 networks on 16 px images and 10% of the training set, so that an epoch
# takes seconds on a small CPU (measured speeds: docs/benchmarks-log.md, the quickstart section).
_CPU_OVERRIDES = {"model.width": 8, "data.image_size": 16, "data.fraction": 0.1,
                  "eval_batch_size": 1000, "log.progress_bar": False}
_GRID_KEYS = ("table", "epochs", "fractions", "stagewise", "convergence", "lr", "pairs")
# The tiny scale's pair networks: each family at test size (one block a stage, a few channels),
# keeping what tells a pair's networks apart (WRN's widen factor, ResNet32x4's wider stages).
_TINY_ARCHS = {
    **{name: {"depth": 8, "widths": (4, 4, 8, 16)}
       for name in ("resnet20", "resnet32", "resnet56", "resnet110")},
    **{name: {"depth": 8, "widths": (8, 8, 16, 32)} for name in ("resnet8x4", "resnet32x4")},
    **{name: {"depth": 10, "base_width": 4} for name in ("wrn16_2", "wrn40_1", "wrn40_2")},
    "vgg8": {"depth": 8, "width": 4}, "vgg13": {"depth": 8, "width": 8},
    "resnet50_cifar": {"num_blocks": (1, 1, 1, 1), "width": 4},
    "mobilenetv2": {"width_mult": 0.25, "num_blocks": (1, 1, 1, 1, 1, 1, 1), "last_channel": 32},
    "shufflev1": {"out_planes": (48, 96, 192), "num_blocks": (1, 1, 1), "stem_planes": 12},
    "shufflev2": {"out_channels": (16, 32, 64, 128), "num_blocks": (1, 1, 1), "stem_channels": 8},
}

SCALES: dict[str, Scale] = {s.name: s for s in [
    Scale("paper", "the experiment's own size: full-width networks, native images, all the data",
          {}),
    Scale("cpu", "width 8, 16 px images, 10% of the training set (6,000 images); an 8-epoch "
          "teacher; budgets 2 and 4 epochs (Figure 4: 1/2/4; Figure 2b: 8), 2 seeds for the "
          "tables (pairs: the published networks, 4 epochs, 1 seed)", teacher_epochs=8,
          overrides=_CPU_OVERRIDES,
          grids={"table": dict(epochs=(2, 4), seeds=(0, 1)),
                 "epochs": dict(epochs=(1, 2, 4), seeds=(0,)),
                 "fractions": dict(epochs=(4,), seeds=(0,), fractions=(0.2, 0.6, 1.0)),
                 "stagewise": dict(epochs=(4,), seeds=(0,)),
                 "convergence": dict(epochs=(8,), seeds=(0,)),
                 "lr": dict(epochs=(4,), seeds=(0,), max_lrs=(0.05, 0.1, 0.2, 0.5)),
                 "pairs": dict(epochs=(4,), seeds=(0,))}),
    # a ResNet18 teacher: it compiles in about half the time of a ResNet34, and a smoke test does
    # not depend on the teacher's depth
    Scale("tiny", "width 4, 8 px images, 2% of the training set, 1 epoch, a ResNet18 teacher "
          "(pairs: each family at test size): a smoke test",
          teacher_epochs=1, teacher_overrides={"model.depth": 18}, arch_kwargs=_TINY_ARCHS,
          overrides={"model.width": 4, "data.image_size": 8, "data.fraction": 0.02,
                     "eval_batch_size": 1000, "log.progress_bar": False},
          grids={**{key: dict(epochs=(1,), seeds=(0,)) for key in _GRID_KEYS},
                 "lr": dict(epochs=(1,), seeds=(0,), max_lrs=(0.1, 0.5))}),
]}
