#!/usr/bin/env python3
"""zerfoo conv2d vs PyTorch's F.conv2d on the CPU, one table.

Runs the Rust table (`cargo run --release -p zerfoo --example conv_table --
--json`) shape by shape and times PyTorch at the same shape and thread
count (1, 2) right after, f32: the forward (`F.conv2d` under `no_grad`)
and the backward (`torch.autograd.grad` of the output with respect to the
input and the weight, the graph kept), medians of several runs. Prints:

    N,C,H,W,O,K,S,P t fwd_zerfoo fwd_torch fwd_z/t bwd_zerfoo bwd_torch bwd_z/t

(ms; a ratio below 1 means zerfoo is faster). Usage, from the repo root:

    python3 bench/conv_vs_pytorch.py [--quick] [--shape N,C,H,W,O,K,S,P]
"""

import argparse
import json
import os
import subprocess
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = ["cargo", "run", "--release", "-q", "-p", "zerfoo", "--example", "conv_table", "--"]


def rust_rows(shape, quick):
    cmd = TABLE + ["--json", "--shape", shape] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [json.loads(l[5:]) for l in out.splitlines() if l.startswith("JSON ")]


def median_ms(runs, f):
    f()
    t = time.perf_counter()
    f()
    once = max(time.perf_counter() - t, 1e-7)
    reps = min(max(int(0.03 / once + 0.999), 1), 1000)
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        ms.append((time.perf_counter() - t) * 1e3 / reps)
    ms.sort()
    return ms[len(ms) // 2]


def torch_ms(shape, threads, runs):
    n, c, h, w, o, k, s, p = (int(v) for v in shape.split(","))
    torch.set_num_threads(threads)
    x = torch.rand(n, c, h, w) * 2 - 1
    wt = torch.rand(o, c, k, k) * 2 - 1
    with torch.no_grad():
        fwd = median_ms(runs, lambda: F.conv2d(x, wt, stride=s, padding=p))
    x.requires_grad_(True)
    wt.requires_grad_(True)
    y = F.conv2d(x, wt, stride=s, padding=p)
    gy = torch.rand_like(y) * 2 - 1
    bwd = median_ms(runs, lambda: torch.autograd.grad(y, (x, wt), gy, retain_graph=True))
    return fwd, bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shape")
    a = ap.parse_args()
    runs = 3 if a.quick else 7
    if a.shape:
        shapes = [a.shape]
    else:
        out = subprocess.run(TABLE + ["--list"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        shapes = out.split()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    print(f"{'N,C,H,W,O,K,S,P':>26} {'t':>2} {'fwd_zerfoo':>10} {'fwd_torch':>9} {'fwd_z/t':>7} "
          f"{'bwd_zerfoo':>10} {'bwd_torch':>9} {'bwd_z/t':>7}")
    for shape in shapes:
        for r in rust_rows(shape, a.quick):
            tf, tb = torch_ms(shape, r["threads"], runs)
            zf, zb = r["fwd_ms"], r["bwd_ms"]
            print(f"{shape:>26} {r['threads']:>2} {zf:>10.2f} {tf:>9.2f} {zf / tf:>7.2f} "
                  f"{zb:>10.2f} {tb:>9.2f} {zb / tb:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
