#!/usr/bin/env python3
"""Train an EAGLE draft head for a llama2.c checkpoint or a Hugging Face Llama directory by self-distillation.

    nice -n 10 /usr/bin/python3 tools/train_eagle.py --model ../shared/models/tinystories-656k \\
        --out data/heads/tinystories-656k.eagle \\
        --check-logits ../shared/golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt

CPU only; needs Debian's python3-torch and python3-numpy. What it does:

1. Loads the model into tools/fastinfer_torch.py's torch re-implementation of fastinfer's forward
   (shared with train_medusa.py) and, with --check-logits, refuses to train unless it reproduces the
   golden logits to 1e-3: the head must learn the features our C++ forward computes.
2. Generates --sequences stories of --length tokens with the model itself (fastinfer_torch.generate:
   a --sampled-fraction sampled throughout, the rest greedy after a short sampled start).
3. Runs the frozen model over them and keeps, for every position t, the feature f_t: the residual
   stream BEFORE the final RMSNorm (LlamaModel::last_features()), and the model's top --distill-k
   next-token distribution of every row.
4. Trains the head of include/fastinfer/speculative/eagle_head.hpp (fc over [embedding of token t+1 ;
   f_t], one decoder layer with interleaved RoPE, causal attention over its own rows) to predict
   f_{t+1}: loss = smooth-L1(f'_{t+1}, f_{t+1}) + --cls-weight x cross-entropy of the target's own
   final norm + classifier applied to f'_{t+1} against the frozen model's distribution of token t+2
   (EAGLE-1's loss). With --unroll 2 a second pass feeds the head its own predicted features (shifted
   by one position) and adds the same loss at --unroll-weight: the head then also learns to draft
   from its own guesses, as it does below depth 1 of the tree. AdamW, warm-up then cosine decay.
5. Reports on the held-out tenth of the sequences: top-1 accuracy of the head's token at depth 1 on
   greedy positions.
6. Writes the head in fastinfer's FIEAGLEH v1 format (f16 unless --f32).

The committed head data/heads/tinystories-656k.eagle was made with --sequences 7680 --epochs 8 (tools/README.md).
"""
import argparse
import math
import os
import struct
import sys
import time

# One BLAS thread: the matrices are small, and on a busy machine extra BLAS threads only wait.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastinfer_torch import apply_rope, data_arguments, features, fit, rope_tables, start  # noqa: E402

TENSORS = ["fc", "fc_bias", "attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down"]


