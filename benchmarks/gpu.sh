#!/usr/bin/env bash
# GPU figures on one GPU, in under 8 minutes (issue 16, item 6):
#   1. BERT-base pre-training step, bf16 and fp32: tokens/s and MFU, bertforge vs transformers BertForPreTraining;
#   2. embedding (all-MiniLM-L6-v2 shape) and base-size classifier throughput vs transformers sorted + bf16;
#   3. fine-tuning (base shape, SST-2, bf16) steps/s vs transformers' Trainer grouping by length.
# MFU is against the matmul peak measured here and the datasheet's dense bf16 peak (hardware.py).
#
#   bash benchmarks/gpu.sh              # results also in runs/gpu/ (OUT_DIR=... to change)
#
# Uses ../shared/data and the packaged checkpoint when present, otherwise synthetic stand-ins of the same
# shapes (benchmarks/synthetic.py): speed figures hold, accuracy figures from stand-ins mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-runs/gpu}
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu.sh: installing the repo (pip install -e .[test,bench]; torch comes with it)"
  "$PY" -m pip install -q -e ".[test,bench]" || { echo "gpu.sh: pip install failed; install torch first"; exit 1; }
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no GPU here (torch.cuda.is_available() is False): nothing to measure."
  exit 0
fi
# torch is present: install the repo around it (no torch upgrade), if not installed yet.
"$PY" -c "import bertforge, transformers" 2>/dev/null || "$PY" -m pip install -q -e ".[test]" \
  || { echo "gpu.sh: pip install -e .[test] failed"; exit 1; }
"$PY" -c "import accelerate, sentence_transformers" 2>/dev/null || "$PY" -m pip install -q -e ".[bench]" \
  || echo "gpu.sh: accelerate / sentence-transformers unavailable: the Trainer and sentence-transformers lines skip"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

THREADS=$(( $(nproc) < 8 ? $(nproc) : 8 ))
DATA=${BERTFORGE_SHARED_DATA:-../shared/data}
STANDIN=$(mktemp -d)
trap 'rm -rf "$STANDIN"' EXIT
"$PY" benchmarks/synthetic.py "$STANDIN" >/dev/null || { echo "gpu.sh: could not write the stand-ins"; exit 1; }
# Real texts need the real vocabulary (the stand-in models use it when the packaged checkpoint is installed).
EMBED_MODEL=$("$PY" -c "from bertforge.pretrained import packaged_model_dir as d; print(d() or '')")
if [ -z "$EMBED_MODEL" ] || [ ! -f "$DATA/glue/SST-2/train.tsv" ] || [ ! -f "$DATA/wikipedia/wiki_AA.txt.gz" ]; then
  echo "gpu.sh: no $DATA or no packaged all-MiniLM-L6-v2: synthetic texts and random models of the same shapes"
  DATA="$STANDIN/data"
  EMBED_MODEL="$STANDIN/minilm"
fi
PEER=trainer
"$PY" -c "import accelerate" 2>/dev/null || PEER=loop
# The peers under torch.compile (transformers' strongest CPU setting, benchmarks/bench_pretrain.py) compile for a
# minute or more per model on a GPU, which the 8 minutes cannot hold: COMPILED_PEERS=1 adds them (and time).
if [ "${COMPILED_PEERS:-0}" = 1 ]; then PRETRAIN_COMPILE=(); INFERENCE_SKIP=(attention); LIMIT_EXTRA=240
else PRETRAIN_COMPILE=(--no-compiled-peer); INFERENCE_SKIP=(attention compile); LIMIT_EXTRA=0; fi

run() {  # name, time limit in s, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s) =="
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
  local status=${PIPESTATUS[0]}
  [ "$status" = 124 ] && echo "gpu.sh: $name ran past ${limit}s and was stopped"
  [ "$status" = 0 ] || echo "gpu.sh: $name exited with status $status"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/device.txt"
run pretrain $((150 + LIMIT_EXTRA)) "$PY" benchmarks/bench_pretrain.py --device cuda --presets base --batch 128 \
  --steps 20 --warmup 3 --threads "$THREADS" --json "$OUT_DIR/pretrain.json" "${PRETRAIN_COMPILE[@]}"
run inference $((170 + LIMIT_EXTRA)) "$PY" benchmarks/bench_inference.py --device cuda --threads "$THREADS" \
  --data "$DATA" --model "$EMBED_MODEL" --texts 20000 --classifier-texts 8000 --repeats 3 --max-tokens 65536 \
  --skip "${INFERENCE_SKIP[@]}"
run finetune 140 "$PY" benchmarks/bench_finetune.py --device cuda --precision bf16 --task sst2 --data "$DATA" \
  --model "$STANDIN/base" --train-examples 16000 --epochs 1 --threads "$THREADS" --peer "$PEER" \
  --output "$OUT_DIR/finetune.json"
echo "gpu.sh: done; results in $OUT_DIR"
