#!/usr/bin/env bash
# Builds, on a machine with Rust (no GPU needed), what bench/gpu_check.sh runs
# on a machine with an NVIDIA GPU and no Rust toolchain, into .gpu/ (ignored):
# the CUDA kernel tests, the test suite, the shakespeare and cuda_gemm
# examples (all with the `cuda` feature, stripped) and the fixtures the suite
# reads. Then copy or carry .gpu/ with the repository and run
# `bench/gpu_check.sh` there from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${ZERFOO_FIXTURES:-../shared/fixtures}
rm -rf .gpu && mkdir -p .gpu/fixtures
exe_of() { # cargo args...: the executables cargo built, from its JSON messages
  cargo "$@" --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])'
}
cp "$(exe_of test -p zerfoo-kernels --all-features --lib --no-run | tail -1)" .gpu/kernels-tests
cp "$(exe_of test -p zerfoo-tests --all-features --test suite --no-run | tail -1)" .gpu/suite
for e in $(exe_of build --release --features cuda -p zerfoo --example shakespeare --example cuda_gemm); do
  cp "$e" .gpu/
done
strip .gpu/kernels-tests .gpu/suite .gpu/shakespeare .gpu/cuda_gemm
gzip -9 .gpu/kernels-tests .gpu/suite .gpu/shakespeare .gpu/cuda_gemm  # unpacked by gpu_check.sh
cp -r "$FIXTURES/llama_grad" .gpu/fixtures/
du -sh .gpu/*
