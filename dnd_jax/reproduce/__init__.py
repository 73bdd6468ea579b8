"""The paper's experiments, and the field's CIFAR-100 pair table, as grids of ordinary training
runs, and their reports.

  grids.py    the experiments (arms x budgets x seeds x fractions x max lrs [x pairs]) and the
              scales
  plan.py     an experiment at a scale: output folder, every run's config
  run.py      training a plan's runs (teacher first, finished runs skipped), collecting a CSV
  records.py  what is read back from a run folder
  tables.py   the report's tables and claims beside the published numbers (the paper's, and
              other libraries' for the pair table)
  plots.py    the report's figures
  report.py   the markdown report

`scripts/reproduce.py` is the command line.
"""
