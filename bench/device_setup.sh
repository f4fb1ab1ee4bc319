#!/usr/bin/env bash
# On the lent GPU machine: put onnxruntime-gpu 1.31.1 (CUDA 13, matching its torch 2.11+cu130) into /tmp/site,
# and pytest from the carried .whl/ folder when the image has none (for `pytest -m gpu`).
# The wheel (256 MB) travels in 6 parts of 46 MB (a call carries at most 64 MiB, the working tree included); each
# earlier call copied its part to /tmp (`cp .carry/ort.partK /tmp/`), back to back while the machine stayed warm. Here: join, check, install.
# Make the parts here: split -b 46000000 -d -a 1 onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl .carry/ort.part
set -euo pipefail
wheel=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
if ! python3 -c "import pytest" 2>/dev/null && ls .whl/pytest-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .whl/*.whl
fi
if python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
  echo "onnxruntime-gpu already in /tmp/site"; exit 0
fi
cat /tmp/ort.part? > "$wheel"  # part0, part1, ... in order
echo "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  $wheel" | sha256sum -c -
python3 -m pip install -q --no-deps --no-index --target /tmp/site "$wheel"
rm -f "$wheel"
PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
