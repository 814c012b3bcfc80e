// The GGUF container (versions 2 and 3): a reader that memory-maps the file
// and hands out zero-copy views of its tensors, and a writer that produces
// what the reader reads. Model-specific meaning (Llama keys and tensor names)
// lives in gguf_loader.hpp; this header knows only the container.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count,
// kv_count x (string key, u32 type, value), tensor_count x (string name,
// u32 n_dims, u64 dims[n_dims] (ne0 = fastest varying first), u32 type,
// u64 offset), padding to `general.alignment` (default 32), data section.
// A string is u64 length + bytes; an array is u32 element type, u64 count,
// elements.
//
// The file is hostile until proven otherwise: every count and length is
// checked against the bytes left in the file BEFORE anything is allocated, so
// a corrupt header costs at most a small multiple of the file's size, and
// every read goes through MappedFile::at.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::gguf {

enum class ValueType : std::uint32_t {
  UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6,
  Bool = 7, String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
};

// The ggml tensor types we read; anything else is rejected by name/number.
enum class TensorType : std::uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

inline constexpr std::uint32_t kMagic = 0x46554747u;  // "GGUF" read as little-endian u32
inline constexpr std::uint64_t kDefaultAlignment = 32;

constexpr std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UInt8: return "u8";
    case ValueType::Int8: return "i8";
    case ValueType::UInt16: return "u16";
    case ValueType::Int16: return "i16";
    case ValueType::UInt32: return "u32";
    case ValueType::Int32: return "i32";
    case ValueType::Float32: return "f32";
    case ValueType::Bool: return "bool";
    case ValueType::String: return "string";
    case ValueType::Array: return "array";
    case ValueType::UInt64: return "u64";
    case ValueType::Int64: return "i64";
    case ValueType::Float64: return "f64";
  }
  return "?";
}

// Size in bytes of a scalar value type; 0 for String and Array; -1 if unknown.
constexpr int scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UInt8: case ValueType::Int8: case ValueType::Bool: return 1;
    case ValueType::UInt16: case ValueType::Int16: return 2;
    case ValueType::UInt32: case ValueType::Int32: case ValueType::Float32: return 4;
    case ValueType::UInt64: case ValueType::Int64: case ValueType::Float64: return 8;
    case ValueType::String: case ValueType::Array: return 0;
  }
  return -1;
}

inline bool is_known_tensor_type(std::uint32_t t) { return t == 0 || t == 1 || t == 8 || t == 30; }

inline DType to_dtype(TensorType t) {
  switch (t) {
    case TensorType::F32: return DType::F32;
    case TensorType::F16: return DType::F16;
    case TensorType::BF16: return DType::BF16;
    case TensorType::Q8_0: return DType::Q8_0;
  }
  return DType::F32;
}
inline TensorType from_dtype(DType t) {
  switch (t) {
    case DType::F32: return TensorType::F32;
    case DType::F16: return TensorType::F16;
    case DType::BF16: return TensorType::BF16;
    case DType::Q8_0: return TensorType::Q8_0;
  }
  return TensorType::F32;
}

// One metadata value. Strings and scalar arrays point into the mapped file
// (zero copy); the GgufFile that produced a Value must outlive it.
struct Value {
  ValueType type = ValueType::UInt8;
  std::uint64_t uint_value = 0;   // unsigned integers and bool
  std::int64_t int_value = 0;     // signed integers
  double float_value = 0.0;       // f32 / f64
  std::string_view string_value;  // String
  // Array: element type and count; scalar elements stay packed in the file.
  ValueType element_type = ValueType::UInt8;
  std::uint64_t count = 0;
  const std::uint8_t* elements = nullptr;   // scalar element arrays
  std::vector<std::string_view> strings;    // element_type == String
  std::vector<Value> arrays;                // element_type == Array (nested)

