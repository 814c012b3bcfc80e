#!/usr/bin/env python3
"""Train Medusa-1 heads for a llama2.c checkpoint or a Hugging Face Llama directory by self-distillation.

    python3 tools/train_medusa.py --model ../shared/models/stories260K.bin \
        --out build-medusa/stories260K.medusa [--check-logits ../shared/golden/logits_bos_pos0_pos10.txt]
    python3 tools/train_medusa.py --model ../shared/models/tinystories-656k \
        --out build-medusa/ts656k.medusa \
        [--check-logits ../shared/golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt]

CPU only; needs Debian's python3-torch and python3-numpy (nothing else). What
it does:

1. Loads the model into a small torch implementation of fastinfer's forward
   pass: llama2.c (interleaved RoPE, eps 1e-5) or a Hugging Face
   LlamaForCausalLM directory (config.json + model.safetensors, read here
   without the safetensors package; RoPE in rotate_half form, eps and theta
   from the config). With --check-logits it compares its logits with a golden
   file (fastinfer's forward reproduces those to ~1e-5) and stops above 1e-3:
   the heads must be trained on the hidden states our C++ forward computes.
2. Generates training sequences with the model itself: a --sampled-fraction
   of them sampled throughout at --temperature, the rest sampled for the first
   g ~ U[1, --greedy-after] tokens and greedy afterwards (what greedy Medusa
   will have to guess). Positions after a story's end (BOS for llama2.c, EOS
   for Hugging Face models) are not trained on.
3. Runs the frozen model over them and keeps, for every position t, the
   hidden state AFTER the final RMSNorm (fastinfer's LlamaModel::last_hidden())
   and the model's top --distill-k next-token probabilities.
4. Trains K heads (residual block Linear(dim, dim) + SiLU + residual, then an
   own classifier initialised from the model's) so that head k predicts token
   t + 2 + k from h_t. Loss per head: (1 - --hard-weight) x cross-entropy
   against the frozen model's own top-k distribution at t + 2 + k (the
   distribution of row t + 1 + k: self-distillation, soft labels), plus
   --hard-weight x cross-entropy against the token actually there; heads
   weighted --head-decay^k (Medusa). AdamW, linear warm-up then cosine decay.
5. Measures each head's top-r accuracy on held-out greedy continuations and
   builds the candidate tree greedily from them (the Medusa paper's
   construction: add the node whose path has the highest product of per-depth
   accuracies until --tree-nodes nodes), reports the expected tokens per
   target forward of that tree and of the top-1 chain on the held-out data
   (simulated exactly: the longest tree path whose tokens are the greedy
   continuation), and writes the tree next to the heads (OUT.choices, one
   path of ranks per line; fastinfer-generate --medusa-tree choices:FILE).
6. Writes the heads in fastinfer's FIMEDUSA v1 format
   (include/fastinfer/speculative/medusa_heads.hpp).

The heads committed in data/heads/ (stories260K.medusa, tinystories-656k.medusa
and their .choices trees, which the tests use) were written by this script with
--sequences 480 --length 192 --epochs 4 (the other options at their defaults);
anything else it writes is a build artefact.
"""
import argparse
import math
import os
import struct
import sys
import time

# One BLAS thread: the matrices are small, and on a busy machine extra BLAS threads only wait.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastinfer_torch import data_arguments, features, start  # noqa: E402


# ---- heads -------------------------------------------------------------------

class Heads(torch.nn.Module):
    def __init__(self, k, dim, vocab, cls):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(k, dim, dim))
        self.b = torch.nn.Parameter(torch.zeros(k, dim))
        self.c = torch.nn.Parameter(cls.clone().unsqueeze(0).repeat(k, 1, 1))

    def forward(self, h):  # h [N, dim] -> logits [K, N, vocab]
        a = torch.einsum("kod,nd->kno", self.w, h) + self.b[:, None, :]
        r = h[None] + F.silu(a)
        return torch.einsum("knd,kvd->knv", r, self.c)


def read_heads(path, heads):
    """Loads a FIMEDUSA v1 file with own classifiers into `heads` (--init)."""
    raw = open(path, "rb").read()
    if raw[:8] != b"FIMEDUSA":
        sys.exit(f"{path}: not a Medusa heads file")
    ver, k, dim, vocab, dtype, flags = struct.unpack("<6I", raw[8:32])
    if (ver, k, dim, vocab, dtype, flags) != (1, heads.w.shape[0], heads.w.shape[1], heads.c.shape[1], 0, 0):
        sys.exit(f"{path}: heads of shape K {k}, dim {dim}, vocab {vocab} (flags {flags}) do not fit")
    a = np.frombuffer(raw, "<f4", offset=32)
    off = 0
    with torch.no_grad():
        for i in range(k):
            for t, n in ((heads.w[i], dim * dim), (heads.b[i], dim), (heads.c[i], vocab * dim)):
                t.copy_(torch.from_numpy(a[off:off + n].copy()).view_as(t))
                off += n


