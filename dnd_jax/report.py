"""Reports of a grid: markdown tables in the paper's layout beside its published figures, and plots.

Everything here reads only the grid's CSV (`experiments.write_csv`), the runs' metrics.jsonl and
docs/paper_results.csv (the paper's Tables 1-3 as data), so `--report-only` can redraw a report
without JAX work. Accuracy cells are mean +- sample standard deviation (ddof = 1) over the seeds
that finished; a cell with one run shows its value alone, and a cell with fewer runs than the
grid's seeds says how many it has. "Best" is the epoch with the highest evaluation accuracy (the
paper's "best model", selected on the test set unless data.val_fraction > 0), "final" the last.

Matplotlib is optional (`pip install 'dnd_jax[plots]'`); without it the report says so and keeps
its tables.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Iterable, Sequence

from dnd_jax import workdir as run_folder
from dnd_jax.experiments import REPO_ROOT, Plan, finite

PAPER_CSV = os.path.join(REPO_ROOT, "docs", "paper_results.csv")
LABELS = {"kd": "Vanilla KD", "at": "AT+CE", "jacobian": "Jacobian+CE", "dnd": "DnD",
          "pdnd": "Progressive DnD", "naive": "ResNet18 (naive)",
          "feature": "R3-ResNet18 (feature)", "end2end": "R3-ResNet18 (end2end)"}
PAPER_METHOD = {"kd": "vanilla_kd", "at": "at_ce", "jacobian": "jacobian_ce", "dnd": "dnd",
                "pdnd": "pdnd"}
DATASET_LABELS = {"cifar100": "CIFAR-100", "imagewoof": "Imagewoof",
                  "fashion_mnist": "Fashion-MNIST"}
COLORS = {"kd": "tab:blue", "at": "tab:orange", "jacobian": "tab:green", "dnd": "tab:red",
          "pdnd": "tab:purple", "naive": "tab:gray", "feature": "tab:red", "end2end": "tab:blue"}


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


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample std, n) of the finite values; std is nan for fewer than two."""
  vals = [float(v) for v in values if finite(v)]
  n = len(vals)
  if n == 0:
    return float("nan"), float("nan"), 0
  mean = sum(vals) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
  return mean, std, n


def aggregate(rows: Iterable[dict], metric: str,
              keys: Sequence[str] = ("method", "epochs", "fraction")) -> dict:
  """{(method, epochs, fraction): (mean, std, n)} of `metric` over the finished runs (the seeds)."""
  groups: dict[tuple, list] = {}
  for row in rows:
    if row.get("status") != "finished":
      continue
    groups.setdefault(tuple(row[k] for k in keys), []).append(row.get(metric))
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


def _paper_cell(paper_rows, method, epochs=None, fraction=None) -> dict | None:
  for r in paper_rows:
    if r["method"] != PAPER_METHOD.get(method):
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
  fraction = max(exp.fractions)
  for m in exp.methods:
    cells = [LABELS.get(m, m)]
    for e in sorted(exp.epochs):
      key = (m, e, fraction)
      cells += [fmt_acc(acc.get(key), len(exp.seeds)), fmt_min(mins.get(key))]
      if e in pairing:
        cells.append(_fmt_paper(_paper_cell(prow, m, epochs=pairing[e])))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def fractions_table(plan: Plan, rows: list[dict], paper: list[dict],
                    metric: str = "best_accuracy") -> str:
  """Table 3's layout: a row per method, accuracy per data fraction, the paper beside."""
  exp = plan.experiment
  acc = aggregate(rows, metric)
  prow = _paper_rows(plan, paper)
  epochs = max(exp.epochs)
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
  for m in exp.methods:
    cells = [LABELS.get(m, m)]
    for fr in fracs:
      cells.append(fmt_acc(acc.get((m, epochs, fr)), len(exp.seeds)))
      if any(abs(r["data_fraction"] - fr) < 1e-9 for r in prow):
        cells.append(_fmt_paper(_paper_cell(prow, m, fraction=fr), with_time=False))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def stagewise_table(plan: Plan, rows: list[dict]) -> str:
  """Figure 2a in numbers: test accuracy after each of the first epochs and at the end."""
  exp = plan.experiment
  epochs = max(exp.epochs)
  shown = sorted({1, 2, epochs} & set(range(1, epochs + 1)))
  header = (["run", "before training (%)"] + [f"after epoch {e} (%)" for e in shown]
            + ["best (%)", "time (min)"])
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
  for m in exp.methods:
    curve = mean_curve(plan, rows, m, epochs)
    start = [r["start_accuracy"] for r in _summaries(rows, m, epochs) if "start_accuracy" in r]
    cells = [LABELS.get(m, m), fmt_acc(mean_std(start)) if start else "—"]
    for e in shown:
      cells.append(fmt_acc(curve.get(e)))
    cells.append(fmt_acc(aggregate(rows, "best_accuracy").get((m, epochs, max(exp.fractions)))))
    cells.append(fmt_min(aggregate(rows, "train_time_s").get((m, epochs, max(exp.fractions)))))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# --- curves -------------------------------------------------------------------------------------


