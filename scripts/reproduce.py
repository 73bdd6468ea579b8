"""Run one of the paper's experiments as a grid of ordinary training runs, then report on it.

  python scripts/reproduce.py table2_cifar100                 # the paper's Table 2 (GPU-sized)
  python scripts/reproduce.py table2_fashion --scale cpu      # a CPU-sized look on Fashion-MNIST
  python scripts/reproduce.py table2_fashion --scale cpu --seeds 1 --epochs 2,4
  python scripts/reproduce.py table2_fashion --scale cpu --report-only
  python scripts/reproduce.py pairs_cifar100 --pairs wrn40_2:wrn16_2,resnet32x4:shufflev2 \
      --teacher-dir teachers/cifar100               # the field's pair table, imported teachers
  python scripts/reproduce.py --list

Every run is `train_and_evaluate` in its own workdir under --out (default
runs/reproduce/<dataset>_<scale>[_<hash of extra overrides>]); finished runs are skipped, unfinished
ones resume. The grid's CSV, a markdown report with the paper's figures beside ours, and PNG
plots land in the same folder. Experiments and scales are defined in dnd_jax/reproduce/grids.py.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import cli  # noqa: E402
from dnd_jax.reproduce import grids, plan, run  # noqa: E402


def parse_args(argv=None):
  p = cli.ArgumentParser(prog="scripts/reproduce.py", description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("experiment", nargs="?", help="one of: " + ", ".join(grids.EXPERIMENTS))
  p.add_argument("--list", action="store_true", help="list experiments and scales, then exit")
  p.add_argument("--scale", default="paper", choices=list(grids.SCALES),
                 help="shrink the grid and networks (default: paper)")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every run, teacher included (e.g. model.width=8)")
  p.add_argument("--teacher-override", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for the teacher's training only (e.g. model.width=16)")
  p.add_argument("--methods", help="comma list, e.g. kd,pdnd")
  p.add_argument("--epochs", help="comma list of epoch budgets, e.g. 2,4")
  p.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a comma list (0,4; \"0,\" = "
                 "seed 0 alone)")
  p.add_argument("--fractions", help="comma list of data fractions (of the scale's data)")
  p.add_argument("--max-lrs", help="comma list of maximal learning rates (Figures 2b and 3)")
  p.add_argument("--teacher-epochs", type=int, help="epochs of the grid's teacher")
  p.add_argument("--teacher", help="use this exported teacher (<workdir>/model) instead of "
                 "training one")
  p.add_argument("--pairs", help="a pair grid's pairs, teacher:student comma list, e.g. "
                 "wrn40_2:wrn16_2,resnet32x4:shufflev2 (default: all)")
  p.add_argument("--teacher-dir", help="a pair grid's teachers: DIR/<teacher arch> holds each "
                 "exported (or imported: scripts/import_torch_teacher.py) teacher instead of "
                 "training them")
  p.add_argument("--out", help="output folder (default runs/reproduce/<dataset>_<scale>...)")
  p.add_argument("--report-only", action="store_true",
                 help="collect the finished runs and redraw the CSV, tables and figures")
  p.add_argument("--dry-run", action="store_true", help="list the runs and their state only")
  p.add_argument("--no-plots", action="store_true", help="tables only")
  args = p.parse_args(argv)
  if not args.list and not args.experiment:
    p.error("name an experiment (or --list)")
  return args


def plan_from_args(args) -> plan.Plan:
  return plan.make_plan(
      args.experiment, args.scale,
      overrides=plan.parse_overrides(args.override),
      teacher_overrides=plan.parse_overrides(args.teacher_override),
      methods=args.methods.split(",") if args.methods else None,
      epochs=plan.parse_list(args.epochs, int, "--epochs") if args.epochs else None,
      seeds=plan.parse_seeds(args.seeds) if args.seeds else None,
      fractions=plan.parse_list(args.fractions, float, "--fractions") if args.fractions else None,
      max_lrs=plan.parse_list(args.max_lrs, float, "--max-lrs") if args.max_lrs else None,
      teacher_epochs=args.teacher_epochs, teacher_path=args.teacher,
      pairs=[p.strip() for p in args.pairs.split(",") if p.strip()] if args.pairs else None,
      teachers_path=args.teacher_dir, out=args.out)


@cli.guarded
def main(argv=None):
  args = parse_args(argv)
  if args.list:
    for e in grids.EXPERIMENTS.values():
      print(f"{e.name:32s} {e.title}")
    print()
    for s in grids.SCALES.values():
      print(f"--scale {s.name:8s} {s.description}")
    return
  the_plan = plan_from_args(args)
  command = "python scripts/reproduce.py " + " ".join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
      if a not in ("--report-only", "--dry-run"))
  if args.report_only or args.dry_run:
    if args.report_only:
      run.check_plan(the_plan)  # the runs it reports are the plan's (run_plan checks a dry run)
    rows = run.run_plan(the_plan, dry_run=True) if args.dry_run else run.collect(the_plan)
    if args.dry_run:
      return
    run.write_csv(rows, the_plan.csv_path)
  else:
    from dnd_jax.runtime import setup_runtime  # noqa: PLC0415
    setup_runtime()
    rows = run.run_plan(the_plan)
  from dnd_jax.reproduce import report  # noqa: PLC0415
  text = report.write_report(the_plan, rows, command=command, plots=not args.no_plots)
  print(text)
  print(f"CSV: {the_plan.csv_path}\nreport: {the_plan.report_path}", file=sys.stderr)


if __name__ == "__main__":
  main()
