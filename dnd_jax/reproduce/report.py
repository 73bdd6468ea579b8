"""The markdown report of a grid: what ran, the experiment's sections, its figures."""

from __future__ import annotations

import json
import os

from dnd_jax.reproduce.plan import Plan
from dnd_jax.reproduce.plots import plot_budgets, plot_epoch_curves, plot_fractions, plot_lrs
from dnd_jax.reproduce.tables import (DATASET_LABELS, PAPER_CSV, _paper_rows, budgets_section,
                                      curves_section, fractions_section, load_paper, lr_section,
                                      mean_std, pairs_section)

# What an experiment's `sections` and `figures` name (`grids.Experiment`): named there, not
# referenced, because the tables and figures read a `plan.Plan`, which is made of the grids.
SECTIONS = {"budgets": budgets_section, "fractions": fractions_section,
            "curves": curves_section, "lr": lr_section, "pairs": pairs_section}
FIGURES = {"curves": plot_epoch_curves, "budgets": plot_budgets, "fractions": plot_fractions,
           "lr": plot_lrs}


def make_plots(plan: Plan, rows: list[dict], paper: list[dict]) -> list[str]:
  """The experiment's PNGs under <out>/figures/, named <experiment>_<figure>.png."""
  exp = plan.experiment
  return [FIGURES[name](plan, rows, paper, os.path.join(plan.figures_dir,
                                                      f"{exp.name}_{name}.png"))
          for name in exp.figures]


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
  lrs = [lr for lr in exp.max_lrs if lr is not None]
  lines = [f"# {exp.title or exp.name}", "",
           f"- Experiment `{exp.name}` on {DATASET_LABELS.get(exp.dataset, exp.dataset)}, scale "
           f"`{plan.scale.name}` ({plan.scale.description}).",
           f"- Grid: methods {', '.join(exp.arm_names)}; epochs {', '.join(map(str, exp.epochs))}; "
           f"seeds {', '.join(map(str, exp.seeds))}; data fractions "
           f"{', '.join(f'{f:g}' for f in exp.fractions)}"
           + (f"; max lrs {', '.join(f'{lr:g}' for lr in lrs)}" if lrs else "")
           + (f"; pairs {', '.join(p.key for p in exp.pairs)}" if exp.pairs else "") + ".",
           f"- Config overrides: {json.dumps(plan.overrides) if plan.overrides else 'none'}.",
           f"- Runs finished: {len(done)} of {len(rows)}; device: {', '.join(devices) or 'n/a'}.",
           f"- Command: `{command or default_command}`"]
  if teacher[2] and not exp.pairs:  # a pair grid's teachers are its table's column
    paper_note = ""
    if paper_teacher:
      paper_note = (f" (the paper's {DATASET_LABELS.get(exp.paper[1], '')} teacher: "
                    f"{paper_teacher:.2f}%)")
    lines.append(f"- Teacher accuracy: {100 * teacher[0]:.2f}%{paper_note}.")
  lines.append("")
  for section in exp.sections:
    lines += SECTIONS[section](plan, rows, paper)
  lines.append("")
  if plots and exp.figures:
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
