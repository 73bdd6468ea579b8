"""The streaming input pipeline (data.loader = "stream") on a generated ImageNet-layout folder:
shards that tile the batches, batches that depend on the step alone, bad input as one line, the
throughput command, a streamed run killed with SIGKILL that resumes to the same metrics, and the
same run over two processes, each streaming its share."""

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import finish_processes, start_processes
from dnd_jax import batches as batch_sources
from dnd_jax import checkpoints, config_check, loop, parallel
from dnd_jax import workdir as run_folder
from dnd_jax.configs import base_config, load_config_file
from dnd_jax.data import DataError, default_data_config, image_folder, stream
from dnd_jax.evaluate import evaluate_model
from dnd_jax.models import ResNet, init_variables
from dnd_jax.train import read_metrics, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("n01", "n02", "n03")
TRAIN_PER_CLASS, VAL_PER_CLASS = 16, 4


def make_folder(root, train=TRAIN_PER_CLASS, val=VAL_PER_CLASS, seed=0):
  """An ImageNet-layout folder of random JPEGs of 16 to 24 px a side, in several aspects."""
  rng = np.random.default_rng(seed)
  for split, n in (("train", train), ("val", val)):
    for name in CLASSES:
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(n):
        h, w = rng.integers(16, 25, 2)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{name}_{i}.JPEG", quality=90)
  return root


@pytest.fixture
def caplog(caplog, monkeypatch):
  """pytest's caplog, reached by the package's records (they do not propagate: dnd_jax/logs.py)."""
  monkeypatch.setattr(logging.getLogger("dnd_jax"), "propagate", True)
  return caplog


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp("imagenet"))


def data_config(where, **overrides):
  c = default_data_config("imagenet")
  c.dir, c.image_size, c.workers = str(where), 8, 0
  c.update(overrides)
  return c


def _batches(data, config, batch_size=8, first_step=0, total_steps=6, process_index=0,
             process_count=1):
  return list(stream.train_batches(data, config, seed=0, batch_size=batch_size,
                                   first_step=first_step, total_steps=total_steps,
                                   process_index=process_index, process_count=process_count))


def test_process_shards_tile_each_global_batch_without_overlap(folder):
  for count in (1, 2, 4):
    for step in range(3):
      blocks = [list(stream.local_positions(step, 8, p, count)) for p in range(count)]
      assert sorted(sum(blocks, [])) == list(range(step * 8, step * 8 + 8))
  config = data_config(folder)
  data = stream.open_stream(config)
  steps = data.n_train // 8  # 6 per epoch
  whole = _batches(data, config, total_steps=2 * steps)  # two epochs
  halves = [_batches(data, config, total_steps=2 * steps, process_index=p, process_count=2)
            for p in range(2)]
  for step, batch in enumerate(whole):
    for key in ("image", "label"):  # process 0's block, then process 1's: the one-process batch
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])
  for epoch in range(2):  # each training row once per epoch, over both processes
    order = stream.train_rows(data.n_train, 0, epoch)
    rows = [order[q] for step in range(steps) for p in range(2)
            for q in stream.local_positions(step, 8, p, 2)]
    assert len(set(rows)) == len(rows) == steps * 8
    labels = np.concatenate([b["label"] for b in whole[epoch * steps:(epoch + 1) * steps]])
    np.testing.assert_array_equal(labels, data.layout.train.labels[rows])
  assert not np.array_equal(whole[0]["label"], whole[steps]["label"])  # reshuffled per epoch


