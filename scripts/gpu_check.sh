#!/usr/bin/env bash
# gpu_check.sh -- the one command for a fresh GPU machine (issue 12): build the extension for
# that GPU only, then run, each time-boxed, the per-stage CUDA tests, the CUDA tests, the
# doctor (self-checks) and the head and end-to-end benchmarks. Each stage's result is appended
# to OUT/report.md as soon as it ends (so a kill or a timeout still leaves what came before);
# full logs go to OUT/all.log, benchmark numbers to OUT/bench_*.json. A short table is printed
# last. The whole run stays under GPU_CHECK_DEADLINE seconds (default 470: 8 minutes on an
# H100/H200, start-up of the machine not counted).
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# Needs: python3 with torch (CUDA build), nvcc, ninja, pytest (pybind11 comes with torch); no
# internet. Without a GPU it is a dry run: a CPU-only build, the stage harness on an emulation
# of the stage operators, the CUDA tests (which skip), the self-check and doctor tests, the
# doctor and a tiny CPU benchmark; it then exits 3.
#
# Environment: PYTHON (default python3), GPU_CHECK_DEADLINE (seconds), GPU_CHECK_BUILD=0 (reuse
# the extension already built in place), MAX_JOBS (parallel compiles, default: all cores).
# Exit status: 0 every stage passed on a GPU, 1 a stage failed or timed out, 3 no GPU (dry run).
set -u

OUT="${1:?usage: bash scripts/gpu_check.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
DEADLINE="${GPU_CHECK_DEADLINE:-470}"
REPORT="$OUT/report.md"
LOG="$OUT/all.log"
TABLE="$(mktemp)"
trap 'rm -f "$TABLE"' EXIT
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
T0=$SECONDS
FAILED=0

note() { printf '%s\n' "$*" | tee -a "$REPORT"; }

