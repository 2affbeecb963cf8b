# Sourced at the top of a script run on the lent GPU machine through the device tool, from the
# repository root, with `.whl` carried (experiments/bench/gpu_wheels.sh fills it here):
#
#     source experiments/bench/gpu_call_lib.sh     # Hydra's wheels on PYTHONPATH, results packing on
#     build_mamba &                                # mamba-ssm for sm_90 into /tmp/site2 (~3 min, CPUs)
#     python3 -m experiments.studies.run_study nvfp4_hybrid_lm --out $RESULTS/lm --sweeps 0 1
#
# Everything written under $RESULTS (/tmp/r) is tarred into $OUT/results.tgz every PACK_EVERY
# seconds (default 15) and at exit: the command's time limit shrinks to the session's device time
# left, and a process killed at its limit never reaches an exit trap, so the last periodic copy is
# what comes back. Split into 15 MiB parts when larger (the device tool returns files of 16 MiB).
# `t MESSAGE` prints seconds since start.
set -uo pipefail
export WANDB_MODE=offline PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
RESULTS=${RESULTS:-/tmp/r}
PACK_EVERY=${PACK_EVERY:-15}
mkdir -p "$RESULTS"
T0=$(date +%s)
t() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }

pack_results() {
  tar -czf /tmp/results.tgz.new --exclude="*.ckpt" --exclude="*.pkl" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" 2>/dev/null || return
  rm -f "$OUT"/results.tgz*
  if [ "$(stat -c %s /tmp/results.tgz.new)" -gt $(( 15 * 1024 * 1024 )) ]; then
    split -b 15m -d /tmp/results.tgz.new "$OUT/results.tgz.part"
  else
    cp /tmp/results.tgz.new "$OUT/results.tgz"
  fi
}
( while sleep "$PACK_EVERY"; do pack_results; done ) &
PACKER=$!
# KEEP_RUNNING=1: training runs started with setsid outlive the call (they run on while the machine stays
# warm, and the next call, sent within its idle window, finds them and their files under $RESULTS).
KEEP_RUNNING=${KEEP_RUNNING:-0}
trap '[ "$KEEP_RUNNING" = 1 ] || pkill -f fp4train.train 2>/dev/null; kill $PACKER 2>/dev/null; sleep 1; pack_results; t packed' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*-py3-none-any.whl \
  || { echo "no wheels in .whl: run experiments/bench/gpu_wheels.sh here and carry .whl" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, triton, lightning, hydra; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__)"

build_mamba() {  # mamba-ssm (and causal-conv1d) for sm_90 into /tmp/site2; then PYTHONPATH=/tmp/site2:$PYTHONPATH
  SITE=/tmp/site2 MAX_JOBS=${MAX_JOBS:-8} bash experiments/bench/build_mamba_ssm.sh > "$RESULTS/build_mamba.log" 2>&1
  echo "build rc=$?" >> "$RESULTS/build_mamba.log"
}

# return_wheels: the wheels built in .whl/ into $OUT in 15 MiB parts (the device tool returns files
# of up to 16 MiB); put one back together here with
#     cat FILES_AT/NAME.whl.part* > .whl/NAME.whl
# and carry .whl: build_mamba_ssm.sh then installs it without building (the carry limit is 64 MiB in
# all, so causal-conv1d's ~26 MB wheel, the slow one to build, fits; both wheels together barely do)
return_wheels() {
  local wheel
  for wheel in .whl/*-linux_x86_64.whl; do
    [ -f "$wheel" ] && split -b 15m -d "$wheel" "$OUT/$(basename "$wheel").part"
  done
}
