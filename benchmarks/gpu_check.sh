#!/usr/bin/env bash
# Every GPU check of fastvid in one call on a lent GPU machine (one H100 or H200, 16 cores, Python 3.12 with
# torch, torchvision, triton, numba, OpenCV, accelerate; no DALI, PyAV, webdataset, no package registry).
# It returns three files under $OUT (the device tool brings back at most 8, 16 MiB each):
#   summary.json   everything: each step's limit, exit status, seconds and output tail; the machine and versions;
#                  benchmarks/loader.py's whole report (fastvid with PyAV workers + GPU augmentation, decode=cpu,
#                  and with DALI's NVDEC decoder, decode=gpu; each also with a centre crop only, fastvid-plain,
#                  the decode stage's rate; a PyAV DataLoader; 16 then 4 workers); NVDEC utilisation
#                  (`nvidia-smi dmon`, column "dec") during it; a 100-step video_simclr R3D-18 bf16 run at batch
#                  64 (clips/s and data wait per 10 steps); `pytest -m gpu` over tests/data, kernels, losses
#   loader.png     the loader benchmark's plot (drawn from its JSON if the step was cut)
#   log_tail.txt   the last 256 KiB of every step's output
# Bulky output (the loader's files, the training run) stays in a fresh temp folder on the machine, removed at
# the end. Each step runs under `timeout -k` (the trainer checkpoints on SIGTERM; a hang is killed 10 s later);
# summary.json is rewritten after every step, so a cut step or a lost machine keeps what was measured.
#
# Here, before a GPU session (pip's network, ~3 CPU minutes: 13 min on 2 shared cores), with the project's
# python found itself ($PYTHON, .venv, the active virtualenv, python3: the first that imports fastvid, DALI, PyAV):
#   benchmarks/gpu_check.sh prepare
# writes .carry/partNN (at most 60 MiB each: a call carries 64 MiB with the tree) and .carry/SHA256SUMS: one
# gzipped tar of (1) what the machine lacks, installed here for its Python 3.12: nvidia-dali-cuda130 at the
# DALI version the tests here use (the CUDA 13 build: the machine's driver; half the cuda120 wheel), av,
# webdataset, braceexpand and DALI's pure-Python needs astunparse, gast, optree, makefun, libcst, nvtx, each
# pinned to the version installed here (torch, scipy, matplotlib, psutil, pyyaml, safetensors, accelerate,
# tensorboard, six, packaging are on the machine already; DALI's image-codec wheels nvimgcodec and nvcomp are
# left out: `import nvidia.dali` and a pipeline run without them); (2) the benchmark shards: 64 clips of
# 5-10 s, H.264, short side 128, GOP 16, which the loader and training steps read cycled 128 times (8,192
# clips: an epoch is 128 steps of 64, longer than the 100-step run). 224 MiB, 4 parts (2026-12-06; shards
# 9 MB). It prints the calls to make.
#
# There: one call per part, each made right after the previous reply (the machine goes back after 30 s idle),
#   run(command="benchmarks/gpu_check.sh receive", carry=[".carry/part00", ".carry/SHA256SUMS"], timeout_s=60)
#   ... part01, part02 likewise; the last part with the check itself:
#   run(command="benchmarks/gpu_check.sh", carry=[".carry/part03", ".carry/SHA256SUMS"], timeout_s=600)
#   give_back()
# Check that each reply says the machine is still warm (lease.warm true) and that `receive` printed "k of N
# parts here" with k the parts sent so far. A reply with warm false, or a `receive` that exits 1 ("start again
# at part 00"), means the machine was given back and the parts with it: start again at part 00. The check
# itself verifies every part's presence and checksum before anything runs (exit 3 within seconds, with a
# summary.json naming what is missing or damaged). A second run on the same warm machine (e.g. after a fix;
# GPU_CHECK_STEPS="train" runs one step) reuses the unpacked payload and starts a fresh temp folder.
#
# Device time (15 min per session, start and transfers included), estimated; kept under 12 min so that a
# second run after a fix fits:
#   machine start (first call)                            ~120 s
#   3 part calls (60 MiB up, copy + checksum, reply,      3 x ~30 s = 90 s
#     the next call sent at once)
#   the check's call: its part up, parts checked          ~30 s
#     setup (unpack 224 MiB, cycle the shards, imports)   <= 50 s (limit; 23 s here on 2 busy cores)
#     loader (decode stage, 10 rows of <= 6 s + start)    <= 150 s
#     train (100 steps, video_simclr R3D-18 bf16)         <= 120 s
#     pytest -m gpu                                       <= 90 s
#     summaries (after each step), $OUT check             ~10 s
#   give_back at once                                     0 s (else 30 s idle)
#   total: ~560 s expected; 660 s (11 min) if every step runs to its limit; 700 s (11.7 min) if every step
#   also ignores SIGTERM until its kill 10 s later. The steps' limits with that kill grace add up to 450 s,
#   inside the 600 s one call may run (the script refuses to start otherwise).
#
# Here, the rehearsal: `benchmarks/gpu_check.sh dry-run` runs the whole procedure on this CPU machine (a tiny
# payload packed, split and received like the real one; CPU stand-ins for the GPU steps: tiny sizes, device
# cpu) into $OUT (default: a temp folder), then checks $OUT against the device tool's limits and the steps'
# limits against the per-call limit; tests/test_gpu_check.py runs it.
#
# Environment: OUT (where the summary goes), GPU_CHECK_STEPS (steps to run after setup; default all),
# GPU_CHECK_LIMITS ("step=seconds ..." to change limits), GPU_CHECK_CARRY and GPU_CHECK_LANDING (where the
# parts come from and are kept; default .carry and /tmp/carry), PYTHON (prepare: the project's python).
set -uo pipefail
cd "$(dirname "$0")/.."

