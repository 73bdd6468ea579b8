"""scripts/reproduce.py's machinery: grids, skipping finished runs, CSV aggregation, reports, plots.

Everything but the `slow` tests uses a fake trainer and synthetic results, so the grid logic is
tested without training; the slow ones run the real loop on tiny grids.
"""

import csv
import json
import math
import os
import shutil

import jax
import pytest

from dnd_jax import checkpoints, models
from dnd_jax.configs import load_config_file
from dnd_jax.reproduce import grids, plots, report, run, tables
from dnd_jax.reproduce import plan as ex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- grids and names ----------------------------------------------------------------------------


def test_run_names_are_readable_and_unique():
  assert grids.run_name("pdnd", 60, 1, 0.2) == "pdnd_e60_f0.2_s1"
  assert grids.RunSpec("kd", 200, 0).name == "kd_e200_f1_s0"
  for name in grids.EXPERIMENTS:
    specs = grids.expand(ex.make_plan(name).experiment)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), name


def test_paper_grids_have_the_papers_size():
  t2 = ex.make_plan("table2_cifar100").experiment
  assert (t2.epochs, t2.seeds, t2.arm_names) == ((60, 100, 200), (0, 1, 2), grids.METHODS)
  assert len(grids.expand(t2)) == 5 * 3 * 3
  t3 = ex.make_plan("table3_data_efficiency").experiment
  assert t3.fractions == (0.2, 0.4, 0.6, 0.8, 1.0) and t3.epochs == (200,)
  assert ex.make_plan("figure4_epochs").experiment.epochs == (20, 40, 60, 100, 150, 200)
  assert ex.make_plan("table1_imagewoof").experiment.dataset == "imagewoof"


def test_scale_and_command_line_shrink_a_grid():
  plan = ex.make_plan("table2_fashion", "cpu")
  assert plan.experiment.epochs == (2, 4) and plan.overrides["model.width"] == 8
  plan = ex.make_plan("table2_fashion", "cpu", epochs=[2], seeds=ex.parse_seeds("1"),
                      methods=["kd", "pdnd"], overrides={"data.fraction": 0.05})
  assert [s.name for s in grids.expand(plan.experiment)] == ["kd_e2_f1_s0", "pdnd_e2_f1_s0"]
  assert plan.overrides["data.fraction"] == 0.05
  # Extra overrides get their own output folder; grid flags alone do not.
  assert plan.out != ex.make_plan("table2_fashion", "cpu").out
  assert ex.make_plan("table2_fashion", "cpu", seeds=[0]).out == ex.make_plan(
      "table2_fashion", "cpu").out
  with pytest.raises(ValueError, match="Unknown method"):
    ex.make_plan("table2_fashion", methods=["nope"])
  # the tiny scale's teacher is a ResNet18 (it compiles faster), and its students distil from it
  tiny = ex.make_plan("table2_fashion", "tiny")
  assert ex.teacher_config(tiny).model.depth == 18
  assert ex.run_config(tiny, grids.RunSpec("dnd", 1, 0)).teacher.depth == 18
  assert ex.teacher_config(ex.make_plan("table2_fashion", "cpu")).model.depth == 34


def test_parsing_of_seeds_lists_and_overrides():
  assert ex.parse_seeds("3") == (0, 1, 2)
  assert ex.parse_seeds("0,4") == (0, 4) and ex.parse_seeds("0,") == (0,)
  with pytest.raises(ValueError, match="count of seeds must be 1 or more"):
    ex.parse_seeds("0")  # it ran the grid's own seeds without a word
  assert ex.parse_list("2,4") == (2, 4)
  parsed = ex.parse_overrides(["model.width=8", "data.fraction=0.1", "method.head_mse_on=logits"])
  assert parsed == {"model.width": 8, "data.fraction": 0.1, "method.head_mse_on": "logits"}
  with pytest.raises(ValueError):
    ex.parse_overrides(["model.width"])


