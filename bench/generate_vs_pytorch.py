#!/usr/bin/env python3
"""Side by side: sampling text from a GPT in zerfoo and in PyTorch, same machine, same threads.

Both generate `--tokens` characters after a one-character prompt with a
key/value cache (one position per token), temperature 0.8 and top-k 200,
from a model of `--config`'s sizes (`shakespeare`: 4 layers, 4 heads, width
128, context 64; `gpt6`: 6 layers, 6 heads, width 384, context 256; no
biases, vocabulary 65), in `--dtype` f32 or bf16, on `--threads` threads.

* zerfoo: the `shakespeare` example trains one step to write a checkpoint,
  then `shakespeare sample` runs twice per round, for 1 and for 1 + N
  characters; the difference of the two wall times over N is its time per
  token (loading the checkpoint cancels out).
* PyTorch: nanoGPT's architecture (pre-norm blocks, 4x GELU MLP, tied head)
  with random weights, a preallocated key/value cache per layer and
  `scaled_dot_product_attention` over the cached positions, under
  `torch.inference_mode()`; the loop is timed from the first token on.

Usage (from the repo root):

    pip install torch
    cargo build --release --example shakespeare
    python3 bench/generate_vs_pytorch.py [--config gpt6] [--tokens 200] [--dtype bf16] [--rounds 3]

Output format (kept stable so runs can be compared):

    config  dtype  threads  tokens  framework  ms/token
    gpt6    f32    2        200     pytorch    X.XX
    gpt6    f32    2        200     zerfoo     Y.YY
    ratio zerfoo/pytorch ms/token: R.RR
    ratio per round: R.RR R.RR ...

Each framework's ms/token is its median over the rounds (alternating); the
ratio is the median of the rounds' ratios. zerfoo's time is a difference of
two process wall times: for `shakespeare` (at most 63 tokens of well under
a millisecond each) it is within their noise, so time `gpt6`.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 65

CONFIGS = {
    "shakespeare": dict(layers=4, heads=4, width=128, block=64),
    "gpt6": dict(layers=6, heads=6, width=384, block=256),
}


def pytorch_ms_per_token(args, cfg):
    """Samples `args.tokens` tokens with a key/value cache; returns ms per token."""
    import torch
    import torch.nn as nn
    from torch.nn import functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    L, H, C, T = cfg["layers"], cfg["heads"], cfg["width"], cfg["block"]
    D = C // H

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, bias=False)
            self.c_attn = nn.Linear(C, 3 * C, bias=False)
            self.c_proj = nn.Linear(C, C, bias=False)
            self.ln_2 = nn.LayerNorm(C, bias=False)
            self.c_fc = nn.Linear(C, 4 * C, bias=False)
            self.mlp_proj = nn.Linear(4 * C, C, bias=False)

        def forward(self, x, k_cache, v_cache, pos):
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q = q.view(1, 1, H, D).transpose(1, 2)
            k_cache[:, :, pos] = k.view(1, H, D)
            v_cache[:, :, pos] = v.view(1, H, D)
            y = F.scaled_dot_product_attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1])
            x = x + self.c_proj(y.transpose(1, 2).reshape(1, 1, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, C)
            self.wpe = nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C, bias=False)

        def next_logits(self, token, pos, caches):
            x = self.wte(token).view(1, 1, C) + self.wpe.weight[pos].view(1, 1, C)
            for block, (kc, vc) in zip(self.h, caches):
                x = block(x, kc, vc, pos)
            return self.ln_f(x).view(1, C) @ self.wte.weight.t()

    model = Gpt().to(dtype).eval()

    def generate(n):
        caches = [(torch.zeros(1, H, T, D, dtype=dtype), torch.zeros(1, H, T, D, dtype=dtype))
                  for _ in range(L)]
        token = torch.zeros(1, dtype=torch.long)
        for pos in range(n):
            logits = model.next_logits(token, pos, caches).float() / 0.8
            top, _ = torch.topk(logits, min(200, VOCAB))
            logits[logits < top[:, [-1]]] = -float("inf")
            token = torch.multinomial(F.softmax(logits, dim=-1), 1).view(1)

    with torch.inference_mode():
        generate(8)
        t0 = time.perf_counter()
        generate(args.tokens)
        return (time.perf_counter() - t0) * 1e3 / args.tokens


def zerfoo_checkpoint(args, cfg, exe, out):
    """One training step of `cfg` in `args.dtype`; returns its checkpoint folder."""
    cmd = [
        str(exe),
        "--max-iters", "1",
        "--layers", str(cfg["layers"]),
        "--heads", str(cfg["heads"]),
        "--width", str(cfg["width"]),
        "--block", str(cfg["block"]),
        "--batch", "1",
        "--eval-every", "1000",
        "--eval-iters", "1",
        "--sample-tokens", "1",
        "--dtype", args.dtype,
        "--out-dir", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    if proc.returncode != 0:
        sys.exit(f"zerfoo training step failed:\n{proc.stderr}")
    return out / "checkpoints" / "best"


def zerfoo_seconds(args, exe, ckpt, tokens):
    """Wall time of `shakespeare sample` for `tokens` characters (load included)."""
    cmd = [str(exe), "sample", "--checkpoint", str(ckpt), "--tokens", str(tokens)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"zerfoo sample failed:\n{proc.stderr}")
    return secs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="gpt6")
    p.add_argument("--tokens", type=int, default=200, help="characters to generate (below the context length)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--exe", help="the zerfoo example binary (default target/release/examples/shakespeare)")
    args = p.parse_args()
    cfg = CONFIGS[args.config]
    if not 0 < args.tokens < cfg["block"]:
        sys.exit(f"--tokens must be between 1 and {cfg['block'] - 1} (the context length less the prompt)")
    exe = Path(args.exe) if args.exe else ROOT / "target" / "release" / "examples" / "shakespeare"
    if not exe.exists():
        sys.exit(f"{exe} is missing: run `cargo build --release --example shakespeare` first")
    out = Path(tempfile.mkdtemp(prefix="zerfoo-generate-"))
    try:
        ckpt = zerfoo_checkpoint(args, cfg, exe, out / "run")
        torch_ms, zerfoo_ms = [], []
        for _ in range(args.rounds):
            torch_ms.append(pytorch_ms_per_token(args, cfg))
            base = zerfoo_seconds(args, exe, ckpt, 1)
            full = zerfoo_seconds(args, exe, ckpt, 1 + args.tokens)
            zerfoo_ms.append((full - base) * 1e3 / args.tokens)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"{'config':<12} {'dtype':<5} {'threads':>7} {'tokens':>6} {'framework':<10} {'ms/token':>9}")
    for name, ms in [("pytorch", torch_ms), ("zerfoo", zerfoo_ms)]:
        print(f"{args.config:<12} {args.dtype:<5} {args.threads:>7} {args.tokens:>6} {name:<10} "
              f"{statistics.median(ms):>9.3f}")
    ratios = [z / t for z, t in zip(zerfoo_ms, torch_ms)]
    print(f"ratio zerfoo/pytorch ms/token: {statistics.median(ratios):.2f}")
    print("ratio per round: " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
