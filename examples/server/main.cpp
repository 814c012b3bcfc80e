// fastinfer-server: an OpenAI-compatible HTTP server on the Engine.
//
//   fastinfer-server --model ../shared/models/tinystories-656k --port 8080
//   curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json'
//        -d '{"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}'
//
// POST /v1/completions, POST /v1/chat/completions (stream: true gives
// server-sent events, one chunk per token, then "data: [DONE]"), GET
// /v1/models, GET /health, GET /metrics (Prometheus text). docs/server.md
// has the details: fields, limits, errors, metrics, shutdown.
//
// Threads: cpp-httplib's pool serves connections; one EngineLoop thread
// steps the Engine (engine_loop.hpp). SIGTERM / SIGINT: stop taking
// requests (503), let in-flight ones finish for --shutdown-grace seconds,
// cancel the rest, exit 0.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"

#include "common/cli.hpp"
#include "common/engine_spec_flags.hpp"
#include "engine_loop.hpp"
#include "openai_protocol.hpp"

// Last: httplib.h pulls in <resolv.h>, whose `#define _res` would rewrite
// any later identifier of that name.
#include <httplib.h>

namespace fs = std::filesystem;
using namespace fastinfer_server;

namespace {

using fastinfer::examples::ends_with;

// The model's vocabulary: --tokenizer, else a Hugging Face directory's
// tokenizer.json or a .gguf's own; null when there is none (token ids only).
std::shared_ptr<const fastinfer::Tokenizer> load_tokenizer(const std::string& model, const std::string& explicit_path) {
  const fs::path hf_json = fs::path(model) / "tokenizer.json";
  const std::string path = !explicit_path.empty() ? explicit_path
                           : fs::exists(hf_json)  ? hf_json.string()
                           : ends_with(model, ".gguf") ? model
                                                       : "";
  if (path.empty()) return nullptr;
  if (ends_with(path, ".json"))
    return std::make_shared<fastinfer::HfBpeTokenizer>(fastinfer::HfBpeTokenizer::from_file(path));
  if (ends_with(path, ".gguf")) {
    auto f = fastinfer::gguf::GgufFile::open(path);
    if (!f->has("tokenizer.ggml.tokens")) return nullptr;
    return fastinfer::SentencePieceTokenizer::from_gguf(*f);
  }
  return fastinfer::SentencePieceTokenizer::from_llama2c(path);
}

// The model's own chat template (tokenizer_config.json or GGUF metadata),
// or "" when it has none.
std::string model_chat_template(const std::string& model) {
  const fs::path cfg = fs::path(model) / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    std::ifstream in(cfg);
    const Json j = Json::parse(in, nullptr, false);
    if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
      return j["chat_template"].get<std::string>();
    return "";
  }
  if (ends_with(model, ".gguf")) return fastinfer::gguf::GgufFile::open(model)->get_string("tokenizer.chat_template", "");
  return "";
}

void send_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, error_json(e));
  // A refused client should not keep a pool thread for its keep-alive.
  if (e.status == 429 || e.status == 503) res.set_header("Connection", "close");
  if (e.status == 429) res.set_header("Retry-After", "1");
}

struct ServerInfo {
  std::string model_name;
  std::int64_t context = 0;
  std::time_t started = 0;
};

