#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on the device machine, from the repository root:
#   bash scripts/gpu_checks.sh smoke            # issue #18: the default GPU path (compile=auto) on every recipe:
#                                               # train, validate, test, resume, eval tasks, predict (about 4 min)
#   bash scripts/gpu_checks.sh speed            # issue #3: the GPU tests, mnist_seed against the classic loop,
#                                               # the CUDA-graph step, cifar10_conv at bf16 (about 7 min)
#   bash scripts/gpu_checks.sh families [MIN]   # issue #6: the four families and M2 at the same time on the
#                                               # one GPU, MIN minutes of training each (default 3; ~MIN+1.5 min)
#   bash scripts/gpu_checks.sh sweep            # issue #18: four small jobs on the one GPU at once
#                                               # (hydra/launcher=joblib_gpus) against one at a time (~2 min)
#   bash scripts/gpu_checks.sh all [MIN]        # smoke, speed, families and sweep
# Needs .gpu/ from scripts/gpu_carry.sh (carried: the device tool's carry=[".gpu"]). Writes summary.md
# and logs.tar.gz (every command's whole output) to $OUT (the device tool's folder that comes back),
# else to outputs/gpu_checks. For a smoke run of this script without a GPU: ACCELERATOR=cpu
# OVERRIDES="+trainer.limit_train_batches=5 ..." (Hydra overrides added to every run), SMOKE="mnist_seed m2"
# (the smoke recipes to run; default all) and SMOKE_STEPS (default 200).
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
minutes=${2:-3}
out=${OUT:-outputs/gpu_checks}
logs=$out/logs
accelerator=${ACCELERATOR:-gpu}
read -r -a overrides <<<"${OVERRIDES:-}"
device=$([[ $accelerator == gpu ]] && echo cuda || echo cpu)
mkdir -p "$logs"
[[ -d .gpu/wheels ]] || { echo "gpu_checks: .gpu/ is missing: run scripts/gpu_carry.sh here and carry .gpu" >&2; exit 2; }
python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/vaelab-site .gpu/wheels/*.whl || exit 2
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q --root-user-action=ignore --no-index \
  --no-deps --no-compile --no-cache-dir --target /tmp/vaelab-site .gpu/optional/*.whl || exit 2
export PYTHONPATH=/tmp/vaelab-site:$PWD/src PYTHONUNBUFFERED=1 VAELAB_DATA_MIRROR=$PWD/.gpu/data VAELAB_ROOT=$PWD
summary=$out/summary.md
{ echo "# gpu_checks $phase $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'; } >>"$summary" 2>&1

step() {  # step NAME COMMAND...: its output to $logs/NAME.log, its last lines (TAIL, default 1) to the summary
  local name=$1; shift
  echo "## $name: $*" | tee -a "$summary"
  local start=$SECONDS
  "$@" >"$logs/$name.log" 2>&1; local rc=$?
  { tail -n "${TAIL:-1}" "$logs/$name.log"; echo "(exit $rc, $((SECONDS - start)) s)"; } | tee -a "$summary"
}
bench() { python3 scripts/bench_speed.py --device "$device" "$@" "${overrides[@]}"; }

# the smoke phase's recipes: every experiment, each model family, FactorVAE on dSprites, the tasks after training
declare -A recipes=(
  [mnist_seed]="experiment=mnist_seed" [cifar10_conv]="experiment=cifar10_conv" [mnist_nll]="experiment=mnist_nll"
  [iaf]="posterior=iaf" [vamp]="prior=vamp" [hierarchical]="model=hierarchical" [m2]="experiment=mnist_m2_100"
  [cvae]="experiment=mnist_cvae" [factor_vae]="experiment=dsprites_beta disent_model=factor_vae"
  [after_training]="eval.after_training=[samples,completion,representation] sampler=gmm"
)
smoke() {  # smoke NAME MAX_STEPS train|resume: one recipe's run (all recipes run at once on the one GPU)
  local name=$1 max=$2 resume=()
  [[ $3 == resume ]] && resume=("ckpt_path=outputs/gpu_smoke/$name/checkpoints/last.ckpt")
  # shellcheck disable=SC2086  # (a recipe is several overrides)
  # (++: the trainer keys some recipes set and others do not)
  python3 -m vaelab.train ${recipes[$name]} "trainer.accelerator=$accelerator" ++trainer.max_epochs=-1 \
    "++trainer.max_steps=$max" ++trainer.val_check_interval=100 ++trainer.check_val_every_n_epoch=null \
    ++trainer.limit_val_batches=4 ++trainer.limit_test_batches=4 trainer.enable_progress_bar=false \
    "hydra.run.dir=outputs/gpu_smoke/$name" "${resume[@]}" "${overrides[@]}"
}
smoke_all() {  # smoke_all train|resume MAX_STEPS: every recipe at once; one summary line each
  local label=$1 max=$2 pids=() name
  for name in ${SMOKE:-${!recipes[@]}}; do
    smoke "$name" "$max" "$label" >"$logs/smoke_${label}_$name.log" 2>&1 &
    pids+=("$!")
  done
  local i=0
  for name in ${SMOKE:-${!recipes[@]}}; do
    local rc result
    wait "${pids[$i]}"; rc=$?; i=$((i + 1))
    if ((rc == 0)); then  # its steps and test loss
      result=$(grep -Eo "global_step\": [0-9]+|test/nelbo\": [0-9.e+-]+" "outputs/gpu_smoke/$name/metrics.json" | tr '\n' ' ')
    else  # the end of its error
      result=$(grep -v -e HYDRA_FULL_ERROR -e '^\s*$' "$logs/smoke_${label}_$name.log" | tail -n 3 | tr '\n' ' ')
    fi
    echo "## smoke $label $name (exit $rc): $result" | tee -a "$summary"
  done
}

if [[ $phase == smoke || $phase == all ]]; then
  steps=${SMOKE_STEPS:-200}
  start=$SECONDS
  smoke_all train "$steps"
  smoke_all resume $((steps + 100))
  echo "(smoke trainings: $((SECONDS - start)) s)" | tee -a "$summary"
  ckpt=outputs/gpu_smoke/mnist_seed/checkpoints/last.ckpt  # (mnist_seed has no validation split: no best.ckpt)
  TAIL=3 step smoke_eval python3 -m vaelab.eval "ckpt_path=$ckpt" "trainer.accelerator=$accelerator" \
    "eval.tasks=[nll,samples,completion,representation]" sampler=gmm ++trainer.limit_test_batches=4 \
    trainer.enable_progress_bar=false "${overrides[@]}"
  TAIL=2 step smoke_predict python3 -m vaelab.predict "ckpt_path=$ckpt" input=mnist task=score \
    predict.iw_samples=100 "trainer.accelerator=$accelerator"
fi
if [[ $phase == speed || $phase == all ]]; then
  # the graph step against the eager one, through Lightning and alone (float32 and bf16)
  TAIL=3 step tests python3 -m pytest -q -p no:cacheprovider tests/test_fast_path.py -k "gpu or graph_replays"
  step speed_mnist bench --experiment mnist_seed --epochs 10
  step speed_mnist_graph bench --experiment mnist_seed --epochs 10 --skip-classic cuda_graph=true compile=false
  step speed_mnist_graph_compiled bench --experiment mnist_seed --epochs 10 --skip-classic cuda_graph=true
  # if the recorded step is much faster than the compiled one, kernel launches (not compute) limit it
  for step_path in "compile=auto" "cuda_graph=true compile=false"; do
    step "speed_cifar_bf16_${step_path%%=*}" bench --experiment cifar10_conv --epochs 2 --skip-classic \
      trainer.precision=bf16-mixed model.channels_last=true $step_path
  done
fi
if [[ $phase == families || $phase == all ]]; then
  python3 -m vaelab.train experiment=mnist_m2_100 "trainer.accelerator=$accelerator" \
    "trainer.max_time=$(printf '00:00:%02d:00' "$minutes")" trainer.enable_progress_bar=false \
    hydra.run.dir=outputs/compare_families/m2 "${overrides[@]}" >"$logs/m2.log" 2>&1 &
  m2=$!
  TAIL=6 step families python3 scripts/compare_families.py --parallel --minutes "$minutes" --accelerator "$accelerator" \
    "${overrides[@]}"
  wait $m2; echo "## m2 (exit $?): $(grep -o "'test/error': [0-9.]*" "$logs/m2.log" | tail -1)" | tee -a "$summary"
  cp outputs/compare_families/*.log "$logs/" 2>/dev/null
fi
if [[ $phase == sweep || $phase == all ]]; then
  # the same four 2-epoch jobs one after another, then four at once on the GPU (sweep.jobs_per_gpu=4):
  # the speed-up is the ratio of the two steps' seconds
  jobs=(experiment=mnist_seed "trainer.accelerator=$accelerator" trainer.max_epochs=2 test=false
        trainer.enable_progress_bar=false "objective.beta=1,2,3,4" "${overrides[@]}")
  TAIL=2 step sweep_one_at_a_time python3 -m vaelab.train -m "${jobs[@]}" hydra.sweep.dir=outputs/gpu_sweep/sequential
  TAIL=2 step sweep_four_at_once python3 -m vaelab.train -m hydra/launcher=joblib_gpus sweep.jobs_per_gpu=4 "${jobs[@]}" \
    hydra.sweep.dir=outputs/gpu_sweep/parallel
fi
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