def test_run_config_applies_overrides_to_student_and_teacher(tmp_path):
  plan = ex.make_plan("table3_fashion", "cpu", out=str(tmp_path))
  spec = grids.RunSpec("pdnd", 4, 1, 0.2)
  config = ex.run_config(plan, spec)
  assert (config.num_epochs, config.seed, config.model.width) == (4, 1, 8)
  assert config.data.fraction == pytest.approx(0.1 * 0.2)  # relative to the scale's share
  assert (config.teacher.width, config.teacher.depth) == (8, 34)
  assert config.teacher.checkpoint == os.path.join(str(tmp_path), "teacher", "model")
  assert config.teacher.config == ""
  teacher = ex.teacher_config(plan)
  assert (teacher.model.width, teacher.num_epochs, teacher.method.name) == (8, 8, "teacher")
  stage = ex.make_plan("figure2a_fashion", "cpu", out=str(tmp_path))
  naive = ex.run_config(stage, grids.RunSpec("naive", 4, 0))
  assert (naive.model.depth, naive.method.name) == (18, "teacher")
  feature = ex.run_config(stage, grids.RunSpec("feature", 4, 0))
  trained = os.path.join(str(tmp_path), "runs", "naive_e4_f1_s0", "model")
  assert feature.method.init_from == feature.teacher.checkpoint == trained
  assert (feature.teacher.depth, feature.teacher.width, feature.model.depth) == (18, 8, 18)
  with pytest.raises(ValueError, match="no field"):
    ex.apply_overrides(config, {"model.widht": 3})


def test_a_chosen_arm_brings_the_arm_it_starts_from_and_a_given_teacher_its_own_shape(tmp_path):
  """`--methods feature` of Figure 2a needs the naive run it re-initialises (it was a StopIteration
  traceback); a teacher given with --teacher keeps the architecture its model.json records (it
  was overwritten with the grid's teacher config's, which refused a ResNet18 teacher)."""
  for methods, arms in ((["feature"], ("naive", "feature")),
                        (["end2end", "feature"], ("naive", "feature", "end2end"))):
    plan = ex.make_plan("figure2a_fashion", "cpu", methods=methods, out=str(tmp_path))
    assert plan.experiment.arm_names == arms  # in the grid's order: the start first
  plan = ex.make_plan("table2_fashion", "cpu", methods=["kd"], teacher_path=str(tmp_path / "t"))
  config = ex.run_config(plan, grids.RunSpec("kd", 2, 0))
  assert config.teacher.checkpoint == str(tmp_path / "t") and config.teacher.config == ""
  assert (config.teacher.depth, config.teacher.width, config.teacher.stem) == (None, None, None)
  plan = ex.make_plan("table2_fashion", "cpu", methods=["kd"], teacher_path=str(tmp_path / "t"),
                      overrides={"teacher.depth": 18})
  assert ex.run_config(plan, grids.RunSpec("kd", 2, 0)).teacher.depth == 18  # checked, not lost


def test_a_method_field_override_applies_to_the_methods_that_have_it(tmp_path):
  """`--override method.tau=2` was refused before anything ran (the teacher's config has no tau)
  and, with --teacher, failed at the first AT cell after training the KD ones."""
  plan = ex.make_plan("table2_fashion", "cpu", methods=["kd", "at"], out=str(tmp_path),
                      overrides={"method.tau": 2.0})
  assert ex.run_config(plan, grids.RunSpec("kd", 2, 0)).method.tau == 2.0
  assert "tau" not in ex.run_config(plan, grids.RunSpec("at", 2, 0)).method
  assert ex.teacher_config(plan).method.name == "teacher"
  with pytest.raises(ValueError, match="no method of this grid .*has the field 'taux'"):
    ex.make_plan("table2_fashion", "cpu", methods=["kd"], overrides={"method.taux": 2.0})


# --- running: skip finished, resume unfinished, refuse changed configs --------------------------


def _fake_trainer(calls, accuracy=0.5):
  """Writes what train_and_evaluate writes (config, metrics, summary) without training."""

  def train(config, workdir):
    calls.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for e in range(1, config.num_epochs + 1):
        f.write(json.dumps({"epoch": e, "test_accuracy": accuracy * e / config.num_epochs}) + "\n")
    summary = {"final_accuracy": accuracy, "best_accuracy": accuracy, "best_epoch": 1,
               "teacher_accuracy": 0.9, "train_time_s": 60.0, "time_per_epoch_s": 30.0,
               "eval_split": "test", "device_kind": "cpu"}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    os.makedirs(os.path.join(workdir, "model"), exist_ok=True)
    with open(os.path.join(workdir, "model", "model.json"), "w") as f:
      json.dump({}, f)
    return summary

  return train


