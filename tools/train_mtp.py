#!/usr/bin/env python3
"""Train DeepSeek-V3-style MTP modules for a llama2.c checkpoint or a Hugging Face Llama directory by self-distillation.

    nice -n 10 /usr/bin/python3 tools/train_mtp.py --model ../shared/models/tinystories-656k \\
        --out data/heads/tinystories-656k.mtp \\
        --check-logits ../shared/golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt

CPU only; needs Debian's python3-torch and python3-numpy. Data, features and the golden check are
train_eagle.py's (tools/fastinfer_torch.py); each module's layer IS train_eagle.EagleHead (the layer of
include/fastinfer/speculative/eagle_head.hpp) with two input RMSNorms in front, as
include/fastinfer/speculative/mtp_heads.hpp computes it:

    module k at position i:  h^k_i = Layer_k([RMSNorm(emb(t_{i+k}), enorm_k) ; RMSNorm(h^{k-1}_i, hnorm_k)])

h^0 = the frozen target's feature (its residual stream before the final norm); h^k_i gives token
t_{i+k+1} through the target's own final norm and classifier. Loss: for every module, cross-entropy
against the frozen model's top --distill-k distribution of that token (the model is frozen and the
data is its own, so this is self-distillation); the modules are trained together, h^{k-1} feeding
module k with its gradient (DeepSeek-V3 §2.2's causal chain).

Attention masks as the drafter reads them: modules 1 and 2 are causal over their own rows. Module
k >= 3 drafts at position i = (last target position) while its own committed rows stop at i - (k - 1)
(the rows in between would need drafted tokens), so its rows see rows <= i - (k - 1) and themselves
(train_eagle.EagleHead's gap = k - 2). For k >= 4 the keys of module k are made here from module
k - 1's gapped outputs where the drafter makes them from its causal (committed) outputs: an
approximation of training only (the drafter is exact whatever the heads compute).

Reports the held-out tenth's teacher-forced top-1 of every module on greedy rows, then writes the
FIMTPHDS v1 file (f16 unless --f32; format in mtp_heads.hpp).
"""
import argparse
import os
import struct
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastinfer_torch import data_arguments, fit  # noqa: E402
from train_eagle import TENSORS, EagleHead, layer_arguments, start_with_features  # noqa: E402


class MtpModule(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.enorm = torch.nn.Parameter(torch.ones(layer.dim))
        self.hnorm = torch.nn.Parameter(torch.ones(layer.dim))

    def forward(self, emb, h, gap):
        return self.layer(self.layer.rmsnorm(emb, self.enorm), self.layer.rmsnorm(h, self.hnorm), gap)

    def tensors(self):
        return [self.enorm.detach().reshape(1, -1), self.hnorm.detach().reshape(1, -1)] + self.layer.tensors()


def write_heads(path, modules, vocab, f16):
    """FIMTPHDS v1 (include/fastinfer/speculative/mtp_heads.hpp): FIEAGLEH's header fields, the
    tensor count per module at 52, the module count at 56, then per module enorm, hnorm and
    FIEAGLEH's 11 tensors."""
    first = modules[0].layer
    names = ["enorm", "hnorm"] + TENSORS
    elem = 2 if f16 else 4
    out = bytearray(b"FIMTPHDS")
    out += struct.pack("<8I", 1, first.dim, vocab, first.heads, first.kv_heads, first.head_dim, first.hidden,
                       1 if f16 else 0)
    out += struct.pack("<I2fII", 0, first.eps_in_file(), first.theta, len(names), len(modules))
    off = 60 + 32 * len(names) * len(modules)
    blobs = []
    for m in modules:
        for name, t in zip(names, m.tensors()):
            rows, cols = t.shape
            out += name.encode().ljust(16, b"\0") + struct.pack("<IIQ", rows, cols, off)
            off += rows * cols * elem
            blobs.append(t.numpy().astype("<f2" if f16 else "<f4").tobytes())
    out += b"".join(blobs)
    with open(path, "wb") as f:
        f.write(out)
    return len(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data_arguments(ap, sequences=480, length=192)
    ap.add_argument("--out", required=True, help="file to write (FIMTPHDS v1)")
    ap.add_argument("--modules", type=int, default=4, help="MTP depth D: module k drafts token i + k + 1")
    layer_arguments(ap)  # each module's layer
    a = ap.parse_args()
    t0 = time.time()
    model, gen, seqs, greedy, valid, L, feats, pv, pi = start_with_features(a, t0)
    scale = float(feats.pow(2).mean().sqrt())
    D = a.modules
    assert 1 <= D < L - 1, "--modules must be in [1, length - 2]"
    head_dim = a.head_dim or model.dim // a.heads
    modules = torch.nn.ModuleList([
        MtpModule(EagleHead(model.dim, a.heads, a.kv_heads, head_dim, a.hidden, model.eps, 10000.0, L))
        for _ in range(D)])
    emb, cls, rms_final = model.emb, model.cls, model.rms_final
    n_hold = max(1, seqs.shape[0] // 10)
    n_train = seqs.shape[0] - n_hold

    def losses(idx, noise):
        """Summed loss over modules of sequences idx; per module (top-1 hits, count) on greedy rows."""
        s = seqs[idx]
        T = s.shape[1]
        h = feats[idx]
        if noise > 0:
            h = h + noise * scale * (2 * torch.rand(h.shape, generator=gen) - 1)
        loss, stats = 0.0, []
        for k in range(1, D + 1):
            n = T - k  # rows i = 0 .. T - k - 1: token t_{i+k} in, token t_{i+k+1} out
            h = modules[k - 1](emb[s[:, k:]], h[:, :n], max(0, k - 2))
            logp = torch.log_softmax(model.rmsnorm(h, rms_final) @ cls.T, -1)
            sv, si, ok = pv[idx, k:], pi[idx, k:], valid[idx, k:].float()
            loss = loss + (-(logp.gather(-1, si) * sv).sum(-1) * ok).sum() / ok.sum().clamp(min=1)
            g = greedy[idx, k + 1:] & valid[idx, k + 1:]
            stats.append((int(((logp[:, :-1].argmax(-1) == s[:, k + 1:]) & g).sum()), int(g.sum())))
        return loss, stats

    def report(ep, mean_loss):
        with torch.no_grad():
            hits = [[0, 0] for _ in range(D)]
            for i in range(n_train, seqs.shape[0], 64):
                _, st = losses(torch.arange(i, min(i + 64, seqs.shape[0])), 0.0)
                for k, (h_, c_) in enumerate(st):
                    hits[k][0] += h_
                    hits[k][1] += c_
        acc = " ".join(f"{h_ / max(1, c_):.3f}" for h_, c_ in hits)
        print(f"epoch {ep + 1}/{a.epochs}: loss {mean_loss:.4f}, held-out top-1 of modules 1..{D} on greedy "
              f"rows {acc} ({time.time() - t0:.1f} s)", flush=True)

    fit(modules.parameters(), n_train, a, gen, lambda idx: losses(idx, a.noise)[0], report)
    n = write_heads(a.out, list(modules), model.vocab, not a.f32)
    print(f"wrote {a.out} ({n} bytes: {D} modules of dim {model.dim}, {a.heads} heads of {head_dim}, "
          f"{a.kv_heads} KV heads, MLP {a.hidden}) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
