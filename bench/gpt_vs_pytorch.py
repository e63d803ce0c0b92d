#!/usr/bin/env python3
"""Side by side: a GPT trained in zerfoo and in PyTorch, same machine, same threads.

Two configurations (`--config`):

* `shakespeare` (default): nanoGPT's `train_shakespeare_char` CPU run: 4
  layers, 4 heads, width 128, context 64, batch 12, AdamW 1e-3 (betas
  0.9/0.99, weight decay 0.1), 100 warm-up steps, cosine decay to 1e-4, clip
  1.0, dropout 0, no biases, eval every 250 steps over 20 batches.
* `gpt6`: a larger GPT (6 layers, 6 heads, width 384, context 256, batch 8),
  otherwise the same.
* `gpt6-b64`: `gpt6` with batch 64 (the GPU comparison's larger model).

`--device cuda` runs both on GPU 0 (zerfoo's binary built with
`--features cuda`), `--dtype bf16` both in bf16 (parameters, activations
and optimizer state; PyTorch's model `.to(torch.bfloat16)`). On the GPU each
PyTorch step ends with `torch.cuda.synchronize()` before its clock is read;
zerfoo's step reads its loss back, which waits for the GPU.

Both frameworks train for `--iters` iterations on the same 90/10 character
split of the bundled `examples/shakespeare/input.txt`. With `--rng torch`
(the default) both draw the initial weights and every batch from PyTorch's
generator in nanoGPT's `train.py` order (zerfoo through its
`TorchGenerator`), so they train on identical data from identical weights
and their validation curves differ only by float rounding; `--rng counter`
lets each framework draw its own. The script prints
ms/iteration of the training step (evaluations excluded, the first 5 steps
skipped as warm-up), the ratio, peak RSS, and the validation losses at each
evaluation. The PyTorch model below is nanoGPT's `model.py` architecture
(pre-norm blocks, causal `scaled_dot_product_attention`, 4x GELU MLP, tied
head, nanoGPT's init).

    pip install torch
    cargo build --release --example shakespeare
    python3 bench/gpt_vs_pytorch.py                          # 2000 iterations, val curve
    python3 bench/gpt_vs_pytorch.py --iters 200 --eval-every 1000   # timing only
    python3 bench/gpt_vs_pytorch.py --config gpt6 --iters 30 --eval-every 1000
    python3 bench/gpt_vs_pytorch.py --only pytorch   # nanoGPT's own run: val 1.8857 at 2000
    python3 bench/gpt_vs_pytorch.py --config gpt6 --iters 30 --eval-every 1000 --paired

Output format (kept stable so runs can be compared):

    config       framework  threads  iters   ms/iter  final_val  peak_rss_MiB
    shakespeare  pytorch    ...
    shakespeare  zerfoo     ...
    ratio zerfoo/pytorch ms/iter: X.XX
    ratio per round: X.XX X.XX ...       (only with --rounds N > 1)
    eval  step  pytorch_val  zerfoo_val  diff

With `--rounds N` both frameworks train N times, alternating, and ms/iter
is each one's median; the ratio is the median of the rounds' ratios.

With `--paired` the two train in one run, taking turns step by step
(zerfoo's step i, then PyTorch's step i, ...; the example waits at its
`--step-gate` with its threads idle while PyTorch steps). This machine is
shared and its speed drifts by 10-30% over seconds to minutes, so runs a
minute apart can disagree by that much; a pair of steps back to back sees
nearly the same machine. The table is printed as above, plus a line

    paired steps: N, ratio median R (quartiles Q1 Q3)

of the steps' own ratios (warm-up skipped). Each step then starts with the
other framework's data in the caches: for a model whose working set fits in
L3 (the Shakespeare one) both run slower than alone; gpt6's activations and
weights (hundreds of MiB a step) do not stay in cache from one step to the
next either way.

Every comparison also prints (after the ratios)

    fastest tenth of steps: zerfoo X ms, pytorch Y ms, ratio R

each framework's 10th-percentile step time (all rounds, warm-up skipped):
their costs when the machine's other tenants leave it alone. Load slows
PyTorch's step more than zerfoo's, so this ratio is the less flattering one.
"""
import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "examples" / "shakespeare" / "input.txt"


CONFIGS = {
    "shakespeare": dict(layers=4, heads=4, width=128, block=64, batch=12, lr=1e-3, min_lr=1e-4),
    "gpt6": dict(layers=6, heads=6, width=384, block=256, batch=8, lr=1e-3, min_lr=1e-4),
    "gpt6-b64": dict(layers=6, heads=6, width=384, block=256, batch=64, lr=1e-3, min_lr=1e-4),
}


