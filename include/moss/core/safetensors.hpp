// moss/core/safetensors.hpp: reading and writing safetensors checkpoints, single and sharded.
//
// The format (huggingface/safetensors): an 8-byte little-endian length N, N bytes of a JSON
// header `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {str: str}}`, then the data section; offsets are relative to its start and
// tensors are row-major little-endian.
//
// - `SafetensorsFile` validates the whole header when opened (so a bad file fails before any
//   weight is used) and reads tensors one at a time on demand, converting between f32, f16 and
//   bf16 (through float, rounding to nearest even) and between i32 and i64 (range-checked).
// - `Checkpoint` opens what Hugging Face writes: a folder holding `model.safetensors` or the
//   sharded `model.safetensors.index.json`, an index file, or one `.safetensors` file.
// - `SafetensorsWriter` collects tensors and writes one file or a sharded folder.
// Every failure raises `io_error` naming the file and, where there is one, the tensor.
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/json.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

static_assert(std::endian::native == std::endian::little,
              "moss/core/safetensors.hpp: safetensors data is little-endian and moss reads it in place; "
              "a big-endian host is not supported");

/// dtype and shape of one tensor in a safetensors file, and where its bytes lie.
struct TensorInfo {
  DType dtype = DType::f32;
  std::vector<index_t> shape;  // row-major; empty for a scalar
  std::uint64_t begin = 0;     // byte offset of the first element in the data section
  std::uint64_t end = 0;       // one past the last byte

  /// Number of elements (1 for a scalar).
  index_t numel() const {
    index_t n = 1;
    for (index_t s : shape) n *= s;
    return n;
  }
  /// Size of the stored data in bytes.
  std::uint64_t nbytes() const { return end - begin; }
};

/// Largest JSON header moss accepts (the limit of the reference implementation).
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;

// Helpers of the safetensors reader and writer ("st" keeps the call sites short).
namespace detail::st {

/// "[256, 64]"; a negative (wildcard) entry prints as "*".
inline std::string dims_string(std::span<const index_t> dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i)
    s += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
  return s + "]";
}

/// The moss dtype of a safetensors dtype tag, or nothing for tags moss does not read.
inline std::optional<DType> parse_safetensors_dtype(std::string_view s) {
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  return std::nullopt;
}

/// The safetensors tag of a moss dtype; `unsupported_error` for u8 (moss does not store it).
inline const char* safetensors_dtype_tag(DType d) {
  switch (d) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    default:
      break;
  }
  raise<unsupported_error>("safetensors: dtype ", dtype_name(d),
                           " cannot be stored; supported: f32, f16, bf16, i32, i64");
}

constexpr bool is_float_dtype(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }
constexpr bool is_int_dtype(DType d) { return d == DType::i32 || d == DType::i64; }

/// True when `read` converts a stored `from` into `to`.
constexpr bool convertible(DType from, DType to) {
  return from == to || (is_float_dtype(from) && is_float_dtype(to)) || (is_int_dtype(from) && is_int_dtype(to));
}