  bool is_integer() const {
    return type == ValueType::UInt8 || type == ValueType::Int8 || type == ValueType::UInt16 ||
           type == ValueType::Int16 || type == ValueType::UInt32 || type == ValueType::Int32 ||
           type == ValueType::UInt64 || type == ValueType::Int64;
  }
  bool is_signed() const {
    return type == ValueType::Int8 || type == ValueType::Int16 || type == ValueType::Int32 ||
           type == ValueType::Int64;
  }
};

struct TensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;  // ne0 (columns, fastest varying) first
  TensorType type = TensorType::F32;
  std::uint64_t offset = 0;         // relative to the data section
  std::uint64_t bytes = 0;
  const std::uint8_t* data = nullptr;  // into the mapped file

  std::uint64_t elements() const {
    std::uint64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
  // rows = product of dims[1..], cols = dims[0]: ggml's row-major view.
  MatrixView matrix() const {
    std::uint64_t rows = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
    return MatrixView{to_dtype(type), data, std::int64_t(rows), std::int64_t(dims.empty() ? 0 : dims[0])};
  }
};

namespace detail {

// Sequential bounds-checked reads from the mapped header.
class Cursor {
 public:
  explicit Cursor(const MappedFile& file) : file_(file) {}

  std::uint64_t position() const { return pos_; }
  std::uint64_t remaining() const { return file_.size() - pos_; }

