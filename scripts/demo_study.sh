#!/usr/bin/env bash
# The demo study: LeNet-300-100 on MNIST, a baseline, a small sweep over each method (clip
# thresholds, prune rates, quantization bits, two distilled student sizes) and the report with its
# table, Pareto plots and a W&B run. Each compression sweep's jobs train as one stacked model
# (hydra/launcher=stacked); the baseline and the two students (different sizes: no stack) run two at
# a time (joblib), each capped to its share of the cores. A few minutes on a 2-core CPU. Re-running
# it skips the jobs that are done.
#   scripts/demo_study.sh                 # STUDY=outputs/demo EPOCHS=2 JOBS=2 to change
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-outputs/demo}
EPOCHS=${EPOCHS:-2}
JOBS=${JOBS:-2}
export WANDB_MODE=${WANDB_MODE:-offline}
COMMON=(data=mnist model=lenet300_100 "train.epochs=$EPOCHS" trainer.enable_progress_bar=false)
PARALLEL=(hydra/launcher=parallel "hydra.launcher.n_jobs=$JOBS")
STACKED=(hydra/launcher=stacked)
failed=0

sweep() {  # sweep NAME OVERRIDES...: one multirun into $STUDY/NAME
  local name=$1; shift
  local log="$STUDY/$name.log"
  echo "== $name: $*  (log: $log)"
  mkdir -p "$STUDY"
  "$PY" -m compresslab.train -m "${COMMON[@]}" "hydra.sweep.dir=$STUDY/$name" "$@" >"$log" 2>&1 || failed=1
  grep -E "^compresslab: sweep|^  (failed|no result|unreadable)" "$log" || tail -5 "$log"
}

sweep baseline "${PARALLEL[@]}"                  # trained once; the compressed jobs start from it
sweep clip "${STACKED[@]}" sweep=clip_thresholds 'method.threshold=0.02,0.05,0.1' method.finetune_epochs=1
sweep prune "${STACKED[@]}" sweep=prune_rates 'method.rate=0.5,0.9,0.95' method.finetune_epochs=1
sweep quantize "${STACKED[@]}" sweep=quantize_bits 'method.bits=2,4,8' method.finetune_epochs=1
sweep distill "${PARALLEL[@]}" sweep=student_sizes model=mlp 'model.hidden=[100,30],[30,30]'

"$PY" -m compresslab.report "$STUDY"/{baseline,clip,prune,quantize,distill} --out "$STUDY/report" --wandb || failed=1
echo "table: $STUDY/report/table.md   plots: $STUDY/report/pareto_*.png   jobs: $STUDY/report/jobs.csv"
echo "W&B runs (offline): $STUDY/*/*/wandb   (upload later with: wandb sync <run dir>)"
exit $failed