inline float load_float(const std::byte* p, DType d) {
  if (d == DType::f32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  std::uint16_t bits;
  std::memcpy(&bits, p, 2);
  return d == DType::f16 ? to_float(f16{bits}) : to_float(bf16{bits});
}

inline void store_float(std::byte* p, DType d, float x) {
  if (d == DType::f32) {
    std::memcpy(p, &x, 4);
  } else {
    const std::uint16_t bits = d == DType::f16 ? from_float<f16>(x).bits : from_float<bf16>(x).bits;
    std::memcpy(p, &bits, 2);
  }
}

inline std::uint64_t decode_u64_le(const unsigned char* b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

/// A tensor name in double quotes, as messages print it.
inline std::string quoted(std::string_view s) { return cat('"', s, '"'); }

}  // namespace detail::st

/// One safetensors file, validated when opened; tensors are read on demand. Reads are `const`
/// and open their own stream, so one object may serve several threads.
class SafetensorsFile {
 public:
  /// Opens and validates `path`: every check of the header happens here, so a file that opens
  /// can be read unless it changes on disk. Throws `io_error` naming the file (and the tensor).
  explicit SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
    const std::string file = path_.string();
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) raise<io_error>(file, ": no such file");
    if (std::filesystem::is_directory(path_, ec))
      raise<io_error>(file, ": is a directory, expected a .safetensors file");
    const std::uint64_t file_size = std::filesystem::file_size(path_, ec);
    if (ec) raise<io_error>(file, ": cannot read the file size (", ec.message(), ")");
    MOSS_EXPECTS(file_size >= 8, io_error, file, ": file is ", file_size,
                 " bytes, too short for the 8-byte header length of a safetensors file");
    std::ifstream in(path_, std::ios::binary);
    if (!in) raise<io_error>(file, ": cannot open file (", std::strerror(errno), ")");
    unsigned char len_bytes[8];
    in.read(reinterpret_cast<char*>(len_bytes), 8);
    if (in.gcount() != 8) raise<io_error>(file, ": short read of the header length");
    const std::uint64_t n = detail::st::decode_u64_le(len_bytes);
    MOSS_EXPECTS(n >= 2, io_error, file, ": header length is ", n,
                 "; a safetensors header is a JSON object (>= 2 bytes)");
    MOSS_EXPECTS(n <= safetensors_max_header_bytes, io_error, file, ": header length ", n, " exceeds the limit of ",
                 safetensors_max_header_bytes, " bytes (corrupt or not a safetensors file)");
    MOSS_EXPECTS(n <= file_size - 8, io_error, file, ": header length ", n, " exceeds the file (", file_size,
                 " bytes, so at most ", file_size - 8, " header bytes)");
    std::string header(static_cast<std::size_t>(n), '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    if (static_cast<std::uint64_t>(in.gcount()) != n) raise<io_error>(file, ": short read of the ", n, "-byte header");
    data_start_ = 8 + n;
    data_size_ = file_size - data_start_;
    parse_header(header);
  }

  /// The path the file was opened from.
  const std::filesystem::path& path() const { return path_; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(tensors_.size());
    for (const auto& [k, v] : tensors_) r.push_back(k);
    return r;
  }
  /// Number of tensors.
  std::size_t size() const { return tensors_.size(); }
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  /// dtype, shape and byte range of `name`; `io_error` "missing tensor" when absent.
  const TensorInfo& info(std::string_view name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end())
      raise<io_error>(path_.string(), ": missing tensor ", detail::st::quoted(name), " (the file holds ",
                      tensors_.size(), " tensors)");
    return it->second;
  }
  /// The `__metadata__` string map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Bytes of the data section (file size − 8 − header length).
  std::uint64_t data_size() const { return data_size_; }

  /// Reads tensor `name` into `out` as dtype `want`: floats convert among f32/f16/bf16 through
  /// float (rounding to nearest even), i32 widens to i64, i64 narrows to i32 when every value
  /// fits. `out` must hold exactly numel · dtype_size(want) bytes (`shape_error` otherwise).
  /// Throws `io_error` naming file and tensor on a short read or an impossible conversion.
  void read(std::string_view name, DType want, std::span<std::byte> out) const {
    const TensorInfo& ti = info(name);
    const std::string file = path_.string();
    MOSS_EXPECTS(detail::st::convertible(ti.dtype, want), io_error, file, ": tensor ", detail::st::quoted(name), " is ",
                 dtype_name(ti.dtype), " and cannot be read as ", dtype_name(want),
                 "; moss converts among f32, f16 and bf16, and between i32 and i64");
    const std::uint64_t count = static_cast<std::uint64_t>(ti.numel());
    const std::uint64_t need = count * dtype_size(want);
    MOSS_EXPECTS(out.size() == need, shape_error, "SafetensorsFile::read: ", file, ": tensor ",
                 detail::st::quoted(name), " ", detail::st::dims_string(ti.shape), " read as ", dtype_name(want),
                 " needs ", need, " bytes but the output holds ", out.size());
    if (count == 0) return;
    std::ifstream in(path_, std::ios::binary);
    if (!in)
      raise<io_error>(file, ": cannot open file to read tensor ", detail::st::quoted(name), " (", std::strerror(errno),
                      ")");
    in.seekg(static_cast<std::streamoff>(data_start_ + ti.begin));
    if (!in) raise<io_error>(file, ": cannot seek to tensor ", detail::st::quoted(name));
    const auto read_bytes = [&](std::byte* dst, std::uint64_t bytes, std::uint64_t done) {
      in.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(bytes));
      if (static_cast<std::uint64_t>(in.gcount()) != bytes)
        raise<io_error>(file, ": short read of tensor ", detail::st::quoted(name), ": got ", done + in.gcount(), " of ",
                        ti.nbytes(), " bytes (the file was truncated or changed after it was opened)");
    };
    if (ti.dtype == want) {
      read_bytes(out.data(), need, 0);
      return;
    }
    // Convert through a bounded staging buffer so a large tensor never needs two full copies.
    const std::size_t in_size = dtype_size(ti.dtype), out_size = dtype_size(want);
    constexpr std::uint64_t chunk = 1u << 16;
    std::vector<std::byte> stage(static_cast<std::size_t>(std::min(count, chunk) * in_size));
    for (std::uint64_t first = 0; first < count; first += chunk) {
      const std::uint64_t m = std::min(chunk, count - first);
      read_bytes(stage.data(), m * in_size, first * in_size);
      std::byte* dst = out.data() + first * out_size;
      if (detail::st::is_float_dtype(want)) {
        for (std::uint64_t i = 0; i < m; ++i)
          detail::st::store_float(dst + i * out_size, want,
                                  detail::st::load_float(stage.data() + i * in_size, ti.dtype));
      } else if (want == DType::i64) {
        for (std::uint64_t i = 0; i < m; ++i) {
          std::int32_t v;
          std::memcpy(&v, stage.data() + i * 4, 4);
          const std::int64_t w = v;
          std::memcpy(dst + i * 8, &w, 8);
        }
      } else {
        for (std::uint64_t i = 0; i < m; ++i) {
          std::int64_t v;
          std::memcpy(&v, stage.data() + i * 8, 8);
          MOSS_EXPECTS(v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max(),
                       io_error, file, ": tensor ", detail::st::quoted(name), " element ", first + i, " = ", v,
                       " does not fit i32; read it as i64");
          const std::int32_t w = static_cast<std::int32_t>(v);
          std::memcpy(dst + i * 4, &w, 4);
        }
      }
    }
  }
  /// `read` into `bytes` bytes at `out`.
  void read(std::string_view name, DType want, void* out, std::size_t bytes) const {
    read(name, want, std::span<std::byte>(static_cast<std::byte*>(out), bytes));
  }

  /// Checks that tensor `name` has shape `expected` (a negative entry matches any extent) and
  /// throws `io_error` "file: tensor X is [a, b] but expected [c, d]" otherwise.
  void expect_shape(std::string_view name, std::span<const index_t> expected) const {
    const TensorInfo& ti = info(name);
    bool ok = ti.shape.size() == expected.size();
    for (std::size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == ti.shape[i];
    MOSS_EXPECTS(ok, io_error, path_.string(), ": tensor ", detail::st::quoted(name), " is ",
                 detail::st::dims_string(ti.shape), " but expected ", detail::st::dims_string(expected));
  }

  /// Reads tensor `name`, checked against `expected_shape`, into `out` converted to `T`
  /// (float, f16, bf16, int32_t or int64_t).
  template <class T>
  void read_into(std::string_view name, std::span<T> out, const std::vector<index_t>& expected_shape) const {
    expect_shape(name, expected_shape);
    read(name, dtype_of<T>, std::as_writable_bytes(out));
  }
  /// Tensor `name` converted to `T`, after checking it has shape `expected_shape` (negative
  /// entries match anything): `read_as<float>("backbone.norm_f.weight", {64})`.
  template <class T>
  std::vector<T> read_as(std::string_view name, const std::vector<index_t>& expected_shape) const {
    expect_shape(name, expected_shape);
    return read_as<T>(name);
  }
  /// Tensor `name` converted to `T`, whatever its shape (see `info(name).shape`).
  template <class T>
  std::vector<T> read_as(std::string_view name) const {
    std::vector<T> v(static_cast<std::size_t>(info(name).numel()));
    read(name, dtype_of<T>, std::as_writable_bytes(std::span<T>(v)));
    return v;
  }

 private:
  [[noreturn]] void bad_tensor(std::string_view name, const std::string& reason) const {
    raise<io_error>(path_.string(), ": tensor ", detail::st::quoted(name), ": ", reason);
  }

  void parse_header(const std::string& text) {
    const std::string file = path_.string();
    const json::Value doc = json::parse(text, file + " (safetensors header)");
    MOSS_EXPECTS(doc.is_object(), io_error, file, ": the safetensors header is ", json::kind_name(doc.kind()),
                 ", expected a JSON object");
    for (const auto& [name, entry] : doc.as_object()) {
      if (name == "__metadata__") {
        MOSS_EXPECTS(entry.is_object(), io_error, file, ": __metadata__ is ", json::kind_name(entry.kind()),
                     ", expected an object of strings");
        for (const auto& [k, v] : entry.as_object()) {
          MOSS_EXPECTS(v.is_string(), io_error, file, ": __metadata__ entry ", detail::st::quoted(k), " is ",
                       json::kind_name(v.kind()), ", expected a string");
          metadata_.emplace(k, v.as_string());
        }
        continue;
      }
      tensors_.emplace(name, parse_entry(name, entry));
    }
    // Tensors may leave gaps (as moss reads tensors by their offsets) but never share bytes:
    // sort the non-empty ranges and compare each with the furthest end seen so far.
    std::vector<std::pair<const std::string*, const TensorInfo*>> order;
    order.reserve(tensors_.size());
    for (const auto& [k, v] : tensors_)
      if (v.nbytes() > 0) order.emplace_back(&k, &v);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.second->begin != b.second->begin ? a.second->begin < b.second->begin : a.second->end < b.second->end;
    });
    const std::pair<const std::string*, const TensorInfo*>* furthest = nullptr;
    for (const auto& cur : order) {
      if (furthest && cur.second->begin < furthest->second->end)
        raise<io_error>(file, ": tensors ", detail::st::quoted(*furthest->first), " (bytes [", furthest->second->begin,
                        ", ", furthest->second->end, ")) and ", detail::st::quoted(*cur.first), " (bytes [",
                        cur.second->begin, ", ", cur.second->end, ")) overlap");
      if (!furthest || cur.second->end > furthest->second->end) furthest = &cur;
    }
  }

  TensorInfo parse_entry(const std::string& name, const json::Value& entry) const {
    if (!entry.is_object()) bad_tensor(name, cat("entry is ", json::kind_name(entry.kind()), ", expected an object"));
    TensorInfo ti;
    const json::Value* dtype = entry.find("dtype");
    const json::Value* shape = entry.find("shape");
    const json::Value* offsets = entry.find("data_offsets");
    if (!dtype) bad_tensor(name, "missing \"dtype\"");
    if (!shape) bad_tensor(name, "missing \"shape\"");
    if (!offsets) bad_tensor(name, "missing \"data_offsets\"");
    if (!dtype->is_string())
      bad_tensor(name, cat("\"dtype\" is ", json::kind_name(dtype->kind()), ", expected a string"));
    const auto d = detail::st::parse_safetensors_dtype(dtype->as_string());
    if (!d) bad_tensor(name, cat("unknown dtype \"", dtype->as_string(), "\"; moss reads F32, F16, BF16, I32 and I64"));
    ti.dtype = *d;

    if (!shape->is_array())
      bad_tensor(name, cat("\"shape\" is ", json::kind_name(shape->kind()), ", expected an array"));
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const json::Value& s : shape->as_array()) {
      if (!s.is_integer() || s.as_int() < 0)
        bad_tensor(name, cat("\"shape\" entry ", json::dump(s), " is not a non-negative integer"));
      const auto extent = static_cast<std::uint64_t>(s.as_int());
      if (extent != 0 && numel > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()) / extent)
        overflow = true;
      numel = overflow ? numel : numel * extent;
      ti.shape.push_back(s.as_int());
    }
    // A zero extent makes the product 0 whatever the other extents are; only then is a huge
    // partial product harmless.
    const bool has_zero = std::find(ti.shape.begin(), ti.shape.end(), index_t{0}) != ti.shape.end();
    if (overflow && !has_zero)
      bad_tensor(name, cat("shape ", detail::st::dims_string(ti.shape), " has more elements than an int64 can count"));
    if (has_zero) numel = 0;

    if (!offsets->is_array() || offsets->as_array().size() != 2)
      bad_tensor(name, cat("\"data_offsets\" is ", json::dump(*offsets), ", expected [begin, end]"));
    for (const json::Value& o : offsets->as_array())
      if (!o.is_integer() || o.as_int() < 0)
        bad_tensor(name, cat("\"data_offsets\" entry ", json::dump(o), " is not a non-negative integer"));
    ti.begin = static_cast<std::uint64_t>(offsets->as_array()[0].as_int());
    ti.end = static_cast<std::uint64_t>(offsets->as_array()[1].as_int());
    if (ti.begin > ti.end) bad_tensor(name, cat("data_offsets [", ti.begin, ", ", ti.end, "] have begin > end"));
    const std::uint64_t elem = dtype_size(ti.dtype);
    if (numel > std::numeric_limits<std::uint64_t>::max() / elem)
      bad_tensor(name, cat("shape ", detail::st::dims_string(ti.shape), " is too large to address in bytes"));
    if (numel * elem != ti.end - ti.begin)
      bad_tensor(name,
                 cat("shape ", detail::st::dims_string(ti.shape), " of ", dtype->as_string(), " needs ", numel * elem,
                     " bytes but data_offsets [", ti.begin, ", ", ti.end, "] span ", ti.end - ti.begin));
    if (ti.end > data_size_)
      bad_tensor(name, cat("data_offsets [", ti.begin, ", ", ti.end, "] run past the data section (", data_size_,
                           " bytes; the file is truncated or corrupt)"));
    return ti;
  }

  std::filesystem::path path_;
  std::uint64_t data_start_ = 0;  // 8 + header length
  std::uint64_t data_size_ = 0;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A Hugging Face-style checkpoint: a folder with `model.safetensors` (preferred, as
/// transformers does) or `model.safetensors.index.json` plus its shards, an index file, or a
/// single `.safetensors` file. Everything is validated when opened: each shard is opened once
/// and every tensor of the index must be in the shard it names.
class Checkpoint {
 public:
  /// File name of a single-file checkpoint in a folder.
  static constexpr const char* single_file_name = "model.safetensors";
  /// File name of the index of a sharded checkpoint.
  static constexpr const char* index_file_name = "model.safetensors.index.json";

  /// Opens `path` (folder, index or .safetensors file); `io_error` naming what is wrong.
  explicit Checkpoint(std::filesystem::path path) : path_(std::move(path)) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path_, ec)) {
      if (fs::exists(path_ / single_file_name, ec)) {
        open_single(path_ / single_file_name);
      } else if (fs::exists(path_ / index_file_name, ec)) {
        open_index(path_ / index_file_name);
      } else {
        raise<io_error>(path_.string(), ": holds neither ", single_file_name, " nor ", index_file_name);
      }
    } else if (!fs::exists(path_, ec)) {
      raise<io_error>(path_.string(), ": no such file or directory");
    } else if (path_.filename().string().ends_with(".index.json")) {
      open_index(path_);
    } else {
      open_single(path_);
    }
  }

  /// What was opened (folder, index or file).
  const std::filesystem::path& path() const { return path_; }
  /// True when the checkpoint was opened from an index.
  bool sharded() const { return sharded_; }
  /// The files opened (one, or the shards in file-name order).
  const std::vector<SafetensorsFile>& files() const { return files_; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(where_.size());
    for (const auto& [k, v] : where_) r.push_back(k);
    return r;
  }
  bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
  /// The file holding `name`; `io_error` "missing tensor" naming the checkpoint when absent.
  const SafetensorsFile& file_of(std::string_view name) const {
    const auto it = where_.find(name);
    if (it == where_.end())
      raise<io_error>(path_.string(), ": missing tensor ", detail::st::quoted(name), " (the checkpoint holds ",
                      where_.size(), " tensors)");
    return files_[it->second];
  }
  /// dtype, shape and byte range of `name`.
  const TensorInfo& info(std::string_view name) const { return file_of(name).info(name); }
  /// A single file's `__metadata__`, or a sharded index's "metadata" (non-string values, such
  /// as "total_size", as their JSON text).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// `SafetensorsFile::read` on the file holding `name`.
  void read(std::string_view name, DType want, std::span<std::byte> out) const { file_of(name).read(name, want, out); }
  /// `SafetensorsFile::expect_shape` on the file holding `name`.
  void expect_shape(std::string_view name, std::span<const index_t> expected) const {
    file_of(name).expect_shape(name, expected);
  }
  /// `SafetensorsFile::read_into` on the file holding `name`.
  template <class T>
  void read_into(std::string_view name, std::span<T> out, const std::vector<index_t>& expected_shape) const {
    file_of(name).read_into(name, out, expected_shape);
  }
  /// `SafetensorsFile::read_as` (shape-checked) on the file holding `name`.
  template <class T>
  std::vector<T> read_as(std::string_view name, const std::vector<index_t>& expected_shape) const {
    return file_of(name).template read_as<T>(name, expected_shape);
  }
  /// `SafetensorsFile::read_as` (any shape) on the file holding `name`.
  template <class T>
  std::vector<T> read_as(std::string_view name) const {
    return file_of(name).template read_as<T>(name);
  }

 private:
  void open_single(const std::filesystem::path& file) {
    files_.emplace_back(file);
    for (const auto& n : files_.back().names()) where_.emplace(n, 0);
    metadata_ = files_.back().metadata();
  }

  void open_index(const std::filesystem::path& index_path) {
    namespace fs = std::filesystem;
    sharded_ = true;
    const std::string index = index_path.string();
    const json::Value doc = json::parse(json::read_file(index_path), index);
    MOSS_EXPECTS(doc.is_object(), io_error, index, ": is ", json::kind_name(doc.kind()), ", expected a JSON object");
    if (const json::Value* meta = doc.find("metadata")) {
      MOSS_EXPECTS(meta->is_object() || meta->is_null(), io_error, index, ": \"metadata\" is ",
                   json::kind_name(meta->kind()), ", expected an object");
      if (meta->is_object())
        for (const auto& [k, v] : meta->as_object())
          metadata_.emplace(k, v.is_string() ? v.as_string() : json::dump(v));
    }
    const json::Value* map = doc.find("weight_map");
    MOSS_EXPECTS(map != nullptr, io_error, index, ": has no \"weight_map\"");
    MOSS_EXPECTS(map->is_object(), io_error, index, ": \"weight_map\" is ", json::kind_name(map->kind()),
                 ", expected an object {tensor: shard file}");
    // Collect the shards in file-name order, so `files()` is deterministic.
    std::map<std::string, std::size_t> shard_index;
    for (const auto& [tensor, shard] : map->as_object()) {
      MOSS_EXPECTS(shard.is_string(), io_error, index, ": weight_map entry for tensor ", detail::st::quoted(tensor),
                   " is ", json::kind_name(shard.kind()), ", expected a shard file name");
      const fs::path rel(shard.as_string());
      const bool escapes = std::any_of(rel.begin(), rel.end(), [](const fs::path& p) { return p == ".."; });
      MOSS_EXPECTS(!shard.as_string().empty() && rel.is_relative() && !escapes, io_error, index, ": shard ",
                   detail::st::quoted(shard.as_string()), " of tensor ", detail::st::quoted(tensor),
                   " must be a file name relative to the index's folder");
      shard_index.emplace(shard.as_string(), 0);
    }
    const fs::path dir = index_path.parent_path();
    for (auto& [shard, k] : shard_index) {
      const fs::path file = dir / shard;
      std::error_code ec;
      if (!fs::exists(file, ec)) {
        std::string first_tensor;
        for (const auto& [tensor, s] : map->as_object())
          if (s.as_string() == shard) {
            first_tensor = tensor;
            break;
          }
        raise<io_error>(index, ": shard ", detail::st::quoted(shard), " (holding tensor ",
                        detail::st::quoted(first_tensor), ") is missing: ", file.string(), " does not exist");
      }
      k = files_.size();
      files_.emplace_back(file);
    }
    for (const auto& [tensor, shard] : map->as_object()) {
      const std::size_t k = shard_index.at(shard.as_string());
      MOSS_EXPECTS(files_[k].contains(tensor), io_error, index, ": tensor ", detail::st::quoted(tensor),
                   " is mapped to shard ", detail::st::quoted(shard.as_string()), " but ", files_[k].path().string(),
                   " does not contain it");
      where_.emplace(tensor, k);
    }
  }

  std::filesystem::path path_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> where_;  // tensor → index into files_
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors and writes them as a safetensors file (`write`) or a sharded folder
/// (`write_sharded`) that `Checkpoint` and Hugging Face's loaders read. Tensors are written in
/// a deterministic order (larger element size first, then by name, so each tensor starts at a
/// multiple of its element size) after a header padded with spaces to a multiple of 8 bytes, as
/// the reference implementation does.
class SafetensorsWriter {
 public:
  /// Adds a tensor of `dtype` with row-major `shape`; copies `bytes` (numel · dtype size
  /// bytes, little-endian). `config_error` for a duplicate or reserved name, `shape_error` for a
  /// size mismatch, `unsupported_error` for a dtype safetensors files of moss do not hold (u8).
  void add(std::string name, DType dtype, std::vector<index_t> shape, std::span<const std::byte> bytes) {
    detail::st::safetensors_dtype_tag(dtype);
    MOSS_EXPECTS(name != "__metadata__", config_error, "SafetensorsWriter::add: \"__metadata__\" is reserved");
    MOSS_EXPECTS(!names_.contains(name), config_error, "SafetensorsWriter::add: tensor ", detail::st::quoted(name),
                 " was already added");
    index_t n = 1;
    for (index_t s : shape) {
      MOSS_EXPECTS(s >= 0, shape_error, "SafetensorsWriter::add: tensor ", detail::st::quoted(name),
                   " has negative extent in ", detail::st::dims_string(shape));
      n *= s;
    }
    const std::uint64_t need = static_cast<std::uint64_t>(n) * dtype_size(dtype);
    MOSS_EXPECTS(bytes.size() == need, shape_error, "SafetensorsWriter::add: tensor ", detail::st::quoted(name), " ",
                 detail::st::dims_string(shape), " of ", dtype_name(dtype), " needs ", need, " bytes but ",
                 bytes.size(), " were given");
    names_.insert(name);
    entries_.push_back(
        Entry{std::move(name), dtype, std::move(shape), std::vector<std::byte>(bytes.begin(), bytes.end())});
  }
  /// Adds `values` (float, f16, bf16, int32_t or int64_t) with row-major `shape`.
  template <class T>
  void add(std::string name, std::vector<index_t> shape, std::span<const T> values) {
    add(std::move(name), dtype_of<T>, std::move(shape), std::as_bytes(values));
  }
  template <class T>
  void add(std::string name, std::vector<index_t> shape, const std::vector<T>& values) {
    add(std::move(name), std::move(shape), std::span<const T>(values));
  }
  /// Sets a `__metadata__` entry (for example {"format": "pt"}).
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  /// Number of tensors added.
  std::size_t size() const { return entries_.size(); }

