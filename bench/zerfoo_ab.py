#!/usr/bin/env python3
"""Two zerfoo builds (or one build under two environments), step by step.

Runs the Shakespeare example of build A and of build B side by side, each
with `--step-gate`, taking turns: A's step i, then B's step i, and so on, so
that both steps of a pair see the machine in nearly the same state (this
machine is shared and its speed drifts by 10-30% within minutes, more than
most changes one wants to measure). Prints each side's mean ms/iter and
the median and quartiles of the per-step ratios B / A (warm-up skipped):

    A  EXE  ms/iter X
    B  EXE  ms/iter Y
    steps N, ratio B/A median R (quartiles Q1 Q3)

Usage (from the repo root; a build is a path to the example binary, with
optional `VAR=value` settings after it):

    python3 bench/zerfoo_ab.py --config gpt6 --iters 30 OLD_EXE NEW_EXE
    python3 bench/zerfoo_ab.py EXE "EXE RAYON_NUM_THREADS=1" --iters 200
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt_vs_pytorch import CONFIGS, PairedZerfoo, median_quartiles, step_ratios  # noqa: E402


def side(spec, args, cfg):
    """A `PairedZerfoo` for `EXE [VAR=value ...]`."""
    exe, *envs = spec.split()
    extra = dict(kv.split("=", 1) for kv in envs)
    return PairedZerfoo(argparse.Namespace(**{**vars(args), "exe": exe}), cfg, extra)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="build A: the example binary, then any VAR=value")
    p.add_argument("b", help="build B, likewise")
    p.add_argument("--config", choices=sorted(CONFIGS), default="gpt6")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--rng", choices=["torch", "counter"], default="torch")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = p.parse_args()
    args.eval_every, args.eval_iters, args.device = 1_000_000, 1, "cpu"
    cfg = CONFIGS[args.config]
    a, b = side(args.a, args, cfg), side(args.b, args, cfg)
    for _ in range(args.iters):
        a.step()
        b.step()
    ra, rb = a.finish(), b.finish()
    print(f"A  {args.a}  ms/iter {ra[0]:.2f}")
    print(f"B  {args.b}  ms/iter {rb[0]:.2f}")
    ratios = step_ratios(ra[3], rb[3])
    print(f"steps {len(ratios)}, ratio B/A {median_quartiles(ratios)}, mean {statistics.mean(ratios):.3f}")


if __name__ == "__main__":
    main()
