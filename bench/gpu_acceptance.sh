#!/usr/bin/env bash
# One-call GPU acceptance run (issue 11): everything a lent GPU's first minutes should produce.
#
#   bash bench/gpu_acceptance.sh --out DIR        # on a CUDA machine, <= 8 min wall
#   bash bench/gpu_acceptance.sh --dry-run --out DIR   # the same stages on CPU at tiny sizes (CI)
#
# With the device tool (runs a command in the repo root of a copy of the tracked files on the
# GPU machine and returns what is written under $OUT):
#   bash bench/gpu_acceptance.sh --out $OUT
# Nothing heavy needs carrying: the project is installed there with
# `pip install --no-deps --no-build-isolation -e .` (stage "build"), against whatever torch /
# triton the machine has.
#
# Stages (each time-limited with `timeout`, failure-isolated: a failing stage records its
# exit status and log, and the script goes on); all output under DIR:
#   env        device, versions, date, git commit, copy bandwidth (CUDA events, medians)  env.json
#   build      pip install -e . (builds csrc/ when torch has CUDA and nvcc is there)      build.log
#   cuda_tests pytest tests/test_cuda_build.py (CUDA parity tests)                        cuda_tests.log/.xml
#   triton     TRITON_INTERPRET=0 pytest of the Triton kernel tests (compiled kernels)   triton_tests.log/.xml
#   bench      bench/bench_kernels.py at the bench/README sizes                           bench_kernels.json/.csv
#   epoch      one DLRL epoch, 138,000 x 27,000, 2e7 entries, eager and torch.compile    epoch.json
#   compile    bench/compile_report.py --quick (sm_90 compile timings on this machine)   compile_sm90.json/.md
# summary.json: per stage status, exit code, seconds; plus env.json's versions.
# The stage limits on a GPU add up to 510 s (the device tool allows 600 s a command); a stage
# that hits its limit is recorded as "timeout" and the run goes on.
set -u
DRY=0
OUT_DIR="${OUT:-out/gpu_check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) shift; OUT_DIR="$1" ;;
    --out=*) OUT_DIR="${1#--out=}" ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_acceptance: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
# no PYTHON given and the default python has no torch: use the project's .venv when there is one
if [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
fi
echo "gpu_acceptance: python $PY, output $OUT_DIR"
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
STATUS="$OUT_DIR/stages.tsv"
: > "$STATUS"
START=$SECONDS

# stage NAME LIMIT_S CMD...: run with a time limit, log to NAME.log, record status
stage() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "gpu_acceptance: stage $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local st=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then st=timeout; elif [ $rc -ne 0 ]; then st=failed; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$st" "$rc" "$((SECONDS - t0))" >> "$STATUS"
  echo "gpu_acceptance: stage $name: $st (rc $rc, $((SECONDS - t0)) s)"
  tail -n 5 "$OUT_DIR/$name.log" | sed 's/^/    /'
}

if [ $DRY -eq 1 ]; then
  # CPU, tiny sizes: the same stages, so the script cannot rot
  stage env 60 "$PY" bench/gpu_env.py --dry-run --reps 5 --json "$OUT_DIR/env.json"
  stage build 180 "$PY" -c "import dlrl_kernels, dlrl; print('import ok (dry run: no pip install)')"
  stage cuda_tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_build.py -k "imports_and_reports_status" --junitxml="$OUT_DIR/cuda_tests.xml"
  stage triton_tests 180 env TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_sparse.py -x -k "test_no_entries or test_all_entries_in_one_row" --junitxml="$OUT_DIR/triton_tests.xml"
  stage bench 180 env TRITON_INTERPRET=1 "$PY" bench/bench_kernels.py --tiny --json "$OUT_DIR/bench_kernels.json" --csv "$OUT_DIR/bench_kernels.csv"
  stage epoch 240 "$PY" bench/gpu_epoch.py --dry-run --steps 2 --rank 4 --json "$OUT_DIR/epoch.json"
  stage compile 10 "$PY" -c "print('dry run: compile report skipped (CI runs --quick in tests/test_compile_sm90.py)')"
else
  stage env 30 "$PY" bench/gpu_env.py --json "$OUT_DIR/env.json"
  stage build 150 "$PY" -m pip install --no-deps --no-build-isolation -e .
  stage cuda_tests 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_build.py --junitxml="$OUT_DIR/cuda_tests.xml"
  stage triton_tests 75 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider -x tests/test_triton_masked_residual.py tests/test_triton_sparse.py tests/test_triton_small_matrix.py --junitxml="$OUT_DIR/triton_tests.xml"
  stage bench 75 "$PY" bench/bench_kernels.py --json "$OUT_DIR/bench_kernels.json" --csv "$OUT_DIR/bench_kernels.csv"
  stage epoch 90 "$PY" bench/gpu_epoch.py --json "$OUT_DIR/epoch.json"
  stage compile 45 "$PY" bench/compile_report.py --quick --workers 8 --out "$OUT_DIR/compile_sm90"
fi

"$PY" - "$OUT_DIR" "$DRY" "$((SECONDS - START))" <<'PYEOF'
import json, sys, pathlib
out, dry, wall = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
stages = [dict(zip(("stage", "status", "rc", "seconds"), l.split("\t"))) for l in (out / "stages.tsv").read_text().splitlines()]
env = {}
try:
    env = json.loads((out / "env.json").read_text())
except Exception as exc:
    env = {"error": str(exc)}
doc = {"dry_run": dry, "wall_s": wall, "stages": stages, **env}
(out / "summary.json").write_text(json.dumps(doc, indent=1))
print(f"gpu_acceptance: {sum(s['status'] == 'ok' for s in stages)}/{len(stages)} stages ok, {wall} s; {out}/summary.json")
PYEOF
# exit status: 0 when every stage passed
! grep -qv $'\tok\t' "$STATUS"