CARRY=${GPU_CHECK_CARRY:-.carry}
LANDING=${GPU_CHECK_LANDING:-/tmp/carry}
PART_SIZE=60m
PER_CALL=600  # seconds one device call may run
KILL_AFTER=10  # seconds from a step's SIGTERM (the trainer then finishes its step and checkpoints) to its SIGKILL
LIMITS="setup=50 loader=150 train=120 pytest=90"  # seconds per step; GPU_CHECK_LIMITS's entries win
declare -A LIMIT
for kv in $LIMITS ${GPU_CHECK_LIMITS:-}; do LIMIT[${kv%%=*}]=${kv#*=}; done
STEPS=${GPU_CHECK_STEPS:-loader train pytest}
CLIPS=64  # benchmark clips carried (9 MB): with the packages, 4 parts
CYCLE=128  # copies of them the loader and training steps read: 8,192 clips, an epoch of 128 steps at batch 64
# What the machine lacks besides DALI, at the versions the tests here use (read from the project's environment).
CARRIED="av webdataset braceexpand astunparse gast optree makefun libcst nvtx"

# The training step's overrides (key=value, fastvid train's syntax); later ones win.
TRAIN_OVERRIDES=(train.log_every=10 train.mixed_precision=bf16 train.val_every=50 data.val_clips=64)
TRAIN_ARGS=(--max-steps 100 --batch-size 64 --device cuda)
# 16 workers first, decode=cpu first: the rows that matter most come before any cut.
LOADER_ARGS=(--workers 16 4 --batch 32 --batches 6 --repeats 2 --row-seconds 6 --loaders fastvid fastvid-plain pyav
             --decode cpu gpu)
PYTEST_ARGS=(-v -m gpu tests/data tests/kernels tests/losses)  # -v: a cut run still names what passed
MODE=gpu

die() { echo "gpu_check: $*" >&2; exit 2; }

# pack SITE SHARDS: both folders as one gzipped tar in $CARRY/partNN, with SHA256SUMS.
pack() {
  local stage
  stage=$(mktemp -d)
  ln -s "$(realpath "$1")" "$stage/site"
  ln -s "$(realpath "$2")" "$stage/shards"
  rm -rf "$CARRY" && mkdir -p "$CARRY"
  tar -chf - -C "$stage" site shards | gzip -6 | split -b "$PART_SIZE" -d -a 2 - "$CARRY/part" || die "pack failed"
  rm -rf "$stage"
  (cd "$CARRY" && sha256sum part[0-9][0-9] > SHA256SUMS)
}

# receive: copy the parts this call brought into $LANDING (kept while the machine is warm) and say how many of
# SHA256SUMS's parts are there with the right checksum. Returns 1 when a part is damaged or one before the
# newest is missing (the machine was given back between calls: start again at part 00), 2 when only later
# parts are still to come, 0 when all are here.
receive() {
  mkdir -p "$LANDING"
  [ -f "$CARRY/SHA256SUMS" ] || { echo "no $CARRY/SHA256SUMS: carry it in every call"; return 1; }
  cp "$CARRY/SHA256SUMS" "$LANDING/"
  for p in "$CARRY"/part[0-9][0-9]; do [ -e "$p" ] && cp "$p" "$LANDING/"; done
  local total ok missing=() bad=()
  total=$(wc -l < "$LANDING/SHA256SUMS")
  while read -r sum name; do
    if [ ! -f "$LANDING/$name" ]; then missing+=("$name")
    elif [ "$(sha256sum < "$LANDING/$name" | cut -d' ' -f1)" != "$sum" ]; then bad+=("$name"); fi
  done < "$LANDING/SHA256SUMS"
  ok=$((total - ${#missing[@]} - ${#bad[@]}))
  echo "$ok of $total parts here, checksums ok; missing: ${missing[*]:-none}; damaged: ${bad[*]:-none}"
  printf '{"parts": %d, "ok": %d, "missing": "%s", "damaged": "%s"}\n' "$total" "$ok" "${missing[*]:-}" "${bad[*]:-}" \
    > "$LANDING/received.json"
  [ "${#bad[@]}" -eq 0 ] || return 1
  [ "${#missing[@]}" -eq 0 ] && return 0
  local newest
  newest=$(cd "$LANDING" && ls part[0-9][0-9] 2>/dev/null | tail -1)
  if [[ -n "$newest" && "${missing[0]}" < "$newest" ]]; then
    echo "a part before $newest is missing: start again at part 00"
    return 1
  fi
  return 2
}

# setup (a step): unpack the payload once per set of parts, cycle the shards, link kernels/ and configs/ where
# an install would put them (git-ignored; the machine's copy of the tree goes with it), check the imports.
setup() {
  set -e
  if ! cmp -s "$LANDING/SHA256SUMS" "$LANDING/payload/SHA256SUMS" 2>/dev/null; then
    rm -rf "$LANDING/payload" && mkdir -p "$LANDING/payload"
    (cd "$LANDING" && cat $(awk '{print $2}' SHA256SUMS)) | tar -xz -C "$LANDING/payload"
    python3 benchmarks/gpu_check.py cycle "$LANDING/payload/shards" "$LANDING/payload/cycled" "$CYCLE"
    cp "$LANDING/SHA256SUMS" "$LANDING/payload/"
  fi
  [ -e fastvid/kernels ] || ln -s ../kernels fastvid/kernels
  [ -e fastvid/configs ] || ln -s ../configs fastvid/configs
  python3 -c "import nvidia.dali, av, webdataset, fastvid.kernels, fastvid.configs; print('imports ok')"
}

# step NAME COMMAND...: run under its limit, output in $WORK/NAME.log, record how it ended, rewrite the summary.
step() {
  local name=$1 t0 rc
  shift
  [ "$name" = setup ] || [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name (at $(( $(date +%s) - started )) s, limit ${LIMIT[$name]} s)" | tee -a "$WORK/log"
  t0=$(date +%s)
  timeout -k "$KILL_AFTER" "${LIMIT[$name]}" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  local timed_out=false
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && timed_out=true  # 137: killed after the grace
  printf '{"step": "%s", "limit": %d, "exit": %d, "seconds": %d, "timed_out": %s}\n' "$name" "${LIMIT[$name]}" "$rc" \
    "$(( $(date +%s) - t0 ))" "$timed_out" >> "$WORK/steps.jsonl"
  cat "$WORK/$name.log" >> "$WORK/log"
  tail -n 25 "$WORK/$name.log"
  echo "== $name: exit $rc" | tee -a "$WORK/log"
  python3 benchmarks/gpu_check.py summary "$WORK" "$OUT" || echo "summary failed"
}

# check: everything after the parts are here, on the GPU machine or (dry-run) with CPU stand-ins.
check() {
  OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXX)}
  mkdir -p "$OUT"
  WORK=$(mktemp -d /tmp/gpu_check_work.XXXX)
  trap 'rm -rf "$WORK"' EXIT
  echo "$MODE" > "$WORK/mode"
  started=$(date +%s) failed=0
  export PYTHONUNBUFFERED=1 PYTHONPATH=$LANDING/payload/site:$PWD:${PYTHONPATH:-} LANDING CYCLE
  echo "OUT=$OUT, bulky output in $WORK (removed at the end)"
  for s in $STEPS; do
    [[ " loader train pytest " == *" $s "* ]] || die "GPU_CHECK_STEPS: unknown step '$s' (steps: loader train pytest)"
  done
  if ! python3 benchmarks/gpu_check.py limits "$LIMITS" "$LIMITS ${GPU_CHECK_LIMITS:-}" "$KILL_AFTER" "$PER_CALL" \
    > "$WORK/limits.json"; then
    finish 4
  fi
  receive | tee -a "$WORK/log"
  local parts_rc=${PIPESTATUS[0]}
  cp "$LANDING/received.json" "$WORK/" 2>/dev/null
  [ "$parts_rc" -eq 0 ] || finish 3  # nothing runs on a partial payload
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
      > "$WORK/nvidia-smi.txt" 2>&1
  fi
  export -f setup
  step setup bash -c setup
  if [ "$failed" -ne 0 ]; then echo "setup failed: no step can run"; finish 1; fi

  local shards=$LANDING/payload/cycled dmon=""
  if [[ " $STEPS " == *" loader "* ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi dmon -s u -o T > "$WORK/dmon.txt" 2>&1 &
    dmon=$!
  fi
  step loader python3 benchmarks/loader.py --shards "$shards" --output "$WORK/loader" "${LOADER_ARGS[@]}"
  [ -n "$dmon" ] && kill "$dmon" 2>/dev/null
  step train python3 -m fastvid.train --method video_simclr --data "$shards" --output "$WORK/run" "${TRAIN_ARGS[@]}" \
    "${TRAIN_OVERRIDES[@]}"
  step pytest python3 -m pytest -p no:cacheprovider "${PYTEST_ARGS[@]}" --junitxml="$WORK/pytest.xml"

  finish "$failed"
}

# finish CODE: the last summary, $OUT checked against what the device tool returns, exit CODE (4 if $OUT is off).
finish() {
  echo "== summary"
  python3 benchmarks/gpu_check.py summary "$WORK" "$OUT" print || echo "summary failed"
  echo "== done in $(( $(date +%s) - started )) s; \$OUT:" && ls -l "$OUT"
  python3 benchmarks/gpu_check.py check-out "$OUT" || exit 4
  exit "$1"
}

case "${1:-check}" in
  prepare)
    set -e
    # The project's environment (its versions are the pins; its fastvid makes the shards), wherever it is.
    py=""
    for candidate in ${PYTHON:-} .venv/bin/python ${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python} python3; do
      if "$candidate" -c "import fastvid, nvidia.dali, av" 2> /dev/null; then py=$candidate; break; fi
    done
    [ -n "$py" ] || die "prepare: no python here imports fastvid, nvidia.dali and av: make the project's" \
      "environment (python3 -m venv .venv && .venv/bin/pip install -e '.[dev]') or name its python:" \
      "PYTHON=/path/to/python benchmarks/gpu_check.sh prepare"
    echo "the project's python: $py"
    pins=$("$py" - $CARRIED <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

pins = [f"{name}=={version(name)}" for name in sys.argv[1:]]
for build in ("nvidia-dali-cuda130", "nvidia-dali-cuda120"):  # the tests' DALI release, built for CUDA 13
    try:
        pins.append(f"nvidia-dali-cuda130=={version(build)}")
        break
    except PackageNotFoundError:
        pass
print(" ".join(pins))
EOF
)
    echo "carrying: $pins"
    dl=$(mktemp -d)
    trap 'rm -rf "$dl"' EXIT
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dl/wheels" $pins
    "$py" -m pip install -q --no-deps --no-index --no-compile --target "$dl/site" --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --only-binary=:all: "$dl"/wheels/*.whl
    # Python 3.12 loads only its own extension modules: DALI's builds for 3.10-3.15 would be 14 MiB more to carry.
    find "$dl/site" -name '*.cpython-3*-x86_64-linux-gnu.so' ! -name '*.cpython-312-*' -delete
    "$py" benchmarks/loader.py --shards-only --clips "$CLIPS" --output "$dl/bench"
    pack "$dl/site" "$dl/bench/shards-$CLIPS"
    n=$(ls "$CARRY"/part[0-9][0-9] | wc -l)
    ls -l "$CARRY"
    echo "$n parts. Send them one right after another, checking that each reply says lease.warm true:"
    for p in "$CARRY"/part[0-9][0-9]; do
      [ "$p" = "$(ls "$CARRY"/part[0-9][0-9] | tail -1)" ] && break
      echo "  run(command=\"benchmarks/gpu_check.sh receive\", carry=[\"$p\", \"$CARRY/SHA256SUMS\"], timeout_s=60)"
    done
    echo "  run(command=\"benchmarks/gpu_check.sh\", carry=[\"$p\", \"$CARRY/SHA256SUMS\"], timeout_s=600)"
    echo "  give_back()"
    ;;
  receive)
    receive
    [ $? -ne 1 ]  # parts still to come are fine here; the check itself needs them all
    ;;
  check)
    check
    ;;
  dry-run)
    # The same procedure on this CPU machine: a tiny payload (no wheels: this environment has them; 2 clips
    # cycled 4 times) packed and split in 3-4 parts, received, then the check with CPU stand-ins.
    MODE="dry-run: CPU stand-ins"
    tmp=$(mktemp -d /tmp/gpu_check_dry.XXXX)
    trap 'rm -rf "$tmp"' EXIT
    CARRY=$tmp/carry LANDING=$tmp/landing CYCLE=4
    python3 benchmarks/loader.py --shards-only --clips 2 --output "$tmp/bench" > "$tmp/prepare.log" 2>&1 \
      || { cat "$tmp/prepare.log"; die "dry-run: making the shards failed"; }
    mkdir -p "$tmp/site"
    PART_SIZE=$(( $(du -sb "$tmp/bench/shards-2" | cut -f1) / 4 + 1 ))  # 3 or 4 parts once gzipped
    pack "$tmp/site" "$tmp/bench/shards-2"
    LOADER_ARGS=(--workers 1 --batch 2 --batches 1 --repeats 1 --row-seconds 3 --loaders fastvid pyav --decode cpu)
    TRAIN_ARGS=(--max-steps 2 --batch-size 2 --device cpu)
    TRAIN_OVERRIDES+=(train.log_every=1 train.mixed_precision=fp32 model.views.frames=8 model.views.size=32
                      model.views.shift=4 data.workers=1 data.threads=1)
    PYTEST_ARGS=(-q -m gpu tests/kernels/test_frame_diff.py)
    ( check )
    ;;
  *)
    die "usage: benchmarks/gpu_check.sh [prepare|receive|dry-run]  (no argument: the check, on the GPU machine)"
    ;;
esac
