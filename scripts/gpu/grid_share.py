"""One line on a reproduction grid's CSV (scripts/reproduce.py): how many of its runs finished, and
what share of their wall time went to starting up and compiling rather than training and
evaluating. The grid's runs share one process and one compilation cache, so after the first run of
each program that share should be small; this line is how a GPU part shows that it was.

  python scripts/gpu/grid_share.py runs/reproduce/table3_fashion_paper/table3_fashion.csv
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dnd_jax import workdir as run_folder  # noqa: E402 (the run folder's owner; read only here)
from dnd_jax.reproduce.run import read_csv  # noqa: E402


def share_line(rows: list[dict]) -> str:
  """The line, from the finished rows' run summaries (the CSV has no start-up time)."""
  done = [run_folder.read_summary(r["workdir"]) or {} for r in rows if r["status"] == "finished"]
  wall = sum(s.get("wall_time_s") or 0.0 for s in done)
  startup = sum(s.get("startup_time_s") or 0.0 for s in done)
  compile_s = sum(s.get("compile_time_s") or 0.0 for s in done)
  share = (startup + compile_s) / wall if wall else 0.0
  return (f"{len(done)} of {len(rows)} runs finished; startup {startup:.1f} s + compile "
          f"{compile_s:.1f} s of {wall:.1f} s of their wall time ({100 * share:.1f}%)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("csv", help="the grid's CSV")
  print(share_line(read_csv(parser.parse_args().csv)))


if __name__ == "__main__":
  main()
