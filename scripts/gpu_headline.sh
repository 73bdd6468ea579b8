#!/usr/bin/env bash
# The paper's headline on a GPU (issue 11), at full width (ResNet34 64 -> ResNet18 64):
#
#   bash scripts/gpu_headline.sh a      # the main command's wall clock (random-pixel CIFAR-100)
#   bash scripts/gpu_headline.sh b      # real Fashion-MNIST: teacher, then KD/DnD/PDnD x 3 budgets
#   bash scripts/gpu_headline.sh        # a, then b with what is left of the 9-minute budget
#   bash scripts/gpu_headline.sh c      # data efficiency: 10% and 20% of Fashion-MNIST, 3 seeds
#   bash scripts/gpu_headline.sh d      # seeded budgets: 1, 2 and 4 epochs, 3 seeds
#
# a  writes a data set in the official CIFAR-100 python format with random pixels (accuracy is
#    chance, wall time is the figure), trains the teacher for 1 epoch (reported apart), then runs
#    the user's `python scripts/train.py --config configs/pdnd_cifar.py` (60 epochs), vanilla KD
#    (configs/kd_cifar.py) for KD_EPOCHS epochs (time per epoch x 200 = the paper's KD budget),
#    and PDnD again for 1 epoch, whose compile time then comes from the persistent cache.
# b  trains the Fashion-MNIST teacher once (carried in data/fashion-mnist, git-ignored; on a
#    machine with Debian's dataset-fashion-mnist it is read from /usr/share/datasets), then KD, DnD
#    and Progressive DnD (FASHION_METHODS) at each budget of FASHION_BUDGETS, cheapest first.
# c, d scripts/reproduce.py grids (grid_part below): one process each, its own teacher first;
#    each part writes NAME.md (the report) and NAME.tgz (CSV, figure, the runs' summaries) and
#    logs the share of startup and compilation in its runs' wall time. Run each as its own
#    device command (each is sized for 8 minutes).
# Every run of a and b is the ordinary `scripts/train.py` in a fresh workdir under $GPU_WORK,
# under its own time limit; after each one, scripts/gpu/record_run.py adds it (process wall clock plus its whole
# summary.json) to $OUT/headline.json, .csv and .md. Exit 3 when a part's teacher could not be
# trained (nothing else of the part can run); other codes: scripts/gpu/common.sh. GPU_TOY=1:
# toy sizes (the CPU test). GPU_HEADLINE_FLAGS: extra config flags for every run (e.g.
# "--config.model.dtype=bfloat16"). Files back: env.txt, headline.{json,csv,md},
# gpu_headline.log, fashion_budgets.png; c and d: efficiency.{md,tgz}, seeded_budgets.{md,tgz}.

GPU_SCRIPT=gpu_headline
source "$(dirname "${BASH_SOURCE[0]}")/gpu/common.sh"

PARTS=${1:-a,b}
WORK=${GPU_WORK:-/tmp/dnd_gpu_headline}
FASHION_DIR=${GPU_FASHION_DIR:-data/fashion-mnist}
if [ ! -d "$FASHION_DIR" ] && [ -d /usr/share/datasets/fashion-mnist ]; then
  FASHION_DIR=/usr/share/datasets/fashion-mnist
fi
if [ "$GPU_TOY" = 1 ]; then
  # 32 training images, one batch: the plumbing plus real steps, and Progressive DnD's one
  # epoch is one step, so it compiles one partition's step (of 256 images, all three: ~20 s more
  # on 2 CPU cores, testing nothing more); the OneCycle runs (teacher, KD) need 2 steps, 2 epochs
  FAKE_SIZE=(--train 32 --test 64)
  # ResNet18 teachers, as the suite's other tiny runs (a ResNet34 compiles about 1.7x the
  # convolutions, and the plumbing does not depend on the teacher's depth)
  SIZE=(--config.model.width=4 --config.teacher.width=4 --config.data.image_size=8
        --config.model.depth=18 --config.teacher.depth=18
        --config.batch_size=32 --config.log.progress_bar=False)
  FAKE_EVAL=(--config.eval_batch_size=64)
  # tests/conftest.py's tiny_config on Fashion-MNIST: in the CPU test, the suite's shared
  # compilation cache then holds these runs' programs already (the suite's tiny runs compiled them)
  FASHION_SIZE=(--config.data.fraction=0.05 --config.eval_batch_size=1000)
  # the runs that differ from the real ones only in size: no cached PDnD rerun (PDnD runs 1
  # epoch already), one Fashion-MNIST student (each compile takes long on a CPU)
  PDND_EPOCHS=(--config.num_epochs=1) KD_EPOCHS=2 CIFAR_TEACHER_EPOCHS=2
  FASHION_TEACHER_EPOCHS=1 CACHED_RERUN=0
  FASHION_BUDGETS=${FASHION_BUDGETS:-1} FASHION_METHODS=${FASHION_METHODS:-kd}
  # c and d: the tiny scale (width 4, 8 px, 2% of the data: 1,200 images), DnD alone, one seed,
  # half and all of the data (a tenth would be less than a batch); the runs of tests/
  # test_reproduce.py's tiny grid, so that in the CPU test the suite's compilation cache holds
  # all but the half-data run's programs
  GRID_SCALE=tiny GRID_METHODS=${GRID_METHODS:-dnd} GRID_SEEDS=1 GRID_TEACHER_EPOCHS=1
  EFFICIENCY_FRACTIONS=0.5,1.0 EFFICIENCY_EPOCHS=1 BUDGET_EPOCHS=1,2
