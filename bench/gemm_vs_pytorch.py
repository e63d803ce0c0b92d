#!/usr/bin/env python3
"""zerfoo GEMM vs torch.mm vs the `gemm` crate, one table.

Runs the Rust table (`cargo run --release -p zerfoo-kernels --example
gemm_table -- --json`), times `torch.mm` at the same shapes, thread counts
(1, 2) and dtypes (f32, f16, bf16), and prints one table:

    shape dtype threads zerfoo torch gemm z/torch z/gemm %peak

GFLOP/s are medians of several runs (torch: nan where one product would
take more than ~3 s, e.g. f16 at large shapes); %peak is zerfoo over the measured
single-core f32 FMA peak (the best of the shapes' measurements) times the
thread count. The table is measured shape by shape, zerfoo's rows and then
`torch.mm`'s at once, so each ratio compares runs seconds apart. Usage (from the repo root):

    python3 bench/gemm_vs_pytorch.py [--quick] [--only f32|f16|bf16] [--rounds N]
    python3 bench/gemm_vs_pytorch.py --step shakespeare|gpt6 [--quick]
    python3 bench/gemm_vs_pytorch.py --decode gpt6|wide [--quick]

With `--rounds N` (the table only) each shape is measured N times over,
zerfoo's rows then torch.mm's each time; GFLOP/s are the rounds' medians,
z/torch the median of the rounds' ratios, and two more columns give the
lowest and highest of those ratios (a burst of load from the machine's
other tenants then moves one round, not the row):

    shape dtype threads zerfoo torch gemm z/torch z/gemm %peak z/t_lo z/t_hi

`--step CONFIG` compares instead the f32 products of one training step of
that GPT (`gemm_table --step`): each with the operands in their training
layouts (`torch.mm` on the same transposed views), how many times a step
runs it, and per thread count the step's total in ms for both:

    product MxKxN t times zerfoo torch z/torch
    CONFIG step, T thread(s): zerfoo X ms, torch Y ms, ratio R

`--decode CONFIG` compares the products of one generated token (`gemm_table
--decode`: one row times each layer's transposed weight, f32, bf16 and f16) the
same way:

    product MxKxN dtype t times zerfoo torch z/torch
    CONFIG token, T thread(s), DTYPE: zerfoo X ms, torch Y ms, ratio R
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


GEMM_TABLE = ["cargo", "run", "--release", "-q", "-p", "zerfoo-kernels", "--example", "gemm_table", "--"]


def rust_shapes():
    """The Rust table's shapes, as (M, K, N)."""
    out = subprocess.run(GEMM_TABLE + ["--list"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [tuple(int(v) for v in line.split("x")) for line in out.split()]


def rust_rows(quick, only, shape):
    """The Rust table's rows for one shape (every thread count and dtype), and its peak."""
    m, k, n = shape
    cmd = GEMM_TABLE + ["--json", "--shape", f"{m}x{k}x{n}"]
    if quick:
        cmd.append("--quick")
    if only:
        cmd += ["--only", only]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    peak, rows = None, []
    for line in out.splitlines():
        if not line.startswith("JSON "):
            continue
        r = json.loads(line[5:])
        if "m" in r:
            rows.append(r)
        else:
            peak = r["peak1"]
    return peak, rows


def torch_gflops(m, k, n, dtype, threads, runs):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(m, k, generator=g) * 2 - 1).to(DTYPES[dtype])
    b = (torch.rand(k, n, generator=g) * 2 - 1).to(DTYPES[dtype])
    flops = 2.0 * m * n * k
    # Some torch CPU paths (f16) are very slow: estimate from a small
    # product first and skip (nan) what would take more than a few seconds.
    s = 128
    x = a.new_ones(s, s)
    t = time.perf_counter()
    torch.mm(x, x)
    rate = 2.0 * s ** 3 / max(time.perf_counter() - t, 1e-7)
    if flops / rate > 3.0:
        return float("nan")
    t = time.perf_counter()
    torch.mm(a, b)
    once = max(time.perf_counter() - t, 1e-7)
    if once > 1.0:
        # A path far slower than the small-product estimate (torch f16 at
        # 2048): one call is measurement enough.
        return flops / once / 1e9
    return median_mm_gflops(a, b, flops, runs)


def median_mm_gflops(a, b, flops, runs):
    """Median GFLOP/s of `torch.mm(a, b)` over `runs` samples of ~30 ms each."""
    t = time.perf_counter()
    torch.mm(a, b)
    once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, min(10000, int(0.03 / once + 0.999)))
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        samples.append(flops * reps / (time.perf_counter() - t) / 1e9)
    samples.sort()
    return samples[len(samples) // 2]


def rows_beside_torch(mode, config, quick):
    """`gemm_table --MODE CONFIG`'s rows, each with torch.mm's GFLOP/s on the
    same operands (same transposed views, same dtype) and its FLOPs."""
    cmd = GEMM_TABLE + ["--json", f"--{mode}", config]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    runs = 3 if quick else 7
    for line in out.splitlines():
        if not line.startswith("JSON "):
            continue
        r = json.loads(line[5:])
        m, k, n, dt = r["m"], r["k"], r["n"], r.get("dtype", "f32")
        torch.set_num_threads(r["threads"])
        a = (torch.rand(k, m).t() if r["ta"] else torch.rand(m, k)) * 2 - 1
        b = (torch.rand(n, k).t() if r["tb"] else torch.rand(k, n)) * 2 - 1
        a, b = a.to(DTYPES[dt]), b.to(DTYPES[dt])
        flops = 2.0 * m * n * k
        torch.mm(a, b)
        yield r, dt, flops, median_mm_gflops(a, b, flops, runs)


def step_main(config, quick):
    """The products of one training step of `config`, zerfoo next to torch.mm."""
    print(f"{'product':>10} {'MxKxN':>16} {'t':>2} {'times':>5} {'zerfoo':>8} {'torch':>8} {'z/torch':>7}")
    totals = {}
    for r, _, flops, tt in rows_beside_torch("step", config, quick):
        m, k, n, th, z = r["m"], r["k"], r["n"], r["threads"], r["zerfoo"]
        zt, ttot = totals.get(th, (0.0, 0.0))
        totals[th] = (zt + r["times"] * flops / z / 1e6, ttot + r["times"] * flops / tt / 1e6)
        print(f"{r['kind']:>10} {f'{m}x{k}x{n}':>16} {th:>2} {r['times']:>5} {z:>8.1f} {tt:>8.1f} {z / tt:>7.2f}")
    for th, (zt, ttot) in sorted(totals.items()):
        print(f"{config} step, {th} thread(s): zerfoo {zt:.2f} ms, torch {ttot:.2f} ms, ratio {zt / ttot:.2f}")


def decode_main(config, quick):
    """The products of one generated token of `config`, zerfoo next to torch.mm."""
    print(f"{'product':>8} {'MxKxN':>16} {'dtype':>5} {'t':>2} {'times':>5} {'zerfoo':>8} {'torch':>8} {'z/torch':>7}")
    totals = {}
    for r, dt, flops, tt in rows_beside_torch("decode", config, quick):
        m, k, n, th, z = r["m"], r["k"], r["n"], r["threads"], r["zerfoo"]
        zt, ttot = totals.get((th, dt), (0.0, 0.0))
        totals[(th, dt)] = (zt + r["times"] * flops / z / 1e6, ttot + r["times"] * flops / tt / 1e6)
        print(f"{r['kind']:>8} {f'{m}x{k}x{n}':>16} {dt:>5} {th:>2} {r['times']:>5} {z:>8.1f} {tt:>8.1f} {z / tt:>7.2f}")
    for (th, dt), (zt, ttot) in sorted(totals.items()):
        print(f"{config} token, {th} thread(s), {dt}: zerfoo {zt:.3f} ms, torch {ttot:.3f} ms, ratio {zt / ttot:.2f}")


def parse_args():
    """The command line; an unknown or misspelt option is an error, not a full run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each shape this many times over (the table only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--only", choices=sorted(DTYPES), help="one dtype's rows of the table")
    mode.add_argument("--step", choices=["shakespeare", "gpt6"],
                      help="the f32 products of one training step of that GPT")
    mode.add_argument("--decode", choices=["gpt6", "wide"],
                      help="the products of one generated token")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.rounds > 1 and (args.step or args.decode):
        p.error("--rounds applies to the table, not to --step or --decode")
    return args


def main():
    args = parse_args()
    quick, only = args.quick, args.only
    if args.decode:
        return decode_main(args.decode, quick)
    if args.step:
        return step_main(args.step, quick)
    runs = 3 if quick else 7
    rounds = args.rounds
    # Shape by shape: zerfoo's rows, then torch.mm's at once, so each ratio
    # compares runs seconds apart (this machine's clock drifts by 10% and
    # more over the minutes a whole table takes); with rounds, that again.
    peak, measured = 0.0, []
    for shape in rust_shapes():
        per_row = {}
        for _ in range(rounds):
            p, rows = rust_rows(quick, only, shape)
            peak = max(peak, p)
            for r in rows:
                tt = torch_gflops(r["m"], r["k"], r["n"], r["dtype"], r["threads"], runs)
                per_row.setdefault((r["dtype"], r["threads"]), []).append((r, tt))
        measured.extend(per_row.values())
    print(f"peak f32 FMA 1 core: {peak:.1f} GFLOP/s; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs visible" + (f"; {rounds} rounds" if rounds > 1 else ""))
    head = (f"{'MxKxN':>16} {'dtype':>5} {'t':>2} {'zerfoo':>8} {'torch':>8} {'gemm':>8} "
            f"{'z/torch':>7} {'z/gemm':>7} {'%peak':>6}")
    if rounds > 1:
        head += f" {'z/t_lo':>6} {'z/t_hi':>6}"
    print(head)
    # The f32 rows first, then f16 and bf16 (the order of earlier runs' tables).
    measured.sort(key=lambda x: x[0][0]["dtype"] != "f32")
    for row in measured:
        r = row[0][0]
        m, k, n, dt, th = r["m"], r["k"], r["n"], r["dtype"], r["threads"]
        median = statistics.median
        z = median(x["zerfoo"] for x, _ in row)
        tt = median(t for _, t in row)
        gm = median(float("nan") if x["gemm"] is None else x["gemm"] for x, _ in row)
        ratios = [x["zerfoo"] / t for x, t in row]
        pk = 100.0 * z / (peak * th)
        # (One round: the median ratio is z / tt.)
        line = (f"{f'{m}x{k}x{n}':>16} {dt:>5} {th:>2} {z:>8.1f} {tt:>8.1f} {gm:>8.1f} "
                f"{median(ratios):>7.2f} {z / gm:>7.2f} {pk:>6.1f}")
        if rounds > 1:
            line += f" {min(ratios):>6.2f} {max(ratios):>6.2f}"
        print(line)


if __name__ == "__main__":
    main()
