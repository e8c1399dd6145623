#!/usr/bin/env bash
# On a machine with a real GPU: build, run the GPU tests (failing, not skipping, when no adapter
# is found), then the GPU-vs-CPU kernel benchmark, and print the device's peak figures beside
# it. Usage: scripts/gpu-bench.sh [DIM] [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
export LORAKIT_REQUIRE_GPU=1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/lorakit-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export LORAKIT_BENCH_DIM="${1:-8192}" LORAKIT_BENCH_ROWS="${2:-1024}"

echo "== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory --format=csv
  echo "(peak: see the vendor's datasheet for this GPU — e.g. H200 SXM: 4.8 TB/s HBM3e, ~67 TFLOP/s FP32 non-tensor)"
fi
cargo run --release --quiet -- gpu-info

echo "== GPU tests"
cargo test --release --lib backend::gpu 2>&1 | tail -n 3
cargo test --release --test tests gpu 2>&1 | tail -n 3

echo "== kernels (GPU vs CPU)"
cargo bench --bench gpu