class EagleHead(torch.nn.Module):
    """eagle_head.hpp's layer; rows at positions 0..T-1, causal over the head's own rows."""

    def __init__(self, dim, heads, kv_heads, head_dim, hidden, eps, theta, positions, emb_scale=1.0, feat_scale=1.0):
        super().__init__()
        self.dim, self.heads, self.kv_heads, self.head_dim, self.hidden = dim, heads, kv_heads, head_dim, hidden
        self.eps, self.theta = eps, theta
        # Trained in units where the embedding and the feature have RMS 1 (a small model's residual
        # stream can be large: tinystories-656k's is ~35, its embedding ~0.5), so that Adam's steps fit
        # both; tensors() folds the scales into fc, fc_bias, wo, w_down and eps: the same function.
        self.emb_scale, self.feat_scale = emb_scale, feat_scale
        p = torch.nn.Parameter
        fc = torch.zeros(dim, 2 * dim)
        fc[:, dim:] = torch.eye(dim)  # the feature passes through at the start
        self.fc = p(fc + 0.01 * torch.randn(dim, 2 * dim) / math.sqrt(dim))
        self.fc_bias = p(torch.zeros(dim))
        self.attn_norm = p(torch.ones(dim))
        init = lambda r, c, a=1.0: p(a * torch.randn(r, c) / math.sqrt(c))
        self.wq, self.wk, self.wv = init(heads * head_dim, dim), init(kv_heads * head_dim, dim), init(kv_heads * head_dim, dim)
        self.wo = init(dim, heads * head_dim, 0.1)
        self.ffn_norm = p(torch.ones(dim))
        self.w_gate, self.w_up, self.w_down = init(hidden, dim), init(hidden, dim), init(dim, hidden, 0.1)
        self.cos, self.sin = rope_tables(head_dim, theta, positions)

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def forward(self, emb_next, feats, gap=0):
        """emb_next [B, T, dim] (embedding of token t + 1), feats [B, T, dim] (f_t) -> f'_{t+1}.
        gap > 0: row t sees rows <= t - 1 - gap and itself (train_mtp.py: an MTP module's draft row
        lacks the rows that would need drafted tokens)."""
        B, T, _ = feats.shape
        x = torch.cat([emb_next / self.emb_scale, feats / self.feat_scale], -1) @ self.fc.T + self.fc_bias
        n = self.rmsnorm(x, self.attn_norm)
        q = (n @ self.wq.T).view(B, T, self.heads, self.head_dim)
        k = (n @ self.wk.T).view(B, T, self.kv_heads, self.head_dim)
        v = (n @ self.wv.T).view(B, T, self.kv_heads, self.head_dim)
        q = apply_rope(q, self.cos[:T], self.sin[:T], False)
        k = apply_rope(k, self.cos[:T], self.sin[:T], False)
        rep = self.heads // self.kv_heads
        q, k, v = q.transpose(1, 2), k.repeat_interleave(rep, 2).transpose(1, 2), v.repeat_interleave(rep, 2).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (Debian's torch has no SDPA)
        seen = torch.ones(T, T, dtype=torch.bool).tril(-1 - gap) | torch.eye(T, dtype=torch.bool)
        att = att.masked_fill(~seen, float("-inf"))
        o = att.softmax(-1) @ v
        x = x + o.transpose(1, 2).reshape(B, T, -1) @ self.wo.T
        m = self.rmsnorm(x, self.ffn_norm)
        return self.feat_scale * (x + (F.silu(m @ self.w_gate.T) * (m @ self.w_up.T)) @ self.w_down.T)

    def tensors(self):
        """Every tensor in file order as [rows, cols] (norms and the bias are one row), in the
        target's units: x = feat_scale * x~ inside, so fc, fc_bias, wo, w_down gain feat_scale (fc's
        embedding half also 1 / emb_scale, its feature half 1 / feat_scale) and RMSNorm's eps
        feat_scale^2 (see eps_in_file)."""
        t = {n: getattr(self, n).detach().clone() for n in TENSORS}
        t["fc"][:, :self.dim] *= self.feat_scale / self.emb_scale
        t["fc_bias"] *= self.feat_scale
        t["wo"] *= self.feat_scale
        t["w_down"] *= self.feat_scale
        return [t[n].reshape(1, -1) if t[n].dim() == 1 else t[n] for n in TENSORS]

    def eps_in_file(self):
        return self.eps * self.feat_scale ** 2


def write_head(path, head, vocab, f16):
    """FIEAGLEH v1 (include/fastinfer/speculative/eagle_head.hpp)."""
    ts = head.tensors()
    elem = 2 if f16 else 4
    out = bytearray(b"FIEAGLEH")
    out += struct.pack("<8I", 1, head.dim, vocab, head.heads, head.kv_heads, head.head_dim, head.hidden, 1 if f16 else 0)
    out += struct.pack("<I2fI", 0, head.eps_in_file(), head.theta, len(TENSORS))
    off = 56 + 32 * len(TENSORS)
    for name, t in zip(TENSORS, ts):
        rows, cols = t.shape
        out += name.encode().ljust(16, b"\0") + struct.pack("<IIQ", rows, cols, off)
        off += rows * cols * elem
    for t in ts:
        out += t.numpy().astype("<f2" if f16 else "<f4").tobytes()
    with open(path, "wb") as f:
        f.write(out)
    return len(out)


def layer_arguments(ap):
    """The layer's shape and the training options train_mtp.py shares."""
    ap.add_argument("--heads", type=int, default=4, help="the layer's query heads")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=0, help="0: the model's dim / --heads")
    ap.add_argument("--hidden", type=int, default=256, help="the layer's MLP width")
    ap.add_argument("--noise", type=float, default=0.05, help="uniform noise on the target's features, x their RMS")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="sequences per optimiser step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--f32", action="store_true", help="write f32 weights (default f16: half the size)")