# stage NAME BUDGET_S SUMMARY_REGEX COMMAND...: run COMMAND under `timeout`, at most BUDGET_S
# seconds and never past the deadline; log it; append its verdict to the report right away.
stage() {
  local name="$1" budget="$2" pattern="$3"
  shift 3
  local left=$((DEADLINE - (SECONDS - T0)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tSKIPPED\t0\tno time left before the %s s deadline\n' "$name" "$DEADLINE" >>"$TABLE"
    note "| $name | SKIPPED | 0 s | no time left before the ${DEADLINE} s deadline |"
    FAILED=1
    return 1
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  local tmp t0=$SECONDS rc status summary
  tmp="$(mktemp)"
  printf '\n===== %s (budget %s s) $ %s\n' "$name" "$budget" "$*" >>"$LOG"
  timeout -k 10 "$budget" "$@" >"$tmp" 2>&1
  rc=$?
  cat "$tmp" >>"$LOG"
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL($rc)" ;;
  esac
  summary="$(grep -E "$pattern" "$tmp" | tail -n 1 | tr '|' '/' | cut -c1-150)"
  [ -z "$summary" ] && summary="$(tail -n 1 "$tmp" | tr '|' '/' | cut -c1-150)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$summary" >>"$TABLE"
  note "| $name | $status | $((SECONDS - t0)) s | $summary |"
  if [ "$status" != PASS ]; then
    FAILED=1
    {
      echo
      echo "<details><summary>$name: last 40 lines</summary>"
      echo
      echo '```'
      tail -n 40 "$tmp"
      echo '```'
      echo "</details>"
      echo
    } >>"$REPORT"
  fi
  rm -f "$tmp"
  [ "$status" = PASS ]
}

PYTEST=("$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider)
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
  # a test that hangs (a barrier that never opens) is named, with its stack, and ends the stage
  PYTEST+=(--timeout=60 --timeout-method=thread)
fi
PASSED_RE='(passed|failed|error|skipped|no tests ran|every test)'
# on a GPU a stage whose tests all skip is a failure (the CUDA build or the stage operators
# are missing): pytest wrapped so that it must report at least one passed test
PYTEST_GPU=(bash -c 'out=$(mktemp); "$@" 2>&1 | tee "$out"; rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ] && ! grep -qE "[0-9]+ passed" "$out"; then
    echo "every test skipped: on a GPU that means the CUDA kernels or the stage operators are not built"; rc=1
  fi; rm -f "$out"; exit "$rc"' _ "${PYTEST[@]}")

# ------------------------------------------------------------------ the machine
: >"$REPORT"
: >"$LOG"
note "# marengine GPU check — $(date -u '+%Y-%m-%d %H:%M UTC')"
note ""
GPU_INFO="$("$PY" - 2>&1 <<'PY'
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu\t{p.name}\t{p.major}.{p.minor}\t{p.multi_processor_count}\t{p.total_memory / 2**30:.0f}")
else:
    print("none")
print(f"torch\t{torch.__version__}\t{torch.version.cuda}")
PY
)"
if ! printf '%s\n' "$GPU_INFO" | grep -q '^torch'; then
  note "python3 cannot import torch: $GPU_INFO"
  exit 1
fi
TORCH_LINE="$(printf '%s\n' "$GPU_INFO" | grep '^torch' | cut -f2-)"
GPU_LINE="$(printf '%s\n' "$GPU_INFO" | grep '^gpu' | cut -f2-)"
NVCC="$(command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 1 || echo 'nvcc not found')"
note "- torch: ${TORCH_LINE//$'\t'/, CUDA }; $NVCC; $(nproc) cores; MAX_JOBS=$MAX_JOBS"
if [ -n "$GPU_LINE" ]; then
  IFS=$'\t' read -r GPU_NAME GPU_CC GPU_SMS GPU_MEM <<<"$GPU_LINE"
  ARCH="$GPU_CC"
  [ "$GPU_CC" = "9.0" ] && ARCH="9.0a"  # Hopper: the sm_90a build (as setup.py's default list)
  note "- GPU: $GPU_NAME, compute capability $GPU_CC, $GPU_SMS SMs, $GPU_MEM GiB; building for TORCH_CUDA_ARCH_LIST=$ARCH"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv,noheader 2>/dev/null | sed 's/^/- nvidia-smi: driver, SM clock, max SM clock, temperature: /' | tee -a "$REPORT"
else
  note "- GPU: NONE visible to torch: a dry run (CPU-only build, emulated stage operators, CUDA tests skip)"
fi
note "- deadline: $DEADLINE s for everything below"
note ""
note "| stage | result | time | summary |"
note "| --- | --- | --- | --- |"

# ------------------------------------------------------------------ build
if [ "${GPU_CHECK_BUILD:-1}" = "0" ]; then
  note "| build | REUSED | 0 s | GPU_CHECK_BUILD=0: the extension already built in place |"
elif [ -n "$GPU_LINE" ]; then
  stage build 240 '(error|marengine: building)' env TORCH_CUDA_ARCH_LIST="$ARCH" "$PY" setup.py build_ext --inplace ||
    { note ""; note "**the build failed: nothing else can run**"; FAILED=1; }
else
  stage "build (CPU only)" 400 '(error|marengine: building)' env MARENGINE_SKIP_CUDA=1 "$PY" setup.py build_ext --inplace
fi
BUILT="$("$PY" -c 'import torch, marengine._C as C; print("cuda" if C.built_with_cuda() else "cpu")' 2>/dev/null ||
  echo none)"
case "$BUILT" in
  cuda) note "| extension | built | | marengine._C with the CPU and CUDA kernels |" ;;
  cpu) note "| extension | built | | marengine._C with the CPU kernels only |" ;;
  *) note "| extension | MISSING | | marengine._C does not import: see the build in all.log |" ;;
esac

