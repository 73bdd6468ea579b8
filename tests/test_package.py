"""A non-editable install carries everything a run reads: the configs and the paper's numbers.

Builds the package from a copy of the source into a temporary target (as `pip install .` does,
without touching the environment), then, from another folder with only that target importable,
loads every packaged config, a config by its repository path (as `--config configs/x.py`
and every config's teacher reference name it), the paper's results and the published figures of
the pair grid.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = textwrap.dedent("""
    import os, sys
    import dnd_jax
    assert dnd_jax.__file__.startswith(sys.argv[1]), dnd_jax.__file__
    from dnd_jax.configs import CONFIG_DIR, load_config_file
    names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py")
    for name in names:
      load_config_file(os.path.join(CONFIG_DIR, name + ".py"))
    config = load_config_file("configs/pdnd_cifar.py")
    teacher = load_config_file(config.teacher.config)
    quick = load_config_file(load_config_file("configs/quickstart.py").teacher.config)
    from dnd_jax.reproduce.tables import load_paper, load_published_pairs
    paper = load_paper()
    pairs = load_published_pairs()
    print(len(names), config.method.name, teacher.method.name, quick.model.width, len(paper),
          len(pairs))
""")


@pytest.mark.slow
def test_a_non_editable_install_runs_every_config_from_any_folder(tmp_path):
  src = _mkdir(tmp_path / "src")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, "dnd_jax"), src / "dnd_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(target), str(src)],
                 check=True, capture_output=True, text=True)
  shutil.rmtree(src)  # nothing may be read from the source any more
  elsewhere = _mkdir(tmp_path / "elsewhere")
  env = {**os.environ, "PYTHONPATH": str(target)}
  result = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  n_configs, method, teacher, width, n_paper, n_pairs = result.stdout.split()
  assert (int(n_configs), method, teacher, width) == (23, "pdnd", "teacher", "8")
  assert int(n_paper) > 0 and int(n_pairs) == 11  # the pair grid's published figures too


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path
