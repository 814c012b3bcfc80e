// Reading the golden generation cases of ../shared/golden: cases/*.txt
// (stories260K) and tinystories-656k/cases/*.txt. Both are "key: value" lines
// ('#' starts a comment): prompt and continuation are token ids, text fields
// are escaped (\n, \t, \r, \\), stopped_by is eos | max_new_tokens | seq_len.
// Also the ordered "key: value" fields of the tokenizer goldens
// (tinystories-656k/tokenizer.txt, tokenizer_decode.txt). The one reader
// of these files, for the example programs (kv-eval) and the tests
// (tests/support/golden.hpp re-exports it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fastinfer::examples {

struct GoldenCase {
  std::string name;  // file stem
  std::string text, continuation_text, stopped_by;
  std::vector<std::int32_t> prompt, continuation;
  int max_new_tokens = 0;

  // prompt followed by continuation: the sequence a greedy run produced.
  std::vector<std::int32_t> sequence() const {
    std::vector<std::int32_t> all = prompt;
    all.insert(all.end(), continuation.begin(), continuation.end());
    return all;
  }
};

inline std::string golden_unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

inline std::vector<std::int32_t> golden_ids(const std::string& s) {
  std::vector<std::int32_t> ids;
  std::istringstream in(s);
  for (long v; in >> v;) ids.push_back(std::int32_t(v));
  return ids;
}

inline GoldenCase read_golden_case(const std::filesystem::path& path) {
  GoldenCase c;
  c.name = path.stem().string();
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read golden case " + path.string());
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos)
      throw std::runtime_error("golden case " + path.string() + ": line without a key: " + line);
    const std::string key = line.substr(0, colon);
    std::string value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    if (key == "text") c.text = golden_unescape(value);
    else if (key == "prompt") c.prompt = golden_ids(value);
    else if (key == "continuation") c.continuation = golden_ids(value);
    else if (key == "continuation_text") c.continuation_text = golden_unescape(value);
    else if (key == "max_new_tokens") c.max_new_tokens = std::stoi(value);
    else if (key == "stopped_by") c.stopped_by = value.substr(0, value.find_last_not_of(" \r") + 1);
  }
  if (c.prompt.empty()) throw std::runtime_error("golden case " + path.string() + " has no prompt");
  return c;
}

// Every *.txt case of `dir`, sorted by name.
inline std::vector<GoldenCase> read_golden_cases(const std::filesystem::path& dir) {
  std::vector<GoldenCase> cases;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().extension() == ".txt") cases.push_back(read_golden_case(entry.path()));
  std::sort(cases.begin(), cases.end(), [](const GoldenCase& a, const GoldenCase& b) { return a.name < b.name; });
  return cases;
}

// The "key: value" lines of `path`, in order; the value keeps trailing spaces
// (and is not unescaped), a bare "key:" line gives an empty value, lines
// without ": " are skipped.
inline std::vector<std::pair<std::string, std::string>> read_golden_fields(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read golden file " + path.string());
  std::vector<std::pair<std::string, std::string>> out;
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(": ");
    if (colon == std::string::npos) {
      if (!line.empty() && line.back() == ':') out.emplace_back(line.substr(0, line.size() - 1), "");
      continue;
    }
    out.emplace_back(line.substr(0, colon), line.substr(colon + 2));
  }
  return out;
}

}  // namespace fastinfer::examples
