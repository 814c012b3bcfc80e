// Reader for Hugging Face safetensors checkpoints: one file, or several shards
// tied together by model.safetensors.index.json. Tensors are views into a
// read-only memory map (zero copy); every offset, shape and dtype in the header
// is checked against the file before any view is handed out, so a corrupt or
// hostile file ends in a FormatError, never in a read outside the file.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {string: string}}, then the data section, to
// which the offsets are relative.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer {

// One tensor of a safetensors file: where its bytes are and what they hold.
struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;            // as written in the header: "F32", "BF16", "I64", ...
  std::vector<std::int64_t> shape;   // empty for a scalar
  const std::uint8_t* data = nullptr;
  std::uint64_t nbytes = 0;
  std::uint64_t file_offset = 0;     // absolute offset of the first byte in its file
  const std::string* path = nullptr; // the file it lives in (owned by its SafetensorsFile)

  // Validated to fit: the bytes it needs lie in the file (a zero dimension
  // short-circuits, so huge neighbours of it cannot overflow the product).
  std::int64_t numel() const {
    for (auto d : shape)
      if (d == 0) return 0;
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  // Whether fastinfer can compute with it (F32, F16, BF16).
  bool has_supported_dtype() const {
    return dtype_name == "F32" || dtype_name == "F16" || dtype_name == "BF16";
  }
  // The dtype as fastinfer's DType; FormatError for the ones we cannot use.
  DType dtype() const {
    if (dtype_name == "F32") return DType::F32;
    if (dtype_name == "F16") return DType::F16;
    if (dtype_name == "BF16") return DType::BF16;
    throw_error<FormatError>(*path, ": tensor '", name, "' has dtype ", dtype_name,
                             ", which fastinfer cannot use (F32, F16 and BF16 only)");
  }
};

namespace detail {

// Bytes per element of every dtype the safetensors format defines, so that we
// can check the byte count of tensors we will never compute with; 0: unknown.
inline std::uint64_t safetensors_dtype_size(std::string_view d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "BOOL" || d == "U8" || d == "I8" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

// Parses JSON, turning every nlohmann error into a FormatError naming `what`.
// Nesting deeper than `max_depth` is refused while parsing, so a header of a
// million '[' costs neither a deep recursion nor a huge tree.
inline nlohmann::json parse_json_limited(const char* begin, const char* end, const std::string& what,
                                         int max_depth = 16) {
  try {
    return nlohmann::json::parse(
        begin, end,
        [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
          if (depth > max_depth)
            throw_error<FormatError>(what, ": JSON nested deeper than ", max_depth, " levels");
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    throw_error<FormatError>(what, ": invalid JSON: ", e.what());
  }
}

// Reads a non-negative JSON integer, or throws naming the field.
inline std::uint64_t safetensors_json_u64(const nlohmann::json& v, const std::string& where) {
  FASTINFER_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0),
                  FormatError, where, " must be a non-negative integer, got ", v.dump());
  return v.get<std::uint64_t>();
}

}  // namespace detail

// One .safetensors file, memory-mapped. Copies share the map.
class SafetensorsFile {
 public:
  // Headers above this are refused (the reference implementation's limit):
  // a real header is a few hundred bytes per tensor.
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  // Throws FormatError naming the file and the problem.
  static SafetensorsFile open(const std::string& path) { return SafetensorsFile(MappedFile::open(path)); }
  explicit SafetensorsFile(std::shared_ptr<const MappedFile> file) : state_(std::make_shared<State>()) {
    state_->file = std::move(file);
    parse();
  }

  const std::string& path() const { return state_->file->path(); }
  std::size_t size() const { return tensors().size(); }
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  const SafetensorsTensor* find(const std::string& name) const {
    auto it = tensors().find(name);
    return it == tensors().end() ? nullptr : &it->second;
  }
  // FormatError naming the file and the tensor when it is absent.
  const SafetensorsTensor& tensor(const std::string& name) const {
    const SafetensorsTensor* t = find(name);
    FASTINFER_CHECK(t != nullptr, FormatError, path(), ": no tensor named '", name, "'");
    return *t;
  }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return state_->tensors; }
  // The free-form "__metadata__" strings (non-string values are skipped).
  const std::map<std::string, std::string>& metadata() const { return state_->metadata; }
  // Owner of the memory every tensor points into.
  KeepAlive keep_alive() const { return state_; }

 private:
  struct State {
    std::shared_ptr<const MappedFile> file;
    std::map<std::string, SafetensorsTensor> tensors;
    std::map<std::string, std::string> metadata;
  };