def after_warmup(steps):
    """The steps after the first 5 (warm-up), unless that leaves too few."""
    return steps[5:] if len(steps) > 10 else steps


def mean_ms(step_secs):
    """Mean training-step time in ms, the first 5 steps skipped as warm-up."""
    warm = after_warmup(step_secs)
    return sum(warm) * 1e3 / len(warm)


def step_ratios(a_secs, b_secs):
    """Each step's b / a, warm-up skipped as in `mean_ms`."""
    return [b / a for a, b in after_warmup(list(zip(a_secs, b_secs)))]


def quantile(values, f):
    """The value a fraction `f` of the way up the sorted `values`."""
    v = sorted(values)
    return v[min(len(v) - 1, int(f * len(v)))]


def median_quartiles(values):
    """`median R (quartiles Q1 Q3)` of `values`."""
    q = lambda f: quantile(values, f)
    return f"median {q(0.5):.3f} (quartiles {q(0.25):.3f} {q(0.75):.3f})"


def pytorch_run(args, cfg, before_step=lambda: None):
    """Trains nanoGPT in PyTorch; returns (ms/iter, [(step, val)], peak RSS MiB,
    [step seconds]). `before_step()` runs before each step's timer starts
    (`--paired`: zerfoo's step)."""
    import torch
    import torch.nn as nn
    from torch.nn import functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    class CausalSelfAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
            self.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
            self.n_head = c["n_head"]
            self.n_embd = c["n_embd"]
            self.dropout = c["dropout"]

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True
            )
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
            self.gelu = nn.GELU()
            self.c_proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
            self.attn = CausalSelfAttention(c)
            self.ln_2 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
            self.mlp = MLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
                    wpe=nn.Embedding(c["block_size"], c["n_embd"]),
                    drop=nn.Dropout(c["dropout"]),
                    h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
                    ln_f=nn.LayerNorm(c["n_embd"], bias=c["bias"]),
                )
            )
            self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
            self.transformer.wte.weight = self.lm_head.weight
            self.apply(self._init_weights)
            for pn, p in self.named_parameters():
                if pn.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c["n_layer"]))

        def _init_weights(self, m):
            if isinstance(m, nn.Linear):
                torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets):
            b, t = idx.size()
            pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            logits = self.lm_head(x)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    text = CORPUS.read_text()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]
    block, batch = cfg["block"], cfg["batch"]

    def get_batch(split):
        d = train_data if split == "train" else val_data
        ix = torch.randint(len(d) - block, (batch,))
        x = torch.stack([d[i : i + block] for i in ix])
        y = torch.stack([d[i + 1 : i + 1 + block] for i in ix])
        return x.to(device), y.to(device)

    model = GPT(
        dict(
            vocab_size=len(chars),
            block_size=block,
            n_layer=cfg["layers"],
            n_head=cfg["heads"],
            n_embd=cfg["width"],
            dropout=0.0,
            bias=False,  # nanoGPT's default, and the zerfoo example's
        )
    ).to(device=device, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"],
        betas=(0.9, 0.99),
    )

    def lr_at(it):
        warmup, lr, min_lr, decay_iters = 100, cfg["lr"], cfg["min_lr"], args.iters
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        ratio = (it - warmup) / (decay_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    @torch.no_grad()
    def val_loss():
        model.eval()
        losses = [model(*get_batch("val")).item() for _ in range(args.eval_iters)]
        model.train()
        return sum(losses) / len(losses)

    evals = []
    step_secs = []
    if args.rng == "torch":
        return nanogpt_loop(args, model, opt, lr_at, get_batch, torch, sync, before_step)
    for it in range(1, args.iters + 1):
        before_step()
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it - 1)
        x, y = get_batch("train")
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        step_secs.append(time.perf_counter() - t0)
        if it % args.eval_every == 0 or it == args.iters:
            evals.append((it, val_loss()))
            print(f"  pytorch step {it}: val {evals[-1][1]:.4f}", file=sys.stderr)
    ms = mean_ms(step_secs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return ms, evals, rss, step_secs


def nanogpt_loop(args, model, opt, lr_at, get_batch, torch, sync, before_step):
    """nanoGPT's `train.py` loop with its exact order of random draws: the
    first batch before the loop, then at each eval step 20 train and 20 val
    batches (`estimate_loss`), and the next batch drawn during the step
    (prefetch). With seed 1337 this reproduces nanoGPT's own run of the
    CPU configuration (val 1.8857 at step 2000 on this machine)."""

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {}
        for split in ("train", "val"):
            batches = [model(*get_batch(split)).item() for _ in range(args.eval_iters)]
            out[split] = sum(batches) / len(batches)
        model.train()
        return out

    evals, step_secs = [], []
    x, y = get_batch("train")
    for it in range(0, args.iters + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        if it % args.eval_every == 0 or it == args.iters:
            losses = estimate()
            evals.append((it, losses["val"]))
            print(f"  nanogpt step {it}: train {losses['train']:.4f} val {losses['val']:.4f}", file=sys.stderr)
        if it == args.iters:
            break
        before_step()
        t0 = time.perf_counter()
        loss = model(x, y)
        x, y = get_batch("train")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        step_secs.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return mean_ms(step_secs), evals, rss, step_secs


def zerfoo_command(args, cfg, out, extra_env=None):
    """The zerfoo example's command line and environment (this process's,
    plus `extra_env`), its run folder `out`."""
    exe = Path(args.exe) if args.exe else ROOT / "target" / "release" / "examples" / "shakespeare"
    if not exe.exists():
        sys.exit(f"{exe} is missing: run `cargo build --release --example shakespeare` first")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.update(extra_env or {})
    cmd = [
        str(exe),
        "--max-iters", str(args.iters),
        "--layers", str(cfg["layers"]),
        "--heads", str(cfg["heads"]),
        "--width", str(cfg["width"]),
        "--block", str(cfg["block"]),
        "--batch", str(cfg["batch"]),
        "--eval-every", str(args.eval_every),
        "--eval-iters", str(args.eval_iters),
        "--ckpt-every", "0",
        "--seed", str(args.seed),
        "--rng", args.rng,
        "--sample-tokens", "1",
        "--device", args.device,
        "--dtype", args.dtype,
        "--out-dir", str(out / "run"),
    ]
    return cmd, env


def zerfoo_results(cfg, out):
    """(ms/iter, [(step, val)], peak RSS MiB, [step seconds]) of a finished
    zerfoo run in `out` (the RSS: the largest of this process's children)."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tokens = cfg["batch"] * cfg["block"]
    evals, step_secs = [], []
    for line in (out / "run" / "metrics.jsonl").read_text().splitlines():
        v = json.loads(line)
        step_secs.append(tokens / v["tokens_per_s"])
        if v.get("val_loss") is not None:
            evals.append((v["step"], v["val_loss"]))
    shutil.rmtree(out, ignore_errors=True)
    return mean_ms(step_secs), evals, rss, step_secs


def zerfoo_run(args, cfg):
    """Runs the zerfoo example binary; returns (ms/iter, [(step, val)], peak
    RSS MiB, [step seconds])."""
    out = Path(tempfile.mkdtemp(prefix="zerfoo-bench-"))
    cmd, env = zerfoo_command(args, cfg, out)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"zerfoo run failed:\n{proc.stderr}")
    return zerfoo_results(cfg, out)


class PairedZerfoo:
    """The zerfoo example running with `--step-gate`, one step at a time:
    `step()` lets it run its next step and returns when that step is done
    (the example waits, its threads idle, until told to go on)."""

    def __init__(self, args, cfg, extra_env=None):
        self.cfg = cfg
        self.out = Path(tempfile.mkdtemp(prefix="zerfoo-bench-"))
        cmd, env = zerfoo_command(args, cfg, self.out, extra_env)
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd + ["--step-gate"], env=env, text=True, bufsize=1,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.waiting = self._ready()

    def _ready(self):
        """Reads stdout up to the example's next `ready STEP` (its gate),
        or to its end (the run is over): whether it is waiting."""
        for line in self.proc.stdout:
            if line.startswith("ready "):
                return True
        return False

    def step(self):
        if self.waiting:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            self.waiting = self._ready()

    def finish(self):
        self.proc.stdin.close()
        for _ in self.proc.stdout:
            pass
        # This child's own peak RSS (RUSAGE_CHILDREN would be the largest of
        # all children so far).
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            self.err.seek(0)
            sys.exit(f"zerfoo run failed:\n{self.err.read()}")
        ms, evals, _, step_secs = zerfoo_results(self.cfg, self.out)
        return ms, evals, usage.ru_maxrss / 1024, step_secs


def paired_run(args, cfg):
    """Both frameworks in one run, alternating steps: zerfoo's step `i`, then
    PyTorch's step `i`, and so on, so that the two steps of a pair see the
    machine in nearly the same state (on a shared machine the speed drifts
    over seconds to minutes). zerfoo starts first (before torch is loaded,
    for its RSS). Returns (zerfoo's results, PyTorch's results)."""
    z = PairedZerfoo(args, cfg)
    torch_res = pytorch_run(args, cfg, before_step=z.step)
    return z.finish(), torch_res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="shakespeare")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=1337, help="seed of the weights and batches")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--only", choices=["zerfoo", "pytorch"], help="run one side")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--rounds", type=int, default=1,
                   help="run both this many times, alternating; report medians")
    p.add_argument("--exe", help="the zerfoo example binary (default target/release/examples/shakespeare)")
    p.add_argument("--paired", action="store_true",
                   help="alternate the two frameworks step by step in one run (see paired_run)")
    p.add_argument(
        "--rng",
        choices=["torch", "counter"],
        default="torch",
        help="torch: both draw from PyTorch's generator in nanoGPT's order; "
        "counter: each framework draws its own",
    )
    args = p.parse_args()
    cfg = CONFIGS[args.config]

    if args.paired and args.only:
        sys.exit("--paired runs both frameworks: drop --only")
    runs = {"zerfoo": [], "pytorch": []}
    for _ in range(args.rounds):
        if args.paired:
            z, t = paired_run(args, cfg)
            runs["zerfoo"].append(z)
            runs["pytorch"].append(t)
            continue
        # zerfoo first: its RSS is measured from RUSAGE_CHILDREN before torch loads.
        if args.only != "pytorch":
            runs["zerfoo"].append(zerfoo_run(args, cfg))
        if args.only != "zerfoo":
            runs["pytorch"].append(pytorch_run(args, cfg))
    # Per framework: the median ms/iter over the rounds and the first
    # round's evaluations (every round trains the same way). zerfoo's RSS is
    # its first run's: a child forked once torch has loaded counts torch's
    # pages too. PyTorch's is this process's peak, over all its runs.
    rows = {
        name: (
            statistics.median(r[0] for r in rs),
            rs[0][1],
            rs[0][2] if name == "zerfoo" else max(r[2] for r in rs),
        )
        for name, rs in runs.items()
        if rs
    }

    print(f"device {args.device}, dtype {args.dtype}")
    print(f"{'config':<12} {'framework':<10} {'threads':>7} {'iters':>6} {'ms/iter':>9} {'final_val':>10} {'peak_rss_MiB':>13}")
    for name in ("pytorch", "zerfoo"):
        if name in rows:
            ms, evals, rss = rows[name]
            final = evals[-1][1] if evals else float("nan")
            print(f"{args.config:<12} {name:<10} {args.threads:>7} {args.iters:>6} {ms:>9.2f} {final:>10.4f} {rss:>13.1f}")
    if len(rows) == 2:
        # Each round's ratio compares runs a minute apart; the reported one
        # is their median (this machine's speed drifts by 10-20%).
        ratios = [z[0] / t[0] for z, t in zip(runs["zerfoo"], runs["pytorch"])]
        print(f"ratio zerfoo/pytorch ms/iter: {statistics.median(ratios):.2f}")
        if args.rounds > 1:
            print("ratio per round: " + " ".join(f"{r:.2f}" for r in ratios))
        if args.paired:
            # Each step's own ratio (its pair ran back to back), warm-up
            # steps skipped as in ms/iter; all rounds' pairs together.
            pairs = [r for z, t in zip(runs["zerfoo"], runs["pytorch"])
                     for r in step_ratios(t[3], z[3])]
            print(f"paired steps: {len(pairs)}, ratio {median_quartiles(pairs)}")
        # The fastest tenth of each framework's steps (all rounds, warm-up
        # skipped): what each costs when the machine's other tenants leave
        # it alone. Load slows PyTorch's step more than zerfoo's (its step
        # moves more memory), so this ratio is the less flattering one.
        fast = {name: 1e3 * quantile([s for r in runs[name] for s in after_warmup(r[3])], 0.1)
                for name in ("zerfoo", "pytorch")}
        print(f"fastest tenth of steps: zerfoo {fast['zerfoo']:.2f} ms, pytorch "
              f"{fast['pytorch']:.2f} ms, ratio {fast['zerfoo'] / fast['pytorch']:.3f}")
        print(f"{'eval':<5} {'step':>6} {'pytorch_val':>12} {'zerfoo_val':>11} {'diff':>8}")
        zerfoo_at = dict(rows["zerfoo"][1])
        for s, pv in rows["pytorch"][1]:
            if s not in zerfoo_at:
                continue
            zv = zerfoo_at[s]
            print(f"{'eval':<5} {s:>6} {pv:>12.4f} {zv:>11.4f} {zv - pv:>+8.4f}")


if __name__ == "__main__":
    main()