def write_heads(path, heads, dim, vocab):
    k = heads.w.shape[0]
    with open(path, "wb") as f:
        f.write(b"FIMEDUSA")
        f.write(struct.pack("<6I", 1, k, dim, vocab, 0, 0))
        for i in range(k):
            f.write(heads.w[i].detach().numpy().astype("<f4").tobytes())
            f.write(heads.b[i].detach().numpy().astype("<f4").tobytes())
            f.write(heads.c[i].detach().numpy().astype("<f4").tobytes())


# ---- trees -------------------------------------------------------------------

def path_hits(guess_ids, future, ok, max_rank):
    """hit(path) -> bool [N]: every guess along the path of ranks is the continuation's token."""
    cache = {}

    def hit(p):
        if p not in cache:
            d = len(p) - 1
            m = (guess_ids[d, :, p[-1]] == future[d]) & ok[d]
            cache[p] = m & hit(p[:-1]) if d > 0 else m
        return cache[p]
    return hit


def build_tree(hit, depth, ranks, nodes):
    """Medusa's greedy tree construction, on measured data: a node's contribution to the expected
    tokens per forward is the chance that its whole path is right (at most one node per depth can
    be), so keep adding the child of the tree so far whose path is right most often on held-out
    positions (the paper multiplies per-head accuracies instead; the joint frequency also sees that
    heads fail together, e.g. outside repetitive stretches). Parents come before children."""
    chosen = []
    frontier = {(r,): float(hit((r,)).float().mean()) for r in range(ranks)}
    while len(chosen) < nodes and frontier:
        p = max(frontier, key=lambda q: (frontier[q], [-x for x in q]))
        frontier.pop(p)
        chosen.append(p)
        if len(p) < depth:
            for r in range(ranks):
                frontier[p + (r,)] = float(hit(p + (r,)).float().mean())
    return chosen


