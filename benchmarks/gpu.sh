#!/usr/bin/env bash
# Every benchmark that has a GPU variant, on one CUDA device, in one call (~8 min on an H100).
#     bash benchmarks/gpu.sh                  # protadapt installed with the [bench] extra; data in $PROTADAPT_DATA_DIR
#     DEVICE=cpu bash benchmarks/gpu.sh       # the same scripts on tiny shapes: proves the script end to end
# Writes *_cuda.md into $PROTADAPT_RESULTS_DIR (default benchmarks/results; copied to $OUT when that is set).
# DEVICE=cpu writes the CPU file names into $PROTADAPT_RESULTS_DIR, a fresh temporary directory unless set,
# so the committed CPU results are never overwritten; it leaves out benchmarks.compile (inductor needs
# ~100 s for even the tiny model on a CPU; tests/test_compile_checkpointing.py checks its numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then
    export PROTADAPT_RESULTS_DIR="${PROTADAPT_RESULTS_DIR:-$(mktemp -d)}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    python -m benchmarks.limit --device cpu --archs tiny --repeats 1 --steps 2 --bbb-n 4 --thermo-n 2 --thermo-max 300
    python -m benchmarks.checkpointing --device cpu --shapes tiny:2x32:1
    python -m benchmarks.memory --device cpu --cells tiny:lora:float32:off tiny:dora:bfloat16:on
    python -m benchmarks.train_step --device cpu --backbone tiny --skip-fit --repeats 1 --steps 3
    python -m benchmarks.dora_norm --device cpu --quick --repeats 1
    python -m benchmarks.predict_throughput --device cpu --n 8 --batch-size 4 --repeats 1
    python -m benchmarks.vs_peft --device cpu --archs 8M --shapes 2x16 --methods LoRA --repeats 1 --no-memory
    python -m benchmarks.padding --device cpu --skip-naive --archs tiny --tasks mic --batches 1 --rounds 1 --attentions loop nested
else
    export PROTADAPT_RESULTS_DIR="${PROTADAPT_RESULTS_DIR:-benchmarks/results}"
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
    python -m benchmarks.limit --device cuda --archs 8M 35M 650M --thermo-n 8 --thermo-max 550
    python -m benchmarks.compile --device cuda
    python -m benchmarks.checkpointing --device cuda --shapes esm2_t12_35M_UR50D:16x512:5 esm2_t33_650M_UR50D:8x512:3
    M650=esm2_t33_650M_UR50D  # bf16 frozen weights under bf16 autocast, and the 3B that fits a 24 GB card in bf16
    python -m benchmarks.memory --device cuda --autocast --batch 16 --cells $M650:lora:float32:off $M650:lora:bfloat16:off \
        $M650:dora:bfloat16:off $M650:dora:bfloat16:on esm2_t36_3B_UR50D:lora:bfloat16:off esm2_t36_3B_UR50D:lora:bfloat16:on
    python -m benchmarks.predict_throughput --device cuda --n 512 --batch-size 64 --precision bf16
    python -m benchmarks.predict_throughput --device cuda --task thermostability --n 256 --precision bf16
    python -m benchmarks.vs_peft --device cuda --archs 8M 35M 650M --shapes 8x64 16x128 8x512 --repeats 5
    python -m benchmarks.dora_norm --device cuda --repeats 5
    python -m benchmarks.train_step --device cuda --skip-fit --repeats 3
    python -m benchmarks.train_step --device cuda --backbone esm2_t33_650M_UR50D --skip-fit --repeats 2
    # padded (length buckets) vs packed: decides data.packing=auto on CUDA (backbones/packing.py AUTO)
    python -m benchmarks.padding --device cuda --archs 8M 35M 650M --batches 4 8 --rounds 5 --attentions loop nested mask flex
fi
echo "results in $PROTADAPT_RESULTS_DIR"
if [ -n "${OUT:-}" ]; then cp "$PROTADAPT_RESULTS_DIR"/*"$([ "$DEVICE" = cpu ] || echo _cuda)"*.md "$OUT"/; fi