// The JSON of one streamed event (completions or chat chunk).
Json chunk_json(const Job& job, const std::string& id, const ServerInfo& info, std::time_t created, const Event& e) {
  const bool chat = job.request.endpoint == Endpoint::Chat;
  Json choice = {{"index", e.choice}, {"logprobs", nullptr}};
  choice["finish_reason"] = e.finish_reason.empty() ? Json(nullptr) : Json(e.finish_reason);
  if (chat) {
    choice["delta"] = e.has_token || !e.text.empty() ? Json{{"content", e.text}} : Json::object();
  } else {
    choice["text"] = e.text;
  }
  if (job.request.return_token_ids) choice["token_ids"] = e.has_token ? Json::array({e.token}) : Json::array();
  return Json{{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", std::int64_t(created)},
              {"model", info.model_name},
              {"choices", Json::array({choice})}};
}

Json usage_json(Job& job) {
  std::int64_t completion = 0;
  for (const Choice& c : job.choices) completion += std::int64_t(c.tokens.size());
  const std::int64_t prompt = std::int64_t(job.request.prompt.size());
  return Json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

// The whole response of a finished, non-streamed job.
Json response_json(Job& job, const std::string& id, const ServerInfo& info) {
  std::lock_guard<std::mutex> lk(job.mu);
  const bool chat = job.request.endpoint == Endpoint::Chat;
  Json choices = Json::array();
  for (std::size_t i = 0; i < job.choices.size(); ++i) {
    const Choice& c = job.choices[i];
    Json ch = {{"index", i}, {"finish_reason", c.finish_reason}, {"logprobs", nullptr}};
    if (chat) ch["message"] = {{"role", "assistant"}, {"content", c.text.text()}};
    else ch["text"] = c.text.text();
    if (job.request.return_token_ids) ch["token_ids"] = c.tokens;
    choices.push_back(ch);
  }
  return Json{{"id", id},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", std::int64_t(std::time(nullptr))},
              {"model", info.model_name},
              {"choices", choices},
              {"usage", usage_json(job)}};
}

// cpp-httplib 0.11 listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG,
// fixed when Debian compiled the library): 64 clients connecting at once
// overflow it, the kernel drops their handshakes and they stall for a SYN
// retransmission or fail. Listening again on the same socket only raises
// the backlog; the library does not expose the socket, so find it: the
// process's listening socket on our port.
void raise_listen_backlog(int port) {
  for (int fd = 3; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    const int p = addr.ss_family == AF_INET    ? ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port)
                  : addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                               : -1;
    if (p == port) listen(fd, SOMAXCONN);
  }
}

std::string sse(const Json& j) { return "data: " + j.dump() + "\n\n"; }

// Streams a job as server-sent events. The provider blocks on the job for
// at most 200 ms at a time; a failed write means the client is gone, and
// the releaser then cancels what is still running.
void stream_job(httplib::Response& res, std::shared_ptr<Job> job, std::string id, const ServerInfo& info,
                EngineLoop& loop) {
  res.set_header("Cache-Control", "no-cache");
  auto cursor = std::make_shared<std::size_t>(0);
  auto opened = std::make_shared<bool>(false);
  const std::time_t created = std::time(nullptr);
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, id, &info, created, cursor, opened](std::size_t, httplib::DataSink& sink) {
        std::string out;
        if (!*opened && job->request.endpoint == Endpoint::Chat) {
          // OpenAI's first chat chunk of each choice carries the role.
          for (int i = 0; i < job->request.n; ++i) {
            Json j = chunk_json(*job, id, info, created, Event{i, false, 0, "", ""});
            j["choices"][0]["delta"] = {{"role", "assistant"}, {"content", ""}};
            out += sse(j);
          }
        }
        *opened = true;
        std::vector<Event> events;
        const bool done = job->wait_events(*cursor, events, std::chrono::milliseconds(200));
        for (const Event& e : events) out += sse(chunk_json(*job, id, info, created, e));
        if (done) {
          std::lock_guard<std::mutex> lk(job->mu);
          if (!job->error.empty())
            out += sse(error_json(ApiError(500, "the engine refused the request: " + job->error, "", "server_error")));
        }
        if (done && job->request.include_usage) {
          Json u = chunk_json(*job, id, info, created, Event{});
          u["choices"] = Json::array();
          {
            std::lock_guard<std::mutex> lk(job->mu);
            u["usage"] = usage_json(*job);
          }
          out += sse(u);
        }
        if (done) out += "data: [DONE]\n\n";
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;
        if (done) sink.done();
        return true;
      },
      [job, &loop](bool) {
        if (!job->done()) loop.cancel(*job);
      });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"An OpenAI-compatible HTTP server on fastinfer's Engine"};
  std::string model_spec, tokenizer_path, host = "127.0.0.1", served_name, chat_template = "auto", weights;
  int port = 8080, threads = 1, http_threads = 128, max_seqs = 64, budget = 256, block_size = 16,
      kv_blocks = 0, max_queue = 256;
  fastinfer::examples::EngineSpecFlags spec;
  double grace = 10.0;
  bool no_prefix_cache = false, debug_endpoints = false;
  Limits lim;
  app.add_option("--model", model_spec, "llama2.c .bin, .gguf or Hugging Face directory")->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer.json, .gguf or llama2.c tokenizer.bin (default: the model's)");
  app.add_option("--host", host, "address to listen on")->capture_default_str();
  app.add_option("--port", port, "port (0: any free port; the chosen one is printed)")
      ->check(CLI::Range(0, 65535))->capture_default_str();
  app.add_option("--served-model-name", served_name, "model id in responses (default: the model file's name)");
  app.add_option("--chat-template", chat_template, "auto (the model's, if recognised), plain, chatml, llama2")
      ->check(CLI::IsMember({"auto", "plain", "chatml", "llama2"}))->capture_default_str();
  app.add_option("--weights", weights, "convert weights at load")->check(CLI::IsMember(fastinfer::examples::weight_choices()));
  app.add_option("--threads", threads, "CPU threads of the forward pass")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--http-threads", http_threads, "HTTP worker threads (each open connection holds one)")
      ->check(CLI::Range(2, 100000))->capture_default_str();
  app.add_option("--max-seqs", max_seqs, "most running sequences")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--max-queue", max_queue, "requests that may wait beyond --max-seqs; more get HTTP 429")
      ->check(CLI::Range(0, 1 << 24))->capture_default_str();
  app.add_option("--max-tokens-per-step", budget, "token budget of one engine step")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--block-size", block_size, "KV block size in tokens")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  app.add_option("--kv-blocks", kv_blocks, "KV pool in blocks (0: --max-seqs full contexts)")->capture_default_str();
  app.add_flag("--no-prefix-cache", no_prefix_cache, "do not reuse the KV of shared prefixes");
  spec.add_to(app, {"none", "prompt-lookup", "eagle", "mtp", "medusa", "lookahead"},
              "speculation of every request");
  app.add_option("--max-body-bytes", lim.max_body_bytes, "largest request body")->capture_default_str();
  app.add_option("--max-prompt-tokens", lim.max_prompt_tokens, "longest prompt (0: the context - 1)")->capture_default_str();
  app.add_option("--max-tokens-limit", lim.max_tokens, "largest max_tokens (0: the context)")->capture_default_str();
  app.add_option("--max-n", lim.max_n, "largest n (choices per request)")->check(CLI::Range(1, 128))->capture_default_str();
  app.add_option("--shutdown-grace", grace, "seconds in-flight requests get to finish after SIGTERM")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  app.add_flag("--enable-debug-endpoints", debug_endpoints,
               "GET /debug/kv (KV pool books) and POST /debug/drop_prefix_cache, for tests");
  int step_delay_ms = 0;
  app.add_option("--debug-step-delay-ms", step_delay_ms, "tests: pause after every engine step")
      ->check(CLI::Range(0, 10000));
  CLI11_PARSE(app, argc, argv);

  // SIGTERM / SIGINT are taken by one thread (sigwait), so every thread
  // created from here on must block them; a write to a closed socket
  // must not kill the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Every connection waiting for a worker holds a descriptor: take the
  // hard limit, not the (often 1024) soft one, so that a burst of clients
  // gets 429s rather than failed accepts.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }

  try {
    spec.check();  // before the model loads: a bad flag costs no load
    fastinfer::LoadOptions load;
    if (!weights.empty()) load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    load.threads = threads;
    fastinfer::LlamaWeights lw = fastinfer::load_model(model_spec, load);
    const fastinfer::LlamaConfig cfg = lw.config;
    fastinfer::ModelOptions mo;
    mo.threads = threads;
    mo.max_batch = std::min(budget, cfg.max_seq_len);
    mo.kv.layout = fastinfer::KVLayoutKind::Paged;
    mo.kv.block_size = block_size;
    mo.kv.max_sequences = max_seqs;
    mo.kv.num_blocks = kv_blocks;
    fastinfer::LlamaModel<> model(std::move(lw), mo);
    const auto tok = load_tokenizer(model_spec, tokenizer_path);

    ChatFormat chat = ChatFormat::Plain;
    if (chat_template == "auto") chat = detect_chat_format(model_chat_template(model_spec));
    else if (chat_template == "chatml") chat = ChatFormat::ChatML;
    else if (chat_template == "llama2") chat = ChatFormat::Llama2;

    fastinfer::engine::EngineConfig ec;
    ec.scheduler.max_seqs = max_seqs;
    ec.scheduler.max_tokens_per_step = budget;
    ec.prefix_cache = !no_prefix_cache;
    spec.apply(ec, cfg);
    fastinfer::engine::Engine<> engine(model, ec);
    lim.context = cfg.max_seq_len;
    lim.vocab_size = cfg.vocab_size;

    ServerInfo info;
    info.model_name = !served_name.empty() ? served_name : fs::path(model_spec).filename().string();
    if (info.model_name.empty()) info.model_name = fs::path(model_spec).parent_path().filename().string();
    info.context = cfg.max_seq_len;
    info.started = std::time(nullptr);

    EngineLoop loop(engine, tok.get(), std::int64_t(max_seqs) + max_queue);
    loop.set_step_delay(std::chrono::milliseconds(step_delay_ms));
    loop.start();
    std::atomic<bool> shutting_down{false};
    std::atomic<std::uint64_t> next_id{1};

    httplib::Server svr;
    svr.new_task_queue = [http_threads] { return new httplib::ThreadPool(std::size_t(http_threads)); };
    // One byte over the limit is enough to refuse; httplib then skips the
    // rest of the body and answers 413, which the error handler rewrites.
    svr.set_payload_max_length(lim.max_body_bytes);
    svr.set_keep_alive_timeout(2);

    auto completion = [&](Endpoint endpoint) {
      return [&, endpoint](const httplib::Request& req, httplib::Response& res) {
        try {
          if (shutting_down.load()) throw ApiError(503, "the server is shutting down", "", "server_error");
          CompletionRequest r = parse_completion_request(req.body, endpoint, tok.get(), chat, lim);
          auto job = std::make_shared<Job>(std::move(r));
          if (!loop.submit(job))
            throw ApiError(429, "the server's queue is full (" + std::to_string(max_seqs + max_queue) +
                                    " requests); retry later", "", "rate_limit_error");
          const std::string id = (endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
          if (job->request.stream) {
            stream_job(res, job, id, info, loop);
            return;
          }
          job->wait_done();
          if (!job->error.empty())
            throw ApiError(500, "the engine refused the request: " + job->error, "", "server_error");
          send_json(res, 200, response_json(*job, id, info));
        } catch (const ApiError& e) {
          send_error(res, e);
        }
      };
    };
    svr.Post("/v1/completions", completion(Endpoint::Completions));
    svr.Post("/v1/chat/completions", completion(Endpoint::Chat));
    svr.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200,
                Json{{"object", "list"},
                     {"data", Json::array({Json{{"id", info.model_name},
                                                {"object", "model"},
                                                {"created", std::int64_t(info.started)},
                                                {"owned_by", "fastinfer"},
                                                {"max_model_len", info.context}}})}});
    });
    svr.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
      if (shutting_down.load()) send_json(res, 503, Json{{"status", "shutting_down"}});
      else send_json(res, 200, Json{{"status", "ok"}});
    });
    svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
      res.set_content(loop.metrics_text(), "text/plain; version=0.0.4");
    });
    if (debug_endpoints) {
      svr.Get("/debug/kv", [&](const httplib::Request&, httplib::Response& res) { send_json(res, 200, loop.kv_state()); });
      svr.Post("/debug/drop_prefix_cache", [&](const httplib::Request&, httplib::Response& res) {
        loop.drop_prefix_cache();
        send_json(res, 200, loop.kv_state());
      });
    }
    // Routing misses, oversized bodies and the like, as OpenAI error objects.
    svr.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413) {
        send_error(res, ApiError(400, "request body exceeds the limit of " + std::to_string(lim.max_body_bytes) +
                                          " bytes", "body"));
        return;
      }
      send_json(res, res.status, error_json(res.status == 404 ? "no route " + req.method + " " + req.path
                                                              : "HTTP " + std::to_string(res.status),
                                            "invalid_request_error", ""));
    });
    svr.set_exception_handler([&](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, what, "", "server_error"));
    });

    const int bound = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
    if (bound < 0) {
      std::fprintf(stderr, "fastinfer-server: error: cannot listen on %s:%d\n", host.c_str(), port);
      return 1;
    }
    raise_listen_backlog(bound);
    std::printf("fastinfer-server: model %s (%s chat format), listening on http://%s:%d\n", info.model_name.c_str(),
                chat_format_name(chat), host.c_str(), bound);
    std::fflush(stdout);

    std::thread signals([&] {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      shutting_down.store(true);
      std::fprintf(stderr, "fastinfer-server: signal %d: finishing %lld in-flight requests (%.1f s grace)\n", sig,
                   (long long)loop.outstanding(), grace);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace);
      while (loop.outstanding() > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      loop.cancel_all();
      // Streams of cancelled jobs end with their "abort" chunk; give them a
      // moment to be written before the listener closes.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      svr.stop();
    });
    const bool ok = svr.listen_after_bind();
    if (!shutting_down.load()) {
      // The listener failed on its own: wake the signal thread to end it.
      pthread_kill(signals.native_handle(), SIGTERM);
    }
    signals.join();
    loop.stop();
    std::fprintf(stderr, "fastinfer-server: stopped\n");
    return ok || shutting_down.load() ? 0 : 1;
  } catch (const fastinfer::Error& e) {
    std::fprintf(stderr, "fastinfer-server: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fastinfer-server: error: %s\n", e.what());
    return 1;
  }
}