def test_run_plan_trains_teacher_once_and_skips_finished_runs(tmp_path):
  plan = ex.make_plan("table2_fashion", "tiny", methods=["kd", "dnd"], epochs=[1, 2],
                      out=str(tmp_path))
  finished = plan.run_dir(grids.RunSpec("dnd", 2, 0))
  os.makedirs(finished)
  with open(os.path.join(finished, "summary.json"), "w") as f:
    json.dump({"final_accuracy": 0.7, "best_accuracy": 0.8}, f)
  calls = []
  rows = run.run_plan(plan, train_fn=_fake_trainer(calls))
  assert calls[0] == plan.teacher_dir
  assert sorted(os.path.basename(c) for c in calls[1:]) == ["dnd_e1_f1_s0", "kd_e1_f1_s0",
                                                            "kd_e2_f1_s0"]
  assert [r["status"] for r in rows] == ["finished"] * 4
  assert os.path.isfile(plan.csv_path)
  calls.clear()
  run.run_plan(plan, train_fn=_fake_trainer(calls))
  assert calls == []  # everything finished: nothing trains, not even the teacher


def test_a_grid_cut_off_keeps_a_csv_of_every_run_it_finished(tmp_path):
  """The CSV is rewritten after every run, not once at the end: a grid stopped by a time limit
  (the GPU scripts' parts) or a lost machine keeps its finished runs' rows."""
  plan = ex.make_plan("table2_fashion", "tiny", methods=["kd", "dnd"], out=str(tmp_path))
  finish = _fake_trainer([])

  def cut_off(config, workdir):
    if os.path.basename(workdir) == "dnd_e1_f1_s0":
      raise KeyboardInterrupt  # the limit's signal, as the second run starts
    return finish(config, workdir)

  with pytest.raises(KeyboardInterrupt):
    run.run_plan(plan, train_fn=cut_off)
  rows = run.read_csv(plan.csv_path)
  assert [(r["method"], r["status"]) for r in rows] == [("kd", "finished"), ("dnd", "missing")]
  assert rows[0]["final_accuracy"] == 0.5


def test_changed_config_is_refused_not_mixed(tmp_path):
  plan = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path))
  run.run_plan(plan, train_fn=_fake_trainer([]))
  changed = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path),
                         overrides={"model.width": 2})
  with pytest.raises(ValueError, match="different config"):
    run.run_plan(changed, train_fn=_fake_trainer([]))


def test_a_grid_that_cannot_run_or_would_mix_runs_is_refused_before_any_work(tmp_path):
  """Bad grid values, overrides that every cell undoes, repeats that count a run twice: refused
  when the plan is made. A bad override value: before the teacher trains. A report or a dry run
  of runs made with other settings, or another teacher: refused as a run would be."""
  for kwargs, message in (({"epochs": [0]}, "--epochs 0: 0 is not 1 or more"),
                          ({"fractions": [1.5]}, r"--fractions 1.5: 1.5 is not in \(0, 1\]"),
                          ({"max_lrs": [float("nan")]}, "nan is not finite and above 0"),
                          ({"seeds": [0, 1, 1]}, "--seeds 0,1,1: 1 is given twice"),
                          ({"methods": ["kd", "kd"]}, "--methods kd,kd: kd is given twice"),
                          ({"overrides": {"num_epochs": 3}}, "override num_epochs: .*--epochs"),
                          ({"overrides": {"seed": 7}}, "override seed: .*--seeds")):
    with pytest.raises(ValueError, match=message):
      ex.make_plan("table2_fashion", "tiny", **{"methods": ["kd"], "out": str(tmp_path), **kwargs})
  with pytest.raises(ValueError, match="override optim.lr: .*--max-lrs"):
    ex.make_plan("figure3_fashion", "tiny", out=str(tmp_path), overrides={"optim.lr": 0.1})

  calls = []
  bad = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path / "bad"),
                     overrides={"optim.weight_decay": float("inf")})
  with pytest.raises(ValueError, match="optim.weight_decay=inf"):
    run.run_plan(bad, train_fn=_fake_trainer(calls))
  assert calls == []  # not even the teacher

  # runs made with other settings (a report or a dry run read them), or another teacher
  model = models.ResNet(depth=18, num_classes=10, width=4)
  teachers = {}
  for name, key in (("a", 0), ("b", 1)):
    teachers[name] = str(tmp_path / name / "model")
    checkpoints.save_model(teachers[name], models.init_variables(model, jax.random.key(key),
                                                                 (8, 8, 1)),
                           {"depth": 18, "width": 4, "stem": "cifar", "num_classes": 10,
                            "in_channels": 1})
  plan = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path / "grid"),
                      teacher_path=teachers["a"])
  run.run_plan(plan, train_fn=_fake_trainer([]))
  wider = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path / "grid"),
                       teacher_path=teachers["a"], overrides={"model.width": 2})
  with pytest.raises(ValueError, match="different config"):
    run.check_plan(wider)  # what --report-only runs first
  with pytest.raises(ValueError, match="different config"):
    run.run_plan(wider, dry_run=True)
  summary_path = os.path.join(plan.run_dir(grids.RunSpec("kd", 1, 0)), "summary.json")
  with open(summary_path) as f:
    summary = json.load(f)
  variables, _ = checkpoints.load_model(teachers["a"], checkpoints.read_model_meta(
      teachers["a"])["architecture"], None)
  with open(summary_path, "w") as f:  # as a real run's summary says which weights taught it
    json.dump({**summary, "teacher_digest": checkpoints.variables_digest(variables)}, f)
  run.check_plan(plan)
  other = ex.make_plan("table2_fashion", "tiny", methods=["kd"], out=str(tmp_path / "grid"),
                       teacher_path=teachers["b"])
  with pytest.raises(ValueError, match="distilled from another teacher than this grid's"):
    run.check_plan(other)