else
  # Estimates for an H100 in fp32 (TF32), not measurements: a full-width teacher epoch on 50,000
  # images 10-20 s after a 30-60 s compile; a PDnD or KD epoch 3-6 s; the 60-epoch PDnD run
  # 3-6 minutes end to end (the target is 4); a Fashion-MNIST epoch about as long as CIFAR's.
  FAKE_SIZE=() SIZE=() FAKE_EVAL=() FASHION_SIZE=() PDND_EPOCHS=()
  KD_EPOCHS=${KD_EPOCHS:-5} CIFAR_TEACHER_EPOCHS=1 CACHED_RERUN=1
  FASHION_TEACHER_EPOCHS=${FASHION_TEACHER_EPOCHS:-5}
  FASHION_BUDGETS=${FASHION_BUDGETS:-1 2 4} FASHION_METHODS=${FASHION_METHODS:-kd dnd pdnd}
  # c and d at full width on all of Fashion-MNIST at 28 px, 3 seeds, the teacher as part b's
  # (5 epochs). c: each method's Fashion-MNIST budget (the configs' 20 epochs: the paper's
  # CIFAR-100 budget of 200 over ten) on 10% and 20% of the training set, checkpoints every 5
  # epochs (a save costs about a training epoch's tenth on a GPU, x 360 epochs); d: 1, 2 and 4
  # epochs. Estimates, not measurements: c about 6-7 minutes on an H200 (18 runs, ~3.2 M
  # training images at ~20k images/s, ten programs to compile), d about 5.
  GRID_SCALE=paper GRID_METHODS=${GRID_METHODS:-kd,dnd,pdnd} GRID_SEEDS=3 GRID_TEACHER_EPOCHS=5
  EFFICIENCY_FRACTIONS=0.1,0.2 EFFICIENCY_EPOCHS=${EFFICIENCY_EPOCHS:-20}
  BUDGET_EPOCHS=${BUDGET_EPOCHS:-1,2,4}
fi
# shellcheck disable=SC2206
FLAGS=(${GPU_HEADLINE_FLAGS:-})

# train_run PART NAME LIMIT_S NOTE ARGS...: scripts/train.py ARGS in a fresh $WORK/runs/NAME,
# then recorded in $OUT; returns train.py's exit code.
train_run() {
  local part=$1 name=$2 limit=$3 note=$4 workdir=$WORK/runs/$2 rc t0 wall
  shift 4
  rm -rf "$workdir"
  local cmd=("$PY" scripts/train.py --workdir "$workdir" "$@" "${SIZE[@]}" "${FLAGS[@]}")
  t0=$(date +%s%N)
  gpu_part "$name" "$limit" "${cmd[@]}"
  rc=$?
  wall=$(( ($(date +%s%N) - t0) / 1000000 ))
  "$PY" scripts/gpu/record_run.py --out "$OUT" --part "$part" --name "$name" \
    --workdir "$workdir" --rc "$rc" --wall "$((wall / 1000)).$(printf %03d $((wall % 1000)))" \
    --note "$note" -- "${cmd[@]:1}" >>"$LOG" 2>&1 || gpu_log "could not record $name"
  return $rc
}

part_a() {
  local data=$WORK/fake_cifar100 teacher=$WORK/runs/teacher_cifar/model
  local on_data=(--config.data.dir="$data" --config.data.verify_checksums=False
                 --config.data.cache_dir="$WORK/data_cache" "${FAKE_EVAL[@]}")
  rm -rf "$data" "$WORK/data_cache"
  gpu_part fake_cifar100 60 "$PY" scripts/make_fake_cifar100.py "$data" "${FAKE_SIZE[@]}" \
    || { gpu_log "error: could not write the random-pixel CIFAR-100"; exit 3; }
  local note="$CIFAR_TEACHER_EPOCHS epoch$([ "$CIFAR_TEACHER_EPOCHS" = 1 ] || echo s)"
  train_run a teacher_cifar 120 "$note, only to give the students a teacher" \
    --config configs/teacher_cifar.py --config.num_epochs="$CIFAR_TEACHER_EPOCHS" "${on_data[@]}" \
    || { gpu_log "error: the CIFAR-100 teacher could not be trained: part a stops; see $LOG"; exit 3; }
  local students=("${on_data[@]}" --config.teacher.checkpoint="$teacher")
  train_run a pdnd_cifar 300 "the main command, 60 epochs" \
    --config configs/pdnd_cifar.py "${PDND_EPOCHS[@]}" "${students[@]}"
  train_run a kd_cifar 120 "per-epoch time x 200 = the paper's KD budget" \
    --config configs/kd_cifar.py --config.num_epochs="$KD_EPOCHS" "${students[@]}"
  [ "$CACHED_RERUN" = 1 ] && train_run a pdnd_cifar_cached 60 "1 epoch after pdnd_cifar: compile time from the cache" \
    --config configs/pdnd_cifar.py --config.num_epochs=1 "${students[@]}"
}

