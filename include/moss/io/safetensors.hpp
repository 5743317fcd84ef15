// moss/io/safetensors.hpp: reading safetensors files.
//
// The format (huggingface/safetensors): an 8-byte little-endian length N, N bytes of a JSON
// header `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {str: str}}`, then the data section; offsets are relative to its start and
// tensors are row-major little-endian.
//
// `SafetensorsFile` validates the whole header when opened (so a bad file fails before any
// weight is used) and reads tensors one at a time on demand, converting between f32, f16 and
// bf16 (through float, rounding to nearest even) and between i32 and i64 (range-checked).
// Checkpoints (a folder, a sharded index) are in io/checkpoint.hpp, writing in io/writer.hpp.
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
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"

namespace moss {

static_assert(std::endian::native == std::endian::little,
              "moss/io/safetensors.hpp: safetensors data is little-endian and moss reads it in place; "
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

/// The stored dtypes that `read` converts into `to`, for messages ("f32, f16 or bf16").
inline std::string readable_as(DType to) {
  if (is_float_dtype(to)) return "f32, f16 or bf16";
  if (is_int_dtype(to)) return "i32 or i64";
  return std::string(dtype_name(to)) + " only";
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

/// The value of `j` when it is an integer literal in [0, 2^63): what safetensors shapes and
/// offsets must be (a float such as 2.0 is refused, as the reference implementation does).
inline std::optional<std::int64_t> non_negative_int64(const io::Json& j) {
  if (j.is_number_unsigned()) {
    const auto u = j.get<std::uint64_t>();
    if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return static_cast<std::int64_t>(u);
    return std::nullopt;
  }
  if (j.is_number_integer() && j.get<std::int64_t>() >= 0) return j.get<std::int64_t>();
  return std::nullopt;
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
  /// The path as messages print it (the `WeightSource` name of the file).
  std::string where() const { return path_.string(); }
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
                 dtype_name(ti.dtype), " and cannot be read as ", dtype_name(want), " (a ", dtype_name(want),
                 " read accepts ", detail::st::readable_as(want),
                 " data; moss converts among f32, f16 and bf16, and between i32 and i64)");
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

  /// Checks that tensor `name` is stored as one of `accepted` and throws `io_error` "file: tensor
  /// X is f32 but expected i64 or i32" otherwise (for inputs that must have a given dtype).
  void expect_dtype(std::string_view name, std::initializer_list<DType> accepted) const {
    const TensorInfo& ti = info(name);
    if (std::find(accepted.begin(), accepted.end(), ti.dtype) != accepted.end()) return;
    std::string list;
    std::size_t i = 0;
    for (DType d : accepted) {
      if (i > 0) list += i + 1 == accepted.size() ? " or " : ", ";
      list += dtype_name(d);
      ++i;
    }
    raise<io_error>(path_.string(), ": tensor ", detail::st::quoted(name), " is ", dtype_name(ti.dtype),
                    " but expected ", list);
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
    const io::Json doc = io::parse_json(text, file + " (safetensors header)");
    MOSS_EXPECTS(doc.is_object(), io_error, file, ": the safetensors header is ", io::kind_name(doc),
                 ", expected a JSON object");
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      const std::string& name = it.key();
      const io::Json& entry = it.value();
      if (name == "__metadata__") {
        MOSS_EXPECTS(entry.is_object(), io_error, file, ": __metadata__ is ", io::kind_name(entry),
                     ", expected an object of strings");
        for (auto m = entry.begin(); m != entry.end(); ++m) {
          MOSS_EXPECTS(m.value().is_string(), io_error, file, ": __metadata__ entry ", detail::st::quoted(m.key()),
                       " is ", io::kind_name(m.value()), ", expected a string");
          metadata_.emplace(m.key(), m.value().get<std::string>());
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

  TensorInfo parse_entry(const std::string& name, const io::Json& entry) const {
    if (!entry.is_object()) bad_tensor(name, cat("entry is ", io::kind_name(entry), ", expected an object"));
    TensorInfo ti;
    const auto dtype = entry.find("dtype");
    const auto shape = entry.find("shape");
    const auto offsets = entry.find("data_offsets");
    if (dtype == entry.end()) bad_tensor(name, "missing \"dtype\"");
    if (shape == entry.end()) bad_tensor(name, "missing \"shape\"");
    if (offsets == entry.end()) bad_tensor(name, "missing \"data_offsets\"");
    if (!dtype->is_string()) bad_tensor(name, cat("\"dtype\" is ", io::kind_name(*dtype), ", expected a string"));
    const std::string& dtype_tag = dtype->get_ref<const std::string&>();
    const auto d = detail::st::parse_safetensors_dtype(dtype_tag);
    if (!d) bad_tensor(name, cat("unknown dtype \"", dtype_tag, "\"; moss reads F32, F16, BF16, I32 and I64"));
    ti.dtype = *d;

    if (!shape->is_array()) bad_tensor(name, cat("\"shape\" is ", io::kind_name(*shape), ", expected an array"));
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const io::Json& s : *shape) {
      const auto extent_or = detail::st::non_negative_int64(s);
      if (!extent_or) bad_tensor(name, cat("\"shape\" entry ", io::dump_json(s, -1), " is not a non-negative integer"));
      const auto extent = static_cast<std::uint64_t>(*extent_or);
      if (extent != 0 && numel > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()) / extent)
        overflow = true;
      numel = overflow ? numel : numel * extent;
      ti.shape.push_back(*extent_or);
    }
    // A zero extent makes the product 0 whatever the other extents are; only then is a huge
    // partial product harmless.
    const bool has_zero = std::find(ti.shape.begin(), ti.shape.end(), index_t{0}) != ti.shape.end();
    if (overflow && !has_zero)
      bad_tensor(name, cat("shape ", detail::st::dims_string(ti.shape), " has more elements than an int64 can count"));
    if (has_zero) numel = 0;

    if (!offsets->is_array() || offsets->size() != 2)
      bad_tensor(name, cat("\"data_offsets\" is ", io::dump_json(*offsets, -1), ", expected [begin, end]"));
    std::uint64_t range[2];
    for (std::size_t k = 0; k < 2; ++k) {
      const auto o = detail::st::non_negative_int64((*offsets)[k]);
      if (!o)
        bad_tensor(name,
                   cat("\"data_offsets\" entry ", io::dump_json((*offsets)[k], -1), " is not a non-negative integer"));
      range[k] = static_cast<std::uint64_t>(*o);
    }
    ti.begin = range[0];
    ti.end = range[1];
    if (ti.begin > ti.end) bad_tensor(name, cat("data_offsets [", ti.begin, ", ", ti.end, "] have begin > end"));
    const std::uint64_t elem = dtype_size(ti.dtype);
    if (numel > std::numeric_limits<std::uint64_t>::max() / elem)
      bad_tensor(name, cat("shape ", detail::st::dims_string(ti.shape), " is too large to address in bytes"));
    if (numel * elem != ti.end - ti.begin)
      bad_tensor(name, cat("shape ", detail::st::dims_string(ti.shape), " of ", dtype_tag, " needs ", numel * elem,
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

}  // namespace moss