@pytest.mark.parametrize("grid, seeds", [("figure2a_fashion", None), ("table2_fashion", 3)])
def test_the_committed_grids_redraw_from_a_copy_of_their_folder(tmp_path, grid, seeds):
  """docs/results.md: `--out <a copy of docs/reproduce/fashion_mnist_cpu> --report-only` redraws
  the committed CSVs; its runs' stored configs name paths of the folder they ran in (Figure 2a's
  method.init_from), which must not count as another config."""
  committed = os.path.join(REPO, "docs", "reproduce", "fashion_mnist_cpu")
  copy = str(tmp_path / "copy")
  shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("figures"))
  plan = ex.make_plan(grid, "cpu", out=copy, seeds=ex.parse_seeds(str(seeds)) if seeds else None)
  run.check_plan(plan)
  rows = run.collect(plan)
  with open(os.path.join(committed, f"{grid}.csv"), newline="") as f:
    before = [{k: v for k, v in row.items() if k != "workdir"} for row in csv.DictReader(f)]
  run.write_csv(rows, str(tmp_path / "again.csv"))
  with open(tmp_path / "again.csv", newline="") as f:
    after = [{k: v for k, v in row.items() if k != "workdir"} for row in csv.DictReader(f)]
  assert after == before


def test_collect_marks_missing_runs(tmp_path):
  plan = ex.make_plan("table2_fashion", "tiny", methods=["kd", "pdnd"], out=str(tmp_path))
  rows = run.collect(plan)
  assert [r["status"] for r in rows] == ["missing", "missing"]
  assert all(r["final_accuracy"] is None for r in rows)


# --- aggregation --------------------------------------------------------------------------------


def _rows(values: dict, epochs_key=None) -> list[dict]:
  rows = []
  for (method, epochs, fraction), accs in values.items():
    for seed, acc in enumerate(accs):
      rows.append({"method": method, "epochs": epochs, "fraction": fraction, "seed": seed,
                   "status": "finished", "best_accuracy": acc, "final_accuracy": acc - 0.01,
                   "train_time_s": 120.0, "time_per_epoch_s": 2.0, "teacher_accuracy": 0.8,
                   "device_kind": "cpu", "workdir": f"/nonexistent/{method}_{epochs}_{seed}"})
  return rows


def test_aggregate_gives_mean_and_sample_std_over_seeds(tmp_path):
  rows = _rows({("kd", 60, 1.0): [0.70, 0.72, 0.74], ("dnd", 60, 1.0): [0.8]})
  rows.append({**rows[0], "seed": 9, "status": "missing", "best_accuracy": None})
  agg = tables.aggregate(rows, "best_accuracy")
  mean, std, n = agg[("kd", 60, 1.0, None)]
  assert (mean, n) == (pytest.approx(0.72), 3)
  assert std == pytest.approx(0.02)  # sample std (ddof = 1)
  mean, std, n = agg[("dnd", 60, 1.0, None)]
  assert (mean, n) == (pytest.approx(0.8), 1) and math.isnan(std)
  assert tables.fmt_acc(agg[("kd", 60, 1.0, None)]) == "72.00 ± 2.00"
  assert tables.fmt_acc(agg[("dnd", 60, 1.0, None)], expected_n=3) == "80.00 (n=1)"
  # The CSV round trip keeps the numbers.
  path = str(tmp_path / "grid.csv")
  run.write_csv([{**r, "experiment": "x"} for r in rows], path)
  back = run.read_csv(path)
  assert tables.aggregate(back, "best_accuracy")[("kd", 60, 1.0, None)][0] == pytest.approx(0.72)
  assert back[-1]["best_accuracy"] is None and back[0]["epochs"] == 60


