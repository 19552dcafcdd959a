#!/usr/bin/env bash
# Every check that needs a GPU, in one command (CI has no GPU; run it wherever one is lent):
#   bash benchmarks/gpu_check.sh [SHARED_DATA]      # default ../shared/data; built-in shapes where absent
# 1. tests/test_cuda.py: geometry on the GPU equals the CPU's, a bf16 step syncs the host at most
#    once, fp16 + grad scaler, the CLI on the GPU and its checkpoint on the CPU, --compile;
# 2. benchmarks/bench_speed.py --device cuda -> benchmarks/speed_cuda.{md,json}.
# Logs and results are copied to $OUT (when set) or runs/gpu_check. Exit status 1 if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
status=0
python3 -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: torch sees no CUDA GPU here')
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee "$out/env.txt" || exit 1
python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1
python3 benchmarks/bench_speed.py --device cuda --shared "$shared" 2>&1 | tee "$out/bench_speed.log" || status=1
cp benchmarks/speed_cuda.md benchmarks/speed_cuda.json "$out/" 2>/dev/null
exit $status