def test_a_batch_depends_on_its_step_alone(folder):
  """What makes a run resumable at any step: the pipeline started at step 4 (a resumed run)
  reads what the one started at 0 reads from step 4 on, crops and flips included."""
  config = data_config(folder)
  data = stream.open_stream(config)
  from_start = _batches(data, config, total_steps=9)
  resumed = _batches(data, config, first_step=4, total_steps=9)
  for a, b in zip(from_start[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert from_start[0]["image"].shape == (8, 8, 8, 3) and from_start[0]["image"].dtype == np.uint8


def test_the_evaluation_split_is_read_once_padded_to_whole_batches(folder):
  config = data_config(folder)
  data = stream.open_stream(config)
  batches = list(stream.eval_batches(data, config, batch_size=5))
  labels = np.concatenate([b["label"] for b in batches])
  assert len(labels) == 15 and list(labels[12:]) == [-1, -1, -1]
  np.testing.assert_array_equal(labels[:12], data.layout.val.labels)


def test_one_evaluation_pipeline_serves_every_evaluation_of_a_run(folder):
  """The evaluation's Grain workers start once (at the first evaluation), not at every epoch's,
  and each evaluation is one whole pass: the same counts every time, those of a pass read in
  this process."""
  config = data_config(folder, workers=1)
  data = stream.open_stream(config)
  model = ResNet(depth=18, num_classes=len(CLASSES), width=4)
  variables = init_variables(model, jax.random.key(0), data.image_shape)
  evaluation = batch_sources.StreamedEvaluation(data, config, model, 5, parallel.make_mesh())
  try:
    first = evaluation(variables)
    workers = set(multiprocessing.active_children())
    assert workers  # data.workers=1: the pipeline's worker process
    assert [evaluation(variables) for _ in range(2)] == [first, first]
    assert set(multiprocessing.active_children()) == workers  # the same workers, none new
  finally:
    evaluation.close()
  # one pass in this process (no workers), by an evaluation of its own: the same counts
  in_process = batch_sources.StreamedEvaluation(data, data_config(folder), model, 5,
                                                parallel.make_mesh())
  try:
    assert in_process(variables) == first
  finally:
    in_process.close()
  assert first[2] == data.n_eval == 12 and 0 <= first[0] <= 12 and first[1] > 0


def test_layout_problems_are_one_line_before_any_work(tmp_path):
  root = make_folder(tmp_path / "d", train=1, val=1)
  (root / "train" / "n04").mkdir()
  (root / "val" / "n04").mkdir()
  with pytest.raises(DataError, match=r"train/n04 holds no images"):
    image_folder.scan(root)
  shutil.rmtree(root / "val" / "n04")
  with pytest.raises(DataError, match=r"classes of train/ and val/ differ \(only in train: n04; "
                                      r"only in val: none\)"):
    image_folder.scan(root)
  shutil.rmtree(root / "train" / "n04")
  shutil.rmtree(root / "val")
  with pytest.raises(DataError, match=r"val not found: the folder has no val split"):
    image_folder.scan(root)
  # through the command: one `error:` line, exit code 2
  (root / "val").mkdir()
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
       os.path.join(REPO, "configs", "teacher_imagenet.py"), "--workdir", str(tmp_path / "run"),
       f"--config.data.dir={root}"], capture_output=True, text=True)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "classes of train/ and val/ differ" in errors[0], result.stderr


def test_a_corrupt_image_stops_the_run_naming_it_or_is_skipped_and_counted(tmp_path, caplog):
  root = make_folder(tmp_path / "d", train=4, val=1)
  bad = root / "train" / "n02" / "n02_1.JPEG"
  bad.write_bytes(bad.read_bytes()[:200])  # truncated
  config = data_config(root)
  data = stream.open_stream(config)  # listing reads no image
  with pytest.raises(DataError, match=rf"{bad}: cannot decode this image .*skip_corrupt=True"):
    _batches(data, config, batch_size=4, total_steps=3)
  config.skip_corrupt = True
  batches = _batches(data, config, batch_size=4, total_steps=3)
  assert sum(int(b["skipped"].sum()) for b in batches) == 1
  assert all(b["image"].shape == (4, 8, 8, 3) for b in batches)  # its place taken by another
  assert f"Skipped an unreadable image: {bad}" in caplog.text