def test_budget_pairing_with_the_papers_grid():
  assert tables.match_budgets((60, 100, 200), (60, 100, 200), True) == {60: 60, 100: 100, 200: 200}
  assert tables.match_budgets((20, 60), (60, 100, 200), True) == {60: 60}
  assert tables.match_budgets((2, 4, 6), (60, 100, 200), False) == {2: 60, 4: 100, 6: 200}
  assert tables.match_budgets((2, 4, 6, 10, 15, 20), (60, 100, 200), False) == {
      6: 60, 10: 100, 20: 200}


# --- reports and plots --------------------------------------------------------------------------


def test_markdown_report_puts_the_papers_numbers_beside_ours(tmp_path):
  plan = ex.make_plan("table2_cifar100", seeds=[0, 1], out=str(tmp_path))
  values = {(m, e, 1.0): [0.70 + 0.01 * i, 0.72 + 0.01 * i]
            for i, m in enumerate(grids.METHODS) for e in (60, 100, 200)}
  rows = _rows(values)
  run.write_csv(rows, plan.csv_path)
  text = report.write_report(plan, run.read_csv(plan.csv_path), plots=False)
  assert "| KD approach | 60 ep.: acc. (%) | time (min) | paper, CIFAR-100 60 ep." in text
  kd_row = next(line for line in text.splitlines() if line.startswith("| Vanilla KD |"))
  assert "71.00 ± 1.41" in kd_row and "2.00" in kd_row and "76.19 ± 0.28 (37 min)" in kd_row
  pdnd_row = next(line for line in text.splitlines() if line.startswith("| Progressive DnD |"))
  assert "79.39 ± 0.16 (35 min)" in pdnd_row and "75.00 ± 1.41" in pdnd_row
  assert "the paper's CIFAR-100 teacher: 78.39%" in text
  assert "Progressive DnD − Vanilla KD +4.00 pts" in text and "+3.20 pts" in text
  assert os.path.isfile(plan.report_path)


def test_fraction_report_and_all_plots_are_written_as_png(tmp_path):
  plan = ex.make_plan("table3_data_efficiency", out=str(tmp_path))
  rows = []
  for m in grids.METHODS:
    for fr in plan.experiment.fractions:
      workdir = str(tmp_path / "runs" / grids.run_name(m, 200, 0, fr))
      _fake_trainer([], accuracy=0.5 + 0.3 * fr)(_tiny_config(200), workdir)
      rows += [{"method": m, "epochs": 200, "fraction": fr, "seed": 0, "status": "finished",
                "best_accuracy": 0.5 + 0.3 * fr, "final_accuracy": 0.5 + 0.3 * fr,
                "train_time_s": 10.0, "workdir": workdir}]
  text = report.write_report(plan, rows)
  assert "| Vanilla KD | 56.00 | 55.65 |" in text  # ours at 20% beside the paper's 20%
  png = os.path.join(plan.figures_dir, "table3_data_efficiency_fractions.png")
  budgets = ex.make_plan("table2_fashion", "tiny", out=str(tmp_path))
  synthetic = _synthetic_budget_rows(tmp_path)
  curves = [plots.plot_epoch_curves(budgets, synthetic, [], str(tmp_path / "c.png")),
            plots.plot_budgets(budgets, synthetic, tables.load_paper(), str(tmp_path / "b.png"))]
  stage = ex.make_plan("figure2a_fashion", "tiny", out=str(tmp_path))
  stage_rows = _synthetic_budget_rows(tmp_path, stage.experiment.arm_names)
  curves.append(plots.plot_epoch_curves(stage, stage_rows, [], str(tmp_path / "s.png")))
  for path in [png, *curves]:
    with open(path, "rb") as f:
      assert f.read(8) == PNG_MAGIC, path


def test_figure2a_before_training_is_of_the_same_runs_as_the_curve(tmp_path):
  """The "before training" column (and the curve's epoch 0) averages the runs the curve does:
  at the largest data fraction, not every fraction of the grid."""
  plan = ex.make_plan("figure2a_fashion", "tiny", out=str(tmp_path), fractions=[0.5, 1.0])
  rows, epochs = [], max(plan.experiment.epochs)
  for m in plan.experiment.arm_names:
    for fraction, start in ((0.5, 0.1), (1.0, 0.3)):
      workdir = str(tmp_path / f"{m}_{fraction}")
      _fake_trainer([])(_tiny_config(epochs), workdir)
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({**summary, "start_accuracy": start}, f)
      rows.append({"method": m, "epochs": epochs, "fraction": fraction, "seed": 0,
                   "status": "finished", "max_lr": tables.grid_lr(plan.experiment),
                   "best_accuracy": 0.5, "final_accuracy": 0.5, "train_time_s": 1.0,
                   "workdir": workdir})
  assert tables.start_accuracies(plan, rows, plan.experiment.arm_names[-1], epochs) == [0.3]
  lines = [line for line in tables.curves_table(plan, rows).splitlines()
           if line.startswith("| R3-ResNet18")]
  assert lines and all(line.split(" | ")[1].startswith("30.00") for line in lines), lines


