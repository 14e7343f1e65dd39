#!/usr/bin/env bash
# The segmentation protocol as measured for the README (issue 16), each step under ~15 min on the 2-core VM.
# Usage: benchmarks/segmentation_protocol.sh RUN OUT   (RUN: a workdir; trained here if it has no config.json)
set -euo pipefail
RUN=${1:?RUN workdir}; OUT=${2:?output folder}
PY=${PY:-python}
SIZES="--n-tune=100 --n-score=300 --shifted-n-labelled=550"
mkdir -p "$OUT"
if [ ! -f "$RUN/config.json" ]; then
  # The residual AE (300 steps) on the default data; its k = 4 segmenter; 300 cutouts scored beside SEP.
  nice -n 10 $PY launch.py --config=configs/segmentation.py --workdir="$RUN" --config.seg.score_images=300 \
    '--config.seg.ks=(4,)' '--config.seg.compare_models=("residual_conv_ae",)' > "$OUT/run.log" 2>&1
fi
# Default data: our deblend contrast and faint peak, SEP's and photutils' best settings chosen on its tuning split.
nice -n 10 $PY benchmarks/segmentation_protocol.py --run="$RUN" --out="$OUT/default" --segmenters="$OUT/segmenters" \
  --distributions=default $SIZES --skip-real > "$OUT/default.log" 2>&1
# Shifted simulations: our settings reused from the default data; the baselines re-tuned on each one's tuning split.
for d in seeing_1.8 neighbours_x2 shallower_0.5; do
  nice -n 10 $PY benchmarks/segmentation_protocol.py --run="$RUN" --out="$OUT/$d" --segmenters="$OUT/segmenters" \
    --distributions=$d $SIZES --settings-from="$OUT/default/segmentation_protocol.json" --skip-real > "$OUT/$d.log" 2>&1
done
# Real frames (no truth): the crowded field, M2, a high-latitude control, the HSC scenes; baselines at their default-data best.
nice -n 10 $PY benchmarks/segmentation_protocol.py --run="$RUN" --out="$OUT/real" --segmenters="$OUT/segmenters" \
  --skip-sim --settings-from="$OUT/default/segmentation_protocol.json" > "$OUT/real.log" 2>&1
