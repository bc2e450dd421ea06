"""Peer reference: the same small GPT in PyTorch on this CPU.

What a practitioner would otherwise use is PyTorch. This script measures, on the
machine it runs on, the two numbers the project's own benchmark must be held
against, for the same model shape:

  train_tokens_per_s   one optimizer step (forward + backward + AdamW) over B x T tokens
  gen_tokens_per_s     greedy decoding of one sequence with a KV cache, batch 1
  gen_batch_tokens_per_s  the same with --gen-batch sequences decoded together
  gemm_gflops          a 1024^3 float32 matmul: what the BLAS reaches here (the roof)

Origin: the PyTorch peer script of issue 13 ("Faster than PyTorch everywhere"), kept here
so `npm run bench` finds it in the repository; only this docstring differs.

Setup: PyTorch 2.x for CPU (MKL and oneDNN), the build a practitioner installs today, e.g.
    pip install "torch==2.*" numpy --index-url https://download.pytorch.org/whl/cpu
`npm run bench` runs it with the first python3 on PATH whose torch is 2.x, or with
PEER_PYTHON / --peer-python. (Debian's python3-torch is 1.13, whose OpenBLAS misreads
recent Xeons and runs at a fifth of its speed: not the peer a user would meet.)
Run alone:  python3 torch_gpt.py --layers 4 --heads 4 --embd 128 --block 128 --vocab 2048 --batch 8
It prints one JSON line.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--embd", type=int, default=128)
p.add_argument("--block", type=int, default=128)
p.add_argument("--vocab", type=int, default=2048)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--gen-tokens", type=int, default=64)
p.add_argument("--gen-batch", type=int, default=16)
p.add_argument("--threads", type=int, default=0, help="0 = torch default")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
B, T, C, H, L, V = a.batch, a.block, a.embd, a.heads, a.layers, a.vocab


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x, cache=None):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, 2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))  # (b, H, t, hs)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)  # (b, H, t, t_all)
        if t > 1:  # prefill: causal mask (t_all == t here)
            att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        y = att.softmax(-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, C))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, pos0=0, caches=None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos0, pos0 + t))
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i])
        return self.ln_f(x) @ self.wte.weight.T  # tied embeddings


model = GPT()
n_params = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
idx = torch.randint(0, V, (B, T))
tgt = torch.randint(0, V, (B, T))


def train_step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(idx).view(-1, V), tgt.view(-1))
    loss.backward()
    opt.step()


for _ in range(2):
    train_step()
t0 = time.perf_counter()
for _ in range(a.steps):
    train_step()
train_s = (time.perf_counter() - t0) / a.steps


@torch.no_grad()
def generate(batch):
    caches = [dict() for _ in range(L)]
    prompt = torch.randint(0, V, (batch, 8))
    logits = model(prompt, 0, caches)
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    n = min(a.gen_tokens, T - 8)
    t0 = time.perf_counter()
    for i in range(n):
        logits = model(nxt, 8 + i, caches)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    return batch * n / (time.perf_counter() - t0)


model.eval()
generate(1)
gen1 = generate(1)
genb = generate(a.gen_batch)

m = torch.randn(1024, 1024)
m @ m
t0 = time.perf_counter()
for _ in range(10):
    m @ m
gemm = 2 * 1024**3 / ((time.perf_counter() - t0) / 10) / 1e9

flops_per_token = 6 * n_params + 6 * L * T * C  # fwd+bwd, attention included
print(json.dumps({
    "peer": "pytorch-" + torch.__version__,
    "threads": torch.get_num_threads(),
    "config": {"layers": L, "heads": H, "embd": C, "block": T, "vocab": V, "batch": B},
    "params": n_params,
    "train_step_ms": round(train_s * 1000, 1),
    "train_tokens_per_s": round(B * T / train_s),
    "train_gflops": round(flops_per_token * B * T / train_s / 1e9, 2),
    "gen_tokens_per_s": round(gen1),
    "gen_batch": a.gen_batch,
    "gen_batch_tokens_per_s": round(genb),
    "gemm_gflops": round(gemm, 1),
}))