  void parse() {
    const MappedFile& f = *state_->file;
    const std::string& p = f.path();
    FASTINFER_CHECK(f.size() >= 8, FormatError, p, ": ", f.size(),
                    " bytes is too short for a safetensors file (8-byte header length missing)");
    std::uint64_t n = 0;
    const std::uint8_t* len_bytes = f.at(0, 8, "header length");
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    FASTINFER_CHECK(n <= kMaxHeaderBytes, FormatError, p, ": header length ", n,
                    " is absurd (limit ", kMaxHeaderBytes, " bytes)");
    FASTINFER_CHECK(n <= f.size() - 8, FormatError, p, ": header length ", n,
                    " runs past the end of the file (", f.size(), " bytes)");
    FASTINFER_CHECK(n >= 2, FormatError, p, ": header length ", n, " cannot hold a JSON object");
    const char* h = reinterpret_cast<const char*>(f.at(8, n, "JSON header"));
    const nlohmann::json header = detail::parse_json_limited(h, h + n, p + ": header");
    FASTINFER_CHECK(header.is_object(), FormatError, p, ": header is not a JSON object but ",
                    header.type_name());

    const std::uint64_t data_start = 8 + n;
    const std::uint64_t data_size = f.size() - data_start;
    std::map<std::string, SafetensorsTensor> tensors;
    std::map<std::string, std::string> metadata;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        FASTINFER_CHECK(v.is_object() || v.is_null(), FormatError, p,
                        ": __metadata__ is not an object but ", v.type_name());
        if (v.is_object())
          for (auto m = v.begin(); m != v.end(); ++m)
            if (m.value().is_string()) metadata[m.key()] = m.value().get<std::string>();
        continue;
      }
      const std::string where = p + ": tensor '" + name + "'";
      FASTINFER_CHECK(v.is_object(), FormatError, where, " is not a JSON object but ", v.type_name());
      auto dt = v.find("dtype");
      auto sh = v.find("shape");
      auto off = v.find("data_offsets");
      FASTINFER_CHECK(dt != v.end() && dt->is_string(), FormatError, where, " has no string \"dtype\"");
      FASTINFER_CHECK(sh != v.end() && sh->is_array(), FormatError, where, " has no array \"shape\"");
      FASTINFER_CHECK(off != v.end() && off->is_array() && off->size() == 2, FormatError, where,
                      " has no \"data_offsets\" pair");

      SafetensorsTensor t;
      t.name = name;
      t.dtype_name = dt->get<std::string>();
      const std::uint64_t elem = detail::safetensors_dtype_size(t.dtype_name);
      FASTINFER_CHECK(elem != 0, FormatError, where, " has unknown dtype '", t.dtype_name, "'");
      // Element count with overflow checks: a count that does not fit in 64
      // bits cannot match any byte range, and must not wrap around into one.
      std::uint64_t count = 1;
      bool overflow = false, empty = false;
      for (const auto& d : *sh) {
        const std::uint64_t dim = detail::safetensors_json_u64(d, where + " shape entry");
        FASTINFER_CHECK(dim <= std::uint64_t(std::numeric_limits<std::int64_t>::max()), FormatError,
                        where, " has dimension ", dim, " beyond int64");
        t.shape.push_back(std::int64_t(dim));
        if (dim == 0)
          empty = true;
        else if (count > std::numeric_limits<std::uint64_t>::max() / dim)
          overflow = true;
        else
          count *= dim;
      }
      if (empty) count = 0, overflow = false;
      overflow = overflow || count > std::numeric_limits<std::uint64_t>::max() / elem;
      const std::uint64_t begin = detail::safetensors_json_u64((*off)[0], where + " data_offsets[0]");
      const std::uint64_t end = detail::safetensors_json_u64((*off)[1], where + " data_offsets[1]");
      FASTINFER_CHECK(begin <= end, FormatError, where, " has data_offsets [", begin, ", ", end,
                      "] that run backwards");
      FASTINFER_CHECK(end <= data_size, FormatError, where, " has data_offsets [", begin, ", ", end,
                      "] beyond the data section (", data_size, " bytes)");
      FASTINFER_CHECK(!overflow && count * elem == end - begin, FormatError, where, ": dtype ",
                      t.dtype_name, " and shape ", shape_string(t.shape), " need ",
                      overflow ? std::string("more than 2^64") : std::to_string(count * elem),
                      " bytes but data_offsets [", begin, ", ", end, "] hold ", end - begin);
      t.nbytes = end - begin;
      t.file_offset = data_start + begin;
      t.data = f.at(t.file_offset, t.nbytes, "tensor data");
      t.path = &f.path();
      tensors.emplace(name, std::move(t));
    }

    // No two tensors may share bytes: a writer never does it, and a reader
    // that allowed it would let one corrupt entry alias another.
    std::vector<const SafetensorsTensor*> by_offset;
    by_offset.reserve(tensors.size());
    for (const auto& kv : tensors)
      if (kv.second.nbytes > 0) by_offset.push_back(&kv.second);
    std::sort(by_offset.begin(), by_offset.end(),
              [](auto* a, auto* b) { return a->file_offset < b->file_offset; });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
      const auto* a = by_offset[i - 1];
      const auto* b = by_offset[i];
      FASTINFER_CHECK(a->file_offset + a->nbytes <= b->file_offset, FormatError, p, ": tensors '",
                      a->name, "' and '", b->name, "' overlap");
    }
    state_->tensors = std::move(tensors);
    state_->metadata = std::move(metadata);
  }

  static std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }

  std::shared_ptr<State> state_;
};

