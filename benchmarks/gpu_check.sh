#!/usr/bin/env bash
# Every GPU check of fastvid in one call on the lent GPU machine (one H200, 16 cores, Python 3.12 with torch,
# torchvision, triton, numba, OpenCV, accelerate; no DALI, PyAV, webdataset, no package registry), writing
# its results under $OUT in under 9 minutes (its steps' limits add up to 520 s):
#   summary.json      what every step measured or why it failed, with the machine and versions
#   pytest.xml        `pytest -m gpu` over tests/data, tests/kernels, tests/losses
#   loader/loader.json, loader/loader.png   benchmarks/loader.py: fastvid with PyAV workers + GPU augmentation
#                     (decode=cpu) and with DALI's NVDEC decoder (decode=gpu), each also with a centre crop
#                     only (fastvid-plain: the decode stage's rate), against a PyAV DataLoader, 4 and 16 workers
#   dmon.txt          `nvidia-smi dmon -s u` during the loader benchmark (NVDEC utilisation: column "dec")
#   train.txt         a 100-step video_simclr R3D-18 bf16 run at batch 64: clips/s and data wait per 10 steps
#
# Here, before a GPU session (needs pip's network and a few minutes):
#   benchmarks/gpu_check.sh prepare
# writes .carry/partNN (wheels, at most 56 MiB each) and .carry/bench.tar (benchmark shards: 128 clips of
# 5-10 s, H.264, short side 128, GOP 16) and prints the device calls to make, one right after another (the
# machine goes back after 30 s idle):
#   run(command="mkdir -p /tmp/carry && cp .carry/partNN /tmp/carry/", carry=[".carry/partNN"])  every part but
#   the last, then the last part, the shards and the check in one call:
#   run(command="mkdir -p /tmp/carry && cp .carry/partNN /tmp/carry/ && benchmarks/gpu_check.sh",
#       carry=[".carry/partNN", ".carry/bench.tar"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
  set -e
  ../shared/tools/carry_to_device.sh nvidia-dali-cuda130==2.4.0 astunparse gast optree makefun libcst nvtx \
    webdataset braceexpand av tensorboard tensorboard-data-server grpcio protobuf markdown werkzeug absl-py
  python benchmarks/loader.py --shards-only --clips 128 --output .carry/bench-src
  tar -cf .carry/bench.tar -C .carry/bench-src shards-128
  rm -rf .carry/bench-src
  ls -l .carry
  exit 0
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT/loader"
started=$(date +%s)
export PYTHONUNBUFFERED=1
declare -A status

# The summary is rewritten after every step: a machine that goes back mid-check still leaves what it measured.
summarize() {
  local codes=""
  for k in "${!status[@]}"; do codes="$codes $k=${status[$k]}"; done
  python3 - "$OUT" "$started" $codes <<'EOF'
import json, platform, re, sys, time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

out, started = Path(sys.argv[1]), float(sys.argv[2])
gpu = out / "nvidia-smi.txt"
summary = {"seconds": round(time.time() - started), "python": platform.python_version(),
           "gpu": gpu.read_text().strip() if gpu.exists() else None, "versions": {}}
for package in ("torch", "triton", "nvidia-dali-cuda130", "av"):  # metadata only: importing torch costs seconds
    try:
        summary["versions"][package] = version(package)
    except PackageNotFoundError:
        summary["versions"][package] = None
xml = out / "pytest.xml"
if xml.exists():
    head = re.search(r"<testsuite [^>]*", xml.read_text())
    summary["pytest"] = dict(re.findall(r'(\w+)="([^"]*)"', head.group(0))) if head else "no testsuite"
loader = out / "loader" / "loader.json"
if loader.exists():  # rewritten after each of its measurements: read what is there
    report = json.loads(loader.read_text())
    summary["loader"] = {name: {w: round(r["clips_per_s"], 1) for w, r in by.items()}
                         for name, by in report["results"].items()}
    summary["decode_stage"] = report["decode_stage"]["ms_per_clip"]
train = (out / "train.txt").read_text() if (out / "train.txt").exists() else ""
steps = re.findall(r"step (\d+)/\d+: .*?([\d.]+) clips/s, data wait (\d+)%", train)
summary["train"] = [{"step": int(s), "clips_per_s": float(c), "data_wait_percent": int(w)} for s, c, w in steps] \
    or train[-600:]
summary["exit_codes"] = dict(arg.split("=") for arg in sys.argv[3:])  # 124: the step ran out of time
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
}

step() {  # step NAME TIMEOUT COMMAND...: run, keep its exit status, never stop the script
  local name=$1 limit=$2
  shift 2
  echo "== $name (at $(( $(date +%s) - started )) s, limit $limit s)"
  timeout "$limit" "$@"
  status[$name]=$?
  echo "== $name: exit ${status[$name]}"
  summarize > /dev/null
}

# 1. What the machine lacks, from the carried wheels; fastvid from this tree: kernels/ and configs/ install as
#    fastvid.kernels and fastvid.configs, and links give the tree the same layout without installing (they are
#    git-ignored; the device's copy of the tree is thrown away with the machine).
setup() {
  if ls /tmp/carry/part* > /dev/null 2>&1; then
    cat /tmp/carry/part* | tar -x -C /tmp/carry
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/carry/*.whl
  fi
  if [ -f .carry/bench.tar ]; then tar -xf .carry/bench.tar -C /tmp/carry; fi
  [ -e fastvid/kernels ] || ln -s ../kernels fastvid/kernels
  [ -e fastvid/configs ] || ln -s ../configs fastvid/configs
  python3 -c "import nvidia.dali, av, webdataset, fastvid.kernels, fastvid.configs; print('imports ok')"
}
mkdir -p /tmp/carry
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
export -f setup
step setup 90 bash -c setup
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1

# 2. The GPU tests: NVDEC and GPU-augmentation variants of the loader tests, compiled Triton kernels.
step pytest 130 python3 -m pytest -m gpu -q -p no:cacheprovider tests/data tests/kernels tests/losses \
  --junitxml="$OUT/pytest.xml"

# 3. The loader on the GPU machine's 16 cores, NVDEC utilisation beside it.
SHARDS=/tmp/carry/shards-128
nvidia-smi dmon -s u -o T > "$OUT/dmon.txt" 2>&1 &
dmon=$!
step loader 180 python3 benchmarks/loader.py --shards "$SHARDS" --output "$OUT/loader" --workers 4 16 --batch 32 \
  --batches 8 --repeats 2 --loaders fastvid fastvid-plain pyav --decode cpu gpu
kill "$dmon" 2>/dev/null

# 4. Training throughput: does the loader keep R3D-18 busy? (the trainer prints a line per 10 steps)
step train 120 python3 -m fastvid.train --method video_simclr --data "$SHARDS" --output /tmp/gpu_check_run \
  --max-steps 100 --batch-size 64 --device cuda train.log_every=10 train.mixed_precision=bf16 > "$OUT/train.txt" 2>&1

summarize