def test_a_fraction_of_a_streamed_set_is_a_seeded_share_of_every_class(folder):
  """`data.fraction` on a stream: the paper's data-efficiency setting (its Table 3) on an
  ImageNet-layout folder, drawn as the resident data sets draw theirs."""
  whole = stream.open_stream(data_config(folder))
  half = stream.open_stream(data_config(folder, fraction=0.5))
  quarter = stream.open_stream(data_config(folder, fraction=0.25))
  assert half.n_train == len(CLASSES) * TRAIN_PER_CLASS // 2
  assert np.bincount(half.layout.train.labels).tolist() == [TRAIN_PER_CLASS // 2] * len(CLASSES)
  for path, label in zip(half.layout.train.paths, half.layout.train.labels):
    assert path.split("/")[1] == CLASSES[label]  # each file keeps its class
  assert set(quarter.layout.train.paths) < set(half.layout.train.paths)
  assert set(half.layout.train.paths) < set(whole.layout.train.paths)
  again = stream.open_stream(data_config(folder, fraction=0.5))
  assert again.layout.train.paths == half.layout.train.paths  # seeded
  other = stream.open_stream(data_config(folder, fraction=0.5, subset_seed=1))
  assert set(other.layout.train.paths) != set(half.layout.train.paths)
  assert half.layout.val.paths == whole.layout.val.paths  # the evaluation split stays whole
  assert len({whole.rows_digest, half.rows_digest, other.rows_digest}) == 3  # no resume across


@pytest.mark.slow
def test_an_exported_model_is_evaluated_on_the_streamed_val_folder(folder, whole_run):
  """scripts/evaluate.py's evaluation of a streamed run's model: its accuracy on val/ is the one
  the run reported, and the confusion matrix counts every image once."""
  whole_dir, whole = whole_run
  config = _config("teacher_imagenet", folder, **EPOCHS)
  result = evaluate_model(str(whole_dir / "model"), config)
  assert result["accuracy"] == pytest.approx(whole["final_accuracy"])
  assert result["images"] == len(CLASSES) * VAL_PER_CLASS and result["split"] == "test"
  assert np.asarray(result["confusion"]).sum(1).tolist() == [VAL_PER_CLASS] * len(CLASSES)
  assert sorted(result["per_class_accuracy"]) == list(CLASSES)
  assert result["trained_on_other_inputs"] == []
  with pytest.raises(ValueError, match="holds no validation split .* use --split=test"):
    evaluate_model(str(whole_dir / "model"), config, split="validation")


@pytest.mark.slow
def test_a_streamed_run_trains_on_its_fraction_and_does_not_resume_on_another(folder, tmp_path):
  """One epoch on half of train/ (the stream's other runs' programs: the same shapes), then the
  same workdir with all of it: refused, as a resident run with another data.fraction is (an
  unfinished one by the rows' digest, which differs: the test above)."""
  config = _config("teacher_imagenet", folder, num_epochs=1, **{"data.fraction": 0.5})
  train_and_evaluate(config, str(tmp_path))
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() == len(CLASSES) * TRAIN_PER_CLASS // 2 // config.batch_size
  ckpts.close()
  whole = _config("teacher_imagenet", folder, num_epochs=2)
  with pytest.raises(run_folder.WorkdirError, match=r"another config \(data.fraction 0.5 -> 1.0\)"):
    train_and_evaluate(whole, str(tmp_path))


@pytest.fixture(scope="module")
def tfds_dir(folder, tmp_path_factory):
  """`folder`'s images as TFDS prepares an image data set (ArrayRecord files of JPEG bytes,
  `image` and `label` features, train and validation splits), written without TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  layout = image_folder.scan(folder)

  class DndTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=list(CLASSES)),
          "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(layout.train),
              "validation": self._generate_examples(layout.val)}

    def _generate_examples(self, split):
      for path, label in zip(split.paths, split.labels):  # the files' bytes: no re-encoding
        yield path, {"image": (folder / path).read_bytes(), "label": int(label),
                     "file_name": path}

  where = tmp_path_factory.mktemp("tfds")
  DndTinyImages(data_dir=str(where), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return where


def _tfds_config(where, **overrides):
  return data_config(None, **{"source": "tfds", "dir": str(where), "tfds_name": "dnd_tiny_images",
                              **overrides})


def test_tfds_records_stream_the_folders_images(folder, tfds_dir):
  """ImageNet as TFDS prepares it (`data.source=tfds`): the same images and labels as the
  unpacked folders, in TFDS's record order, and the same evaluation views."""
  records = stream.open_stream(_tfds_config(tfds_dir))
  files = stream.open_stream(data_config(folder))
  assert records.class_names == CLASSES and records.num_classes == len(CLASSES)
  assert (records.n_train, records.n_eval) == (files.n_train, files.n_eval)
  assert records.rows_digest != files.rows_digest  # records and files are not one run's rows

  def views(data):
    pairs = []
    for b in stream.eval_batches(data, data_config(folder), batch_size=5):
      pairs += [(image.tobytes(), int(label)) for image, label in zip(b["image"], b["label"])
                if label >= 0]
    return sorted(pairs)

  assert views(records) == views(files)
  batch = next(iter(stream.train_batches(records, data_config(folder), seed=0, batch_size=8,
                                         first_step=0, total_steps=1)))
  assert batch["image"].shape == (8, 8, 8, 3) and set(batch["label"]) <= {0, 1, 2}


def test_tfds_records_that_are_missing_or_unusable_are_one_line(tfds_dir, tmp_path):
  with pytest.raises(DataError, match="'imagenet2012' is not prepared in .*--config.data.dir"):
    stream.open_stream(_tfds_config(tmp_path, tfds_name="imagenet2012"))
  with pytest.raises(DataError, match="TFDS has no prepared 'no_such_set' in .*--config.data.dir"):
    stream.open_stream(_tfds_config(tfds_dir, tfds_name="no_such_set"))
  config = base_config("imagenet", "kd")
  config.data.source, config.data.fraction = "tfds", 0.1
  with pytest.raises(config_check.ConfigError, match="fraction=0.1 with source 'tfds'"):
    config_check.check(config)


@pytest.mark.slow
def test_a_run_streams_tfds_records_and_its_model_evaluates_on_them(tfds_dir, tmp_path):
  config = _config("teacher_imagenet", None, num_epochs=1, **{
      "data.source": "tfds", "data.dir": str(tfds_dir), "data.tfds_name": "dnd_tiny_images"})
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["epochs"] == 1
  result = evaluate_model(str(tmp_path / "model"), config)
  assert result["accuracy"] == pytest.approx(summary["final_accuracy"])
  assert result["images"] == len(CLASSES) * VAL_PER_CLASS


def test_imagewoof_streams_from_its_unpacked_folder_and_not_from_its_archive(tmp_path):
  """Imagewoof either way: resident (its default) or, with data.loader=stream, read from the
  unpacked imagewoof2-160 folder as ImageNet's is (found as the resident reader finds it)."""
  make_folder(tmp_path / "imagewoof2-160")
  config = default_data_config("imagewoof")
  config.loader, config.dir, config.image_size, config.workers = "stream", str(tmp_path), 8, 0
  data = stream.open_stream(config)
  assert (data.name, data.class_names, data.eval_split) == ("imagewoof", CLASSES, "test")
  assert (data.n_train, data.n_eval) == (len(CLASSES) * TRAIN_PER_CLASS,
                                         len(CLASSES) * VAL_PER_CLASS)
  batch = next(iter(stream.train_batches(data, config, seed=0, batch_size=4, first_step=0,
                                         total_steps=1)))
  assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.uint8
  archive_only = tmp_path / "archived"
  archive_only.mkdir()
  (archive_only / "imagewoof2-160.tgz").write_bytes(b"")
  config.dir = str(archive_only)
  with pytest.raises(DataError, match="reads the unpacked imagewoof2-160 folder, not its archive"):
    stream.open_stream(config)


@pytest.mark.slow
def test_an_imagewoof_run_streams(tmp_path):
  make_folder(tmp_path / "imagewoof2-160")
  config = _config("teacher_imagewoof", tmp_path, num_epochs=1, **{"data.loader": "stream"})
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["epochs"] == 1 and summary["dataset"] == "imagewoof"
  assert 0.0 <= summary["final_accuracy"] <= 1.0


def test_the_config_check_knows_which_data_sets_stream():
  wrong = base_config("fashion_mnist", "teacher")
  wrong.data.loader = "stream"
  with pytest.raises(config_check.ConfigError, match="loader='stream' reads \\['imagenet', 'imag"):
    config_check.check(wrong)
  resident = base_config("imagenet", "teacher")
  resident.data.loader = "device"
  with pytest.raises(config_check.ConfigError, match="set --config.data.loader=stream"):
    config_check.check(resident)
  config = base_config("imagenet", "kd")
  config.steps_per_dispatch, config.data.val_fraction = 2, 0.1
  with pytest.raises(config_check.ConfigError, match="val_fraction=0.1.*steps_per_dispatch=2"):
    config_check.check(config)
  config_check.check(base_config("imagenet", "pdnd"))
  share = base_config("imagenet", "kd")
  share.data.fraction = 0.1
  config_check.check(share)
  for loader in ("device", "stream"):  # Imagewoof either way
    woof = base_config("imagewoof", "kd")
    woof.data.loader = loader
    config_check.check(woof)
  woof.data.source = "tfds"  # a streamed Imagewoof names no TFDS records (not ImageNet's)
  with pytest.raises(config_check.ConfigError, match="tfds_name, which 'imagewoof' does not"):
    config_check.check(woof)


def test_the_throughput_command_measures_the_pipeline(folder, tmp_path):
  out = tmp_path / "throughput.json"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "stream_throughput.py"), "--dir",
       str(folder), "--image-size", "8", "--batch-size", "8", "--batches", "2", "--images", "8",
       "--json", str(out)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "images/s per core" in result.stdout
  figures = json.loads(out.read_text())
  assert figures["images_per_s"] > 0 and figures["images_per_s_per_core"] > 0