  template <typename T>
  T read(const std::string& what) {
    T v;
    std::memcpy(&v, file_.at(pos_, sizeof(T), what.c_str()), sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const std::uint8_t* skip(std::uint64_t n, const std::string& what) {
    const std::uint8_t* p = file_.at(pos_, n, what.c_str());
    pos_ += n;
    return p;
  }
  std::string_view read_string(const std::string& what) {
    const auto len = read<std::uint64_t>(what + " length");
    FASTINFER_CHECK(len <= remaining(), FormatError, file_.path(), ": ", what, " length ", len,
                    " exceeds the ", remaining(), " bytes left in the file");
    const auto* p = skip(len, what);
    return std::string_view(reinterpret_cast<const char*>(p), std::size_t(len));
  }
  // Checks that `count` items of at least `min_bytes` each can fit in the rest
  // of the file, so that a hostile count never drives an allocation.
  void check_count(std::uint64_t count, std::uint64_t min_bytes, const std::string& what) const {
    FASTINFER_CHECK(min_bytes == 0 || count <= remaining() / min_bytes, FormatError, file_.path(),
                    ": ", what, " ", count, " cannot fit in the ", remaining(),
                    " bytes left in the file");
  }

 private:
  const MappedFile& file_;
  std::uint64_t pos_ = 0;
};

// Smallest encoding of one value of type t (for count checks).
inline std::uint64_t min_value_bytes(ValueType t) {
  const int s = scalar_size(t);
  if (s > 0) return std::uint64_t(s);
  return t == ValueType::String ? 8 : 12;  // string length / array type + count
}

inline constexpr int kMaxArrayNesting = 4;

inline Value read_value(Cursor& cur, ValueType type, const std::string& what, int depth,
                        const std::string& path) {
  Value v;
  v.type = type;
  switch (type) {
    case ValueType::UInt8: v.uint_value = cur.read<std::uint8_t>(what); break;
    case ValueType::Int8: v.int_value = cur.read<std::int8_t>(what); break;
    case ValueType::UInt16: v.uint_value = cur.read<std::uint16_t>(what); break;
    case ValueType::Int16: v.int_value = cur.read<std::int16_t>(what); break;
    case ValueType::UInt32: v.uint_value = cur.read<std::uint32_t>(what); break;
    case ValueType::Int32: v.int_value = cur.read<std::int32_t>(what); break;
    case ValueType::UInt64: v.uint_value = cur.read<std::uint64_t>(what); break;
    case ValueType::Int64: v.int_value = cur.read<std::int64_t>(what); break;
    case ValueType::Float32: v.float_value = cur.read<float>(what); break;
    case ValueType::Float64: v.float_value = cur.read<double>(what); break;
    case ValueType::Bool: {
      const auto b = cur.read<std::uint8_t>(what);
      FASTINFER_CHECK(b <= 1, FormatError, path, ": ", what, " is a bool with byte value ", int(b));
      v.uint_value = b;
      break;
    }
    case ValueType::String: v.string_value = cur.read_string(what); break;
    case ValueType::Array: {
      FASTINFER_CHECK(depth < kMaxArrayNesting, FormatError, path, ": ", what,
                      " nests arrays deeper than ", kMaxArrayNesting);
      const auto et = cur.read<std::uint32_t>(what + " element type");
      FASTINFER_CHECK(scalar_size(ValueType(et)) >= 0 && et <= 12, FormatError, path, ": ", what,
                      " has unknown element type ", et);
      v.element_type = ValueType(et);
      v.count = cur.read<std::uint64_t>(what + " count");
      cur.check_count(v.count, min_value_bytes(v.element_type), what + " element count");
      const int s = scalar_size(v.element_type);
      if (s > 0) {
        v.elements = cur.skip(v.count * std::uint64_t(s), what);
      } else if (v.element_type == ValueType::String) {
        v.strings.reserve(std::size_t(v.count));
        for (std::uint64_t i = 0; i < v.count; ++i) v.strings.push_back(cur.read_string(what));
      } else {
        v.arrays.reserve(std::size_t(v.count));
        for (std::uint64_t i = 0; i < v.count; ++i)
          v.arrays.push_back(read_value(cur, ValueType::Array, what, depth + 1, path));
      }
      break;
    }
    default: throw_error<FormatError>(path, ": ", what, " has unknown value type ", std::uint32_t(type));
  }
  return v;
}

template <typename T>
T load_le(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace detail

// A parsed, memory-mapped GGUF file. Tensor data is never copied.
class GgufFile {
 public:
  // Throws FormatError naming the path and the problem for anything malformed.
  static std::shared_ptr<const GgufFile> open(const std::string& path) {
    return std::shared_ptr<const GgufFile>(new GgufFile(MappedFile::open(path)));
  }
  static std::shared_ptr<const GgufFile> open(std::shared_ptr<const MappedFile> file) {
    return std::shared_ptr<const GgufFile>(new GgufFile(std::move(file)));
  }

  const std::string& path() const { return file_->path(); }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t data_offset() const { return data_offset_; }
  const std::shared_ptr<const MappedFile>& mapped_file() const { return file_; }

  // ---- metadata ----
  const std::vector<std::string>& keys() const { return key_order_; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const Value* find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  const Value& get(const std::string& key) const {
    const Value* v = find(key);
    FASTINFER_CHECK(v != nullptr, FormatError, path(), ": metadata key '", key, "' is missing");
    return *v;
  }
  // Any integer type, checked to be non-negative and to fit in 64 bits.
  std::uint64_t get_uint(const std::string& key) const {
    const Value& v = get(key);
    FASTINFER_CHECK(v.is_integer(), FormatError, path(), ": metadata key '", key,
                    "' should be an integer but is ", value_type_name(v.type));
    if (v.is_signed()) {
      FASTINFER_CHECK(v.int_value >= 0, FormatError, path(), ": metadata key '", key,
                      "' is negative (", v.int_value, ")");
      return std::uint64_t(v.int_value);
    }
    return v.uint_value;
  }
  std::uint64_t get_uint(const std::string& key, std::uint64_t fallback) const {
    return has(key) ? get_uint(key) : fallback;
  }
  double get_float(const std::string& key) const {
    const Value& v = get(key);
    if (v.type == ValueType::Float32 || v.type == ValueType::Float64) return v.float_value;
    FASTINFER_CHECK(v.is_integer(), FormatError, path(), ": metadata key '", key,
                    "' should be a number but is ", value_type_name(v.type));
    return v.is_signed() ? double(v.int_value) : double(v.uint_value);
  }
  double get_float(const std::string& key, double fallback) const {
    return has(key) ? get_float(key) : fallback;
  }
  std::string get_string(const std::string& key) const {
    const Value& v = get(key);
    FASTINFER_CHECK(v.type == ValueType::String, FormatError, path(), ": metadata key '", key,
                    "' should be a string but is ", value_type_name(v.type));
    return std::string(v.string_value);
  }
  std::string get_string(const std::string& key, const std::string& fallback) const {
    return has(key) ? get_string(key) : fallback;
  }
  const std::vector<std::string_view>& get_string_array(const std::string& key) const {
    const Value& v = get(key);
    FASTINFER_CHECK(v.type == ValueType::Array && v.element_type == ValueType::String, FormatError,
                    path(), ": metadata key '", key, "' should be an array of strings");
    return v.strings;
  }
  // Numeric array elements widened to double (exact for all but huge i64/u64).
  std::vector<double> get_number_array(const std::string& key) const {
    const Value& v = get(key);
    FASTINFER_CHECK(v.type == ValueType::Array && scalar_size(v.element_type) > 0, FormatError,
                    path(), ": metadata key '", key, "' should be an array of numbers");
    std::vector<double> out(std::size_t(v.count));
    const int s = scalar_size(v.element_type);
    for (std::uint64_t i = 0; i < v.count; ++i) {
      const std::uint8_t* p = v.elements + i * std::uint64_t(s);
      double x = 0;
      switch (v.element_type) {
        case ValueType::UInt8: case ValueType::Bool: x = p[0]; break;
        case ValueType::Int8: x = std::int8_t(p[0]); break;
        case ValueType::UInt16: x = detail::load_le<std::uint16_t>(p); break;
        case ValueType::Int16: x = detail::load_le<std::int16_t>(p); break;
        case ValueType::UInt32: x = detail::load_le<std::uint32_t>(p); break;
        case ValueType::Int32: x = detail::load_le<std::int32_t>(p); break;
        case ValueType::UInt64: x = double(detail::load_le<std::uint64_t>(p)); break;
        case ValueType::Int64: x = double(detail::load_le<std::int64_t>(p)); break;
        case ValueType::Float32: x = detail::load_le<float>(p); break;
        case ValueType::Float64: x = detail::load_le<double>(p); break;
        default: break;
      }
      out[std::size_t(i)] = x;
    }
    return out;
  }

  // ---- tensors ----
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }
  const TensorInfo& tensor(const std::string& name) const {
    const TensorInfo* t = find_tensor(name);
    FASTINFER_CHECK(t != nullptr, FormatError, path(), ": tensor '", name, "' is missing");
    return *t;
  }

 private:
  explicit GgufFile(std::shared_ptr<const MappedFile> file) : file_(std::move(file)) { parse(); }

  void parse() {
    const std::string& p = file_->path();
    detail::Cursor cur(*file_);
    FASTINFER_CHECK(file_->size() >= 4, FormatError, p, ": too short to be GGUF (", file_->size(),
                    " bytes)");
    const auto magic = cur.read<std::uint32_t>("magic");
    if (magic != kMagic) {
      char m[5] = {};
      std::memcpy(m, &magic, 4);
      for (char& c : m)
        if (c != 0 && (c < 32 || c > 126)) c = '?';
      throw_error<FormatError>(p, ": not a GGUF file (magic '", m, "', expected 'GGUF')");
    }
    version_ = cur.read<std::uint32_t>("version");
    FASTINFER_CHECK(version_ == 2 || version_ == 3, FormatError, p, ": unsupported GGUF version ",
                    version_, " (supported: 2, 3",
                    version_ == 1 ? "; version 1 used 32-bit counts" : "",
                    (version_ & 0xffffu) == 0 ? "; a big-endian file?" : "", ")");
    const auto n_tensors = cur.read<std::uint64_t>("tensor count");
    const auto n_kv = cur.read<std::uint64_t>("metadata count");
    // Smallest kv: key length (8) + type (4) + 1-byte value; smallest tensor
    // info: name length (8) + n_dims (4) + type (4) + offset (8).
    cur.check_count(n_kv, 13, "metadata count");
    cur.check_count(n_tensors, 24, "tensor count");

    kv_.reserve(std::size_t(n_kv));
    key_order_.reserve(std::size_t(n_kv));
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      const std::string what = "metadata entry " + std::to_string(i);
      std::string key(cur.read_string(what + " key"));
      const auto type = cur.read<std::uint32_t>(what + " ('" + key + "') type");
      FASTINFER_CHECK(type <= 12, FormatError, p, ": metadata key '", key,
                      "' has unknown value type ", type);
      Value v = detail::read_value(cur, ValueType(type), "metadata '" + key + "'", 0, p);
      FASTINFER_CHECK(kv_.count(key) == 0, FormatError, p, ": metadata key '", key,
                      "' appears twice");
      key_order_.push_back(key);
      kv_.emplace(std::move(key), std::move(v));
    }

    alignment_ = kDefaultAlignment;
    if (const Value* a = find("general.alignment")) {
      FASTINFER_CHECK(a->is_integer(), FormatError, p, ": general.alignment should be an integer");
      const std::uint64_t al = a->is_signed() ? std::uint64_t(a->int_value) : a->uint_value;
      FASTINFER_CHECK(al != 0 && (al & (al - 1)) == 0 && al <= (1u << 20), FormatError, p,
                      ": general.alignment ", al, " is not a power of two up to 1 MiB");
      alignment_ = al;
    }

    tensors_.reserve(std::size_t(n_tensors));
    tensor_index_.reserve(std::size_t(n_tensors));
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      const std::string what = "tensor " + std::to_string(i);
      TensorInfo t;
      t.name = std::string(cur.read_string(what + " name"));
      const std::string tw = what + " ('" + t.name + "')";
      const auto n_dims = cur.read<std::uint32_t>(tw + " n_dims");
      FASTINFER_CHECK(n_dims >= 1 && n_dims <= 4, FormatError, p, ": ", tw, " has ", n_dims,
                      " dimensions (1 to 4 allowed)");
      for (std::uint32_t d = 0; d < n_dims; ++d) t.dims.push_back(cur.read<std::uint64_t>(tw + " dims"));
      const auto type = cur.read<std::uint32_t>(tw + " type");
      FASTINFER_CHECK(is_known_tensor_type(type), FormatError, p, ": ", tw,
                      " has unsupported tensor type ", type, " (supported: F32=0, F16=1, Q8_0=8, BF16=30)");
      t.type = TensorType(type);
      t.offset = cur.read<std::uint64_t>(tw + " offset");
      // Element count and byte size without overflow: every dim is bounded
      // by the file size, so the running product is checked at each step.
      std::uint64_t elements = 1;
      for (auto d : t.dims) {
        FASTINFER_CHECK(d >= 1 && d <= file_->size() && elements <= file_->size() / d * 32,
                        FormatError, p, ": ", tw, " has dimension ", d,
                        " that makes it larger than the file");
        elements *= d;
      }
      if (t.type == TensorType::Q8_0)
        FASTINFER_CHECK(t.dims[0] % 32 == 0, FormatError, p, ": ", tw, " is Q8_0 but its row length ",
                        t.dims[0], " is not a multiple of 32");
      t.bytes = t.type == TensorType::Q8_0 ? elements / 32 * 34
                : t.type == TensorType::F32 ? elements * 4 : elements * 2;
      FASTINFER_CHECK(t.offset % alignment_ == 0, FormatError, p, ": ", tw, " offset ", t.offset,
                      " is not a multiple of the alignment ", alignment_);
      FASTINFER_CHECK(tensor_index_.count(t.name) == 0, FormatError, p, ": tensor '", t.name,
                      "' appears twice");
      tensor_index_.emplace(t.name, tensors_.size());
      tensors_.push_back(std::move(t));
    }

    const std::uint64_t header_end = cur.position();
    data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
    FASTINFER_CHECK(data_offset_ <= file_->size() || n_tensors == 0, FormatError, p,
                    ": data section at ", data_offset_, " starts beyond the end of the file (",
                    file_->size(), " bytes)");
    for (TensorInfo& t : tensors_) {
      const std::uint64_t avail = file_->size() > data_offset_ ? file_->size() - data_offset_ : 0;
      FASTINFER_CHECK(t.offset <= avail && t.bytes <= avail - t.offset, FormatError, p, ": tensor '",
                      t.name, "' data [", t.offset, ", ", t.offset, " + ", t.bytes,
                      ") lies outside the data section (", avail, " bytes; truncated file?)");
      t.data = file_->at(data_offset_ + t.offset, t.bytes, "tensor data");
    }
    // No two tensors may share bytes (as safetensors.hpp): llama.cpp's writer
    // never does it, and allowing it lets one corrupt entry alias another.
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const TensorInfo& t : tensors_)
      if (t.bytes > 0) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < by_offset.size(); ++i)
      FASTINFER_CHECK(by_offset[i - 1]->offset + by_offset[i - 1]->bytes <= by_offset[i]->offset, FormatError, p,
                      ": tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name, "' overlap");
  }