def simulate(tree, hit, n_seq, n_pos, greedy_pos):
    """Tokens per target forward of greedy Medusa with this tree, decoding the held-out
    sequences from their first greedy position: each step emits 1 + the depth of the deepest
    node whose path is the continuation, and the next step starts after them (so a repetitive
    stretch, accepted in long runs, counts once per step, as in real decoding)."""
    deepest = torch.zeros(n_seq * n_pos, dtype=torch.long)
    for p in tree:
        deepest = torch.maximum(deepest, hit(p).long() * len(p))
    deepest = deepest.view(n_seq, n_pos).tolist()
    # The greedy tail of each sequence: from the last non-greedy position on (sequences sampled
    # throughout have none worth decoding).
    g = greedy_pos.view(n_seq, n_pos)
    not_greedy = (~g).long() * torch.arange(1, n_pos + 1)
    start = not_greedy.max(1).values.tolist()
    tokens = steps = 0
    for s in range(n_seq):
        t = start[s]
        if t > n_pos // 2:
            continue
        while t < n_pos:
            tokens += 1 + deepest[s][t]
            steps += 1
            t += 1 + deepest[s][t]
    return tokens / max(1, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data_arguments(ap, sequences=1024, length=256)
    ap.add_argument("--out", required=True, help="heads file to write (FIMEDUSA v1); the tree goes to OUT.choices")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--hard-weight", type=float, default=0.5, help="weight of the hard-label loss (1 - it: soft)")
    ap.add_argument("--head-decay", type=float, default=0.8, help="loss weight of head k: decay^k")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=1024, help="positions per optimiser step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tree-nodes", type=int, default=20, help="nodes of the tree written to OUT.choices")
    ap.add_argument("--init", help="start from this heads file (with --epochs 0: only measure and build the tree)")
    a = ap.parse_args()
    t0 = time.time()
    model, gen, seqs, greedy, valid, L = start(a, t0)
    K = a.heads
    hidden, pv, pi = features(model, seqs, a.distill_k)

    # Position t: input h_t; head k's targets: token t + 2 + k and the model's row t + 1 + k.
    n_pos = L - 1 - K
    X = hidden[:, :n_pos].reshape(-1, model.dim)
    Y = torch.stack([seqs[:, 2 + k:2 + k + n_pos].reshape(-1) for k in range(K)], 0)  # [K, N]
    SV = torch.stack([pv[:, 1 + k:1 + k + n_pos].reshape(-1, a.distill_k) for k in range(K)], 0)
    SI = torch.stack([pi[:, 1 + k:1 + k + n_pos].reshape(-1, a.distill_k) for k in range(K)], 0)
    OK = torch.stack([valid[:, 2 + k:2 + k + n_pos].reshape(-1) for k in range(K)], 0)
    # Greedy continuation: t + 1 .. t + 2 + k all argmax (what greedy Medusa is scored on).
    G = torch.stack([greedy[:, 1:1 + n_pos]] + [greedy[:, 2 + k:2 + k + n_pos] for k in range(K)], 0)
    GOK = torch.stack([G[:k + 2].all(0).reshape(-1) for k in range(K)], 0) & OK
    # Hold out whole sequences (the last tenth).
    n_hold_seq = max(1, seqs.shape[0] // 10)
    cut = (seqs.shape[0] - n_hold_seq) * n_pos
    train = OK[0, :cut].nonzero().squeeze(1)
    print(f"training on {train.numel()} positions, {K} heads ({time.time() - t0:.1f} s so far)")

    heads = Heads(K, model.dim, model.vocab, model.cls)
    if a.init:
        read_heads(a.init, heads)
    opt = torch.optim.AdamW(heads.parameters(), lr=a.lr, weight_decay=0.0)
    steps = max(1, a.epochs * ((train.numel() + a.batch - 1) // a.batch))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    hw = torch.tensor([a.head_decay ** k for k in range(K)])
    for ep in range(a.epochs):
        perm = train[torch.randperm(train.numel(), generator=gen)]
        total = 0.0
        for i in range(0, perm.numel(), a.batch):
            idx = perm[i:i + a.batch]
            logp = torch.log_softmax(heads(X[idx]), -1)  # [K, B, V]
            ok = OK[:, idx].float()
            hard = -logp.gather(2, Y[:, idx, None]).squeeze(2)
            soft = -(logp.gather(2, SI[:, idx]) * SV[:, idx]).sum(2)
            per = (a.hard_weight * hard + (1 - a.hard_weight) * soft) * ok
            loss = (per.sum(1) / ok.sum(1).clamp(min=1) * hw).sum() / hw.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * idx.numel()
        print(f"epoch {ep + 1}/{a.epochs}: loss {total / train.numel():.3f} ({time.time() - t0:.1f} s)")

    # Held-out sequences: per-depth top-r accuracy on greedy positions, the tree, its simulated
    # tokens per forward.
    R = 12
    hold = torch.arange(cut, X.shape[0])
    with torch.no_grad():
        gids = torch.cat([heads(X[hold[i:i + 4096]]).topk(R, -1).indices for i in range(0, hold.numel(), 4096)], 1)
    fut, gok = Y[:, hold], GOK[:, hold]
    acc = np.zeros((K, R))
    for k in range(K):
        m = gok[k]
        for r in range(R):
            acc[k, r] = float((gids[k, m, r] == fut[k, m]).float().mean()) if m.any() else 0.0
    print(f"held-out greedy positions: {int(gok[0].sum())}; per-head accuracy of rank 0..{R - 1} guesses:")
    for k in range(K):
        print(f"  head {k + 1} (token t+{k + 2}): " + " ".join(f"{v:.3f}" for v in acc[k])
              + f"   top-1 {acc[k, 0]:.3f} top-3 {acc[k, :3].sum():.3f} top-{R} {acc[k].sum():.3f}")
    hit = path_hits(gids, fut, gok, R)
    sim = lambda t: simulate(t, hit, n_hold_seq, n_pos, gok[0])
    chain = [tuple([0] * d) for d in range(1, K + 1)]
    print(f"simulated greedy decoding of the held-out sequences, tokens per target forward: top-1 chain "
          f"{sim(chain):.3f}")
    tree = build_tree(hit, K, R, a.tree_nodes)
    for n in sorted({4, 6, 8, 12, a.tree_nodes, 16, 24, 32}):
        print(f"  greedy tree of {n:2d} nodes: {sim(build_tree(hit, K, R, n)):.3f}")
    with open(a.out + ".choices", "w") as f:
        f.write(f"# Medusa tree for {a.out}: {len(tree)} paths of ranks (greedy construction from held-out "
                f"per-head accuracies)\n")
        for p in tree:
            f.write(" ".join(str(x) for x in p) + "\n")
    write_heads(a.out, heads, model.dim, model.vocab)
    print(f"wrote {a.out} ({K} heads, dim {model.dim}, vocab {model.vocab}) and {a.out}.choices "
          f"({len(tree)} nodes) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
