#!/usr/bin/env bash
# One prepared check of the GPU path, for a machine with one CUDA GPU (under 8 minutes):
#   bash scripts/gpu_check.sh [OUT_DIR]
# Prints one line per check (PASS / FAIL / SKIP, seconds, what it measured) and keeps the full
# logs in OUT_DIR (default: $OUT when set, else ./gpu_check). Record the dated output in
# docs/gpu.md. Needs: the requirements installed; ../shared/data/cifar10-jpg.tar.gz for the
# CIFAR-10 check (skipped without it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD" HYDRA_FULL_ERROR=1
echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null)"
python - <<'PY' 2>&1 | tee "$OUT_DIR/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY

check() {  # check NAME TIMEOUT COMMAND...: one line, the full log in OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  if timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1; then
    printf 'PASS %-22s %4ds  %s\n' "$name" $((SECONDS - started)) \
      "$(grep -E '^(final|result):' "$OUT_DIR/$name.log" | tail -1)"
  else
    printf 'FAIL %-22s %4ds  see %s\n' "$name" $((SECONDS - started)) "$OUT_DIR/$name.log"
  fi
}

check gpu_tests 120 python -m pytest -q -m gpu tests
check sdc_digits_cuda 120 python main_v2.py device=cuda epochs=20 eval_interval=10 \
  progress=false data_dir="$WORK/data" hydra.run.dir="$WORK/digits"
check precision_16_mixed 120 python main_v2.py device=cuda precision=16-mixed epochs=5 \
  progress=false data_dir="$WORK/data" hydra.run.dir="$WORK/digits16"
check retrieval_cuda 180 python - <<'PY'
import time, torch
from utils.retrieval import retrieval_report
g = torch.Generator().manual_seed(0)
q, d = torch.randn(1000, 64, generator=g), torch.randn(59000, 64, generator=g)
ql, dl = torch.randint(0, 10, (1000,), generator=g), torch.randint(0, 10, (59000,), generator=g)
cpu = retrieval_report(q, d, ql, dl, R=1000, pr_curve=False)
dev = torch.device("cuda")
args = [t.to(dev) for t in (q, d, ql, dl)]
retrieval_report(*args, R=1000, pr_curve=False); torch.cuda.synchronize()
start = time.perf_counter()
gpu = retrieval_report(*args, R=1000, pr_curve=False); torch.cuda.synchronize()
seconds = time.perf_counter() - start
assert all(abs(gpu[k] - v) < 1e-9 for k, v in cpu.items() if isinstance(v, float)), "CPU != CUDA"
print(f"result: 1,000 x 59,000 x 64 bits on CUDA in {seconds:.3f} s, mAP@1000 equal to the CPU's")
PY
if [ -f ../shared/data/cifar10-jpg.tar.gz ]; then
  mkdir -p "$WORK/data/cifar10" && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C "$WORK/data/cifar10"
  check sdc_cifar10_cached 300 python main_v2.py model=sdc dataset=cifar10 \
    backbone=efficientnet_lite0 dataset.resize=96 dataset.crop=96 dataset.source.download=false \
    device=cuda epochs=100 eval_interval=0 num_workers=8 progress=false data_dir="$WORK/data" \
    hydra.run.dir="$WORK/cifar"
else
  printf 'SKIP %-22s        ../shared/data/cifar10-jpg.tar.gz not found\n' sdc_cifar10_cached
fi
# torchrun with one process on the one GPU: the launch under torchrun's environment (with one
# process no process group is made; NCCL, the batch split and SyncBatchNorm need two GPUs)
check torchrun_1gpu 180 python -m torch.distributed.run --standalone --nproc_per_node=1 main_v2.py \
  device=cuda epochs=5 progress=false data_dir="$WORK/data" hydra.run.dir="$WORK/torchrun"