  std::shared_ptr<const MappedFile> file_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = kDefaultAlignment;
  std::uint64_t data_offset_ = 0;
  std::unordered_map<std::string, Value> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
};

// Builds a GGUF (version 3) file. Metadata keeps insertion order (setting a
// key again replaces its value). Tensor data is referenced, not copied: it
// must stay alive until write() returns.
class GgufWriter {
 public:
  void set_uint32(const std::string& key, std::uint32_t v) { set_scalar(key, ValueType::UInt32, v); }
  void set_int32(const std::string& key, std::int32_t v) { set_scalar(key, ValueType::Int32, v); }
  void set_uint64(const std::string& key, std::uint64_t v) { set_scalar(key, ValueType::UInt64, v); }
  void set_float32(const std::string& key, float v) { set_scalar(key, ValueType::Float32, v); }
  void set_bool(const std::string& key, bool v) { set_scalar(key, ValueType::Bool, std::uint8_t(v)); }
  void set_string(const std::string& key, std::string_view v) {
    std::string b = type_bytes(ValueType::String);
    append_string(b, v);
    set_raw(key, std::move(b));
  }
  void set_string_array(const std::string& key, const std::vector<std::string>& v) {
    std::string b = array_header(ValueType::String, v.size());
    for (const auto& s : v) append_string(b, s);
    set_raw(key, std::move(b));
  }
  void set_float32_array(const std::string& key, const std::vector<float>& v) { set_array(key, ValueType::Float32, v); }
  void set_int32_array(const std::string& key, const std::vector<std::int32_t>& v) { set_array(key, ValueType::Int32, v); }
  // Also records general.alignment, so that readers agree.
  void set_alignment(std::uint32_t alignment) {
    FASTINFER_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0, InvalidArgument,
                    "GGUF alignment must be a power of two, got ", alignment);
    alignment_ = alignment;
    set_uint32("general.alignment", alignment);
  }

