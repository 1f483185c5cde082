#!/usr/bin/env bash
# `trainer.strategy=fsdp` on every CUDA device of one machine, in one call: for each backbone and method, a fit
# on bbb sharded over the GPUs (bf16-mixed) with the peak memory nvidia-smi saw per GPU, then `protadapt predict`
# in ONE process without FSDP on the saved run, compared with the test predictions the FSDP run wrote.
#     bash benchmarks/gpu_fsdp.sh                       # ESM-2 650M and 3B, LoRA and DoRA, all visible GPUs
#     BACKBONES=esm2_t48_15B_UR50D METHODS=lora bash benchmarks/gpu_fsdp.sh
#     EXTRA=--random-init bash benchmarks/gpu_fsdp.sh   # no weights to download (the memory figures hold)
#     DEVICE=cpu bash benchmarks/gpu_fsdp.sh            # tiny backbone, 2 CPU ranks on gloo: the script end to end
# Writes fsdp_cuda.md (fsdp_cpu.md) into $PROTADAPT_RESULTS_DIR (default: a fresh temporary directory; copied to
# $OUT when that is set). Exits non-zero if a reload differs from the FSDP-time predictions by more than $TOLERANCE.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
RESULTS="${PROTADAPT_RESULTS_DIR:-$(mktemp -d)}"
WORK="$(mktemp -d)"
mkdir -p "$RESULTS"
if [ "$DEVICE" = cpu ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    BACKBONES="${BACKBONES:-tiny}"; METHODS="${METHODS:-lora dora}"; GPUS=2; PRECISION=32-true; EPOCHS=1
    SETTINGS=(--accelerator cpu --task custom); OVERRIDES=("data.train_file=$WORK/small.csv"); TOLERANCE="${TOLERANCE:-1e-6}"
    python - "$WORK/small.csv" <<'EOF'
import os, sys, pandas as pd
frame = pd.read_csv(os.path.join(os.environ["PROTADAPT_DATA_DIR"], "bbb", "bbb.csv")).drop_duplicates("sequence", keep=False)
parts = [frame[(frame["split"] == s) & (frame["label"] == l)].head(n) for s, n in (("train", 24), ("test", 8)) for l in (0, 1)]
pd.concat(parts)[["id", "sequence", "label", "split"]].to_csv(sys.argv[1], index=False)
EOF
else
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.device_count(), 'x', torch.cuda.get_device_name())"
    BACKBONES="${BACKBONES:-esm2_t33_650M_UR50D esm2_t36_3B_UR50D}"; METHODS="${METHODS:-lora dora}"
    GPUS="${GPUS:-$(nvidia-smi -L | wc -l)}"; PRECISION=bf16-mixed; EPOCHS="${EPOCHS:-1}"
    SETTINGS=(--accelerator gpu --task bbb); OVERRIDES=(); TOLERANCE="${TOLERANCE:-1e-3}"
fi
REPORT="$RESULTS/fsdp_$DEVICE.md"
{
    echo "# trainer.strategy=fsdp: $GPUS ranks ($DEVICE), $PRECISION, reload without FSDP"
    echo
    echo "| backbone | method | ranks | fit s | peak MiB per GPU | trainable | max abs Δ reload |"
    echo "|---|---|---|---|---|---|---|"
} > "$REPORT"
for backbone in $BACKBONES; do
    for method in $METHODS; do
        run="$WORK/$backbone-$method"
        if [ "$DEVICE" = cuda ]; then
            nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$run.mem" &
            monitor=$!
        fi
        start=$(date +%s)
        python -m protadapt.cli fit --backbone "$backbone" --method "$method" --devices "$GPUS" --strategy fsdp \
            --quiet --out "$run" "${SETTINGS[@]}" ${EXTRA:-} "${OVERRIDES[@]}" "trainer.precision=$PRECISION" "optim.max_epochs=$EPOCHS" \
            data.batch_size=8 > "$run.fit.json"
        seconds=$(( $(date +%s) - start ))
        peak="-"
        if [ "$DEVICE" = cuda ]; then
            kill "$monitor"
            peak=$(sort -t, -k2 -n -r "$run.mem" | awk -F', ' '!seen[$1]++ {printf "%s%s", sep, $2; sep="/"}')
        fi
        python - "$run" "$REPORT" "$backbone" "$method" "$GPUS" "$seconds" "$peak" "$TOLERANCE" "$DEVICE" <<'EOF'
import json, subprocess, sys
from pathlib import Path
import pandas as pd
from protadapt.config import load_config
from protadapt.data.tasks import resolve_task

run, report, backbone, method, ranks, seconds, peak, tolerance, device = sys.argv[1:]
run = Path(run)
config = load_config(run / "config.yaml")
frame = resolve_task(config.data).load()
frame[frame["split"] == "test"][["id", "sequence"]].to_csv(run.parent / "test.csv", index=False)
precision = "bf16" if config.trainer.precision.startswith("bf16") else "32"
subprocess.run([sys.executable, "-m", "protadapt.cli", "predict", str(run), str(run.parent / "test.csv"), "-o",
                str(run.parent / "reloaded.csv"), "--quiet", "--batch-size", str(config.data.batch_size),
                "--precision", precision, "--device", "cuda:0" if device == "cuda" else "cpu"], check=True)
written, reloaded = pd.read_csv(run / "predictions.csv"), pd.read_csv(run.parent / "reloaded.csv")
assert list(written["id"]) == list(reloaded["id"]), "reloaded rows differ"
columns = [c for c in written if c.startswith("prob_")] or ["prediction"]
delta = float((written[columns] - reloaded[columns]).abs().max().max())
trainable = json.loads((run / "run.json").read_text())["trainable_params"]
with open(report, "a") as out:
    out.write(f"| {backbone} | {method} | {ranks} | {seconds} | {peak} | {trainable:,} | {delta:.2e} |\n")
print(f"{backbone} {method}: reload Δ {delta:.2e}")
sys.exit(0 if delta <= float(tolerance) else f"{backbone} {method}: reload differs by {delta:.2e} > {tolerance}")
EOF
    done
done
cat "$REPORT"
echo "results in $RESULTS"
if [ -n "${OUT:-}" ]; then cp "$REPORT" "$OUT"/; fi
