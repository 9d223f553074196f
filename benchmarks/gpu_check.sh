#!/usr/bin/env bash
# The prepared GPU check for a lent H100 / H200, inside 10 minutes: installs the carried wheels (.whl/) if there are
# any, runs the GPU suite with the flow rows (SD3.5-Medium and FLUX.1-dev built in bf16 on the GPU), writes the
# figures into docs/performance/gpu-suite.md, and copies the page, results.json, suite.md and an archive of the
# whole output to $OUT when it is set (the `run` tool's folder that comes back).
#   bash benchmarks/gpu_check.sh              # on the GPU machine (docs/performance/gpu-suite.md: the run call)
#   bash benchmarks/gpu_check.sh --dry-run    # print the commands it would run, run nothing
#   bash benchmarks/gpu_check.sh --smoke      # the same steps on the tiny models on a CPU (about 2 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_DIR:-/tmp/gpu_check}
DEADLINE=${GPU_CHECK_DEADLINE:-500}  # seconds of the suite; the install, start-up and copies take under a minute
PAGE=docs/performance/gpu-suite.md
if [ "$MODE" = "--smoke" ]; then
  SUITE=(--smoke --deadline 240 --experiments hacking --seeds 1 --workers 1 --no-compile --flow --flow-seconds 60)
  PAGE=$WORK/gpu-suite.md
else
  SUITE=(--flow --flow-seconds 120 --deadline "$DEADLINE")
fi
run() {  # print, then run unless --dry-run
  echo "+ $*"
  [ "$MODE" = "--dry-run" ] || "$@"
}
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then  # the device image has no diffusers: wheels carried with the tree
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
[ "$MODE" = "--smoke" ] && { mkdir -p "$WORK"; cp docs/performance/gpu-suite.md "$PAGE"; }
run "$PY" -m benchmarks.gpu_suite "${SUITE[@]}" -o "$WORK/suite"
rc=$?
run "$PY" -m benchmarks.gpu_pages "$WORK/suite/results.json" --docs "$PAGE" || rc=1
if [ -n "${OUT:-}" ] && [ "$MODE" != "--dry-run" ]; then
  cp "$PAGE" "$WORK/suite/results.json" "$WORK/suite/suite.md" "$OUT/"
  tar -czf "$OUT/gpu_suite.tgz" -C "$WORK" suite
fi
exit $rc
