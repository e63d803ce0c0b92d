#!/usr/bin/env python3
"""zerfoo's element-wise maths vs PyTorch's, one table.

Runs the Rust table (`cargo run --release -p zerfoo-kernels --example
unary_table -- --json`: `unary_forward` of each f32 unary op over 1 Mi
values, 1 and 2 threads, median ns per value), times the same ops in
PyTorch on the same values and thread counts, and prints:

    op threads zerfoo_ns torch_ns z/torch

(below 1: zerfoo is faster). Both allocate their output each call, as an
op in a model does. Usage (from the repo root):

    python3 bench/unary_vs_pytorch.py
"""
import json
import os
import subprocess
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = ["cargo", "run", "--release", "-q", "-p", "zerfoo-kernels", "--example", "unary_table", "--", "--json"]
LEN = 1 << 20

OPS = {
    "neg": torch.neg,
    "abs": torch.abs,
    "square": torch.square,
    "relu": torch.relu,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "exp": torch.exp,
    "log": torch.log,
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


def torch_ns(op, x):
    """Median ns per value of `op(x)` over 60 runs (after a few warm-ups)."""
    for _ in range(5):
        op(x)
    runs = []
    for _ in range(60):
        t = time.perf_counter()
        op(x)
        runs.append((time.perf_counter() - t) * 1e9 / x.numel())
    runs.sort()
    return runs[len(runs) // 2]


def main():
    out = subprocess.run(TABLE, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("JSON ")]
    # The values the Rust table uses: ((i * 7919) % 1000 + 1) / 200.
    i = torch.arange(LEN, dtype=torch.int64)
    x = (((i * 7919) % 1000 + 1).to(torch.float32) / 200.0).contiguous()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, {LEN} f32 values")
    print(f"{'op':>10} {'threads':>7} {'zerfoo_ns':>10} {'torch_ns':>9} {'z/torch':>8}")
    for r in rows:
        torch.set_num_threads(r["threads"])
        t = torch_ns(OPS[r["op"]], x)
        print(f"{r['op']:>10} {r['threads']:>7} {r['ns']:>10.3f} {t:>9.3f} {r['ns'] / t:>8.2f}")


if __name__ == "__main__":
    main()
