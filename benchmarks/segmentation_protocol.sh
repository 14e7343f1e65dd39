#!/usr/bin/env bash
# The segmentation protocol as measured for the README (issue 16), in steps of <= ~15 min on the 2-core VM.
# Usage: benchmarks/segmentation_protocol.sh RUN OUT   (RUN: a workdir; its AE is trained here if it has no config.json)
set -euo pipefail
RUN=${1:?RUN workdir}; OUT=${2:?output folder}
PY=${PY:-python}
SIZES="--n-tune=400 --n-score=1000 --shifted-n-labelled=1400"
COMMON="--run=$RUN --segmenters=$OUT/segmenters $SIZES"
mkdir -p "$OUT"
if [ ! -f "$RUN/config.json" ]; then
  # The residual AE (300 steps) on the default data. Only its checkpoint is used below (the segmenters are fitted
  # again by the protocol), so the run may be stopped once checkpoints/residual_conv_ae holds step 300.
  nice -n 10 $PY launch.py --config=configs/segmentation.py --workdir="$RUN" --config.seg.score_images=300 \
    '--config.seg.ks=(4,)' '--config.seg.compare_models=("residual_conv_ae",)' > "$OUT/run.log" 2>&1
fi
# 1. Our deblend contrast, faint-source peak and mask edges, chosen on the tuning splits of the default data and
#    three shifted simulations together (the two segmenters, pure and with the detection channel, fitted on the
#    default unlabelled data and cached). Their scored splits stay unseen; deeper_0.5 is not tuned on at all.
nice -n 10 $PY benchmarks/segmentation_protocol.py $COMMON --out="$OUT/settings" --distributions= --skip-real \
  --tune-on=default,seeing_1.8,neighbours_x2,shallower_0.5 > "$OUT/settings.log" 2>&1
# 2. Every method on each distribution's scored split; SEP's and photutils' best settings chosen on that
#    distribution's own tuning split (their best), ours reused from step 1. The last three are tuned on by none
#    of ours; each JSON holds the targets' margins with a paired bootstrap of the scored cutouts.
for d in default seeing_1.8 neighbours_x2 shallower_0.5 deeper_0.5 stars_0.6 no_neighbours; do
  nice -n 10 $PY benchmarks/segmentation_protocol.py $COMMON --out="$OUT/$d" --distributions=$d \
    --settings-from="$OUT/settings/segmentation_protocol.json" --skip-real > "$OUT/$d.log" 2>&1
done
# 3. Real frames (no truth): the crowded field, M2, a high-latitude control, the HSC scenes; baselines at their
#    default-data best.
nice -n 10 $PY benchmarks/segmentation_protocol.py $COMMON --out="$OUT/real" --skip-sim \
  --settings-from="$OUT/default/segmentation_protocol.json" > "$OUT/real.log" 2>&1
# 4. The targets' margins over every distribution: one table and a figure (OUT/check_margins.png).
$PY benchmarks/segmentation_margins.py "$OUT" > "$OUT/check_margins.md"
