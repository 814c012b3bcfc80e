// fastinfer-disaggregated: disaggregated prefill and decode over MPI.
//
//   mpirun -np 3 fastinfer-disaggregated [--model SPEC] [--requests N] ...
//
// Rank 0 is the prefill rank (and the client); ranks 1.. are decode ranks.
// Each rank holds the model and its own paged KV pool. Rank 0 serves a
// synthetic workload (engine/workload.hpp): it prefills each request, ships
// the KV (layer by layer, non-blocking MPI) with the first token and the
// sampling state to a decode rank, which decodes it to the end and returns
// the tokens. Then rank 0 serves the same workload on one engine alone and
// prints both: TTFT / ITL / end-to-end per role, and whether the outputs are
// identical. First, unless --no-transfer-bench, ranks 0 and 1 time the bare
// KV transfer (no engine running) for a few sequence lengths: bytes and µs
// per token of KV.
//
// (As root: mpirun --allow-run-as-root; beyond the cores: --oversubscribe;
// to survive a killed rank: --enable-recovery.)
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "common/workload_flags.hpp"
#include "fastinfer/engine/disaggregation.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/engine/workload.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/transfer/mpi_kv_transport.hpp"

namespace fe = fastinfer::engine;
namespace fs = fastinfer::sched;
namespace ft = fastinfer::transfer;

