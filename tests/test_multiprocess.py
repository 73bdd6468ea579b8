"""Two JAX processes on localhost train a tiny DnD run like one process with the same devices.

Each process is this file run as a script (one CPU device each, `jax.distributed` over a local
coordinator, gloo collectives), started the way a cluster starts `scripts/train.py`: through the
environment that `dnd_jax.runtime.setup_runtime` reads. The reference is one process with two
forced CPU devices, i.e. the same mesh and global batch. Each process reports the rows of the
training set it placed and the run's summary; only process 0 writes the run's files.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import tiny_config
from dnd_jax.train import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2


def _worker(config_json: str, workdir: str) -> dict:
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from dnd_jax import parallel  # noqa: PLC0415
  from dnd_jax.data import load_dataset  # noqa: PLC0415
  from dnd_jax.runtime import setup_runtime  # noqa: PLC0415
  from dnd_jax.train import train_and_evaluate  # noqa: PLC0415

  setup_runtime()
  config = ml_collections.ConfigDict(json.loads(config_json))
  mesh = parallel.make_mesh()
  labels = load_dataset(config.data).train_labels
  placed = parallel.put_dataset(labels, mesh)
  shards = [(s.index[0].start or 0, s.index[0].stop, bool(np.array_equal(
      np.asarray(s.data), labels[s.index[0]]))) for s in placed.addressable_shards]
  summary = train_and_evaluate(config, workdir)
  return {"process": jax.process_index(), "processes": jax.process_count(),
          "devices": jax.device_count(), "rows": len(labels), "shards": shards,
          "summary": summary}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(config, workdir, processes: int, devices_per_process: int = 1) -> list[dict]:
  base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [REPO, os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  base["XLA_FLAGS"] = (base.get("XLA_FLAGS", "") +
                       f" --xla_force_host_platform_device_count={devices_per_process}").strip()
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(base)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", DND_JAX_NUM_PROCESSES=str(processes),
                 DND_JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, __file__, config.to_json(), str(workdir)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  reports = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=900)
      assert p.returncode == 0, err[-4000:]
      reports.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return reports


@pytest.mark.slow
def test_two_processes_train_dnd_like_one_process_with_the_same_devices(tiny_teacher, tmp_path):
  path, _ = tiny_teacher
  config = tiny_config("dnd", **{"teacher.checkpoint": path, "data.fraction": 0.004,
                                 "num_epochs": 2})
  multi = _launch(config, tmp_path / "multi", PROCESSES)
  single = _launch(config, tmp_path / "single", 1, devices_per_process=PROCESSES)[0]

  assert sorted(r["process"] for r in multi) == list(range(PROCESSES))
  assert all(r["processes"] == PROCESSES and r["devices"] == PROCESSES for r in multi)
  # each process placed only its own block of the training set, and the blocks tile it
  blocks = sorted((start, stop) for r in multi for start, stop, _ in r["shards"])
  assert all(ok for r in multi for *_, ok in r["shards"])
  assert blocks[0][0] == 0 and blocks[-1][1] >= multi[0]["rows"]
  assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
  assert len(single["shards"]) == PROCESSES  # one process: the whole set on each device

  # the same metrics as one process; evaluation counts each test image once
  history, reference = read_metrics(str(tmp_path / "multi")), read_metrics(str(tmp_path / "single"))
  assert [row["epoch"] for row in history] == [1, 2]  # written once, by process 0
  for row, ref in zip(history, reference):
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
      assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    assert (row["test_accuracy"] * 10_000) == pytest.approx(round(row["test_accuracy"] * 10_000))
  for r in multi:
    assert r["summary"]["final_accuracy"] == pytest.approx(single["summary"]["final_accuracy"])
  assert os.path.isfile(tmp_path / "multi" / "model" / "model.json")


if __name__ == "__main__":
  print(json.dumps(_worker(sys.argv[1], sys.argv[2])))
