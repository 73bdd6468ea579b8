# Shared setup of the one-command GPU scripts (scripts/gpu_bench.sh, scripts/gpu_headline.sh).
# Sourced, not run: the caller sets GPU_SCRIPT (its name) first. docs/development.md has the
# procedure (wheels, the `run` command line, what comes back).
#
# Environment (all optional):
#   OUT             where results go; only files under it come back from the GPU machine
#                   (at most 8 files, 2 folders deep). Default runs/gpu_out/<script>.
#   GPU_TOY=1       toy sizes (width 4, 8 px, a few steps): what the CPU test runs; its limits
#                   are 5x the GPU ones (GPU_LIMIT_SCALE), its budget 2700 s.
#   GPU_BUDGET_S    wall-clock budget of the whole script in seconds (default 540 = 9 minutes);
#                   each part's own limit is cut to what is left of it.
#   PYTHON          the interpreter (default python3: on the GPU machine, the one with torch).
# Exit codes shared by the scripts: 0 every part finished; 2 setup error (a needed package is
# missing and no wheel for it was carried); 3 the first part produced nothing (a broken setup
# costs one part, not the whole budget); 4 a later part failed or ran out of time (what it
# finished is in $OUT).

set -u -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-$REPO/runs/gpu_out/$GPU_SCRIPT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
GPU_TOY=${GPU_TOY:-0}
if [ "$GPU_TOY" = 1 ]; then
  # Toy runs test the plumbing, not the speed: on a loaded CPU, compiling takes far longer than
  # on a GPU, so every part's limit is GPU_LIMIT_SCALE times its GPU value.
  GPU_BUDGET_S=${GPU_BUDGET_S:-2700} GPU_LIMIT_SCALE=${GPU_LIMIT_SCALE:-5}
else
  GPU_BUDGET_S=${GPU_BUDGET_S:-540} GPU_LIMIT_SCALE=${GPU_LIMIT_SCALE:-1}
fi
GPU_MIN_PART_S=${GPU_MIN_PART_S:-15}  # a part with less time than this left is skipped
GPU_START_NS=$(date +%s%N)
LOG=$OUT/$GPU_SCRIPT.log
: >"$LOG"
GPU_PARTS=()  # one "name rc seconds" line per part, printed at the end
export PYTHONUNBUFFERED=1
# One persistent compilation cache for every process of the script (scripts/train.py reads
# DND_JAX_COMPILATION_CACHE, everything else JAX's own variable); on a warm machine a second
# command finds it again.
export DND_JAX_COMPILATION_CACHE=${DND_JAX_COMPILATION_CACHE:-/tmp/dnd_jax_xla_cache}
export JAX_COMPILATION_CACHE_DIR=$DND_JAX_COMPILATION_CACHE
mkdir -p "$DND_JAX_COMPILATION_CACHE"

gpu_log() {
  echo "[$GPU_SCRIPT $(gpu_elapsed)s] $*" | tee -a "$LOG"
}

gpu_elapsed() {
  echo $(( ($(date +%s%N) - GPU_START_NS) / 1000000000 ))
}

# Install the carried wheels (.whl/*.whl, git-ignored) of the packages this Python lacks into
# /tmp/site, on PYTHONPATH. A wheel of a package already importable is skipped (the CPU test,
# where everything is installed, installs nothing). ml_collections is required (exit 2 without
# it); tensorboardX is optional (a warning).
gpu_install_wheels() {
  local wheels missing
  shopt -s nullglob
  wheels=(.whl/*.whl)
  shopt -u nullglob
  missing=$("$PY" - "${wheels[@]}" <<'EOF'
import importlib.metadata, os, sys
for wheel in sys.argv[1:]:
  name = os.path.basename(wheel).split("-")[0]
  try:
    importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    print(wheel)
EOF
)
  if [ -n "$missing" ]; then
    gpu_log "installing carried wheels: $(echo $missing | xargs -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site $missing >>"$LOG" 2>&1 || { gpu_log "error: pip could not install the carried wheels (see $LOG)"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  local why
  if ! why=$("$PY" -c "import ml_collections" 2>&1); then
    gpu_log "error: ml_collections does not import ($(echo "$why" | tail -n 1)): fetch its wheel (and any missing dependency's) into .whl/ with the pip download command in docs/development.md, and name .whl in the run's carry list"
    exit 2
  fi
  "$PY" -c "import tensorboardX" 2>/dev/null \
    || gpu_log "note: tensorboardX is not importable (optional; carry its wheel to log to TensorBoard)"
}

# $OUT/env.txt: the date, the commit, the GPU, driver and every relevant package version.
gpu_record_env() {
  local env=$OUT/env.txt
  {
    echo "script: $GPU_SCRIPT $*"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo 'n/a (no .git in this copy)')"
    echo "host: $(uname -srm), $(nproc) CPUs"
    echo "toy: $GPU_TOY; budget: ${GPU_BUDGET_S}s"
    echo "compilation cache: $DND_JAX_COMPILATION_CACHE, $(ls "$DND_JAX_COMPILATION_CACHE" | wc -l) entries at start (0: compile times are cold)"
    echo "--- nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu --format=csv 2>&1
      nvidia-smi 2>&1 | head -n 12
    else
      echo "no nvidia-smi"
    fi
    echo "--- python"
    "$PY" - <<'EOF' 2>&1
import importlib.metadata, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
             "flax", "optax", "orbax-checkpoint", "chex", "ml-collections", "absl-py", "numpy",
             "torch", "torchvision", "triton", "tqdm", "matplotlib", "tensorboardX", "tensorboard",
             "protobuf", "pillow", "nvidia-cudnn-cu13", "nvidia-cublas"):
  try:
    print(name, importlib.metadata.version(name))
  except importlib.metadata.PackageNotFoundError:
    print(name, "-")
try:
  import jax
  print("jax devices:", jax.devices())
except Exception as e:  # recorded, not fatal: the first part then reports the broken setup
  print("jax devices: error:", type(e).__name__, e)
try:
  import torch
  print("torch cuda:", torch.cuda.is_available(), torch.version.cuda,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
  print("torch: error:", type(e).__name__, e)
EOF
  } >"$env" 2>&1
  gpu_log "environment recorded in $env"
}

# gpu_part NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, its output into the log, with
# LIMIT_S cut to what is left of the script's budget; skipped (rc 125) when too little is left.
# Returns the command's exit code (124: it ran out of time).
gpu_part() {
  local name=$1 limit=$2 left rc t0 secs
  shift 2
  limit=$(( limit * GPU_LIMIT_SCALE ))
  left=$(( GPU_BUDGET_S - $(gpu_elapsed) - 5 ))
  (( limit > left )) && limit=$left
  if (( limit < GPU_MIN_PART_S )); then
    gpu_log "part $name skipped: ${left}s of the budget left"
    GPU_PARTS+=("$name skipped 0")
    return 125
  fi
  gpu_log "part $name (limit ${limit}s): $*"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  secs=$(( ($(date +%s%N) - t0) / 1000000000 ))
  gpu_log "part $name: exit $rc after ${secs}s$( ((rc == 124 || rc == 137)) && echo ' (time limit)')"
  GPU_PARTS+=("$name $rc $secs")
  return $rc
}

# The closing table (the device tool returns the end of the output) and the exit code.
gpu_finish() {
  local code=0 line
  echo "== $GPU_SCRIPT: parts (name, exit code, seconds); files in $OUT"
  for line in "${GPU_PARTS[@]}"; do
    echo "   $line"
    [ "$(echo "$line" | cut -d' ' -f2)" = 0 ] || code=4
  done
  ls -l "$OUT"
  exit $code
}
