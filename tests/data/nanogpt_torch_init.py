"""Writes nanogpt_torch_init.json: the weights nanoGPT's `GPT(config)` gets
after `torch.manual_seed(seed)`, under zerfoo's parameter names, and the
next `torch.randint` draws (what `get_batch` would draw first); and the
window starts nanoGPT's `train.py` loop draws, in its order.

The model is nanoGPT's model.py constructor (the layers that draw random
numbers, in its order). Rerun: `python3 tests/data/nanogpt_torch_init.py`.
"""
import json
import math
from pathlib import Path

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
        self.attn.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
        self.ln_2 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
        self.mlp.gelu = nn.GELU()
        self.mlp.c_proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
            wpe=nn.Embedding(c["block_size"], c["n_embd"]),
            drop=nn.Dropout(0.0),
            h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
            ln_f=nn.LayerNorm(c["n_embd"], bias=c["bias"]),
        ))
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


def case(seed, vocab, block, layers, heads, width, bias):
    torch.manual_seed(seed)
    c = dict(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads,
             n_embd=width, bias=bias)
    m = GPT(c)
    t = m.transformer
    params = {"wte.weight": t.wte.weight, "wpe.weight": t.wpe.weight}
    for i, b in enumerate(t.h):
        p = f"h.layers.{i}"
        q, k, v = b.attn.c_attn.weight.split(width, dim=0)
        params.update({
            f"{p}.attn.q_proj.weight": q, f"{p}.attn.k_proj.weight": k,
            f"{p}.attn.v_proj.weight": v, f"{p}.attn.o_proj.weight": b.attn.c_proj.weight,
            f"{p}.ffn.fc1.weight": b.mlp.c_fc.weight, f"{p}.ffn.fc2.weight": b.mlp.c_proj.weight,
        })
    next_draws = torch.randint(1000, (12,)).tolist()
    return {
        "seed": seed,
        "config": dict(vocab=vocab, block=block, layers=layers, heads=heads, width=width,
                       dropout=0.0, bias=bias),
        "params": {k: [float(f"{x:.9g}") for x in v.detach().reshape(-1).tolist()] for k, v in params.items()},
        "next_randint_1000": next_draws,
    }


def stream(seed, train_len, val_len, block, batch, eval_every, eval_iters, max_iters, accum):
    """nanoGPT's train.py order of draws (the model's forward and backward
    draw nothing without dropout); like zerfoo's trainer it also evaluates
    at the last step when that is not a multiple of `eval_every`."""
    torch.manual_seed(seed)

    def get_batch(n):
        return torch.randint(n - block, (batch,)).tolist()

    train, evals = [get_batch(train_len)], {}
    for it in range(max_iters + 1):
        if it % eval_every == 0 or it == max_iters:
            for _ in range(eval_iters):
                get_batch(train_len)  # estimate_loss's training batches
            evals[str(it)] = [get_batch(val_len) for _ in range(eval_iters)]
        if it == max_iters:
            break
        for _ in range(accum):
            train.append(get_batch(train_len))  # the prefetch of the next batch
    return dict(seed=seed, train_len=train_len, val_len=val_len, block=block, batch=batch,
                eval_every=eval_every, eval_iters=eval_iters, max_iters=max_iters, accum=accum,
                train=train[: max_iters * accum], evals=evals)


cases = [case(1337, 11, 8, 2, 2, 16, False), case(3, 13, 5, 1, 2, 16, True)]
streams = [
    stream(5, 1000, 300, 8, 3, 3, 2, 7, 1),
    stream(6, 2000, 400, 4, 2, 2, 3, 5, 2),
]
out = Path(__file__).with_name("nanogpt_torch_init.json")
out.write_text(json.dumps({"torch": torch.__version__, "cases": cases, "streams": streams}))
print(f"wrote {out}")