def _tiny_config(epochs):
  config = load_config_file("configs/kd_fashion.py")
  config.num_epochs = epochs
  return config


def _synthetic_budget_rows(tmp_path, methods=grids.METHODS):
  rows = []
  for m in methods:
    for seed in (0, 1):
      workdir = str(tmp_path / "curves" / f"{m}_{seed}")
      _fake_trainer([], accuracy=0.6 + 0.05 * seed)(_tiny_config(3), workdir)
      rows.append({"method": m, "epochs": 1, "fraction": 1.0, "seed": seed, "status": "finished",
                   "best_accuracy": 0.6, "final_accuracy": 0.6, "train_time_s": 1.0,
                   "workdir": workdir})
  return rows


# --- pair grids: the field's teacher -> student table ------------------------------------------


def test_pair_grid_plans_every_pair_with_its_own_teacher_and_refuses_what_it_cannot_run(tmp_path):
  """pairs_cifar100: each of the table's pairs x KD, DnD, PDnD x seeds, the student the pair's
  and its teacher one per teacher architecture (trained, or from --teacher-dir); at the tiny scale
  every network at test size. Listed by a dry run without training; bad selections refused."""
  plan = ex.make_plan("pairs_cifar100", out=str(tmp_path / "paper"))
  exp = plan.experiment
  assert len(exp.pairs) == 11 and exp.arm_names == ("kd", "dnd", "pdnd") and exp.epochs == (240,)
  specs = grids.expand(exp)
  assert len(specs) == 11 * 3 * 3 and specs[0].name == "resnet56-resnet20_kd_e240_f1_s0"
  published = {(r["teacher"], r["student"]): r for r in tables.load_published_pairs()}
  assert {(p.teacher, p.student) for p in exp.pairs} == set(published)
  assert published[("resnet32x4", "shufflev2")]["acc_mean"] == 74.45
  assert all(r["source"].startswith("mdistiller") for r in published.values())
  cross = grids.RunSpec("dnd", 240, 0, pair="resnet32x4-shufflev2")
  config = ex.run_config(plan, cross)
  assert (config.model.arch, config.teacher.arch, config.teacher.config) == (
      "shufflev2", "resnet32x4", "")
  assert config.teacher.checkpoint == os.path.join(str(tmp_path / "paper"), "teachers",
                                                   "resnet32x4", "model")
  assert not config.model.arch_kwargs and ex.teacher_config(plan, "resnet32x4").model.arch == (
      "resnet32x4")  # the published networks at the paper's scale
  rows = run.run_plan(plan, dry_run=True)  # every cell's config checked, nothing trained
  assert len(rows) == 99 and {r["status"] for r in rows} == {"missing"}
  assert not os.path.exists(tmp_path / "paper" / "teachers")

  tiny = ex.make_plan("pairs_cifar100", "tiny", pairs=["resnet32x4:shufflev2", "wrn40_2:wrn16_2"],
                      out=str(tmp_path / "tiny"))
  assert [p.key for p in tiny.experiment.pairs] == ["wrn40_2:wrn16_2", "resnet32x4:shufflev2"]
  config = ex.run_config(tiny, grids.RunSpec("kd", 1, 0, pair="resnet32x4-shufflev2"))
  assert config.model.arch_kwargs.num_blocks == (1, 1, 1)
  assert config.teacher.arch_kwargs.to_dict() == {"depth": 8, "widths": (8, 8, 16, 32)}
  # every pair's networks at test size: family keyword arguments they take, equal stage counts
  assert len(run.run_plan(ex.make_plan("pairs_cifar100", "tiny", out=str(tmp_path / "all")),
                          dry_run=True)) == 11 * 3
  given = ex.make_plan("pairs_cifar100", "tiny", pairs=["resnet32x4:shufflev2"],
                       teachers_path=str(tmp_path / "given"))
  assert ex.run_config(given, grids.RunSpec("kd", 1, 0, pair="resnet32x4-shufflev2")).teacher \
      .checkpoint == str(tmp_path / "given" / "resnet32x4" / "model")
  with pytest.raises(FileNotFoundError, match="holds no exported resnet32x4 teacher"):
    run.check_plan(given)

  for kwargs, message in (
      ({"pairs": ["wrn40_2:wrn16"]}, "--pairs: unknown pair 'wrn40_2:wrn16' for pairs_cifar100; "
                                     "known \\(teacher:student\\): resnet56:resnet20"),
      ({"pairs": ["vgg13:vgg8", "vgg13:vgg8"]}, "vgg13:vgg8 is given twice"),
      ({"teacher_path": str(tmp_path)}, "--teacher: pairs_cifar100 has a teacher per pair"),
      ({"overrides": {"model.arch": "vgg8"}}, "override model.arch: .*use --pairs"),
      ({"teacher_overrides": {"model.arch": "vgg13"}}, "--teacher-override model.arch")):
    with pytest.raises(ValueError, match=message):
      ex.make_plan("pairs_cifar100", "tiny", **kwargs)
  for kwargs in ({"pairs": ["vgg13:vgg8"]}, {"teachers_path": str(tmp_path)}):
    with pytest.raises(ValueError, match="table2_fashion is not a grid of teacher/student pairs"):
      ex.make_plan("table2_fashion", "tiny", **kwargs)


