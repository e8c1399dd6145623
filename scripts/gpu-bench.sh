#!/usr/bin/env bash
# One prepared GPU run for a 15-minute device slot (issue #20). Two phases:
#
#   scripts/gpu-bench.sh --build [--bin DIR]
#       On the build machine (network, cargo): builds the release CLI, the `gpu` bench binary
#       (benches/gpu.rs) and the library's unit-test binary, strips them and copies them to DIR
#       (default bench-bin/, git-ignored). LORAKIT_BENCH_PROFILE=dev builds the dev profile
#       instead (quick, for a dry run).
#
#   OUT=/some/dir scripts/gpu-bench.sh [--bin DIR] [--dry-run] [--budget SECONDS]
#       On the device machine (no network, no cargo): uses only the carried binaries. Checks that
#       the adapter is a hardware GPU (wgpu device type DiscreteGpu/IntegratedGpu and a vendor id
#       that is not a software rasteriser's) and exits at once with status 3 otherwise, unless
#       --dry-run (which also shrinks every size so the whole run takes a minute or two on
#       lavapipe). Runs each step under `timeout`, goes on after a failure, stops starting steps
#       when the budget (default 450 s, under the 8 minutes the slot allows for it) is spent,
#       and writes to $OUT (default ./gpu-bench-out):
#         log/<n>-<step>.log   each step's full stdout + stderr
#         figures.json         {"dry_run", "budget_s", "elapsed_s", "adapter", "steps": [...]}
#                              one entry per step: {"step", "status": ok|failed|timeout|skipped,
#                              "rc", "seconds", "result": the step's JSON or null}
#       Exit status: 0 when every step passed, 1 when some failed or were skipped, 3 on a
#       software adapter without --dry-run, 2 on usage errors.
#
# Steps (sizes for a real device; see benches/gpu.rs for what each measures): adapter info;
# copy-kernel bandwidth (timestamp queries where the adapter has them) and host↔device rates;
# the merge kernel alone at 4096², 8192×28672 and 28672×8192 for ranks 16, then 1, 64, 256;
# the streamed end-to-end merge of a 2.25 GiB bf16 tensor beside the CPU (byte-identical check,
# peak RSS each adds), in memory and then through the `merge` command from file to file
# (seconds, peak RSS, byte-identical outputs); the forward at n = 1, 16, 1024 and its GEMM
# kernel alone at n = 1024; the delta-sketch kernel; a 4096² DoRA merge (norms on the device)
# beside the CPU, byte-identical check; the GPU unit tests (bit-identity with the CPU on this
# driver) with LORAKIT_REQUIRE_GPU=1.
#
# Device-machine invocation from a session (the binaries built here first, then carried):
#   scripts/gpu-bench.sh --build
#   run(command="OUT=$OUT scripts/gpu-bench.sh", carry=["bench-bin"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=bench-bin
DRY=0
BUILD=0
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=1 ;;
    --dry-run) DRY=1 ;;
    --bin) BIN="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu-bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$BUILD" = 1 ]; then
  set -e
  profile="${LORAKIT_BENCH_PROFILE:-release}"
  flag=--release
  [ "$profile" = dev ] && flag=
  mkdir -p "$BIN"
  # The executables cargo reports, by target kind.
  exe() { grep -o '"executable":"[^"]*"' | sed 's/"executable":"//; s/"$//' | tail -n 1; }
  cli=$(cargo build $flag --bin lorakit --message-format=json | grep '"name":"lorakit"' | grep '"bin"' | exe)
  bench=$(cargo build $flag --bench gpu --message-format=json | grep '"name":"gpu"' | exe)
  tests=$(cargo test $flag --lib --no-run --message-format=json | grep '"test":true' | exe)
  install -m 755 "$cli" "$BIN/lorakit"
  install -m 755 "$bench" "$BIN/gpu-bench"
  install -m 755 "$tests" "$BIN/lorakit-tests"
  strip "$BIN/lorakit" "$BIN/gpu-bench" "$BIN/lorakit-tests" 2>/dev/null || true
  # Compressed, so the three fit the 64 MiB a device run may carry; unpacked there.
  gzip -f -6 "$BIN/lorakit" "$BIN/gpu-bench" "$BIN/lorakit-tests"
  ls -l "$BIN"
  du -sh "$BIN"
  exit 0
