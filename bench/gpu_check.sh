#!/usr/bin/env bash
# The GPU checks of the CUDA backend in one run, on a machine with an NVIDIA
# GPU, PyTorch and no Rust toolchain, from the repository root, with .gpu/
# built by bench/gpu_prepare.sh. Logs go to $OUT (default /tmp/zerfoo-gpu);
# a summary is printed last. Each stage has its own time limit, so one that
# hangs does not take the others with it.
#
#   bench/gpu_check.sh [stage ...]
#   stages: tests gemm shakespeare (2000 iterations, the val curve)
#           short (300 iterations) bf16 gpt6 (batch 64, f32 and bf16)
#           profile (gpt6-b64's GPU time per kernel, ZERFOO_CUDA_PROFILE=1)
set -u
OUT=${OUT:-/tmp/zerfoo-gpu}
mkdir -p "$OUT"
STAGES=${*:-tests gemm shakespeare bf16 gpt6}
export ZERFOO_FIXTURES=$PWD/.gpu/fixtures
export ZERFOO_CUDA_EMULATION=0   # the emulated half runs in CI
export PYTHONUNBUFFERED=1
# NVRTC and cuBLAS: the toolkit's, else the ones PyTorch's wheels bring.
libs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null
       python3 - <<'PY' 2>/dev/null
import glob, site
for p in site.getsitepackages():
    for d in sorted(glob.glob(p + "/nvidia/*/lib") + glob.glob(p + "/nvidia/cu*/lib")):
        print(d)
PY
)
export LD_LIBRARY_PATH=$(echo $libs | tr ' ' ':')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for z in .gpu/*.gz; do [ -e "$z" ] && gunzip -f "$z"; done
chmod +x .gpu/kernels-tests .gpu/suite .gpu/shakespeare .gpu/cuda_gemm
summary=()
stage() { # name limit_s command...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$name: rc $rc in $((SECONDS - t0)) s")
  tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
for l in libnvrtc.so libcublas.so libcublasLt.so; do
  echo "$l: $(for d in ${LD_LIBRARY_PATH//:/ }; do ls $d/$l* 2>/dev/null; done | head -2 | tr '\n' ' ')"
done | tee -a "$OUT/gpu.txt"
for s in $STAGES; do
  case $s in
    tests)
      stage kernel-tests 100 .gpu/kernels-tests cuda:: --test-threads=4 --nocapture
      stage suite-gpu 100 .gpu/suite device_parity llama_grad --test-threads=4 --nocapture ;;
    gemm)
      stage gemm 60 python3 bench/gemm_cuda_vs_pytorch.py --exe .gpu/cuda_gemm --sizes 4096 --dtypes bf16,f16,f32 ;;
    shakespeare)
      stage shakespeare-f32 240 python3 bench/gpt_vs_pytorch.py --device cuda --exe .gpu/shakespeare ;;
    short)
      stage shakespeare-short 60 python3 bench/gpt_vs_pytorch.py --device cuda --iters 300 --eval-every 100 --exe .gpu/shakespeare ;;
    bf16)
      stage shakespeare-bf16 120 python3 bench/gpt_vs_pytorch.py --device cuda --dtype bf16 --iters 300 --eval-every 100 --exe .gpu/shakespeare ;;
    profile)  # where gpt6-b64's step spends GPU time, f32 and bf16
      for dt in f32 bf16; do
        stage profile-$dt 90 env ZERFOO_CUDA_PROFILE=1 .gpu/shakespeare --layers 6 --heads 6 --width 384 \
          --block 256 --batch 64 --max-iters 12 --eval-every 1000 --eval-iters 1 --ckpt-every 0 \
          --sample-tokens 1 --dtype $dt --device cuda --out-dir "/tmp/zerfoo-profile-$dt"
        grep -A 45 "CUDA profile" "$OUT/profile-$dt.log"
      done ;;
    gpt6)
      stage gpt6-b64-f32 90 python3 bench/gpt_vs_pytorch.py --device cuda --config gpt6-b64 --iters 40 --eval-every 1000 --exe .gpu/shakespeare
      stage gpt6-b64-bf16 90 python3 bench/gpt_vs_pytorch.py --device cuda --config gpt6-b64 --dtype bf16 --iters 40 --eval-every 1000 --exe .gpu/shakespeare ;;
  esac
done
echo "== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
grep -h -E "^test result|FAILED|panicked|^gemm |ratio|^ *[0-9]+ (bf16|f16|f32)|^(shakespeare|gpt6)|^eval " "$OUT"/*.log | tail -n 60