# CIFAR's ResNet8 rather than tiny_config's ResNet18: the stream's shapes (RGB, 3 classes) share
# no compiled program with the other tests, and ResNet8's compile in half the time
TINY = {"model.arch": "resnet8", "data.image_size": 8,
        "data.workers": 0, "batch_size": 8, "eval_batch_size": 12, "log.progress_bar": False,
        "checkpoint.keep": 2, "teacher.config": ""}


def _config(name: str, folder, **overrides):
  config = load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
  for key, value in {**TINY, "data.dir": str(folder), **overrides}.items():
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


def _cli(name: str, folder, workdir, **overrides):
  settings = {**TINY, "data.dir": str(folder), **overrides}
  return [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
          os.path.join(REPO, "configs", f"{name}.py"), "--workdir", str(workdir),
          *(f"--config.{k}={v}" for k, v in settings.items())]


EPOCHS = {"num_epochs": 8}


@pytest.fixture(scope="module")
def whole_run(folder, tmp_path_factory):
  """A streamed teacher run of 8 epochs in this process: what the killed and resumed run, and the
  run over two processes, must reproduce."""
  workdir = tmp_path_factory.mktemp("whole")
  return workdir, train_and_evaluate(_config("teacher_imagenet", folder, **EPOCHS), str(workdir))


