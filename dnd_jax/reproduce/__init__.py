"""The paper's experiments as grids of ordinary training runs, and their reports.

  grids.py    the experiments (arms x budgets x seeds x fractions x max lrs) and the scales
  plan.py     an experiment at a scale: output folder, every run's config
  run.py      training a plan's runs (teacher first, finished runs skipped), collecting a CSV
  records.py  what is read back from a run folder
  tables.py   the report's tables and claims beside the paper's published numbers
  plots.py    the report's figures
  report.py   the markdown report

`scripts/reproduce.py` is the command line.
"""