# ------------------------------------------------------------------ tests and benchmarks
if [ -n "$GPU_LINE" ] && [ "$BUILT" = cuda ]; then
  # bottom-up: each device stage alone, then the barrier, then the two paths whole; separate
  # processes, so that a sticky CUDA error (an illegal address) in one group spares the next
  stage "stages: GEMM tiles (mma, FFMA)" 60 "$PASSED_RE" "${PYTEST_GPU[@]}" python_tests/test_cuda_stages.py -k stage_gemm
  stage "stages: LN, SiLU rows, update, row_pre, planner" 60 "$PASSED_RE" "${PYTEST_GPU[@]}" \
    python_tests/test_cuda_stages.py -k "stage_ln or stage_silu or stage_update or stage_row_pre or stage_plan"
  stage "stages: grid barrier stress" 45 "$PASSED_RE" "${PYTEST_GPU[@]}" python_tests/test_cuda_stages.py -k grid_barrier
  stage "stages: persistent and per-step paths whole" 60 "$PASSED_RE" \
    "${PYTEST_GPU[@]}" python_tests/test_cuda_stages.py -k stage_path
  stage "CUDA tests (test_native_cuda.py)" 150 "$PASSED_RE" "${PYTEST_GPU[@]}" python_tests/test_native_cuda.py
  stage "doctor (self-checks on the GPU)" 45 '^result:' "$PY" -m marengine doctor --require-cuda
  stage "bench: head goals (1024x6; M=32, 512, 4096)" 100 '(MISSED|MET|Error)' \
    "$PY" benchmarks/bench_head_goals.py --json "$OUT/bench_head_goals.json"
  stage "bench: end to end (MAR-B sample_tokens)" 90 '(e2e speedup|Error)' \
    "$PY" benchmarks/bench_head_goals.py --rows "" --e2e --json "$OUT/bench_e2e.json"
elif [ -n "$GPU_LINE" ]; then
  note "| CUDA kernels | NOT BUILT | | a GPU is here but the extension has no CUDA kernels: see the build in all.log |"
  FAILED=1
else
  stage "stages: harness dry run (emulated)" 240 "$PASSED_RE" \
    env MARENGINE_STAGES_EMULATE=1 "${PYTEST[@]}" python_tests/test_cuda_stages.py -k "not stage_path"
  stage "CUDA tests (skip without a GPU)" 60 "$PASSED_RE" "${PYTEST[@]}" python_tests/test_native_cuda.py
  stage "self-check and doctor tests (CPU)" 120 "$PASSED_RE" \
    "${PYTEST[@]}" python_tests/test_selfcheck.py python_tests/test_doctor.py
  stage "doctor" 60 '^result:' "$PY" -m marengine doctor
  stage "bench: dry run (CPU, tiny head)" 120 '(goals|Error)' "$PY" benchmarks/bench_head_goals.py --device cpu \
    --head 64x2 --rows 8 --steps 5 --warmup 0 --repeat 1 --dtypes fp32,bf16 --json "$OUT/bench_head_goals.json"
fi

# ------------------------------------------------------------------ goals and the table
if [ -f "$OUT/bench_head_goals.json" ]; then
  note ""
  note "## goals"
  "$PY" - "$OUT/bench_head_goals.json" <<'PY' | tee -a "$REPORT"
import json, sys
r = json.load(open(sys.argv[1]))
peak, barrier = r.get("peak_bf16_tflops"), r.get("grid_barrier_us")
print(f"- head {r.get('head')}, {r.get('steps')} steps, {r.get('device')}; dense bf16 peak "
      f"{f'{peak:.0f} TFLOP/s' if peak else 'n/a'}; grid barrier {f'{barrier:.2f} us' if barrier else 'n/a'}")
for m, row in r.get("rows", {}).items():
    print(f"- M={m}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
for g in r.get("goals", []):
    print(f"- {g['goal']}: {g['measured']} (target {g['target']}): **{g['verdict']}**")
PY
fi
note ""
note "total: $((SECONDS - T0)) s (deadline $DEADLINE s)"
echo
echo "================ gpu_check summary ($OUT/report.md)"
awk -F'\t' '{ printf "%-50s %-11s %5s s  %s\n", substr($1, 1, 50), $2, $3, substr($4, 1, 70) }' "$TABLE"
echo "total: $((SECONDS - T0)) s"
if [ -z "$GPU_LINE" ]; then
  echo "NO GPU: this was a dry run; the CUDA kernels did not run (exit 3)"
  exit 3
fi
[ "$FAILED" = 0 ] && echo "all stages passed" && exit 0
echo "some stages FAILED or timed out: see $OUT/report.md and $OUT/all.log"
exit 1
