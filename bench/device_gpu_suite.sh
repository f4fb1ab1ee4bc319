#!/usr/bin/env bash
# On the lent GPU machine, after the `cp .carry/ort.partK /tmp/` calls (see bench/device_setup.sh; this call may
# carry the last part itself): install
# onnxruntime-gpu, run the GPU tests, the speed sweep and the fp16-vs-fp32 sentence check, everything into $OUT.
#   bash bench/device_gpu_suite.sh [pytest paths...]   (default: every test file with a gpu mark)
#   SWEEP_ARGS="--seconds 2 ..." overrides the sweep's arguments (default: --seconds 0.6 --profile-n 10,40)
set -uo pipefail
for part in .carry/ort.part?; do [ -f "$part" ] && cp "$part" /tmp/; done
bash bench/device_setup.sh || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
[ $# -gt 0 ] || set -- $(grep -rl "mark.gpu" tests --include="test_*.py" | sort)
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider "$@" 2>&1 \
  | tee "$OUT/pytest_gpu.txt" | tail -25
# shellcheck disable=SC2086
timeout 400 python3 bench/gpu_sweep.py ${SWEEP_ARGS:---seconds 0.6 --profile-n 10,40} --out "$OUT/gpu_sweep.json" 2>&1 \
  | tail -45
timeout 60 python3 bench/fp16_sentences.py --ckpt muxdeploy/demo_models/sentiment-n10 \
  --data muxdeploy/demo_models/sentiment-dev.jsonl --out "$OUT/fp16_sentences.json" 2>&1 | tail -8
