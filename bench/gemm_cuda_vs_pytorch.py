#!/usr/bin/env python3
"""Side by side on one NVIDIA GPU: an n x n x n matrix product through zerfoo
(`examples/cuda_gemm`, cuBLAS underneath) and through `torch.mm`, per dtype,
in the same call, with the ratio.

    cargo build --release --features cuda --example cuda_gemm
    python3 bench/gemm_cuda_vs_pytorch.py --sizes 4096 --dtypes bf16,f16,f32

Both sides run `--warmup` untimed products and then `--iters` timed ones on
random normal inputs, synchronizing before and after (PyTorch with CUDA
events). f32 runs without TF32 on both sides unless `--tf32` is given.
Prints one row per (size, dtype): ms and TFLOP/s of each, the ratio
zerfoo/pytorch of the times, and zerfoo's relative error against an f64
product (`|C - C64| / |C64|` over the first 256 rows).
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torch_gemm(n, dtype, iters, warmup, tf32):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, "f64": torch.float64}[dtype]
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", generator=g).to(dt)
    b = torch.randn(n, n, device="cuda", generator=g).to(dt)
    for _ in range(warmup):
        torch.mm(a, b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.mm(a, b)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    return ms, 2 * n**3 / (ms * 1e-3) / 1e12


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="4096")
    p.add_argument("--dtypes", default="bf16,f16,f32")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--exe", default=str(ROOT / "target" / "release" / "examples" / "cuda_gemm"))
    args = p.parse_args()

    cmd = [args.exe, "--sizes", args.sizes, "--dtypes", args.dtypes,
           "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if args.tf32:
        cmd.append("--tf32")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        sys.exit(f"zerfoo cuda_gemm failed:\n{proc.stderr}")
    ours = {}
    for line in proc.stdout.splitlines():
        f = line.split()
        if f and f[0] == "gemm":
            ours[(int(f[1]), f[4])] = (float(f[6]), float(f[7]), float(f[8]))

    print(f"{'n':>6} {'dtype':<5} {'pytorch_ms':>10} {'pytorch_TFLOPs':>14} {'zerfoo_ms':>10} {'zerfoo_TFLOPs':>13} {'ratio':>6} {'rel_err':>9}")
    for n in [int(s) for s in args.sizes.split(",")]:
        for dt in args.dtypes.split(","):
            t_ms, t_tf = torch_gemm(n, dt, args.iters, args.warmup, args.tf32)
            z_ms, z_tf, err = ours[(n, dt)]
            print(f"{n:>6} {dt:<5} {t_ms:>10.4f} {t_tf:>14.1f} {z_ms:>10.4f} {z_tf:>13.1f} {z_ms / t_ms:>6.2f} {err:>9.2e}")


if __name__ == "__main__":
    main()