def read_curve(workdir: str) -> list[tuple[int, float]]:
  """(epoch, evaluation accuracy) from a run's metrics.jsonl."""
  out = []
  for row in run_folder.read_metrics(workdir):
    for key in ("test_accuracy", "validation_accuracy"):
      if key in row:
        out.append((int(row["epoch"]), float(row[key])))
        break
  return out


def mean_curve(plan: Plan, rows: list[dict], method: str, epochs: int,
               fraction: float | None = None) -> dict:
  """{epoch: (mean, std, n)} over the seeds of the finished runs of `method` at `epochs`."""
  fraction = max(plan.experiment.fractions) if fraction is None else fraction
  by_epoch: dict[int, list] = {}
  for row in rows:
    if (row.get("status") == "finished" and row["method"] == method and row["epochs"] == epochs
        and abs(row["fraction"] - fraction) < 1e-9):
      for e, a in read_curve(row["workdir"]):
        by_epoch.setdefault(e, []).append(a)
  return {e: mean_std(v) for e, v in sorted(by_epoch.items())}


# --- claims -------------------------------------------------------------------------------------


def _pp(x: float) -> str:
  return f"{100 * x:+.2f}" if finite(x) else "n/a"


def budget_claims(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  """The paper's claims about epoch budgets, each measured here and quoted from the paper."""
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  fraction = max(exp.fractions)
  get = lambda m, e: acc.get((m, e, fraction), (float("nan"),) * 2 + (0,))[0]  # noqa: E731
  prow = _paper_rows(plan, paper)
  pairing = match_budgets(exp.epochs, {r["epochs"] for r in prow},
                          bool(exp.paper) and exp.paper[1] == exp.dataset)
  pval = lambda m, e: (_paper_cell(prow, m, epochs=e) or {}).get("acc_mean")  # noqa: E731
  out = []
  budgets = sorted(exp.epochs)
  for e in budgets:
    ours = [(get(m, e), m) for m in exp.methods if finite(get(m, e))]
    if not ours:
      continue
    best = max(ours)[1]
    text = (f"Budget {e} epoch{'s' if e != 1 else ''}: best method here {LABELS[best]} "
            f"({100 * max(ours)[0]:.2f}%)")
    for other in ("dnd", "pdnd"):
      if other in exp.methods and "kd" in exp.methods:
        text += f"; {LABELS[other]} − Vanilla KD {_pp(get(other, e) - get('kd', e))} pts"
    if e in pairing:
      p = pairing[e]
      pv = {m: pval(m, p) for m in exp.methods if pval(m, p) is not None}
      if pv:
        pbest = max(pv, key=pv.get)
        text += f". Paper ({p} ep.): best {LABELS[pbest]}"
        for other in ("dnd", "pdnd"):
          if other in pv and "kd" in pv:
            text += f"; {LABELS[other]} − Vanilla KD {pv[other] - pv['kd']:+.2f} pts"
    out.append(text + ".")
  if len(budgets) > 1 and "pdnd" in exp.methods and "kd" in exp.methods:
    lo, hi = budgets[0], budgets[-1]
    text = (f"Progressive DnD at {lo} epochs vs Vanilla KD at {hi} epochs (the paper's headline: "
            f"PDnD with few epochs beats KD with many): here {100 * get('pdnd', lo):.2f}% vs "
            f"{100 * get('kd', hi):.2f}%")
    if lo in pairing and hi in pairing and pval("pdnd", pairing[lo]) is not None:
      text += (f"; paper {pval('pdnd', pairing[lo]):.2f}% ({pairing[lo]} ep.) vs "
               f"{pval('kd', pairing[hi]):.2f}% ({pairing[hi]} ep.)")
    out.append(text + ".")
  per_epoch = aggregate(rows, "time_per_epoch_s")
  if "kd" in exp.methods:
    ratios = []
    for m in exp.methods:
      mine = [per_epoch[(m, e, fraction)][0] / per_epoch[("kd", e, fraction)][0]
              for e in budgets
              if (m, e, fraction) in per_epoch and ("kd", e, fraction) in per_epoch]
      theirs = [r["time_min"] / k["time_min"] for r in prow for k in prow
                if r["method"] == PAPER_METHOD.get(m) and k["method"] == "vanilla_kd"
                and r["epochs"] == k["epochs"] and r.get("time_min") and k.get("time_min")]
      if mine:
        text = f"{LABELS[m]} {sum(mine) / len(mine):.2f}x"
        if theirs:
          text += f" (paper {sum(theirs) / len(theirs):.2f}x)"
        ratios.append(text)
    if ratios:
      out.append("Training time per epoch relative to Vanilla KD: " + ", ".join(ratios) + ".")
  return out


def fraction_claims(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  exp = plan.experiment
  acc = aggregate(rows, "best_accuracy")
  epochs = max(exp.epochs)
  prow = _paper_rows(plan, paper)
  get = lambda m, fr: acc.get((m, epochs, fr), (float("nan"), 0, 0))[0]  # noqa: E731
  out = []
  fracs = sorted(exp.fractions)
  lo, hi = fracs[0], fracs[-1]
  for m in ("dnd", "pdnd"):
    if m in exp.methods and "kd" in exp.methods:
      text = (f"{LABELS[m]} − Vanilla KD with {100 * lo:g}% of the data: "
              f"{_pp(get(m, lo) - get('kd', lo))} pts")
      p, k = _paper_cell(prow, m, fraction=lo), _paper_cell(prow, "kd", fraction=lo)
      if p and k:
        text += f" (paper {p['acc_mean'] - k['acc_mean']:+.2f})"
      out.append(text + ".")
  if "pdnd" in exp.methods and "kd" in exp.methods and finite(get("kd", hi)):
    enough = [fr for fr in fracs if finite(get("pdnd", fr)) and get("pdnd", fr) >= get("kd", hi)]
    text = (f"Smallest share at which Progressive DnD reaches Vanilla KD's {100 * hi:g}% accuracy: "
            + (f"{100 * enough[0]:g}%" if enough else "none in this grid"))
    kd_full = _paper_cell(prow, "kd", fraction=hi)
    if kd_full:
      p_enough = [r["data_fraction"] for r in sorted(prow, key=lambda r: r["data_fraction"])
                  if r["method"] == "pdnd" and r["acc_mean"] >= kd_full["acc_mean"]]
      text += f" (paper: {100 * p_enough[0]:g}%)" if p_enough else ""
    out.append(text + ".")
  return out


def stagewise_claims(plan: Plan, rows: list[dict]) -> list[str]:
  exp = plan.experiment
  epochs = max(exp.epochs)
  curves = {m: mean_curve(plan, rows, m, epochs) for m in exp.methods}
  naive = curves.get("naive", {})
  out = []
  for m in ("feature", "end2end"):
    c = curves.get(m, {})
    if 1 in c and 1 in naive:
      out.append(f"After 1 epoch: {LABELS[m]} {100 * c[1][0]:.2f}% vs {LABELS['naive']} "
                 f"{100 * naive[1][0]:.2f}% (the paper: the re-initialised stage between trained "
                 "neighbours converges much faster than the naive network).")
  return out


# --- plots --------------------------------------------------------------------------------------


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


def _band(ax, xs, cells, label, color, marker="o", linestyle="-"):
  ys = [100 * c[0] for c in cells]
  ax.plot(xs, ys, label=label, color=color, marker=marker, markersize=4, linestyle=linestyle)
  lo = [100 * (c[0] - c[1]) if c[2] > 1 else 100 * c[0] for c in cells]
  hi = [100 * (c[0] + c[1]) if c[2] > 1 else 100 * c[0] for c in cells]
  if any(c[2] > 1 for c in cells):
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def plot_epoch_curves(plan: Plan, rows: list[dict], path: str, epochs: int | None = None) -> str:
  """Figure 2b: evaluation accuracy after every epoch, per method, at one budget."""
  plt = _pyplot()
  exp = plan.experiment
  epochs = epochs or max(exp.epochs)
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.methods:
    curve = mean_curve(plan, rows, m, epochs)
    if curve:
      _band(ax, list(curve), list(curve.values()), LABELS.get(m, m), COLORS.get(m))
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
  fraction = max(exp.fractions)
  fig, ax = plt.subplots(figsize=(6, 4))
  prow = _paper_rows(plan, paper) if exp.paper and exp.paper[1] == exp.dataset else []
  for m in exp.methods:
    es = [e for e in sorted(exp.epochs) if (m, e, fraction) in best]
    if es:
      _band(ax, es, [best[(m, e, fraction)] for e in es], LABELS.get(m, m), COLORS.get(m))
      ax.plot(es, [100 * final[(m, e, fraction)][0] for e in es], color=COLORS.get(m),
              linestyle="--", linewidth=0.8)
    pts = sorted((r["epochs"], r["acc_mean"]) for r in prow if r["method"] == PAPER_METHOD.get(m))
    if pts:
      ax.plot(*zip(*pts), color=COLORS.get(m), marker="x", linestyle=":", label=f"paper {LABELS[m]}")
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
  epochs = max(exp.epochs)
  prow = _paper_rows(plan, paper) if exp.paper and exp.paper[1] == exp.dataset else []
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.methods:
    frs = [fr for fr in sorted(exp.fractions) if (m, epochs, fr) in acc]
    if frs:
      _band(ax, [100 * fr for fr in frs], [acc[(m, epochs, fr)] for fr in frs], LABELS.get(m, m),
            COLORS.get(m))
    pts = sorted((100 * r["data_fraction"], r["acc_mean"]) for r in prow
                 if r["method"] == PAPER_METHOD.get(m))
    if pts:
      ax.plot(*zip(*pts), color=COLORS.get(m), marker="x", linestyle=":", label=f"paper {LABELS[m]}")
  ax.set_xlabel("training data used (%)")
  ax.set_ylabel("test accuracy (%), best epoch")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: data efficiency, {epochs} epochs")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_stagewise(plan: Plan, rows: list[dict], path: str) -> str:
  """Figure 2a: test accuracy per epoch of the naive ResNet18 and of the two R3 runs."""
  plt = _pyplot()
  exp = plan.experiment
  epochs = max(exp.epochs)
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in exp.methods:
    curve = mean_curve(plan, rows, m, epochs)
    if curve:
      xs = list(curve)
      cells = list(curve.values())
      start = [r for r in _summaries(rows, m, epochs) if finite(r.get("start_accuracy"))]
      if start:  # the re-initialised network before training, drawn at epoch 0
        xs = [0] + xs
        cells = [mean_std([r["start_accuracy"] for r in start])] + cells
      _band(ax, xs, cells, LABELS.get(m, m), COLORS.get(m))
  _integer_x(ax)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{DATASET_LABELS.get(exp.dataset, exp.dataset)}: stagewise consistency "
               "(stage 3 re-initialised)")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def _summaries(rows, method, epochs) -> list[dict]:
  out = []
  for row in rows:
    if row.get("status") == "finished" and row["method"] == method and row["epochs"] == epochs:
      summary = run_folder.read_summary(row["workdir"])
      if summary is not None:
        out.append(summary)
  return out


# --- the report ---------------------------------------------------------------------------------


def make_plots(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  """The experiment's PNGs under <out>/figures/, named <experiment>_<figure>.png."""
  exp, d = plan.experiment, plan.figures_dir
  name = lambda what: os.path.join(d, f"{exp.name}_{what}.png")  # noqa: E731
  if exp.role == "budgets":
    return [plot_epoch_curves(plan, rows, name("curves")),
            plot_budgets(plan, rows, paper, name("budgets"))]
  if exp.role == "fractions":
    return [plot_fractions(plan, rows, paper, name("fractions"))]
  return [plot_stagewise(plan, rows, name("stagewise"))]


def write_report(plan: Plan, rows: list[dict], command: str | None = None,
                 paper_csv: str = PAPER_CSV, plots: bool = True) -> str:
  """Write <out>/<experiment>.md (and the figures) and return the markdown."""
  exp = plan.experiment
  paper = load_paper(paper_csv)
  done = [r for r in rows if r.get("status") == "finished"]
  devices = sorted({r["device_kind"] for r in done if r.get("device_kind")})
  teacher = mean_std([r.get("teacher_accuracy") for r in done])
  paper_teacher = next((r["teacher_acc"] for r in _paper_rows(plan, paper)), None)
  default_command = f"python scripts/reproduce.py {exp.name} --scale {plan.scale.name}"
  lines = [f"# {exp.title or exp.name}", "",
           f"- Experiment `{exp.name}` on {DATASET_LABELS.get(exp.dataset, exp.dataset)}, scale "
           f"`{plan.scale.name}` ({plan.scale.description}).",
           f"- Grid: methods {', '.join(exp.methods)}; epochs {', '.join(map(str, exp.epochs))}; "
           f"seeds {', '.join(map(str, exp.seeds))}; data fractions "
           f"{', '.join(f'{f:g}' for f in exp.fractions)}.",
           f"- Config overrides: {json.dumps(plan.overrides) if plan.overrides else 'none'}.",
           f"- Runs finished: {len(done)} of {len(rows)}; device: {', '.join(devices) or 'n/a'}.",
           f"- Command: `{command or default_command}`"]
  if teacher[2]:
    paper_note = ""
    if paper_teacher:
      paper_note = (f" (the paper's {DATASET_LABELS.get(exp.paper[1], '')} teacher: "
                    f"{paper_teacher:.2f}%)")
    lines.append(f"- Teacher accuracy: {100 * teacher[0]:.2f}%{paper_note}.")
  lines.append("")
  if exp.role == "budgets":
    ref = (f" The paper columns are its Table {exp.paper[0]} "
           f"({DATASET_LABELS.get(exp.paper[1])})" if exp.paper else "")
    if exp.paper and exp.paper[1] != exp.dataset:
      ref += (", another data set, paired by position when both grids have as many budgets, "
              "else at the same share of the longest budget")
    lines += ["## Accuracy at the best epoch (the paper's selection) and training time", "",
              f"Mean ± std over seeds; time is training steps only (no compilation or "
              f"evaluation), in minutes.{ref + '.' if ref else ''}", "",
              budgets_table(plan, rows, paper, "best_accuracy"), "",
              "## Accuracy at the last epoch", "",
              budgets_table(plan, rows, paper, "final_accuracy", with_paper=False), "",
              "## Against the paper's claims", ""]
    lines += [f"- {c}" for c in budget_claims(plan, rows, paper)]
  elif exp.role == "fractions":
    lines += [f"## Accuracy (best epoch) against the share of the training data, "
              f"{max(exp.epochs)} epochs", "",
              "The share is of the training set the scale uses (data.fraction "
              f"{plan.overrides.get('data.fraction', 1.0):g} of the full set); the subsets are "
              "nested.", "",
              fractions_table(plan, rows, paper, "best_accuracy"), "",
              "## At the last epoch", "",
              fractions_table(plan, rows, [], "final_accuracy"), "",
              "## Against the paper's claims", ""]
    lines += [f"- {c}" for c in fraction_claims(plan, rows, paper)]
  else:
    lines += ["## Test accuracy of the whole network per epoch", "",
              "Naive: a ResNet18 trained from scratch with cross-entropy. R3: that network with "
              "stage 3 re-initialised and trained alone (every other stage frozen) on the MSE to "
              "the trained stage-3 output (feature) or the end-to-end cross-entropy (end2end).", "",
              stagewise_table(plan, rows), "",
              "## Against the paper's claims", ""]
    lines += [f"- {c}" for c in stagewise_claims(plan, rows)]
  lines.append("")
  if plots:
    try:
      figures = make_plots(plan, rows, paper)
      lines += ["## Figures", ""]
      lines += [f"![{os.path.basename(p)}](figures/{os.path.basename(p)})" for p in figures]
    except ImportError as e:
      lines += [f"(No figures: {e})"]
  text = "\n".join(lines) + "\n"
  os.makedirs(plan.out, exist_ok=True)
  with open(plan.report_path, "w") as f:
    f.write(text)
  return text