  // dims: ne0 (columns) first, as GGUF lists them.
  void add_tensor(const std::string& name, TensorType type, std::vector<std::uint64_t> dims,
                  const void* data) {
    FASTINFER_CHECK(!dims.empty() && dims.size() <= 4, InvalidArgument, "tensor '", name, "' has ",
                    dims.size(), " dimensions (1 to 4 allowed)");
    for (const auto& t : tensors_)
      FASTINFER_CHECK(t.name != name, InvalidArgument, "tensor '", name, "' added twice");
    std::uint64_t elements = 1;
    for (auto d : dims) elements *= d;
    FASTINFER_CHECK(type != TensorType::Q8_0 || dims[0] % 32 == 0, InvalidArgument, "tensor '",
                    name, "' is Q8_0 but its row length ", dims[0], " is not a multiple of 32");
    const std::uint64_t bytes = type == TensorType::Q8_0 ? elements / 32 * 34
                                : type == TensorType::F32 ? elements * 4 : elements * 2;
    tensors_.push_back({name, std::move(dims), type, bytes, data});
  }
  void add_tensor(const std::string& name, const MatrixView& m) {
    add_tensor(name, from_dtype(m.dtype), {std::uint64_t(m.cols), std::uint64_t(m.rows)}, m.data);
  }