fi

OUT="${OUT:-./gpu-bench-out}"
mkdir -p "$OUT/log"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/lorakit-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
# Carried compressed (see --build): unpack next to $OUT's logs, outside the repository.
if [ -f "$BIN/gpu-bench.gz" ]; then
  UNPACKED="${TMPDIR:-/tmp}/lorakit-bench-bin.$$"
  mkdir -p "$UNPACKED"
  for f in "$BIN"/*.gz; do
    gzip -dc "$f" >"$UNPACKED/$(basename "$f" .gz)" && chmod 755 "$UNPACKED/$(basename "$f" .gz)"
  done
  BIN="$UNPACKED"
  trap 'rm -rf "$UNPACKED"' EXIT
fi
for b in gpu-bench lorakit; do
  if [ ! -x "$BIN/$b" ]; then
    echo "gpu-bench.sh: $BIN/$b missing: run scripts/gpu-bench.sh --build first and carry $BIN" >&2
    exit 2
  fi
done

START=$(date +%s)
STEPS_JSON=""
FAILED=0
N=0
elapsed() { echo $(( $(date +%s) - START )); }

# record STEP STATUS RC SECONDS RESULT_JSON
record() {
  local entry="{\"step\": \"$1\", \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"result\": $5}"
  STEPS_JSON="${STEPS_JSON:+$STEPS_JSON,
    }$entry"
}

# step NAME TIMEOUT CMD...: runs CMD under min(TIMEOUT, budget left), logs, records its last
# JSON line.
step() {
  local name="$1" limit="$2"; shift 2
  N=$((N + 1))
  local left=$(( BUDGET - $(elapsed) ))
  local log="$OUT/log/$(printf %02d $N)-${name// /_}.log"
  if [ "$left" -lt 5 ]; then
    echo "== $name: skipped (budget spent)"
    record "$name" skipped null 0 null
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit}s)"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - t0 ))
  local json
  json=$(grep -E '^\{.*\}$' "$log" | tail -n 1)
  [ -z "$json" ] && json=null
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
  [ "$status" != ok ] && FAILED=1
  tail -n 3 "$log" | sed 's/^/   /' | cut -c1-300
  record "$name" "$status" "$rc" "$secs" "$json"
  LAST_JSON="$json"
}

# The adapter: hardware or not, decided on wgpu's device type and the PCI vendor id.
step info 60 "$BIN/gpu-bench" info
ADAPTER="$LAST_JSON"
dtype=$(printf '%s' "$ADAPTER" | grep -o '"device_type":"[^"]*"' | head -n 1 | cut -d'"' -f4)
vendor=$(printf '%s' "$ADAPTER" | grep -o '"vendor":[0-9]*' | head -n 1 | cut -d: -f2)
echo "adapter: device type ${dtype:-?}, vendor ${vendor:-?}"
hardware=1
case "$dtype" in DiscreteGpu|IntegratedGpu) ;; *) hardware=0 ;; esac
# Software vendors: Mesa (llvmpipe/lavapipe 0x10005), Google SwiftShader (0x1ae0), Microsoft
# WARP (0x1414); unknown (0) too.
case "${vendor:-0}" in 0|65541|6880|5140) hardware=0 ;; esac

finish() {
  {
    echo "{"
    echo "  \"dry_run\": $([ $DRY = 1 ] && echo true || echo false),"
    echo "  \"hardware_adapter\": $([ $hardware = 1 ] && echo true || echo false),"
    echo "  \"budget_s\": $BUDGET,"
    echo "  \"elapsed_s\": $(elapsed),"
    echo "  \"adapter\": ${ADAPTER:-null},"
    echo "  \"steps\": ["
    echo "    $STEPS_JSON"
    echo "  ]"
    echo "}"
  } >"$OUT/figures.json"
  echo "figures: $OUT/figures.json ($(elapsed) s)"
}

if [ "$hardware" = 0 ] && [ "$DRY" = 0 ]; then
  echo "gpu-bench.sh: not a hardware GPU adapter (device type ${dtype:-none}, vendor ${vendor:-none}); use --dry-run to run anyway" >&2
  finish
  exit 3
fi

if [ "$DRY" = 1 ]; then
  # Small sizes, and 1 MiB merge chunks so the end-to-end step streams several tiles.
  export LORAKIT_GPU_CHUNK_BYTES=1048576
  COPY_MIB=16; SQUARE=1024; WIDE_R=512; WIDE_C=2048; TALL_R=2048; TALL_C=512
  E2E_R=1024; E2E_C=4096; FWD_D=1024; SK_D=1024; RANKS_MORE="1 64"; GEMM_N=256
else
  COPY_MIB=1024; SQUARE=4096; WIDE_R=8192; WIDE_C=28672; TALL_R=28672; TALL_C=8192
  # 36864 × 32768 bf16 = 2.25 GiB: over the 2 GiB a single binding may hold.
  E2E_R=36864; E2E_C=32768; FWD_D=4096; SK_D=4096; RANKS_MORE="1 64 256"; GEMM_N=1024
fi

step "cli gpu-info" 60 "$BIN/lorakit" gpu-info --json
step "copy $COPY_MIB" 60 "$BIN/gpu-bench" copy "$COPY_MIB"
COPY_GBS=$(printf '%s' "$LAST_JSON" | grep -o '"gb_per_s":[0-9.e+-]*' | head -n 1 | cut -d: -f2)
export COPY_GBS="${COPY_GBS:-0}"
step "transfer $COPY_MIB" 90 "$BIN/gpu-bench" transfer "$COPY_MIB"
shapes="$SQUARE:$SQUARE $WIDE_R:$WIDE_C $TALL_R:$TALL_C"
for s in $shapes; do
  step "merge-kernel ${s%:*} ${s#*:} 16" 45 "$BIN/gpu-bench" merge-kernel "${s%:*}" "${s#*:}" 16
done
step "e2e $E2E_R $E2E_C 16" 150 "$BIN/gpu-bench" e2e "$E2E_R" "$E2E_C" 16
# The same size through the merge command (file → mmap → ring → writer → file), GPU and CPU.
step "cli-merge $E2E_R $E2E_C 16" 150 "$BIN/gpu-bench" cli-merge "$E2E_R" "$E2E_C" 16 "$BIN/lorakit"
if [ -x "$BIN/lorakit-tests" ]; then
  step "unit tests backend::gpu" 150 env LORAKIT_REQUIRE_GPU=1 "$BIN/lorakit-tests" backend::gpu --test-threads 4
fi
for n in 1 16 1024; do
  step "forward $n $FWD_D 16" 45 "$BIN/gpu-bench" forward "$n" "$FWD_D" 16
done
# The GEMM alone (8×4 register tiles), without the forward's uploads and readback.
step "gemm-kernel $GEMM_N $FWD_D 16" 45 "$BIN/gpu-bench" gemm-kernel "$GEMM_N" "$FWD_D" 16
step "sketch $SK_D 32" 45 "$BIN/gpu-bench" sketch "$SK_D" 32
step "dora $SQUARE $SQUARE 16" 60 "$BIN/gpu-bench" dora "$SQUARE" "$SQUARE" 16
for r in $RANKS_MORE; do
  for s in $shapes; do
    step "merge-kernel ${s%:*} ${s#*:} $r" 45 "$BIN/gpu-bench" merge-kernel "${s%:*}" "${s#*:}" "$r"
  done
done

finish
exit $FAILED
