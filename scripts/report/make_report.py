#!/usr/bin/env python3
"""docs/report/README.md and its PNG plots from the JSON scripts/report.sh gathered.

Reads only files under --raw; every figure on the page comes from them, so the
page can be regenerated from a kept raw folder:
    python3 scripts/report/make_report.py --raw build/report/quick --out docs/report ...
"""
import argparse
import glob
import json
import os
import platform
import re
import statistics
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 80  # small PNGs: the page is committed


def load(path):
    with open(path) as f:
        return json.load(f)


def last_json_line(path):
    """fastinfer-generate --stats-json prints one JSON object as its last stderr line."""
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Report:
    def __init__(self, args):
        self.a = args
        self.raw = args.raw
        self.out = args.out
        self.md = []
        prof = load(os.path.join(self.raw, "profile.json"))
        self.prof = prof
        roof = prof["roofline"]
        self.cpu = roof.get("cpu") or cpu_name()
        self.isa = roof["isa"]
        self.gbs = roof["read_gbs"]
        self.gflops = roof["peak_gflops"]
        note = f"; {args.note}" if args.note else ""
        self.machine = f"{self.cpu}, {args.threads} thread(s), kernels built for {self.isa}{note}"

    def caption(self, what):
        return "\n".join(textwrap.wrap(what, 100) + textwrap.wrap(self.machine, 100))

    def save(self, fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(self.out, name), dpi=DPI)
        plt.close(fig)

    # ---- roofline -----------------------------------------------------------
    def roofline(self):
        fig, ax = plt.subplots(figsize=(8, 5))
        xs = [10 ** (e / 10) for e in range(-30, 31)]
        ax.plot(xs, [min(self.gflops, x * self.gbs) for x in xs], "k-", lw=1.5,
                label=f"roofline: {self.gbs:.1f} GB/s read, {self.gflops:.0f} GFLOP/s FMA")
        markers = {"decode": "o", "prefill": "^"}
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        weight_ops = ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "classifier"]
        color_of = {}
        for phase, data in self.prof["phases"].items():
            for o in data["ops"]:
                if o["flops"] <= 0 or o["seconds"] <= 0:
                    continue  # setup, embedding, KV append: bytes only, no point on a log axis
                c = color_of.setdefault(o["op"], colors[len(color_of) % len(colors)])
                ax.scatter(o["intensity"], o["gflops"], marker=markers.get(phase, "s"), color=c,
                           s=60 if o["op"] in weight_ops else 30, edgecolors="k", linewidths=0.4)
                ax.annotate(o["op"], (o["intensity"], o["gflops"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        for phase, m in markers.items():
            if phase in self.prof["phases"]:
                ax.scatter([], [], marker=m, color="gray", label=f"{phase} ops")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(self.caption(f"Roofline of one forward pass's ops, {self.a.model} {self.a.weights}"),
                     fontsize=9)
        self.save(fig, "roofline.png")

    def op_table(self):
        rows = []
        for phase, data in self.prof["phases"].items():
            total = sum(o["seconds"] for o in data["ops"])
            rows.append(f"\n**{phase}**: {data['passes']} passes, {data['rows']} rows; op times sum to "
                        f"{1e3 * data['ops_s']:.1f} ms of {1e3 * data['pass_s']:.1f} ms inside passes.\n")
            rows.append("| op | ms | share | GB/s | GFLOP/s | FLOP/B | % of read BW | % of FMA peak |")
            rows.append("|---|---:|---:|---:|---:|---:|---:|---:|")
            for o in sorted(data["ops"], key=lambda o: -o["seconds"]):
                rows.append(f"| {o['op']} | {1e3 * o['seconds']:.2f} | {100 * o['seconds'] / total:.1f} % | "
                            f"{o['gbs']:.1f} | {o['gflops']:.1f} | {o['intensity']:.2f} | "
                            f"{100 * o['bw_fraction']:.0f} % | {100 * o['peak_fraction']:.1f} % |")
        return "\n".join(rows)

    def op_shares(self):
        phases = list(self.prof["phases"].items())
        fig, axes = plt.subplots(1, len(phases), figsize=(4.5 * len(phases), 4.5), squeeze=False)
        for ax, (phase, data) in zip(axes[0], phases):
            ops = sorted(data["ops"], key=lambda o: o["seconds"])
            ax.barh([o["op"] for o in ops], [1e3 * o["seconds"] / data["passes"] for o in ops])
            ax.set_xlabel("ms per pass")
            ax.set_title(f"{phase} ({data['rows'] // max(data['passes'], 1)} rows/pass avg)", fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
        fig.suptitle(self.caption(f"Where a forward pass's time goes, {self.a.model} {self.a.weights}"), fontsize=9)
        self.save(fig, "op_time.png")

    # ---- technique matrix ---------------------------------------------------
    def matrix(self):
        samples = {}
        for path in glob.glob(os.path.join(self.raw, "matrix_*.json")):
            m = re.match(r"matrix_(.+)_b(\d+)_p(\d+)_r\d+\.json", os.path.basename(path))
            tech, b, p = m.group(1), int(m.group(2)), int(m.group(3))
            j = load(path)
            samples.setdefault((p, f"continuous, {tech}", b), []).append(j["continuous"]["output_tok_s"])
            if "static" in j:
                samples.setdefault((p, f"static, {tech}", b), []).append(j["static"]["output_tok_s"])
        cells = {}
        for (p, tech, b), xs in samples.items():
            cells.setdefault(p, {}).setdefault(tech, {})[b] = statistics.median(xs)
        plain_samples = {}
        for path in glob.glob(os.path.join(self.raw, "plain_p*.json")):
            p = int(re.search(r"plain_p(\d+)", path).group(1))
            s = last_json_line(path)
            if s:
                plain_samples.setdefault(p, []).append(s["decode_tok_s"])
        plain = {p: statistics.median(xs) for p, xs in plain_samples.items()}
        prompts = sorted(cells)
        fig, axes = plt.subplots(1, len(prompts), figsize=(5 * len(prompts), 4.5), squeeze=False, sharey=True)
        for ax, p in zip(axes[0], prompts):
            for tech, series in sorted(cells[p].items()):
                bs = sorted(series)
                ax.plot(bs, [series[b] for b in bs], marker="o", ls="--" if tech.startswith("static") else "-",
                        label=tech)
            if p in plain:
                ax.scatter([1], [plain[p]], marker="*", s=120, color="k", zorder=5,
                           label="plain loop, contiguous KV (decode only)")
            ax.set_xscale("log", base=2)
            ticks = sorted({b for series in cells[p].values() for b in series})
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(b) for b in ticks])
            ax.set_xlabel("batch size (requests at once)")
            ax.set_title(f"prompt {p} tokens, {self.a.new_tokens} new", fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel("output tokens/s")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(self.caption(f"Output tokens/s vs batch size per technique, {self.a.model} {self.a.weights}"),
                     fontsize=9)
        self.save(fig, "throughput_vs_batch.png")
        # Markdown table: rows technique, columns (prompt, batch).
        lines = ["| technique | " + " | ".join(f"p{p} b{b}" for p in prompts for b in sorted(
            {b for s in cells[p].values() for b in s})) + " |"]
        lines.append("|---|" + "---:|" * (lines[0].count("|") - 2))
        techs = sorted({t for p in prompts for t in cells[p]})
        for t in techs:
            vals = []
            for p in prompts:
                for b in sorted({b for s in cells[p].values() for b in s}):
                    v = cells[p].get(t, {}).get(b)
                    vals.append(f"{v:.0f}" if v else "-")
            lines.append(f"| {t} | " + " | ".join(vals) + " |")
        spreads = [max(xs) / min(xs) for xs in samples.values() if len(xs) > 1 and min(xs) > 0]
        if spreads:
            lines.append(f"\nRepetitions of one cell differed by up to {max(spreads):.1f}x (max/min; median "
                         f"{statistics.median(spreads):.2f}x): differences between techniques smaller than that "
                         "are not resolved by this run.")
        if plain:
            lines.append("\nPlain single-sequence loop (fastinfer-generate, contiguous KV) decode tok/s: " +
                         ", ".join(f"prompt {p}: {plain[p]:.0f}" for p in sorted(plain)) + ".")
        return "\n".join(lines)

    # ---- serving ------------------------------------------------------------
    def serving(self):
        j = load(os.path.join(self.raw, "serving.json"))
        c = j["continuous"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, key, label in ((axes[0], "ttft_ms", "time to first token (ms)"),
                               (axes[1], "itl_ms", "inter-token latency (ms)")):
            xs = sorted(c.get(key, []))
            if not xs:
                continue
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label="continuous batching (all samples)")
            stat = j.get("static")
            if stat:
                base = "ttft" if key == "ttft_ms" else "itl"
                for q, ls in (("p50", ":"), ("p99", "--")):
                    ax.axvline(stat[f"{base}_ms_{q}"], color="C1", ls=ls, label=f"static batching {q}")
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of samples (CDF)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        cfg = j["config"]
        fig.suptitle(self.caption(
            f"Serving latency: {cfg['requests']} requests, Poisson {cfg['rate']}/s, prompt {cfg['prompt_len']}, "
            f"output {cfg['output_len']}, max {cfg['max_seqs']} running, {self.a.model} {self.a.weights}"), fontsize=9)
        self.save(fig, "serving_latency.png")
        rows = ["| | continuous | static |", "|---|---:|---:|"]
        s = j.get("static", {})
        for key, name in (("throughput_tok_s", "throughput (tok/s)"), ("output_tok_s", "output (tok/s)"),
                          ("ttft_ms_p50", "TTFT p50 (ms)"), ("ttft_ms_p99", "TTFT p99 (ms)"),
                          ("itl_ms_p50", "ITL p50 (ms)"), ("itl_ms_p99", "ITL p99 (ms)"),
                          ("e2e_ms_p99", "end-to-end p99 (ms)")):
            rows.append(f"| {name} | {c[key]:.1f} | {s.get(key, float('nan')):.1f} |")
        return "\n".join(rows)

    # ---- speculation --------------------------------------------------------
    def speculative(self):
        runs = {}
        for path in sorted(glob.glob(os.path.join(self.raw, "spec_*_r*.json"))):
            name = re.sub(r"_r\d+$", "", os.path.basename(path)[5:-5])
            s = last_json_line(path)
            if s:
                runs.setdefault(name, []).append(s)
        base = {}
        points = []
        for name, rs in sorted(runs.items()):
            which, method = name.split("_", 1)
            # The median run by speed stands for the method (acceptance does not vary with the load).
            s = sorted(rs, key=lambda r: r["decode_tok_s"])[len(rs) // 2]
            if method == "plain":
                base[which] = s["decode_tok_s"]
            else:
                points.append((which, method, s))
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        rows = ["| sampling | method | acceptance (accepted / drafted) | tokens per target forward | "
                "target forwards | decode tok/s (min-max) | speed-up |", "|---|---|---:|---:|---:|---:|---:|"]
        for which, method, s in points:
            if not base.get(which):
                continue
            speed = s["decode_tok_s"] / base[which]
            acc = s.get("acceptance_rate", 0.0)
            ax.scatter(acc, speed, marker="o" if which == "greedy" else "s",
                       color="C0" if "lookup" in method else "C2" if "draft" in method else "C3")
            ax.annotate(f"{method} ({which})", (acc, speed), fontsize=7, xytext=(3, 3), textcoords="offset points")
            speeds = sorted(r["decode_tok_s"] for r in runs[f"{which}_{method}"])
            rows.append(f"| {which} | {method} | {100 * acc:.0f} % | {s['mean_accepted_per_step']:.2f} | "
                        f"{s['target_forwards']} | {s['decode_tok_s']:.0f} ({speeds[0]:.0f}-{speeds[-1]:.0f}) | "
                        f"{speed:.2f}x |")
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="plain decoding (same sampling)")
        ax.scatter([], [], marker="o", color="gray", label="greedy")
        ax.scatter([], [], marker="s", color="gray", label="sampled, temperature 1")
        ax.set_xlabel("acceptance rate (accepted drafts / drafted tokens)")
        ax.set_ylabel("decode speed-up over plain (x)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(self.caption(f"Speculative decoding, batch 1: speed-up vs acceptance, {self.a.model} "
                                  f"{self.a.weights}"), fontsize=9)
        self.save(fig, "spec_speedup.png")
        return "\n".join(rows) + "\n\nPlain decode tok/s: " + ", ".join(f"{k}: {v:.0f}" for k, v in base.items())

    # ---- ceilings -----------------------------------------------------------
    def ceilings(self):
        rows = ["| ceiling | threads | measured |", "|---|---:|---:|"]
        for b in load(os.path.join(self.raw, "bandwidth.json"))["benchmarks"]:
            rows.append(f"| streamed read (bench_bandwidth, 1 GiB) | {int(b.get('threads', 0))} | "
                        f"{b['bytes_per_second'] / 1e9:.1f} GB/s |")
        best = {}
        for b in load(os.path.join(self.raw, "fma.json"))["benchmarks"]:
            if "error_occurred" in b or b.get("run_type") != "iteration":
                continue
            key = (b["label"], int(b["threads"]))
            best[key] = max(best.get(key, 0.0), b["gflops"])
        for (level, threads), g in sorted(best.items(), key=lambda kv: (int(kv[0][1]), kv[1])):
            rows.append(f"| FMA peak, {level} (bench_fma, best of 3) | {threads} | {g:.1f} GFLOP/s |")
        return "\n".join(rows)

    # ---- llama.cpp (optional) -----------------------------------------------
    def llama_cpp(self):
        path = os.path.join(self.raw, "llama_bench.json")
        if not os.path.exists(path):
            return None
        rows = ["| test | llama.cpp tok/s | fastinfer tok/s | ratio |", "|---|---:|---:|---:|"]
        for e in load(path):
            npmt, ngen = int(e["n_prompt"]), int(e["n_gen"])
            ours = last_json_line(os.path.join(self.raw, f"ours_p{npmt}_g{ngen}.json"))
            if not ours:
                continue
            mine = ours["prefill_tok_s"] if ngen == 0 else ours["decode_tok_s"]
            test = f"pp{npmt}" if ngen == 0 else f"tg{ngen}"
            rows.append(f"| {test} ({e.get('model_type', '?')}, {e.get('n_threads', '?')} threads) | "
                        f"{e['avg_ts']:.1f} | {mine:.1f} | {mine / e['avg_ts']:.2f}x |")
        return "\n".join(rows)

    def write(self):
        self.roofline()
        self.op_shares()
        a = self.a
        md = [f"# fastinfer benchmark report ({a.mode})", "",
              f"Machine: **{self.cpu}**, {a.threads} thread(s), kernels built for **{self.isa}**. "
              f"Ceilings measured in the same run: streamed read **{self.gbs:.1f} GB/s** (bench_bandwidth), "
              f"FMA peak **{self.gflops:.0f} GFLOP/s** ({self.isa}, bench_fma).",
              "" if not a.note else f"\n> **{a.note}**: figures vary from run to run; compare rows taken in this "
                                      "one run, not with other pages.\n",
              f"Reproduce: `scripts/report.sh {a.mode}` ({a.seconds} s of wall time for this run from the start of report.sh; see docs/benchmarks.md for a clean build). "
              "Raw JSON: `build/report/<mode>/`. Generated by `scripts/report/make_report.py`.", "",
              "## Ceilings", "", self.ceilings(), "",
              f"The roofline uses the {self.a.threads}-thread read figure and the best 1-thread {self.isa} FMA "
              f"figure times {self.a.threads} threads.", "",
              "## Where the time of a forward pass goes", "",
              f"`fastinfer-generate --model {a.model} --weights {a.weights} --profile-json` "
              "(ForwardProfiler, `include/fastinfer/model/profiler.hpp`). Bytes and FLOPs per op are computed "
              "from the shapes (least traffic: each weight once per pass); GB/s and GFLOP/s are those over the "
              "op's measured time.", "",
              "![roofline](roofline.png)", "", "![op time](op_time.png)", ""]
        ops_s, meas = self.prof["ops_s"], self.prof["measured_s"]
        if meas > 0:
            md.append(f"The op times (sampling included) add up to **{100 * ops_s / meas:.1f} %** of the "
                      f"generation's wall time measured outside the model ({1e3 * ops_s:.1f} of {1e3 * meas:.1f} ms); "
                      "the rest is the generation loop and its callbacks.")
        md.append(self.op_table())
        md += ["", "## Techniques x batch size x prompt length", "",
               "`fastinfer-serve-bench`, B requests arriving at once with at most B running, every technique on "
               "the paged KV cache through the Engine (continuous batching) unless named static. Output tokens "
               "per second (generated tokens over the span from first arrival to last finish), median of the "
               "repetitions.", "",
               "![throughput vs batch](throughput_vs_batch.png)", "", self.matrix(), "",
               "## Serving latency", "", "![serving latency](serving_latency.png)", "", self.serving(), "",
               "## Speculative decoding", "",
               "`fastinfer-generate --spec ...` at batch 1, greedy and sampled at temperature 1 (exact rejection "
               "sampling), 64-token prompt; speed-up of the median of the repetitions over plain decoding with "
               "the same sampling, in the same run. The draft model is the target itself with q8_0 weights.",
               "", "![speculative speed-up](spec_speedup.png)", "", self.speculative(), ""]
        lc = self.llama_cpp()
        md += ["## llama.cpp side by side", ""]
        if lc:
            md += ["Same GGUF, same machine, llama-bench JSON given to `scripts/report.sh --llama-bench`.", "", lc, ""]
        else:
            md += ["Not in this run: pass `--llama-bench FILE.json --gguf MODEL.gguf` (llama-bench -o json on the "
                   "same GGUF and machine) to add it. ANCHORS-style comparisons are in docs/benchmarks.md.", ""]
        with open(os.path.join(self.out, "README.md"), "w") as f:
            f.write("\n".join(md))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="quick")
    ap.add_argument("--model", default="?")
    ap.add_argument("--weights", default="?")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--note", default="")
    ap.add_argument("--seconds", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    Report(args).write()


if __name__ == "__main__":
    main()
