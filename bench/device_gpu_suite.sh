#!/usr/bin/env bash
# On the lent GPU machine, after the five `cp .carry/ort.partK /tmp/` calls (see bench/device_setup.sh): install
# onnxruntime-gpu, run the GPU tests, the speed sweep and the fp16-vs-fp32 sentence check, everything into $OUT.
#   bash bench/device_gpu_suite.sh [pytest paths...]     (carry: .carry/sent for the sentence check)
set -uo pipefail
bash bench/device_setup.sh || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="--import-mode=importlib" "${@:-tests}" 2>&1 \
  | tee "$OUT/pytest_gpu.txt" | tail -25
timeout 330 python3 bench/gpu_sweep.py --seconds 0.8 --profile-n 1,10,40 --out "$OUT/gpu_sweep.json" 2>&1 | tail -45
if [ -d .carry/sent ]; then
  timeout 60 python3 bench/fp16_sentences.py --ckpt .carry/sent/sent10.pt --data .carry/sent/dev.jsonl \
    --out "$OUT/fp16_sentences.json" 2>&1 | tail -8
fi
