"""The report's figures (matplotlib, optional: `pip install 'dnd_jax[plots]'`).

Each `plot_*(plan, rows, paper, path)` draws one figure of an experiment from the same rows as
the tables and returns its path; an experiment names its figures (`grids.Experiment.figures`,
`report.FIGURES`). Colours follow the arm's position in the experiment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dnd_jax.reproduce.tables import (DATASET_LABELS, _paper_rows, aggregate, grid_lr,
                                      mean_curve, mean_std, paper_name, start_accuracies)

if TYPE_CHECKING:
  from dnd_jax.reproduce.plan import Plan

def _pyplot():
  try:
    import matplotlib  # noqa: PLC0415
  except ImportError as e:
    raise ImportError("Plots need matplotlib: pip install 'dnd_jax[plots]'.") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  import matplotlib.pyplot as plt  # noqa: PLC0415
  plt.close(fig)
  return path


def _integer_x(ax):
  from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def color(plan: Plan, arm: str) -> str:
  return f"C{plan.experiment.arm_names.index(arm) % 10}"


def _band(ax, xs, cells, label, color, marker="o", linestyle="-"):
  ys = [100 * c[0] for c in cells]
  ax.plot(xs, ys, label=label, color=color, marker=marker, markersize=4, linestyle=linestyle)
  lo = [100 * (c[0] - c[1]) if c[2] > 1 else 100 * c[0] for c in cells]
  hi = [100 * (c[0] + c[1]) if c[2] > 1 else 100 * c[0] for c in cells]
  if any(c[2] > 1 for c in cells):
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def plot_epoch_curves(plan: Plan, rows: list[dict], paper: list[dict], path: str,
                      epochs: int | None = None) -> str:
  """Figures 2a and 2b: evaluation accuracy after every epoch, per arm, at one budget; a run
  that starts from a trained network is drawn from epoch 0 (before any step)."""
  plt = _pyplot()
  exp = plan.experiment
  epochs = epochs or max(exp.epochs)
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.arm_names:
    curve = mean_curve(plan, rows, m, epochs)
    if curve:
      xs, cells = list(curve), list(curve.values())
      start = start_accuracies(plan, rows, m, epochs)
      if start:
        xs, cells = [0] + xs, [mean_std(start)] + cells
      _band(ax, xs, cells, exp.label(m), color(plan, m))
  _integer_x(ax)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: accuracy per epoch, "
               f"{epochs}-epoch budget")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def plot_budgets(plan: Plan, rows: list[dict], paper: list[dict], path: str) -> str:
  """Figure 4: best accuracy against the epoch budget (final accuracy dashed); the paper's
  points where it published them for this data set."""
  plt = _pyplot()
  exp = plan.experiment
  best, final = aggregate(rows, "best_accuracy"), aggregate(rows, "final_accuracy")
  fraction, lr = max(exp.fractions), grid_lr(exp)
  fig, ax = plt.subplots(figsize=(6, 4))
  prow = _paper_rows(plan, paper) if exp.paper and exp.paper[1] == exp.dataset else []
  for m in exp.arm_names:
    es = [e for e in sorted(exp.epochs) if (m, e, fraction, lr) in best]
    if es:
      _band(ax, es, [best[(m, e, fraction, lr)] for e in es], exp.label(m), color(plan, m))
      ax.plot(es, [100 * final[(m, e, fraction, lr)][0] for e in es], color=color(plan, m),
              linestyle="--", linewidth=0.8)
    pts = sorted((r["epochs"], r["acc_mean"]) for r in prow if r["method"] == paper_name(plan, m))
    if pts:
      ax.plot(*zip(*pts), color=color(plan, m), marker="x", linestyle=":",
              label=f"paper {exp.label(m)}")
  _integer_x(ax)
  ax.set_xlabel("epoch budget")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: accuracy against epoch budget\n"
               "(solid: best epoch, dashed: last epoch)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_fractions(plan: Plan, rows: list[dict], paper: list[dict], path: str) -> str:
  """Table 3 as a plot: best accuracy against the share of the training data."""
  plt = _pyplot()
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  epochs, lr = max(exp.epochs), grid_lr(exp)
  prow = _paper_rows(plan, paper) if exp.paper and exp.paper[1] == exp.dataset else []
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.arm_names:
    frs = [fr for fr in sorted(exp.fractions) if (m, epochs, fr, lr) in acc]
    if frs:
      _band(ax, [100 * fr for fr in frs], [acc[(m, epochs, fr, lr)] for fr in frs], exp.label(m),
            color(plan, m))
    pts = sorted((100 * r["data_fraction"], r["acc_mean"]) for r in prow
                 if r["method"] == paper_name(plan, m))
    if pts:
      ax.plot(*zip(*pts), color=color(plan, m), marker="x", linestyle=":",
              label=f"paper {exp.label(m)}")
  ax.set_xlabel("training data used (%)")
  ax.set_ylabel("test accuracy (%), best epoch")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: data efficiency, {epochs} epochs")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_lrs(plan: Plan, rows: list[dict], paper: list[dict], path: str) -> str:
  """Figure 3: best accuracy against the maximal learning rate (log scale), per method."""
  plt = _pyplot()
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  epochs, fraction = max(exp.epochs), max(exp.fractions)
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.arm_names:
    lrs = [lr for lr in sorted(x for x in exp.max_lrs if x is not None)
           if (m, epochs, fraction, lr) in acc]
    if lrs:
      _band(ax, lrs, [acc[(m, epochs, fraction, lr)] for lr in lrs], exp.label(m), color(plan, m))
  ax.set_xscale("log")
  ax.set_xlabel("maximal learning rate (OneCycle)")
  ax.set_ylabel("test accuracy (%), best epoch")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: learning-rate tuning, "
               f"{epochs} epochs")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
