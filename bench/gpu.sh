#!/usr/bin/env bash
# detector's GPU check in one command, within 9 minutes on one GPU; everything it measures lands in one
# folder ($OUT, or the first argument): gpu.json (bench/gpu.py: training and inference images/s in fp32,
# bf16 and fp16 beside a plain torchvision loop, peak memory, a one-epoch fine-tune that must learn),
# benchmark.json (`detector benchmark` on CUDA of that fine-tuned model) and pytest.log (the CUDA tests).
#
#     bash bench/gpu.sh gpu-out
#
# The machine needs the project's dependencies installed (pip install -e ".[dev]") and a CUDA build of torch;
# without internet, this script installs only detector itself (no dependencies, no build isolation).
set -uo pipefail
OUT=${1:-${OUT:-gpu-out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 1
python -c "import detector" 2>/dev/null || pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
status=0
timeout 330 python bench/gpu.py --out "$OUT/gpu.json" --keep "$OUT/../gpu-run" 2>&1 | tee "$OUT/gpu.log" || status=1
if [ -f "$OUT/../gpu-run/best.pt" ]; then
  timeout 60 detector benchmark "$OUT/../gpu-run/best.pt" examples/rbc/valid --limit 8 --device cuda \
    --sizes 352,640 --batch-sizes 1,8 --runtimes eager,torchscript,onnx --json "$OUT/benchmark.json" \
    2>&1 | tee "$OUT/benchmark.log" || status=1
fi
DETECTOR_GPU_CHECKPOINT="$OUT/../gpu-run/best.pt" timeout 150 python -m pytest -q -rs -n 0 --device cuda tests/test_gpu.py \
  2>&1 | tee "$OUT/pytest.log" || status=1
echo "bench/gpu.sh: exit $status; results in $OUT"
exit $status
