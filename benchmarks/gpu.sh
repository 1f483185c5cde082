#!/usr/bin/env bash
# Every benchmark that has a GPU variant, on one CUDA device, in one call (~8 min on an H100).
#     bash benchmarks/gpu.sh            # protadapt installed with the [bench] extra; data in $PROTADAPT_DATA_DIR
# Writes benchmarks/results/*_cuda.md (and copies them to $OUT when that is set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m benchmarks.predict_throughput --device cuda --n 512 --batch-size 64 --precision bf16
python -m benchmarks.predict_throughput --device cuda --task thermostability --n 256 --precision bf16
python -m benchmarks.vs_peft --device cuda --archs 8M 35M 650M --shapes 8x64 16x128 8x512 --repeats 5
python -m benchmarks.dora_norm --device cuda --repeats 5
python -m benchmarks.train_step --device cuda --skip-fit --repeats 3
python -m benchmarks.train_step --device cuda --backbone esm2_t33_650M_UR50D --skip-fit --repeats 2
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*cuda*.md "$OUT"/; fi
