#!/usr/bin/env bash
# The peer / limit benchmarks with their final settings, one after another (about 45 min on 2 cores).
# Run on an otherwise idle machine: every script records the load and flags a contended run.
#   bash benchmarks/run_peers.sh                 # builtin model (must be built), builtin eval set
#   MODEL=/tmp/ckpt_mid DATA=fashion-mnist:test bash benchmarks/run_peers.sh
# Figures go to benchmarks/results/*.json; logs beside them (*.log).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-builtin}
DATA=${DATA:-builtin}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
REPEATS=${REPEATS:-3}
PEERS_PY=${PEERS_PY:-/opt/peers-venv/bin/python}
PY=${PY:-python}
mkdir -p benchmarks/results
run() { local name=$1; shift; echo "== $name: $*"; "$@" 2>&1 | tee "benchmarks/results/$name.log" | { grep -v -E "Statistics collection|Applying|it/s\]" || true; }; }

run vitb32_speed $PY benchmarks/vitb32_speed.py --seconds "$SECONDS_PER_RUN" --repeats "$REPEATS" --benchmark-app
run matmul_limit $PY benchmarks/matmul_limit.py --repeats "$REPEATS"
run benchmark_app_check $PY benchmarks/benchmark_app_check.py --model "$MODEL" --seconds "$SECONDS_PER_RUN" --repeats "$REPEATS"
run peer_paper_int8 $PY benchmarks/peer_paper_int8.py --model "$MODEL" --data "$DATA" --seconds "$SECONDS_PER_RUN" --repeats "$REPEATS"
run peer_paper_int8_vitb32 $PY benchmarks/peer_paper_int8.py --model random:vit-b-32 --seconds "$SECONDS_PER_RUN" \
    --repeats "$REPEATS" --json benchmarks/results/peer_paper_int8_vitb32.json
run peer_optimum "$PEERS_PY" benchmarks/peer_optimum.py --model "$MODEL" --data "$DATA" --seconds "$SECONDS_PER_RUN" \
    --repeats "$REPEATS"
# optimum-intel on the ViT-B/32 shape (seeded random weights = ovclip's random:vit-b-32, saved as an HF folder),
# against the INT8 folder vitb32_speed built: speed only.
$PY -c "from pathlib import Path; from ovclip.checkpoint import load_checkpoint as L; c = L('random:vit-b-32'); \
c.model.save_pretrained('/tmp/vitb32-hf'); c.preprocess.save(Path('/tmp/vitb32-hf/preprocessor_config.json'))"
run peer_optimum_vitb32 "$PEERS_PY" benchmarks/peer_optimum.py --model /tmp/vitb32-hf --limit 64 --no-cli \
    --ovclip /tmp/ovclip-vitb32-speed/int8-sq-off --label "random weights, speed only" --seconds "$SECONDS_PER_RUN" \
    --repeats "$REPEATS" --work /tmp/ovclip-peer-optimum-vitb32 --json benchmarks/results/peer_optimum_vitb32.json
