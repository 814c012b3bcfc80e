// Prometheus text exposition (format 0.0.4) for fastinfer-server's /metrics:
// a cumulative histogram and a writer of HELP/TYPE/sample lines. Enough for
// the handful of series one server exports; no client library needed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace fastinfer_server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size(), 0) {}

  void observe(double v) {
    for (std::size_t i = 0; i < bounds_.size(); ++i)
      if (v <= bounds_[i]) ++counts_[i];
    ++count_;
    sum_ += v;
  }

  const std::vector<double>& bounds() const { return bounds_; }
  const std::vector<std::uint64_t>& cumulative_counts() const { return counts_; }
  std::uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;  // observations <= bounds_[i]
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

// Latency buckets in seconds: 1 ms to 60 s, roughly x2.5 apart.
inline std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

class PrometheusText {
 public:
  void gauge(const char* name, const char* help, double v) { scalar_(name, help, "gauge", v); }
  void counter(const char* name, const char* help, double v) { scalar_(name, help, "counter", v); }

  // One counter family with a label per sample: {label="value"} v.
  void counter_family(const char* name, const char* help, const char* label,
                      const std::vector<std::pair<std::string, double>>& samples) {
    header_(name, help, "counter");
    for (const auto& s : samples) out_ += std::string(name) + "{" + label + "=\"" + s.first + "\"} " + num_(s.second) + "\n";
  }

  void histogram(const char* name, const char* help, const Histogram& h) {
    header_(name, help, "histogram");
    for (std::size_t i = 0; i < h.bounds().size(); ++i)
      out_ += std::string(name) + "_bucket{le=\"" + num_(h.bounds()[i]) + "\"} " +
              std::to_string(h.cumulative_counts()[i]) + "\n";
    out_ += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count()) + "\n";
    out_ += std::string(name) + "_sum " + num_(h.sum()) + "\n";
    out_ += std::string(name) + "_count " + std::to_string(h.count()) + "\n";
  }

  const std::string& str() const { return out_; }

 private:
  void header_(const char* name, const char* help, const char* type) {
    out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void scalar_(const char* name, const char* help, const char* type, double v) {
    header_(name, help, type);
    out_ += std::string(name) + " " + num_(v) + "\n";
  }
  static std::string num_(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
  }
  std::string out_;
};

}  // namespace fastinfer_server
