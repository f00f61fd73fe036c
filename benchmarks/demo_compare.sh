#!/usr/bin/env bash
# Model comparisons on the synthetic `demo` data, 3 seeds each (33 min for the Ego-RNN rows and 52 for the LSTA rows on a 2-core Xeon):
#   RGB Ego-RNN (stage 1 -> stage 2), + MS (conv5 classification, b&w), + MS (conv4 regression, grid),
#   + static-dynamic discriminator (alpha 0.1), flow-only, two-stream joint;
#   LSTA RGB (stage 1 -> stage 2), LSTA's recurrent flow stream, LSTA two-stream (cross-modal fusion).
# ROWS="egornn" or ROWS="lsta" runs one group only (default: both).
# Usage: bash benchmarks/demo_compare.sh [DEMO_DIR] [OUT]   (DEMO_DIR as written by `fpar demo`: data/, backbone.pt)
# SEEDS="2" restricts the seeds (e.g. to run seeds in parallel with FPAR_THREADS=1).
# Then:  fpar report OUT/*/ --out OUT-report    (mean +- std over seeds, overall and on the motion-only pairs)
set -euo pipefail
DEMO=${1:-fpar-demo}
OUT=${2:-fpar-demo/compare}
C=$(python -c "import fpar, pathlib; print(pathlib.Path(fpar.__file__).parent / 'configs' / 'demo')")
common=(data.root="$DEMO/data" model.pretrained="$DEMO/backbone.pt")
run() {  # run NAME SEED RECIPE [overrides...]: skips finished runs, resumes interrupted ones
  local name=$1 seed=$2 recipe=$3; shift 3
  local dir="$OUT/$name/seed$seed"
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/last.pt" ]; then fpar train --resume "$dir" --quiet; return; fi
  fpar train "$C/$recipe" "${common[@]}" seed="$seed" name="$name" out="$dir" "$@" --quiet
}
want() { [[ " ${ROWS:-egornn lsta} " == *" $1 "* ]]; }
for seed in ${SEEDS:-0 1 2}; do
  if want lsta; then
    run lsta_stage1 $seed lsta_stage1.yaml
    run lsta $seed lsta_stage2.yaml init.from="$OUT/lsta_stage1/seed$seed"
    run lsta_flow $seed lsta_flow.yaml
    run lsta_two_stream $seed lsta_two_stream.yaml model.lsta_two_stream.rgb_run="$OUT/lsta/seed$seed" \
      model.lsta_two_stream.flow_run="$OUT/lsta_flow/seed$seed"
  fi
  want egornn || continue
  run rgb_stage1 $seed stage1.yaml
  run rgb $seed stage2.yaml init.from="$OUT/rgb_stage1/seed$seed"
  run ms_cls_conv5 $seed ms_cls.yaml init.from="$OUT/rgb_stage1/seed$seed"
  run ms_reg_conv4_grid $seed ms_reg_conv4.yaml init.from="$OUT/rgb_stage1/seed$seed"
  run ms_sd_alpha0.1 $seed sd.yaml init.from="$OUT/rgb_stage1/seed$seed"
  run flow $seed flow.yaml
  run two_stream $seed two_stream.yaml model.two_stream.rgb_run="$OUT/rgb/seed$seed" \
    model.two_stream.flow_run="$OUT/flow/seed$seed"
done