def test_pair_grid_trains_each_teacher_once_and_reports_beside_the_published_kd(tmp_path):
  """One cross-family pair at the tiny scale with the fake trainer: its teacher first, then KD,
  DnD and PDnD; the CSV has the pair column, and the report puts mdistiller's published KD beside
  ours. A teacher given with --teacher-dir trains nothing but the students."""
  plan = ex.make_plan("pairs_cifar100", "tiny", pairs=["resnet32x4:shufflev2"],
                      out=str(tmp_path / "grid"))
  accuracy = {"kd": 0.5, "dnd": 0.55, "pdnd": 0.6}
  calls = []

  def train(config, workdir):
    return _fake_trainer(calls, accuracy.get(config.method.name, 0.9))(config, workdir)

  rows = run.run_plan(plan, train_fn=train)
  assert calls[0] == plan.pair_teacher_dir("resnet32x4")
  assert [os.path.basename(c) for c in calls[1:]] == [
      f"resnet32x4-shufflev2_{m}_e1_f1_s0" for m in ("kd", "dnd", "pdnd")]
  assert [r["pair"] for r in rows] == ["resnet32x4-shufflev2"] * 3
  with open(plan.csv_path, newline="") as f:
    assert next(csv.reader(f))[:5] == ["experiment", "scale", "dataset", "pair", "method"]
  text = report.write_report(plan, run.read_csv(plan.csv_path), plots=False)
  assert "| teacher -> student | published KD (%) | our teacher (%) | Vanilla KD | DnD |" in text
  assert "| resnet32x4 -> shufflev2 | 74.45 | 90.00 | 50.00 | 55.00 | 60.00 |" in text
  assert "mdistiller README (vanilla KD), 240 epochs" in text
  assert "| resnet32x4 -> shufflev2 | 90.00 | 50.00 | 55.00 | 60.00 |" in text  # the last epoch
  assert "Progressive DnD − Vanilla KD at 1 epoch, mean over 1 pair: +10.00 pts" in text
  assert "Vanilla KD here at 1 epoch − published KD (240 epochs), mean over 1 pair: -24.45 pts" \
      in text
  calls.clear()
  run.run_plan(plan, train_fn=train)
  assert calls == []

  teacher = tmp_path / "given" / "resnet32x4"
  teacher.mkdir(parents=True)
  arch = {"arch": "resnet32x4", "arch_kwargs": grids.SCALES["tiny"].arch_kwargs["resnet32x4"],
          "num_classes": 100, "in_channels": 3}
  with open(teacher / "model.json", "w") as f:
    json.dump({"architecture": arch}, f)
  given = ex.make_plan("pairs_cifar100", "tiny", pairs=["resnet32x4:shufflev2"], methods=["dnd"],
                       teachers_path=str(tmp_path / "given"), out=str(tmp_path / "given_grid"))
  run.run_plan(given, train_fn=train)
  assert [os.path.basename(c) for c in calls] == ["resnet32x4-shufflev2_dnd_e1_f1_s0"]
  with open(teacher / "model.json", "w") as f:
    json.dump({"architecture": {**arch, "arch": "resnet8x4"}}, f)
  with pytest.raises(ValueError, match="holds a resnet8x4 network, not the resnet32x4 teacher"):
    run.check_plan(given)