def start_with_features(a, t0):
    """fastinfer_torch.start, then the frozen model's pre-norm features and top-k distributions."""
    model, gen, seqs, greedy, valid, L = start(a, t0)
    feats, pv, pi = features(model, seqs, a.distill_k, prenorm=True)
    print(f"featurised in {time.time() - t0:.1f} s")
    return model, gen, seqs, greedy, valid, L, feats, pv, pi


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data_arguments(ap, sequences=480, length=192)
    ap.add_argument("--out", required=True, help="head file to write (FIEAGLEH v1)")
    layer_arguments(ap)
    ap.add_argument("--cls-weight", type=float, default=1.0,
                    help="weight of the token loss against the feature loss on RMS-normalised features")
    ap.add_argument("--unroll", type=int, default=2, choices=(1, 2), help="2: also train on the head's own features")
    ap.add_argument("--unroll-weight", type=float, default=0.5)
    a = ap.parse_args()
    t0 = time.time()
    model, gen, seqs, greedy, valid, L, feats, pv, pi = start_with_features(a, t0)
    scale = float(feats.pow(2).mean().sqrt())

    head_dim = a.head_dim or model.dim // a.heads
    head = EagleHead(model.dim, a.heads, a.kv_heads, head_dim, a.hidden, model.eps, 10000.0, L,
                     float(model.emb.pow(2).mean().sqrt()), scale)
    emb, cls, rms_final = model.emb, model.cls, model.rms_final
    n_hold = max(1, seqs.shape[0] // 10)
    n_train = seqs.shape[0] - n_hold

    def losses(idx, noise):
        """Summed loss of sequences idx, and (top-1 hits, count) of the depth-1 token on greedy rows."""
        s = seqs[idx]
        f_in = feats[idx, :-1]
        if noise > 0:
            f_in = f_in + noise * scale * (2 * torch.rand(f_in.shape, generator=gen) - 1)
        e_next = emb[s[:, 1:]]
        target = feats[idx, 1:]
        ok = valid[idx, 1:].float()
        sv, si = pv[idx, 1:], pi[idx, 1:]  # row t + 1: the distribution of token t + 2

        def one(pred, w):
            # On features divided by their RMS: a small model's residual stream can be large
            # (tinystories-656k: RMS 37), and the raw error would drown the token loss.
            reg = (F.smooth_l1_loss(pred / scale, target / scale, reduction="none").mean(-1) * ok).sum() / ok.sum().clamp(min=1)
            logp = torch.log_softmax(model.rmsnorm(pred, rms_final) @ cls.T, -1)
            ce = (-(logp.gather(-1, si) * sv).sum(-1) * ok).sum() / ok.sum().clamp(min=1)
            return w * (reg + a.cls_weight * ce), logp

        pred = head(e_next, f_in)
        loss, logp = one(pred, 1.0)
        if a.unroll == 2:
            # Row t reads the head's own guess of f_t (made at row t - 1) instead of the true one.
            f2 = torch.cat([f_in[:, :1], pred[:, :-1]], 1)
            loss2, _ = one(head(e_next, f2), a.unroll_weight)
            loss = loss + loss2
        g = greedy[idx, 2:] & valid[idx, 2:]
        hits = ((logp[:, :-1].argmax(-1) == s[:, 2:]) & g).sum()
        return loss, int(hits), int(g.sum())

    def report(ep, mean_loss):
        with torch.no_grad():
            hits = count = 0
            for i in range(n_train, seqs.shape[0], 64):
                _, h, c = losses(torch.arange(i, min(i + 64, seqs.shape[0])), 0.0)
                hits, count = hits + h, count + c
        print(f"epoch {ep + 1}/{a.epochs}: loss {mean_loss:.4f}, held-out depth-1 top-1 on greedy rows "
              f"{hits / max(1, count):.3f} ({time.time() - t0:.1f} s)")

    fit(head.parameters(), n_train, a, gen, lambda idx: losses(idx, a.noise)[0], report)
    n = write_head(a.out, head, model.vocab, not a.f32)
    print(f"wrote {a.out} ({n} bytes: dim {model.dim}, {a.heads} heads of {head_dim}, {a.kv_heads} KV heads, "
          f"MLP {a.hidden}) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