@pytest.mark.slow
def test_a_streamed_run_killed_with_sigkill_resumes_to_the_same_metrics(folder, whole_run,
                                                                        tmp_path):
  whole_dir, whole = whole_run
  killed = tmp_path / "killed"
  args = _cli("teacher_imagenet", folder, killed, **EPOCHS)
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(read_metrics(str(killed))) >= 2:  # two epochs done, six to go
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
  subprocess.run(args, check=True, capture_output=True)
  expected, resumed = read_metrics(str(whole_dir)), read_metrics(str(killed))
  assert [r["epoch"] for r in resumed] == list(range(1, 9))
  for a, b in zip(expected, resumed):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "lr"):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["epoch"], key)
  assert json.loads((killed / "summary.json").read_text())["final_accuracy"] == \
      whole["final_accuracy"]

  # a distillation run streams from the same folder, its teacher's accuracy from its model.json
  kd = train_and_evaluate(_config("kd_imagenet", folder, num_epochs=2, **{
      "teacher.checkpoint": str(whole_dir / "model"), "teacher.arch": "resnet8"}),
      str(tmp_path / "kd"))
  assert kd["teacher_accuracy"] == whole["final_accuracy"]
  assert [r["epoch"] for r in read_metrics(str(tmp_path / "kd"))] == [1, 2]
  assert kd["dataset"] == "imagenet" and kd["eval_split"] == "test"