  // Writes to `path` + ".tmp" and renames, so a failed write never leaves a
  // half-written file under the final name.
  void write(const std::string& path) const {
    std::string header;
    append_pod(header, kMagic);
    append_pod(header, std::uint32_t(3));
    append_pod(header, std::uint64_t(tensors_.size()));
    append_pod(header, std::uint64_t(kv_.size()));
    for (const auto& [key, bytes] : kv_) {
      append_string(header, key);
      header += bytes;
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      append_string(header, t.name);
      append_pod(header, std::uint32_t(t.dims.size()));
      for (auto d : t.dims) append_pod(header, d);
      append_pod(header, std::uint32_t(t.type));
      append_pod(header, offset);
      offset = align(offset + t.bytes);
    }
    header.resize(std::size_t(align(header.size())), '\0');

    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    FASTINFER_CHECK(f != nullptr, InvalidArgument, "cannot create ", tmp, ": ", std::strerror(errno));
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
    static const char zeros[64] = {};
    for (const auto& t : tensors_) {
      if (!ok) break;
      ok = std::fwrite(t.data, 1, std::size_t(t.bytes), f) == t.bytes;
      std::uint64_t pad = align(t.bytes) - t.bytes;
      while (ok && pad > 0) {
        const std::size_t n = std::size_t(std::min<std::uint64_t>(pad, sizeof zeros));
        ok = std::fwrite(zeros, 1, n, f) == n;
        pad -= n;
      }
    }
    ok = (std::fclose(f) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      throw_error<InvalidArgument>("cannot write GGUF file ", path, ": ", std::strerror(errno));
    }
  }

