"""The report's tables and claims, in the paper's layout beside its published figures.

Everything here reads only the grid's rows (`run.collect` or its CSV), the runs' per-epoch
curves and summaries (`records`), paper_results.csv (the paper's Tables 1-3 as data) and
pairs_published.csv (other libraries' published figures for the pair grids, each row naming its
source), both shipped in this package, so `--report-only` can redraw a report without JAX work.
Accuracy cells are mean +- sample standard deviation (ddof = 1) over the seeds that finished; a
cell with one run shows its value alone, and a cell with fewer runs than the grid's seeds says
how many it has. "Best" is the epoch with the highest evaluation accuracy (the
paper's "best model", selected on the test set unless data.val_fraction > 0), "final" the last.

Each `*_section(plan, rows, paper)` returns the markdown lines of one experiment kind's report
body; an experiment names its sections (`grids.Experiment.sections`, `report.SECTIONS`).
"""

from __future__ import annotations

import csv
import math
import os
from typing import TYPE_CHECKING, Iterable, Sequence

from dnd_jax.methods import get_method
from dnd_jax.reproduce.records import curve_of, finite, summary_of

if TYPE_CHECKING:
  from dnd_jax.reproduce.plan import Plan

PAPER_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.csv")
PAIRS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pairs_published.csv")
DATASET_LABELS = {"cifar100": "CIFAR-100", "imagewoof": "Imagewoof",
                  "fashion_mnist": "Fashion-MNIST"}
KEYS = ("method", "epochs", "fraction", "max_lr")  # a cell of the grid, the seeds aside


# --- numbers ------------------------------------------------------------------------------------


def load_paper(path: str = PAPER_CSV) -> list[dict]:
  """The paper's published figures (Tables 1-3); [] when the file is absent."""
  if not os.path.isfile(path):
    return []
  rows = []
  with open(path, newline="") as f:
    for raw in csv.DictReader(f):
      row = dict(raw)
      for k in ("table", "epochs"):
        row[k] = int(row[k])
      for k in ("data_fraction", "acc_mean", "acc_std", "time_min", "teacher_acc"):
        row[k] = float(row[k]) if row.get(k) not in (None, "") else None
      rows.append(row)
  return rows


def load_published_pairs(path: str = PAIRS_CSV) -> list[dict]:
  """Published top-1 of teacher -> student pairs, kept apart from the paper's because they are
  another library's (its `source`), for a method the DnD paper did not run them with; [] when
  the file is absent."""
  if not os.path.isfile(path):
    return []
  with open(path, newline="") as f:
    return [{**row, "epochs": int(row["epochs"]), "acc_mean": float(row["acc_mean"])}
            for row in csv.DictReader(f)]


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample std, n) of the finite values; std is nan for fewer than two."""
  vals = [float(v) for v in values if finite(v)]
  n = len(vals)
  if n == 0:
    return float("nan"), float("nan"), 0
  mean = sum(vals) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
  return mean, std, n


def aggregate(rows: Iterable[dict], metric: str, keys: Sequence[str] = KEYS) -> dict:
  """{(method, epochs, fraction, max_lr): (mean, std, n)} of `metric` over the finished runs (the
  seeds)."""
  groups: dict[tuple, list] = {}
  for row in rows:
    if row.get("status") != "finished":
      continue
    groups.setdefault(tuple(row.get(k) for k in keys), []).append(row.get(metric))
  return {k: mean_std(v) for k, v in groups.items()}


def fmt_acc(cell, expected_n: int | None = None) -> str:
  """'81.45 ± 0.40' (percent) from a (mean, std, n) of fractions; '—' when nothing finished."""
  if cell is None or cell[2] == 0:
    return "—"
  mean, std, n = cell
  text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")
  if expected_n is not None and n < expected_n:
    text += f" (n={n})"
  return text


def fmt_min(cell) -> str:
  if cell is None or cell[2] == 0:
    return "—"
  return f"{cell[0] / 60:.2f}"


def _paper_rows(plan: Plan, paper: list[dict]) -> list[dict]:
  if not plan.experiment.paper:
    return []
  table, dataset = plan.experiment.paper
  return [r for r in paper if r["table"] == table and r["dataset"] == dataset]


def match_budgets(ours: Sequence[int], theirs: Sequence[int], same_dataset: bool) -> dict:
  """Which of the paper's epoch budgets stands beside each of ours.

  The same data set: equal budgets. Another data set (Fashion-MNIST against CIFAR-100): the same
  position when both grids have as many budgets, else the same share of the longest budget.
  """
  ours, theirs = sorted(set(ours)), sorted(set(theirs))
  if not ours or not theirs:
    return {}
  if same_dataset:
    return {e: e for e in ours if e in theirs}
  if len(ours) == len(theirs):
    return dict(zip(ours, theirs))
  out = {}
  for e in ours:
    for p in theirs:
      if abs(e / ours[-1] - p / theirs[-1]) < 1e-9:
        out[e] = p
  return out


def paper_name(plan: Plan, arm: str) -> str | None:
  """The arm's method's name in the paper's results (None for arms the paper has no row for)."""
  exp = plan.experiment
  return get_method(exp.arm(arm).method).paper_name if arm in exp.arm_names else None