def _worker(config_json: str, workdir: str) -> dict:
  """One process of a streamed run over several (this file run as a script)."""
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415

  from dnd_jax.runtime import setup_runtime  # noqa: PLC0415

  setup_runtime()
  summary = train_and_evaluate(ml_collections.ConfigDict(json.loads(config_json)), workdir)
  return {"process": jax.process_index(), "processes": jax.process_count(),
          "devices": jax.device_count(), "summary": summary}


@pytest.mark.slow
def test_two_processes_stream_their_shares_and_train_as_one_process_does(folder, whole_run,
                                                                         tmp_path):
  """Each process reads only its block of every global batch (the blocks tile it:
  test_process_shards_tile_each_global_batch_without_overlap) and of the evaluation split, and
  places it with the other process's as one global batch: the run's metrics are those of one
  process reading every batch whole."""
  whole_dir, whole = whole_run
  workdir = tmp_path / "two"
  config = _config("teacher_imagenet", folder, **EPOCHS)
  reports = finish_processes(start_processes(__file__, [config.to_json(), str(workdir)], 2))
  assert sorted(r["process"] for r in reports) == [0, 1]
  assert all(r["processes"] == 2 and r["devices"] == 2 for r in reports)
  expected, history = read_metrics(str(whole_dir)), read_metrics(str(workdir))
  assert [r["epoch"] for r in history] == list(range(1, 9))  # written once, by process 0
  for a, b in zip(expected, history):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
      assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["epoch"], key)
  for r in reports:
    assert r["summary"]["final_accuracy"] == pytest.approx(whole["final_accuracy"])


@pytest.mark.slow
def test_a_run_resumed_from_a_mid_epoch_checkpoint_ends_as_an_uninterrupted_one(folder, whole_run,
                                                                                tmp_path):
  """`checkpoint.every_steps` in a Progressive DnD run: the stream starts again at the
  checkpoint's step, and the epoch's running metric sums go on from the checkpoint's, those of a
  partition finished earlier in the epoch included, so both epochs end with the same metrics."""
  config = _config("pdnd_imagenet", folder, num_epochs=2, **{
      "teacher.checkpoint": str(whole_run[0] / "model"), "teacher.arch": "resnet8",
      "checkpoint.every_steps": 5, "checkpoint.keep": 10})
  whole = train_and_evaluate(config, str(tmp_path))
  expected = read_metrics(str(tmp_path))
  assert [r["phase"] for r in expected] == [1, 2]  # partitions from steps 0, 4 and 8
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=10)
  assert ckpts.state.all_steps() == [5, 6, 10, 12]  # 6 steps per epoch
  meta = ckpts.state.restore(5, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  ckpts.close()
  partial = meta[loop.PARTIAL]
  assert meta["epoch"] == 0 and partial["steps"] == 5  # epoch 1, 5 of its 6 steps
  assert len(partial["finished_parts"]) == 1  # the first partition's sums (steps 0-3)
  # as if killed after step 5
  for step in (6, 10, 12):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  os.remove(tmp_path / "summary.json")
  resumed = train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints_skipped").exists()  # it went on from step 5 itself
  assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2]
  for a, b in zip(expected, read_metrics(str(tmp_path))):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "lr"):
      assert a[key] == b[key], (a["epoch"], key)
  assert resumed["final_accuracy"] == whole["final_accuracy"]


if __name__ == "__main__":
  print(json.dumps(_worker(sys.argv[1], sys.argv[2])))