// A whole checkpoint: a single .safetensors file or the shards named by a
// model.safetensors.index.json. Lookups go through the index's weight_map, so
// the same tensor name finds its shard.
class SafetensorsCheckpoint {
 public:
  // `path` is a .safetensors file, a *.index.json, or a directory holding
  // model.safetensors or model.safetensors.index.json (the index wins).
  static SafetensorsCheckpoint open(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    fs::path p = path;
    if (fs::is_directory(p)) {
      if (fs::exists(p / "model.safetensors.index.json"))
        p = p / "model.safetensors.index.json";
      else if (fs::exists(p / "model.safetensors"))
        p = p / "model.safetensors";
      else
        throw_error<FormatError>(path.string(),
                                 ": neither model.safetensors nor model.safetensors.index.json found");
    }
    const std::string s = p.string();
    if (s.size() >= 5 && s.compare(s.size() - 5, 5, ".json") == 0) return open_index(p);
    SafetensorsCheckpoint c;
    c.shards_.push_back(SafetensorsFile::open(s));
    for (const auto& kv : c.shards_[0].tensors()) c.index_.emplace(kv.first, &kv.second);
    return c;
  }

  const SafetensorsTensor* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second;
  }
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  const SafetensorsTensor& tensor(const std::string& name) const {
    const SafetensorsTensor* t = find(name);
    FASTINFER_CHECK(t != nullptr, FormatError, describe(), ": missing tensor '", name, "'");
    return *t;
  }
  // Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(index_.size());
    for (const auto& kv : index_) out.push_back(kv.first);
    return out;
  }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // "__metadata__" of the first shard (where writers put it).
  const std::map<std::string, std::string>& metadata() const { return shards_.front().metadata(); }
  // The owners of every mapped shard, for LlamaWeights::storage.
  std::vector<KeepAlive> storage() const {
    std::vector<KeepAlive> out;
    for (const auto& s : shards_) out.push_back(s.keep_alive());
    return out;
  }

 private:
  SafetensorsCheckpoint() = default;

  std::string describe() const {
    return index_path_.empty() ? shards_.front().path() : index_path_;
  }

  static SafetensorsCheckpoint open_index(const std::filesystem::path& index_path) {
    namespace fs = std::filesystem;
    SafetensorsCheckpoint c;
    c.index_path_ = index_path.string();
    auto map = MappedFile::open(c.index_path_);
    const char* b = reinterpret_cast<const char*>(map->data());
    const nlohmann::json j = detail::parse_json_limited(b, b + map->size(), c.index_path_);
    FASTINFER_CHECK(j.is_object(), FormatError, c.index_path_, ": not a JSON object");
    auto wm = j.find("weight_map");
    FASTINFER_CHECK(wm != j.end() && wm->is_object() && !wm->empty(), FormatError, c.index_path_,
                    ": no \"weight_map\" object");
    // Open each shard once, in the order the index first names it.
    std::map<std::string, std::size_t> shard_of_file;
    std::vector<std::pair<std::string, std::size_t>> wanted;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      FASTINFER_CHECK(it.value().is_string(), FormatError, c.index_path_, ": weight_map entry '",
                      it.key(), "' is not a file name");
      const std::string file = it.value().get<std::string>();
      // Shards live beside the index: refuse anything that would leave it.
      const fs::path rel(file);
      bool escapes = file.empty() || rel.is_absolute();
      for (const auto& part : rel) escapes = escapes || part == "..";
      FASTINFER_CHECK(!escapes, FormatError, c.index_path_, ": shard name '", file,
                      "' is not a file beside the index");
      auto [pos, inserted] = shard_of_file.emplace(file, c.shards_.size());
      if (inserted) c.shards_.push_back(SafetensorsFile::open((index_path.parent_path() / rel).string()));
      wanted.emplace_back(it.key(), pos->second);
    }
    for (const auto& [name, shard] : wanted) {
      const SafetensorsTensor* t = c.shards_[shard].find(name);
      FASTINFER_CHECK(t != nullptr, FormatError, c.index_path_, ": tensor '", name,
                      "' is listed in weight_map but missing from ", c.shards_[shard].path());
      c.index_.emplace(name, t);
    }
    return c;
  }

  std::string index_path_;
  std::vector<SafetensorsFile> shards_;  // tensors point into their shared State, stable across moves
  std::map<std::string, const SafetensorsTensor*> index_;
};

}  // namespace fastinfer