part_b() {
  local teacher=$WORK/runs/teacher_fashion/model budget method
  if [ ! -d "$FASHION_DIR" ]; then
    gpu_log "error: no Fashion-MNIST in $FASHION_DIR: copy /usr/share/datasets/fashion-mnist/*.gz there and name data/fashion-mnist in the run's carry list (docs/development.md)"
    exit 3
  fi
  # decoded arrays in the default cache (~/.cache/dnd_jax), which the CPU tests share
  local on_data=(--config.data.dir="$FASHION_DIR" "${FASHION_SIZE[@]}")
  train_run b teacher_fashion 150 "trained once for every student" \
    --config configs/teacher_fashion.py --config.num_epochs="$FASHION_TEACHER_EPOCHS" \
    "${on_data[@]}" \
    || { gpu_log "error: the Fashion-MNIST teacher could not be trained: part b stops; see $LOG"; exit 3; }
  for budget in $FASHION_BUDGETS; do
    for method in $FASHION_METHODS; do
      train_run b "${method}_fashion_e$budget" 120 "" --config "configs/${method}_fashion.py" \
        --config.num_epochs="$budget" "${on_data[@]}" --config.teacher.checkpoint="$teacher"
    done
  done
}

# grid_part PART NAME LIMIT_S EXPERIMENT ARGS...: scripts/reproduce.py's EXPERIMENT grid on
# Fashion-MNIST (GRID_METHODS x GRID_SEEDS seeds, ARGS narrowing it) in $WORK/NAME, in one process,
# so that its runs share compiled programs; the grid's teacher trained first, unless part c of
# this machine's session left one. Then, whether the grid finished or its limit cut it off
# (`--report-only` then draws it), the report of every finished run (tables with mean +-
# standard deviation, the paper's differences, the figure, the CSV) into $OUT/NAME.md and
# $OUT/NAME.tgz with the runs' summaries and metrics, and one line on the share of startup and
# compilation in the runs' wall time.
grid_part() {
  local part=$1 name=$2 limit=$3 experiment=$4 rc
  local out=$WORK/$name teacher=$WORK/efficiency/teacher
  shift 4
  if [ ! -d "$FASHION_DIR" ]; then
    gpu_log "error: no Fashion-MNIST in $FASHION_DIR (see part b)"
    return 3
  fi
  local grid=("$experiment" --scale "$GRID_SCALE" --methods "$GRID_METHODS" --seeds "$GRID_SEEDS"
              --out "$out" --override data.dir="$FASHION_DIR" "$@")
  if [ "$name" != efficiency ] && [ -f "$teacher/summary.json" ]; then
    grid+=(--teacher "$teacher/model")
  else
    grid+=(--teacher-epochs "$GRID_TEACHER_EPOCHS")
  fi
  gpu_part "$name" "$limit" "$PY" scripts/reproduce.py "${grid[@]}"
  rc=$?
  # a finished grid has written its report; one cut off, only its runs and its CSV
  if [ "$rc" != 0 ]; then
    "$PY" scripts/reproduce.py "${grid[@]}" --report-only >>"$LOG" 2>&1 \
      || gpu_log "error: no report of part $part's finished runs (see $LOG)"
  fi
  if [ -f "$out/$experiment.csv" ]; then
    cp "$out/$experiment.md" "$OUT/$name.md"
    tar czf "$OUT/$name.tgz" --exclude=checkpoints --exclude=best --exclude=model \
      --exclude=tensorboard --exclude=lock -C "$out" .
    gpu_log "part $part ($name): $("$PY" scripts/gpu/grid_share.py "$out/$experiment.csv")"
  fi
  return $rc
}

# c: data efficiency (the paper's Table 3) on 10% and 20% of Fashion-MNIST
part_c() {
  grid_part c efficiency 480 table3_fashion --fractions "$EFFICIENCY_FRACTIONS" \
    --epochs "$EFFICIENCY_EPOCHS" \
    $([ "$GRID_SCALE" = paper ] && echo --override checkpoint.every_epochs=5)
}

# d: seeded budgets (the paper's Table 2 differences) at 1, 2 and 4 epochs on all the data
part_d() {
  grid_part d seeded_budgets 480 table2_fashion --epochs "$BUDGET_EPOCHS"
}

gpu_install_wheels
gpu_record_env "$@"
mkdir -p "$WORK"
case ",$PARTS," in *,a,*) part_a ;; esac
case ",$PARTS," in *,b,*) part_b ;; esac
case ",$PARTS," in *,c,*) part_c ;; esac
case ",$PARTS," in *,d,*) part_d ;; esac
[ -f "$OUT/headline.md" ] && cat "$OUT/headline.md"
gpu_finish