# --- the real loop, tiny ------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path):
  """Teacher, one distilled run and the report, for real (width 4, 8 px, 2% of the data)."""
  plan = ex.make_plan("table2_fashion", "tiny", methods=["dnd"], out=str(tmp_path))
  rows = run.run_plan(plan)
  assert [r["status"] for r in rows] == ["finished"]
  row = rows[0]
  assert 0.0 <= row["final_accuracy"] <= 1.0 and row["teacher_accuracy"] is not None
  assert os.path.isfile(os.path.join(plan.run_dir(grids.RunSpec("dnd", 1, 0)), "metrics.jsonl"))
  text = report.write_report(plan, run.read_csv(plan.csv_path))
  assert "| DnD |" in text and os.path.isfile(
      os.path.join(plan.figures_dir, "table2_fashion_curves.png"))


@pytest.mark.slow
def test_tiny_figure2a_grid_retrains_stage_3_of_the_naive_run(tmp_path):
  """Figure 2a on the one loop: the naive ResNet18 first, then stage 3 re-initialised and
  retrained both ways from it; the report shows where each curve started."""
  plan = ex.make_plan("figure2a_fashion", "tiny", out=str(tmp_path), overrides={"batch_size": 64})
  rows = run.run_plan(plan)
  assert [r["status"] for r in rows] == ["finished"] * 3
  naive, feature, end2end = rows
  assert naive["start_accuracy"] is None
  for row in (feature, end2end):
    assert 0.0 <= row["start_accuracy"] <= 1.0
  assert feature["teacher_accuracy"] == pytest.approx(naive["final_accuracy"])
  text = report.write_report(plan, run.read_csv(plan.csv_path), plots=False)
  assert "| R3-ResNet18 (feature) |" in text and "before training (%)" in text


def test_figure2b_and_figure3_grids_and_reports(tmp_path):
  """Figure 2b: every method under OneCycle with max lr 0.1; Figure 3: KD and DnD over max lrs.
  Configs, run names, reports and plots, with a fake trainer."""
  fig2b = ex.make_plan("figure2b_fashion", "tiny", out=str(tmp_path))
  assert fig2b.experiment.arm_names == grids.METHODS
  for spec in grids.expand(fig2b.experiment):
    config = ex.run_config(fig2b, spec)
    assert (config.optim.schedule, config.optim.lr * config.optim.max_lr_factor) == (
        "onecycle", pytest.approx(0.1))
    assert (config.optim.base_momentum, config.optim.max_momentum) == (0.85, 0.95)
  assert grids.expand(fig2b.experiment)[0].name == "kd_e1_f1_lr0.1_s0"
  fig3 = ex.make_plan("figure3_fashion", "tiny", out=str(tmp_path), max_lrs=[0.05, 0.5])
  assert [s.name for s in grids.expand(fig3.experiment)] == [
      "kd_e1_f1_lr0.05_s0", "dnd_e1_f1_lr0.05_s0", "kd_e1_f1_lr0.5_s0", "dnd_e1_f1_lr0.5_s0"]
  assert ex.run_config(fig3, grids.RunSpec("dnd", 1, 0, 1.0, 0.5)).optim.lr == pytest.approx(0.05)

  accuracy = {"kd": 0.6, "dnd": 0.7}
  rows, calls = {}, []

  def train(config, workdir):
    lr = config.optim.lr * config.optim.max_lr_factor
    acc = accuracy.get(config.method.name, 0.5) + (0.1 if lr == pytest.approx(0.05) else 0.0)
    return _fake_trainer(calls, accuracy=acc)(config, workdir)

  for plan in (fig2b, fig3):
    rows[plan.experiment.name] = run.run_plan(plan, train_fn=train)
  assert len(calls) == 1 + 5 + 4  # one teacher for both grids (same data and scale), every cell
  text = report.write_report(fig3, rows["figure3_fashion"])
  assert "| KD approach | max lr 0.05: acc. (%) | max lr 0.5: acc. (%) |" in text
  assert "| Vanilla KD | 70.00 | 60.00 |" in text and "| DnD | 80.00 | 70.00 |" in text
  assert "DnD: best at max lr 0.05 (80.00%)" in text
  text = report.write_report(fig2b, rows["figure2b_fashion"])
  assert "| Progressive DnD |" in text and "after epoch 1 (%)" in text
  for name in ("figure3_fashion_lr.png", "figure2b_fashion_curves.png"):
    with open(os.path.join(fig3.figures_dir, name), "rb") as f:
      assert f.read(8) == PNG_MAGIC, name
