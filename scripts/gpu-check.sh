#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script: the tests/gpu suite, then `motif bench` on musicgen-small's
# shape (RTF at batch 1, audio-seconds per second for batched jobs). Run from the repository root with the
# project's virtualenv active; results go to ${OUT:-gpu-check}/.
set -euo pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
export MOTIF_TEST_MODEL_CACHE="${MOTIF_TEST_MODEL_CACHE:-$PWD/.cache/motif-test}"
python -m pytest tests/gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
DEVICE=cuda python -m motif.bench --precisions fp16,bf16 2>&1 | tee "$out/bench.txt"