  /// Writes every tensor to `path` (through a temporary file renamed at the end, so a failed
  /// write never leaves a truncated checkpoint under the final name). `io_error` on failure.
  void write(const std::filesystem::path& path) const {
    std::vector<std::size_t> all = order();
    write_file(path, all, metadata_);
  }

  /// Writes `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes` data bytes
  /// each (a larger tensor gets a shard of its own) and `model.safetensors.index.json` into
  /// `dir` (created if needed). The index "metadata" holds the writer's metadata plus
  /// "total_size"; each shard's `__metadata__` holds the writer's metadata. Returns the shard
  /// paths.
  std::vector<std::filesystem::path> write_sharded(const std::filesystem::path& dir,
                                                   std::uint64_t max_shard_bytes) const {
    MOSS_EXPECTS(max_shard_bytes > 0, config_error, "SafetensorsWriter::write_sharded: max_shard_bytes must be > 0");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) raise<io_error>(dir.string(), ": cannot create directory (", ec.message(), ")");
    std::vector<std::vector<std::size_t>> shards;
    std::uint64_t in_shard = 0, total = 0;
    for (std::size_t i : order()) {
      const std::uint64_t b = entries_[i].bytes.size();
      if (shards.empty() || (in_shard > 0 && in_shard + b > max_shard_bytes)) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(i);
      in_shard += b;
      total += b;
    }
    if (shards.empty()) shards.emplace_back();  // no tensors: one empty shard keeps the layout valid
    const std::size_t n = shards.size();
    MOSS_EXPECTS(n <= 99999, config_error, "SafetensorsWriter::write_sharded: ", n,
                 " shards exceed the 5-digit file-name pattern; raise max_shard_bytes");
    const auto five = [](std::size_t v) {
      std::string s = std::to_string(v);
      return std::string(5 - s.size(), '0') + s;
    };
    std::vector<std::filesystem::path> paths;
    std::map<std::string, std::string> sorted_map;
    for (std::size_t k = 0; k < n; ++k) {
      const std::string file = "model-" + five(k + 1) + "-of-" + five(n) + ".safetensors";
      paths.push_back(dir / file);
      write_file(paths.back(), shards[k], metadata_);
      for (std::size_t i : shards[k]) sorted_map.emplace(entries_[i].name, file);
    }
    json::Object weight_map;  // sorted by tensor name; names are unique, so no lookups are needed
    weight_map.reserve(sorted_map.size());
    for (auto& [tensor, file] : sorted_map) weight_map.emplace_back(tensor, file);
    json::Value meta = json::Object{};
    for (const auto& [k, v] : metadata_) meta.set(k, v);
    meta.set("total_size", total);
    json::Value index = json::Object{};
    index.set("metadata", std::move(meta));
    index.set("weight_map", std::move(weight_map));
    const std::string text = json::dump(index) + "\n";
    write_atomically(dir / Checkpoint::index_file_name,
                     [&](std::ofstream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); });
    return paths;
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<index_t> shape;
    std::vector<std::byte> bytes;
  };

  /// Larger elements first, then by name: deterministic, and every tensor is aligned to its
  /// element size because the header is padded to a multiple of 8.
  std::vector<std::size_t> order() const {
    std::vector<std::size_t> idx(entries_.size());
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
      const std::size_t sa = dtype_size(entries_[a].dtype), sb = dtype_size(entries_[b].dtype);
      return sa != sb ? sa > sb : entries_[a].name < entries_[b].name;
    });
    return idx;
  }

  template <class Body>
  static void write_atomically(const std::filesystem::path& path, Body&& body) {
    const std::filesystem::path tmp = path.string() + ".partial";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) raise<io_error>(path.string(), ": cannot create file (", std::strerror(errno), ")");
      body(out);
      out.flush();
      if (!out) {
        out.close();
        std::error_code ec;
        std::filesystem::remove(tmp, ec);
        raise<io_error>(path.string(), ": write failed (disk full?)");
      }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::filesystem::remove(tmp, ec);
      raise<io_error>(path.string(), ": cannot move the written file into place (", ec.message(), ")");
    }
  }

  void write_file(const std::filesystem::path& path, const std::vector<std::size_t>& which,
                  const std::map<std::string, std::string>& metadata) const {
    json::Object header;  // tensor names are unique (checked by add), so members are appended directly
    header.reserve(which.size() + 1);
    if (!metadata.empty()) {
      json::Object meta;
      for (const auto& [k, v] : metadata) meta.emplace_back(k, v);
      header.emplace_back("__metadata__", std::move(meta));
    }
    std::uint64_t offset = 0;
    for (std::size_t i : which) {
      const Entry& e = entries_[i];
      json::Value shape = json::Array{};
      for (index_t s : e.shape) shape.push_back(s);
      json::Object entry;
      entry.emplace_back("dtype", detail::st::safetensors_dtype_tag(e.dtype));
      entry.emplace_back("shape", std::move(shape));
      entry.emplace_back("data_offsets", json::Array{offset, offset + e.bytes.size()});
      offset += e.bytes.size();
      header.emplace_back(e.name, std::move(entry));
    }
    std::string text = json::dump(json::Value(std::move(header)));
    text.append((8 - text.size() % 8) % 8, ' ');
    unsigned char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>((std::uint64_t(text.size()) >> (8 * b)) & 0xffu);
    write_atomically(path, [&](std::ofstream& out) {
      out.write(reinterpret_cast<const char*>(len), 8);
      out.write(text.data(), static_cast<std::streamsize>(text.size()));
      for (std::size_t i : which)
        out.write(reinterpret_cast<const char*>(entries_[i].bytes.data()),
                  static_cast<std::streamsize>(entries_[i].bytes.size()));
    });
  }

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moss