 private:
  struct PendingTensor {
    std::string name;
    std::vector<std::uint64_t> dims;
    TensorType type;
    std::uint64_t bytes;
    const void* data;
  };

  std::uint64_t align(std::uint64_t n) const { return (n + alignment_ - 1) / alignment_ * alignment_; }

  template <typename T>
  static void append_pod(std::string& b, T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static void append_string(std::string& b, std::string_view s) {
    append_pod(b, std::uint64_t(s.size()));
    b.append(s.data(), s.size());
  }
  static std::string type_bytes(ValueType t) {
    std::string b;
    append_pod(b, std::uint32_t(t));
    return b;
  }
  static std::string array_header(ValueType element, std::size_t n) {
    std::string b = type_bytes(ValueType::Array);
    append_pod(b, std::uint32_t(element));
    append_pod(b, std::uint64_t(n));
    return b;
  }
  template <typename T>
  void set_scalar(const std::string& key, ValueType t, T v) {
    std::string b = type_bytes(t);
    append_pod(b, v);
    set_raw(key, std::move(b));
  }
  template <typename T>
  void set_array(const std::string& key, ValueType t, const std::vector<T>& v) {
    std::string b = array_header(t, v.size());
    b.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
    set_raw(key, std::move(b));
  }
  void set_raw(const std::string& key, std::string bytes) {
    for (auto& kv : kv_)
      if (kv.first == key) {
        kv.second = std::move(bytes);
        return;
      }
    kv_.emplace_back(key, std::move(bytes));
  }

  std::vector<std::pair<std::string, std::string>> kv_;  // key, type + value bytes
  std::vector<PendingTensor> tensors_;
  std::uint64_t alignment_ = kDefaultAlignment;
};

}  // namespace fastinfer::gguf
