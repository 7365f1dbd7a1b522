#!/usr/bin/env bash
# Every ovclip-side figure RESULTS.md quotes for the built-in model, in order (run on an idle machine).
#   bash benchmarks/run_builtin.sh build    # deployment folders under out/ (accuracy work only, no timing)
#   bash benchmarks/run_builtin.sh time     # benches, early-exit speed, analyze (timed: nothing else running)
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
mkdir -p "$R"
DATA=${DATA:-fashion-mnist:test}
SECS=${SECS:-10}
log() { echo "== $*"; }
alpha() { python -c "import json; a=json.load(open('out/int8/manifest.json'))['quantization']['smooth_quant_alpha']; print('off' if a is None else a)"; }

if [[ "${1:-build}" == build ]]; then
  log "ovclip export";   ovclip export --overwrite 2>&1 | tee "$R/export.log"
  log "ovclip quantize"; ovclip quantize --overwrite 2>&1 | grep -v -E "━" | tee "$R/quantize.log"
  A=$(alpha)
  log "unsplit INT8 (alpha $A)"
  ovclip quantize --no-exits --exits none --smooth-quant "$A" --out out/int8-unsplit --overwrite 2>&1 | grep -v "━" | tee "$R/quantize_unsplit.log"
  log "--max-drop 0.5 (alpha $A)"
  ovclip quantize --max-drop 0.5 --smooth-quant "$A" --out out/int8-maxdrop --overwrite 2>&1 | grep -v "━" | tee "$R/quantize_maxdrop.log"
  log "--exits auto (alpha $A)"
  ovclip quantize --exits auto --smooth-quant "$A" --out out/int8-auto --overwrite 2>&1 | grep -v "━" | tee "$R/quantize_auto.log"
else
  log "bench fp32 + int8 (+ee) on $DATA"
  ovclip bench out/fp32 out/int8 --data "$DATA" --time "$SECS" --json "$R/bench_builtin.json" --plot "$R/bench_builtin.png" 2>&1 | tee "$R/bench_builtin.log"
  log "bench --max-drop 0.5 and --exits auto folders on $DATA"
  ovclip bench out/int8-maxdrop out/int8-auto --data "$DATA" --time "$SECS" --json "$R/bench_ee_variants.json" --plot "$R/bench_ee_variants.png" 2>&1 | tee "$R/bench_ee_variants.log"
  log "early exit in wall-clock time"
  python benchmarks/early_exit_speed.py --ee out/int8 --unsplit out/int8-unsplit --data "$DATA" --seconds "$SECS" 2>&1 | tee "$R/early_exit_speed.log"
  log "analyze"
  ovclip analyze --fp32 out/fp32 --int8 out/int8 --ee out/int8 --data "$DATA" --images 2000 --json "$R/analyze.json" --plot "$R/analyze.png" 2>&1 | tee "$R/analyze.log"
fi
