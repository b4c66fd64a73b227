#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on the device machine, from the repository root:
#   bash scripts/gpu_checks.sh speed            # issue #3: the GPU tests, mnist_seed against the classic loop,
#                                               # the CUDA-graph step, cifar10_conv at bf16 (about 7 min)
#   bash scripts/gpu_checks.sh families [MIN]   # issue #6: the four families and M2 at the same time on the
#                                               # one GPU, MIN minutes of training each (default 3; ~MIN+1.5 min)
#   bash scripts/gpu_checks.sh all [MIN]        # both
# Needs .gpu/ from scripts/gpu_carry.sh (carried: the device tool's carry=[".gpu"]). Writes summary.md
# and logs.tar.gz (every command's whole output) to $OUT (the device tool's folder that comes back),
# else to outputs/gpu_checks. For a smoke run of this script without a GPU: ACCELERATOR=cpu
# OVERRIDES="+trainer.limit_train_batches=5 ..." (Hydra overrides added to every run).
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
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
