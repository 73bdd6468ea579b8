"""Add one finished (or cut-off) training run to the GPU headline script's results in $OUT.

    python scripts/gpu/record_run.py --out OUT --part a --name pdnd_cifar --workdir W \\
        --rc 0 --wall 201.3 -- scripts/train.py --config configs/pdnd_cifar.py ...

Rewrites OUT/headline.json (every run so far, each with its whole summary.json), headline.csv and
headline.md (one row per run: the process's wall clock, epochs, accuracy, and every time field
the summary holds, whatever their names), and, when matplotlib is there, OUT/fashion_budgets.png
(accuracy against epoch budget per method, for the Fashion-MNIST runs). Called by
scripts/gpu_headline.sh after every run, so a command cut off by its time limit keeps the runs it
finished.
"""

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dnd_jax import workdir as run_folder  # noqa: E402 (the run folder's owner; read only here)

FIXED = ["part", "run", "exit", "process_wall_s", "method", "dataset", "epochs", "epochs_done",
         "final_accuracy", "best_accuracy", "teacher_accuracy", "images_per_s"]


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _epochs_done(workdir):
  try:
    return len(run_folder.read_metrics(workdir))
  except (OSError, ValueError):
    return 0


def record(args) -> dict:
  path = os.path.join(args.out, "headline.json")
  runs = (_read_json(path) or {"runs": []})["runs"]
  try:
    summary = run_folder.read_summary(args.workdir)
  except (OSError, ValueError):
    summary = None
  runs.append({"part": args.part, "run": args.name, "exit": args.rc,
               "process_wall_s": args.wall, "epochs_done": _epochs_done(args.workdir),
               "note": args.note, "command": " ".join(args.command), "summary": summary})
  result = {"runs": runs}
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)
  return result


def flat_rows(runs):
  """One flat row per run: the fixed columns, then every `*_s` field of any summary (sorted)."""
  time_keys = sorted({k for r in runs for k in (r["summary"] or {})
                      if k.endswith("_s") and isinstance(r["summary"][k], (int, float))})
  rows = []
  for r in runs:
    s = r["summary"] or {}
    row = {"part": r["part"], "run": r["run"], "exit": r["exit"],
           "process_wall_s": r["process_wall_s"], "epochs_done": r["epochs_done"],
           **{k: s.get(k) for k in FIXED if k in s}, **{k: s.get(k) for k in time_keys}}
    rows.append(row)
  return rows, FIXED + [k for k in time_keys if k not in FIXED]


def _cell(v):
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def write_tables(out, result):
  rows, columns = flat_rows(result["runs"])
  with open(os.path.join(out, "headline.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  lines = ["Runs of scripts/gpu_headline.sh, in the order they ran. `process_wall_s`: the whole "
           "`python scripts/train.py` process (start-up included); the other times are the "
           "run's summary.json. Accuracies are fractions; on the random-pixel CIFAR-100 they "
           "are chance (1%) by construction. Exit 124: the run hit its time limit.", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
  lines += ["", "Commands:", ""]
  lines += [f"- {r['run']}: `{r['command']}`" + (f" ({r['note']})" if r["note"] else "")
            for r in result["runs"]]
  with open(os.path.join(out, "headline.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot_budgets(out, result):
  """Best accuracy against epoch budget per method, for the finished Fashion-MNIST students."""
  points = {}
  for r in result["runs"]:
    s = r["summary"] or {}
    if r["exit"] == 0 and s.get("dataset") == "fashion_mnist" and s.get("method") != "teacher":
      points.setdefault(s["method"], []).append((s["epochs"], 100 * s["best_accuracy"]))
  if not points:
    return
  try:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for method, xy in sorted(points.items()):
    xs, ys = zip(*sorted(xy))
    ax.plot(xs, ys, marker="o", label=method)
  ax.set_xlabel("epochs")
  ax.set_ylabel("best test accuracy (%)")
  ax.set_title("Fashion-MNIST, ResNet34 -> ResNet18, full width")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "fashion_budgets.png"), dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--part", required=True)
  p.add_argument("--name", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--rc", type=int, required=True)
  p.add_argument("--wall", type=float, required=True)
  p.add_argument("--note", default="")
  p.add_argument("command", nargs="*")
  args = p.parse_args(argv)
  result = record(args)
  write_tables(args.out, result)
  plot_budgets(args.out, result)


if __name__ == "__main__":
  main()