namespace {

struct Options {
  std::string model = std::string(FASTINFER_SHARED_DIR) + "/models/stories260K.bin";
  std::string kv = "f32";
  std::string prompt = "32:200", output = "16:64";
  int requests = 64, threads = 1, kv_blocks = 0, max_seqs = 32;
  double rate = 0, timeout = 10;
  bool transfer_bench = true;
};

fastinfer::ModelOptions model_options(const Options& o) {
  fastinfer::ModelOptions m;
  m.threads = o.threads;
  m.kv.layout = fastinfer::KVLayoutKind::Paged;
  m.kv.quant = fastinfer::kv::parse_quant(o.kv);
  m.kv.block_size = 16;
  m.kv.max_sequences = o.max_seqs;
  m.kv.num_blocks = o.kv_blocks;
  return m;
}

double pct(std::vector<double> v, double p) { return fs::percentile(v, p); }

void print_row(const char* role, const char* what, std::vector<double> v) {
  std::printf("  %-8s %-28s p50 %9.3f ms   p99 %9.3f ms\n", role, what, pct(v, 0.5) * 1e3, pct(v, 0.99) * 1e3);
}

// Ranks 0 and 1 move the KV of one sequence of `tokens` tokens `reps` times
// with nothing else running; rank 0 prints bytes and µs per token.
void transfer_bench(const fastinfer::LlamaWeights& w, const Options& o, ft::MpiKVTransport& t) {
  const int rank = t.rank();
  fastinfer::LlamaModel<> model(w, model_options(o));
  fe::Engine<> e(model);
  const ft::KVPoolView pool = e.kv_pool();
  if (rank == 0)
    std::printf("bare KV transfer, rank 0 -> rank 1 (%s KV, %d layers; per hand-off: Irecv posted, Isends "
                "posted, both complete):\n",
                o.kv.c_str(), pool.n_layers);
  for (int tokens : {16, 64, 256}) {
    if (tokens >= w.config.max_seq_len) break;
    const int reps = 200;
    fs::Request r;
    r.prompt.assign(std::size_t(tokens), 1);
    r.max_new_tokens = 2;
    std::vector<ft::MemoryDescriptor> desc;
    std::int64_t bytes = 0;
    ft::KVExport x;
    ft::KVImport in;
    if (rank == 0) {
      pool.allocator->add_sequence(99);
      pool.allocator->extend(99, tokens);
      x = ft::export_sequence(pool, 99, r, {1}, 1);
      pool.allocator->free_sequence(99);
      desc = x.descriptors();
      bytes = x.manifest().kv_bytes();
    } else if (rank == 1) {
      // The same geometry: build the manifest locally (no Offer round trip here).
      pool.allocator->add_sequence(99);
      pool.allocator->extend(99, tokens);
      ft::KVExport local = ft::export_sequence(pool, 99, r, {1}, 1);
      pool.allocator->free_sequence(99);
      ft::KVManifest m = local.manifest();
      local.release();
      in = ft::KVImport(pool, m);
      desc = in.descriptors();
    }
    std::vector<double> times;
    for (int k = 0; k < reps; ++k) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      if (rank <= 1) {
        const ft::TransferHandle h =
            rank == 0 ? t.post_send(1, std::uint64_t(k), desc) : t.post_recv(0, std::uint64_t(k), desc);
        while (!t.test(h).done) {
        }
        t.cancel(h);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      times.push_back(MPI_Wtime() - t0);
    }
    if (rank == 0) {
      // Median and best of the reps: a shared machine's scheduler adds
      // milliseconds to some of them.
      const double med = pct(times, 0.5) * 1e6, best = *std::min_element(times.begin(), times.end()) * 1e6;
      std::printf("  %4d tokens: %7lld bytes (%5lld per token, %4zu messages): median %8.1f us = %7.3f us per token; "
                  "best %7.1f us = %6.3f us per token, %5.2f GB/s\n",
                  tokens, (long long)bytes, (long long)(bytes / tokens), desc.size(), med, med / tokens, best,
                  best / tokens, double(bytes) / best * 1e-3);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Options o;
  CLI::App app{"Disaggregated prefill (rank 0) and decode (ranks 1..) over MPI, against one engine"};
  app.add_option("--model", o.model, "model: a llama2.c .bin, GGUF, HF directory or synthetic:NAME");
  app.add_option("--kv", o.kv, "KV format: f32 f16 bf16 int8 int4 fp8e4m3 fp8e5m2");
  app.add_option("--requests", o.requests, "requests in the workload");
  app.add_option("--prompt", o.prompt, "prompt lengths, N or MIN:MAX");
  app.add_option("--output", o.output, "output lengths, N or MIN:MAX");
  app.add_option("--rate", o.rate, "arrivals per second (Poisson); 0: all at once");
  app.add_option("--threads", o.threads, "threads per rank");
  app.add_option("--kv-blocks", o.kv_blocks, "KV blocks per rank (0: enough for --max-seqs full contexts)");
  app.add_option("--max-seqs", o.max_seqs, "running requests per engine");
  app.add_option("--timeout", o.timeout, "seconds before a silent decode rank fails a request");
  app.add_flag("!--no-transfer-bench", o.transfer_bench, "skip timing the bare KV transfer");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    MPI_Finalize();
    return rc;
  }
  int rc = 0;
  try {
    ft::MpiKVTransport t;
    FASTINFER_CHECK(t.size() >= 2, fastinfer::InvalidArgument,
                    "run with at least 2 ranks (mpirun -np 3): rank 0 prefills, the others decode");
    const fastinfer::LlamaWeights w = fastinfer::load_model(o.model);
    if (o.transfer_bench) transfer_bench(w, o, t);
    fe::WorkloadConfig wc;
    wc.num_requests = o.requests;
    wc.rate = o.rate;
    wc.prompt = fastinfer::examples::parse_length_range(o.prompt);
    wc.output = fastinfer::examples::parse_length_range(o.output);
    wc.vocab_size = w.config.vocab_size;
    wc.prompt.max = std::min<std::int32_t>(wc.prompt.max, w.config.max_seq_len - wc.output.max - 1);
    wc.prompt.min = std::min(wc.prompt.min, wc.prompt.max);
    const std::vector<fs::Request> reqs = fe::make_workload(wc);
    fastinfer::LlamaModel<> model(w, model_options(o));
    fe::EngineConfig ec;
    ec.scheduler.max_seqs = o.max_seqs;
    fe::DisaggConfig dc;
    dc.timeout_seconds = o.timeout;
    fe::Engine<> engine(model, ec);
    MPI_Barrier(MPI_COMM_WORLD);
    if (t.rank() != 0) {
      fe::DecodeServer<> server(engine, t, dc);
      server.run();
    } else {
      std::vector<int> decoders;
      for (int r = 1; r < t.size(); ++r) decoders.push_back(r);
      fe::PrefillServer<> prefill(engine, t, decoders, dc);
      const double start = engine.now();
      std::vector<std::uint64_t> keys;
      std::size_t next = 0;
      while (next < reqs.size() || prefill.has_work()) {
        while (next < reqs.size() && reqs[next].arrival_time <= engine.now() - start) {
          fs::Request r = reqs[next++];
          r.arrival_time += start;
          keys.push_back(prefill.submit(std::move(r)));
        }
        if (!prefill.step()) fe::idle_pause();
      }
      const double wall = engine.now() - start;
      prefill.shutdown();
      // The same workload on one engine, after the decode ranks went quiet.
      fastinfer::LlamaModel<> solo_model(w, model_options(o));
      fe::Engine<> solo(solo_model, ec);
      const double solo_start = solo.now();
      const std::vector<fs::RequestId> ids = fe::drive(solo, reqs);
      const double solo_wall = solo.now() - solo_start;

      std::vector<double> ttft, transfer, itl50, e2e, s_ttft, s_itl, s_e2e;
      std::int64_t failed = 0, same = 0, tokens = 0, kv_bytes = 0;
      for (std::size_t i = 0; i < keys.size(); ++i) {
        const fe::HandoffResult& h = prefill.result(keys[i]);
        const fe::RequestMetrics m = solo.request_metrics(ids[i]);
        s_ttft.push_back(m.ttft);
        s_itl.push_back(m.itl_p50);
        s_e2e.push_back(m.e2e);
        if (h.status != fe::HandoffStatus::Finished) {
          ++failed;
          continue;
        }
        ttft.push_back(h.first_token - h.arrival);
        e2e.push_back(h.finish - h.arrival);
        tokens += std::int64_t(h.tokens.size());
        same += h.tokens == solo.output(ids[i]);
        if (h.decode_rank > 0) {
          transfer.push_back(h.landed - h.offered);
          itl50.push_back(h.decode_itl_p50);
          kv_bytes += h.kv_bytes;
        }
      }
      std::printf("\n%zu requests, %s KV, %d decode rank(s): %lld failed, outputs identical to one engine: "
                  "%lld of %zu\n",
                  reqs.size(), o.kv.c_str(), t.size() - 1, (long long)failed, (long long)same, reqs.size());
      std::printf("disaggregated (wall %.3f s, %.1f tok/s, %.1f MB of KV shipped):\n", wall, double(tokens) / wall,
                  double(kv_bytes) * 1e-6);
      print_row("prefill", "TTFT (arrival -> 1st token)", ttft);
      print_row("transfer", "offer -> bytes landed", transfer);
      print_row("decode", "ITL (per request p50)", itl50);
      print_row("client", "end to end", e2e);
      std::printf("one engine (wall %.3f s, %.1f tok/s):\n", solo_wall, double(tokens) / solo_wall);
      print_row("engine", "TTFT", s_ttft);
      print_row("engine", "ITL (per request p50)", s_itl);
      print_row("engine", "end to end", s_e2e);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fastinfer-disaggregated: %s\n", e.what());
    rc = 1;
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