def _paper_cell(plan, paper_rows, method, epochs=None, fraction=None) -> dict | None:
  name = paper_name(plan, method)
  for r in paper_rows:
    if name is None or r["method"] != name:
      continue
    if epochs is not None and r["epochs"] != epochs:
      continue
    if fraction is not None and abs(r["data_fraction"] - fraction) > 1e-9:
      continue
    return r
  return None


def _fmt_paper(r: dict | None, with_time: bool = True) -> str:
  if r is None:
    return "—"
  text = f"{r['acc_mean']:.2f}"
  if r.get("acc_std") is not None:
    text += f" ± {r['acc_std']:.2f}"
  if with_time and r.get("time_min") is not None:
    text += f" ({r['time_min']:g} min)"
  return text


# --- tables -------------------------------------------------------------------------------------

def grid_lr(exp):
  """The grid's max lr where it has one (None: the methods' own); tables over another dimension
  show the first."""
  return exp.max_lrs[0]


def budgets_table(plan: Plan, rows: list[dict], paper: list[dict], metric: str = "best_accuracy",
                  with_paper: bool = True) -> str:
  """Tables 1-2's layout: a row per method, accuracy and minutes per budget, the paper beside."""
  exp = plan.experiment
  acc = aggregate(rows, metric)
  mins = aggregate(rows, "train_time_s")
  prow = _paper_rows(plan, paper) if with_paper else []
  pairing = match_budgets(exp.epochs, {r["epochs"] for r in prow},
                          bool(exp.paper) and exp.paper[1] == exp.dataset)
  plabel = DATASET_LABELS.get(exp.paper[1], "") if exp.paper else ""
  header, align = ["KD approach"], ["---"]
  for e in sorted(exp.epochs):
    header += [f"{e} ep.: acc. (%)", "time (min)"]
    align += ["---:", "---:"]
    if e in pairing:
      header.append(f"paper, {plabel} {pairing[e]} ep.")
      align.append("---:")
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  fraction, lr = max(exp.fractions), grid_lr(exp)
  for m in exp.arm_names:
    cells = [exp.label(m)]
    for e in sorted(exp.epochs):
      key = (m, e, fraction, lr)
      cells += [fmt_acc(acc.get(key), len(exp.seeds)), fmt_min(mins.get(key))]
      if e in pairing:
        cells.append(_fmt_paper(_paper_cell(plan, prow, m, epochs=pairing[e])))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def fractions_table(plan: Plan, rows: list[dict], paper: list[dict],
                    metric: str = "best_accuracy") -> str:
  """Table 3's layout: a row per method, accuracy per data fraction, the paper beside."""
  exp = plan.experiment
  acc = aggregate(rows, metric)
  prow = _paper_rows(plan, paper)
  epochs, lr = max(exp.epochs), grid_lr(exp)
  plabel = DATASET_LABELS.get(exp.paper[1], "") if exp.paper else ""
  header, align = ["KD approach"], ["---"]
  fracs = sorted(exp.fractions)
  for fr in fracs:
    header.append(f"{100 * fr:g}% data")
    align.append("---:")
    if any(abs(r["data_fraction"] - fr) < 1e-9 for r in prow):
      header.append(f"paper, {plabel} {100 * fr:g}%")
      align.append("---:")
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for m in exp.arm_names:
    cells = [exp.label(m)]
    for fr in fracs:
      cells.append(fmt_acc(acc.get((m, epochs, fr, lr)), len(exp.seeds)))
      if any(abs(r["data_fraction"] - fr) < 1e-9 for r in prow):
        cells.append(_fmt_paper(_paper_cell(plan, prow, m, fraction=fr), with_time=False))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def curves_table(plan: Plan, rows: list[dict]) -> str:
  """Figures 2a and 2b in numbers: accuracy after the first epochs, at a quarter and half of the
  budget and at its end, the best, the time; "before training" where a run starts from a trained
  network."""
  exp = plan.experiment
  epochs = max(exp.epochs)
  key = lambda m: (m, epochs, max(exp.fractions), grid_lr(exp))  # noqa: E731
  shown = sorted({1, 2, epochs // 4, epochs // 2, epochs} & set(range(1, epochs + 1)))
  starts = {m: start_accuracies(plan, rows, m, epochs) for m in exp.arm_names}
  with_start = any(starts.values())
  header = (["run"] + (["before training (%)"] if with_start else [])
            + [f"after epoch {e} (%)" for e in shown] + ["best (%)", "time (min)"])
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
  best, mins = aggregate(rows, "best_accuracy"), aggregate(rows, "train_time_s")
  for m in exp.arm_names:
    curve = mean_curve(plan, rows, m, epochs)
    cells = [exp.label(m)]
    if with_start:
      cells.append(fmt_acc(mean_std(starts[m])) if starts[m] else "—")
    cells += [fmt_acc(curve.get(e)) for e in shown]
    cells += [fmt_acc(best.get(key(m))), fmt_min(mins.get(key(m)))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def lr_table(plan: Plan, rows: list[dict], metric: str = "best_accuracy") -> str:
  """Figure 3 in numbers: a row per method, accuracy per maximal learning rate."""
  exp = plan.experiment
  acc = aggregate(rows, metric)
  epochs, fraction = max(exp.epochs), max(exp.fractions)
  lrs = sorted(lr for lr in exp.max_lrs if lr is not None)
  header = ["KD approach"] + [f"max lr {lr:g}: acc. (%)" for lr in lrs]
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(lrs) + "|"]
  for m in exp.arm_names:
    cells = [exp.label(m)] + [fmt_acc(acc.get((m, epochs, fraction, lr)), len(exp.seeds))
                              for lr in lrs]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# --- curves -------------------------------------------------------------------------------------


def _cell_runs(plan: Plan, rows: list[dict], method: str, epochs: int,
               fraction: float | None = None) -> list[dict]:
  """The finished runs of one cell of the grid, its seeds: `method` at `epochs`, at the largest
  data fraction (or `fraction`) and the grid's first max lr."""
  fraction = max(plan.experiment.fractions) if fraction is None else fraction
  lr = grid_lr(plan.experiment)
  return [row for row in rows
          if row.get("status") == "finished" and row["method"] == method
          and row["epochs"] == epochs and abs(row["fraction"] - fraction) < 1e-9
          and row.get("max_lr") == lr]


def mean_curve(plan: Plan, rows: list[dict], method: str, epochs: int,
               fraction: float | None = None) -> dict:
  """{epoch: (mean, std, n)} over the seeds of the finished runs of `method` at `epochs` (at the
  grid's first max lr)."""
  by_epoch: dict[int, list] = {}
  for row in _cell_runs(plan, rows, method, epochs, fraction):
    for e, a in curve_of(row["workdir"]):
      by_epoch.setdefault(e, []).append(a)
  return {e: mean_std(v) for e, v in sorted(by_epoch.items())}


def start_accuracies(plan: Plan, rows: list[dict], method: str, epochs: int) -> list[float]:
  """The accuracy before any step of the runs that `mean_curve` averages, where they start from
  a trained network (Figure 2a's epoch 0); empty for runs that start from scratch."""
  out = []
  for row in _cell_runs(plan, rows, method, epochs):
    summary = summary_of(row["workdir"])
    if summary is not None and finite(summary.get("start_accuracy")):
      out.append(summary["start_accuracy"])
  return out


# --- claims -------------------------------------------------------------------------------------


def _pp(x: float) -> str:
  return f"{100 * x:+.2f}" if finite(x) else "n/a"


def budget_claims(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  """The paper's claims about epoch budgets, each measured here and quoted from the paper."""
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  fraction, lr = max(exp.fractions), grid_lr(exp)
  get = lambda m, e: acc.get((m, e, fraction, lr), (float("nan"),) * 2 + (0,))[0]  # noqa: E731
  prow = _paper_rows(plan, paper)
  pairing = match_budgets(exp.epochs, {r["epochs"] for r in prow},
                          bool(exp.paper) and exp.paper[1] == exp.dataset)
  pval = lambda m, e: (_paper_cell(plan, prow, m, epochs=e) or {}).get("acc_mean")  # noqa: E731
  base = exp.baseline if exp.baseline in exp.arm_names else None
  proposed = [m for m in exp.proposed if m in exp.arm_names] if base else []
  out = []
  budgets = sorted(exp.epochs)
  for e in budgets:
    ours = [(get(m, e), m) for m in exp.arm_names if finite(get(m, e))]
    if not ours:
      continue
    best = max(ours)[1]
    text = (f"Budget {e} epoch{'s' if e != 1 else ''}: best method here {exp.label(best)} "
            f"({100 * max(ours)[0]:.2f}%)")
    for other in proposed:
      text += f"; {exp.label(other)} − {exp.label(base)} {_pp(get(other, e) - get(base, e))} pts"
    if e in pairing:
      p = pairing[e]
      pv = {m: pval(m, p) for m in exp.arm_names if pval(m, p) is not None}
      if pv:
        pbest = max(pv, key=pv.get)
        text += f". Paper ({p} ep.): best {exp.label(pbest)}"
        for other in proposed:
          if other in pv and base in pv:
            text += f"; {exp.label(other)} − {exp.label(base)} {pv[other] - pv[base]:+.2f} pts"
    out.append(text + ".")
  if len(budgets) > 1 and proposed:
    lo, hi, top = budgets[0], budgets[-1], proposed[-1]
    text = (f"{exp.label(top)} at {lo} epochs vs {exp.label(base)} at {hi} epochs (the paper's "
            f"headline: {exp.label(top)} with few epochs beats {exp.label(base)} with many): here "
            f"{100 * get(top, lo):.2f}% vs {100 * get(base, hi):.2f}%")
    if lo in pairing and hi in pairing and pval(top, pairing[lo]) is not None:
      text += (f"; paper {pval(top, pairing[lo]):.2f}% ({pairing[lo]} ep.) vs "
               f"{pval(base, pairing[hi]):.2f}% ({pairing[hi]} ep.)")
    out.append(text + ".")
  per_epoch = aggregate(rows, "time_per_epoch_s")
  if base:
    ratios = []
    for m in exp.arm_names:
      mine = [per_epoch[(m, e, fraction, lr)][0] / per_epoch[(base, e, fraction, lr)][0]
              for e in budgets
              if (m, e, fraction, lr) in per_epoch and (base, e, fraction, lr) in per_epoch]
      theirs = [r["time_min"] / k["time_min"] for r in prow for k in prow
                if r["method"] == paper_name(plan, m) and k["method"] == paper_name(plan, base)
                and r["epochs"] == k["epochs"] and r.get("time_min") and k.get("time_min")]
      if mine:
        text = f"{exp.label(m)} {sum(mine) / len(mine):.2f}x"
        if theirs:
          text += f" (paper {sum(theirs) / len(theirs):.2f}x)"
        ratios.append(text)
    if ratios:
      out.append(f"Training time per epoch relative to {exp.label(base)}: " + ", ".join(ratios)
                 + ".")
  return out


def fraction_claims(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  epochs, lr = max(exp.epochs), grid_lr(exp)
  prow = _paper_rows(plan, paper)
  get = lambda m, fr: acc.get((m, epochs, fr, lr), (float("nan"), 0, 0))[0]  # noqa: E731
  base = exp.baseline if exp.baseline in exp.arm_names else None
  proposed = [m for m in exp.proposed if m in exp.arm_names] if base else []
  out = []
  fracs = sorted(exp.fractions)
  lo, hi = fracs[0], fracs[-1]
  for m in proposed:
    text = (f"{exp.label(m)} − {exp.label(base)} with {100 * lo:g}% of the data: "
            f"{_pp(get(m, lo) - get(base, lo))} pts")
    p, k = _paper_cell(plan, prow, m, fraction=lo), _paper_cell(plan, prow, base, fraction=lo)
    if p and k:
      text += f" (paper {p['acc_mean'] - k['acc_mean']:+.2f})"
    out.append(text + ".")
  if proposed and finite(get(base, hi)):
    top = proposed[-1]
    enough = [fr for fr in fracs if finite(get(top, fr)) and get(top, fr) >= get(base, hi)]
    text = (f"Smallest share at which {exp.label(top)} reaches {exp.label(base)}'s "
            f"{100 * hi:g}% accuracy: " + (f"{100 * enough[0]:g}%" if enough else "none in this grid"))
    base_full = _paper_cell(plan, prow, base, fraction=hi)
    if base_full:
      p_enough = [r["data_fraction"] for r in sorted(prow, key=lambda r: r["data_fraction"])
                  if r["method"] == paper_name(plan, top) and r["acc_mean"] >= base_full["acc_mean"]]
      text += f" (paper: {100 * p_enough[0]:g}%)" if p_enough else ""
    out.append(text + ".")
  return out


def curve_claims(plan: Plan, rows: list[dict]) -> list[str]:
  """Accuracy after the first epoch of every arm against the first arm's (Figure 2a: the
  re-initialised stage converges much faster than the naive network; Figure 2b: DnD converges
  fastest)."""
  exp = plan.experiment
  epochs = max(exp.epochs)
  curves = {m: mean_curve(plan, rows, m, epochs) for m in exp.arm_names}
  first = exp.arm_names[0]
  out = []
  for m in exp.arm_names[1:]:
    if 1 in curves[m] and 1 in curves[first]:
      out.append(f"After 1 epoch: {exp.label(m)} {100 * curves[m][1][0]:.2f}% vs "
                 f"{exp.label(first)} {100 * curves[first][1][0]:.2f}%.")
  return out


def lr_claims(plan: Plan, rows: list[dict]) -> list[str]:
  """Each method's best maximal learning rate, and how much its accuracy moves over the grid."""
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  epochs, fraction = max(exp.epochs), max(exp.fractions)
  out = []
  for m in exp.arm_names:
    cells = {lr: acc[(m, epochs, fraction, lr)][0] for lr in exp.max_lrs
             if (m, epochs, fraction, lr) in acc and finite(acc[(m, epochs, fraction, lr)][0])}
    if cells:
      best = max(cells, key=cells.get)
      out.append(f"{exp.label(m)}: best at max lr {best:g} ({100 * cells[best]:.2f}%); range over "
                 f"the grid {100 * (max(cells.values()) - min(cells.values())):.2f} pts.")
  return out


# --- report sections ----------------------------------------------------------------------------


def budgets_section(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  exp = plan.experiment
  ref = (f" The paper columns are its Table {exp.paper[0]} "
         f"({DATASET_LABELS.get(exp.paper[1])})" if exp.paper else "")
  if exp.paper and exp.paper[1] != exp.dataset:
    ref += (", another data set, paired by position when both grids have as many budgets, "
            "else at the same share of the longest budget")
  return ["## Accuracy at the best epoch (the paper's selection) and training time", "",
          f"Mean ± std over seeds; time is training steps only (no compilation or "
          f"evaluation), in minutes.{ref + '.' if ref else ''}", "",
          budgets_table(plan, rows, paper, "best_accuracy"), "",
          "## Accuracy at the last epoch", "",
          budgets_table(plan, rows, paper, "final_accuracy", with_paper=False), "",
          "## Against the paper's claims", ""] + [
              f"- {c}" for c in budget_claims(plan, rows, paper)]


def fractions_section(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  return [f"## Accuracy (best epoch) against the share of the training data, "
          f"{max(plan.experiment.epochs)} epochs", "",
          "The share is of the training set the scale uses (data.fraction "
          f"{plan.overrides.get('data.fraction', 1.0):g} of the full set); the subsets are "
          "nested.", "",
          fractions_table(plan, rows, paper, "best_accuracy"), "",
          "## At the last epoch", "",
          fractions_table(plan, rows, [], "final_accuracy"), "",
          "## Against the paper's claims", ""] + [
              f"- {c}" for c in fraction_claims(plan, rows, paper)]


def _arm_notes(plan: Plan) -> list[str]:
  """What each arm is: its method, its config changes, the run it starts from."""
  exp = plan.experiment
  notes = [f"Every run: {', '.join(f'{k}={v!r}' for k, v in exp.overrides)}."] if exp.overrides else []
  if [lr for lr in exp.max_lrs if lr is not None]:
    notes.append("Max lr: optim.lr = max lr / optim.max_lr_factor.")
  for arm in exp.arms:
    text = f"{arm.display}: method `{arm.method}`"
    if arm.overrides:
      text += ", " + ", ".join(f"{k}={v!r}" for k, v in arm.overrides)
    if arm.start_from:
      text += f", starting from the trained {exp.label(arm.start_from)} run"
    notes.append(text + ".")
  return [f"- {n}" for n in notes]


def curves_section(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  return (["## Accuracy of the whole network per epoch", ""] + _arm_notes(plan) + [
      "", curves_table(plan, rows), "", "## Against the paper's claims", ""]
          + [f"- {c}" for c in curve_claims(plan, rows)])


def lr_section(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  return ([f"## Accuracy (best epoch) against the maximal learning rate, "
           f"{max(plan.experiment.epochs)} epochs", ""] + _arm_notes(plan) + [
      "", lr_table(plan, rows, "best_accuracy"), "", "## At the last epoch", "",
      lr_table(plan, rows, "final_accuracy"), "", "## Against the paper's claims", ""]
          + [f"- {c}" for c in lr_claims(plan, rows)])


# --- pair grids ---------------------------------------------------------------------------------

_PAIR_KEYS = ("pair", "method", "epochs", "fraction", "max_lr")


def _published_of(plan: Plan, published: list[dict]) -> dict:
  """{pair name: published row} of the grid's data set."""
  exp = plan.experiment
  by_names = {(r["teacher"], r["student"]): r for r in published if r["dataset"] == exp.dataset}
  return {p.name: by_names[(p.teacher, p.student)] for p in exp.pairs
          if (p.teacher, p.student) in by_names}


def pairs_table(plan: Plan, rows: list[dict], published: list[dict], epochs: int,
                metric: str = "best_accuracy") -> str:
  """A row per pair: the published figure (no column for `published` []), our teacher's
  accuracy, then each arm's."""
  exp = plan.experiment
  acc = aggregate(rows, metric, _PAIR_KEYS)
  teachers = aggregate(rows, "teacher_accuracy", ("pair",))
  pub = _published_of(plan, published)
  fraction, lr = max(exp.fractions), grid_lr(exp)
  header = (["teacher -> student"] + (["published KD (%)"] if published else [])
            + ["our teacher (%)"] + [exp.label(m) for m in exp.arm_names])
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
  for pair in exp.pairs:
    cells = [pair.display]
    if published:
      cells.append(f"{pub[pair.name]['acc_mean']:.2f}" if pair.name in pub else "—")
    # every run of a pair reports the one teacher: its value, not a spread over the runs
    teacher = teachers.get((pair.name,))
    cells.append(fmt_acc(teacher[:1] + (float("nan"), 1) if teacher and teacher[2] else None))
    cells += [fmt_acc(acc.get((pair.name, m, epochs, fraction, lr)), len(exp.seeds))
              for m in exp.arm_names]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def pair_claims(plan: Plan, rows: list[dict], published: list[dict], epochs: int) -> list[str]:
  """Over the pairs with both numbers: each proposed arm against the baseline here, and the
  baseline here against the published figure."""
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy", _PAIR_KEYS)
  fraction, lr = max(exp.fractions), grid_lr(exp)
  get = lambda p, m: acc.get((p.name, m, epochs, fraction, lr), (float("nan"),))[0]  # noqa: E731
  base = exp.baseline if exp.baseline in exp.arm_names else None
  out = []
  for m in [m for m in exp.proposed if m in exp.arm_names] if base else []:
    diffs = [get(p, m) - get(p, base) for p in exp.pairs
             if finite(get(p, m)) and finite(get(p, base))]
    if diffs:
      out.append(f"{exp.label(m)} − {exp.label(base)} at {epochs} "
                 f"epoch{'s' if epochs != 1 else ''}, mean over {len(diffs)} "
                 f"pair{'s' if len(diffs) != 1 else ''}: {_pp(sum(diffs) / len(diffs))} pts "
                 f"(ahead in {sum(d > 0 for d in diffs)}).")
  pub = _published_of(plan, published)
  if base:
    both = [p for p in exp.pairs if p.name in pub and finite(get(p, base))]
    if both:
      diff = sum(get(p, base) - pub[p.name]["acc_mean"] / 100 for p in both) / len(both)
      theirs = "/".join(sorted({str(pub[p.name]["epochs"]) for p in both}))
      out.append(f"{exp.label(base)} here at {epochs} epoch{'s' if epochs != 1 else ''} − "
                 f"published KD ({theirs} epochs), mean over {len(both)} "
                 f"pair{'s' if len(both) != 1 else ''}: {_pp(diff)} pts.")
  return out


def pairs_section(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  """The pair table at each budget; the published column is another library's vanilla KD (from
  pairs_published.csv, its source named), not the DnD paper's."""
  exp = plan.experiment
  published = load_published_pairs()
  used = list(_published_of(plan, published).values())
  sources = sorted({f"{r['source']}, {r['epochs']} epochs" for r in used})
  note = (f"\"published KD\" is {'; '.join(sources)}: the field's figure for the pair, not the "
          "DnD paper's. " if sources else "")
  lines = ["## Accuracy at the best epoch, pair by pair", "",
           f"Mean ± std over seeds. {note}\"our teacher\" is each pair's teacher as its "
           "distillation runs measured it.", ""]
  plural = lambda e: f"{e} epoch{'s' if e != 1 else ''}"  # noqa: E731
  for e in sorted(exp.epochs):
    lines += [f"### {plural(e)}", "", pairs_table(plan, rows, published, e), ""]
  lines += ["## Accuracy at the last epoch", ""]
  for e in sorted(exp.epochs):
    lines += [f"### {plural(e)}", "", pairs_table(plan, rows, [], e, "final_accuracy"), ""]
  lines += ["## Against vanilla KD, here and published", ""]
  return lines + [f"- {c}" for e in sorted(exp.epochs)
                  for c in pair_claims(plan, rows, published, e)]
