// examples/cli.hpp: what moss-run and moss-demo share: a small command-line parser, the token
// ids of an input file or of a --prompt text (byte tokenizer), and a safetensors file written
// piece by piece (for outputs too large to hold twice in memory).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/bytes.hpp"
#include "moss/io/json.hpp"
#include "moss/io/safetensors.hpp"
#include "moss/models/mamba_config.hpp"

namespace moss::cli {

/// The token ids of a moss-run inputs file.
struct InputIds {
  index_t batch = 0;              ///< rows
  index_t length = 0;             ///< positions per row
  std::vector<std::int64_t> ids;  ///< batch · length ids, row-major
};

/// Reads the int64 tensor `input_ids` (batch, seqlen) of the safetensors file `path` and checks
/// that batch and seqlen are ≥ 1 and every id lies in [0, vocab); `io_error` naming the file and
/// the first bad entry otherwise ("inputs.safetensors: input_ids[0, 3] is 300 but the vocabulary
/// has 256 tokens").
inline InputIds read_input_ids(const std::filesystem::path& path, index_t vocab) {
  const std::string where = path.string();
  const SafetensorsFile in(path);
  MOSS_EXPECTS(in.contains("input_ids"), io_error, where, ": has no tensor input_ids");
  const auto info = in.info("input_ids");
  MOSS_EXPECTS(info.shape.size() == 2 && info.dtype == DType::i64, io_error, where, ": input_ids is ",
               dtype_name(info.dtype), " ", detail::st::dims_string(info.shape), " but must be int64 (batch, seqlen)");
  InputIds out;
  out.batch = info.shape[0];
  out.length = info.shape[1];
  MOSS_EXPECTS(out.batch >= 1 && out.length >= 1, io_error, where, ": input_ids is [", out.batch, ", ", out.length,
               "] but needs batch ≥ 1 and seqlen ≥ 1");
  out.ids = in.read_as<std::int64_t>("input_ids", {out.batch, out.length});
  for (std::size_t i = 0; i < out.ids.size(); ++i) {
    const std::int64_t id = out.ids[i];
    MOSS_EXPECTS(id >= 0 && id < vocab, io_error, where, ": input_ids[", static_cast<index_t>(i) / out.length, ", ",
                 static_cast<index_t>(i) % out.length, "] is ", id, " but the vocabulary has ", vocab, " tokens");
  }
  return out;
}

/// The token ids of `--prompt TEXT` for a model of config `cfg`: one row, each byte of the text
/// its value (moss/io/bytes.hpp). `config_error` when the model has no byte tokenizer (its
/// config.json does not say "tokenizer": "bytes"; `ids_instead` then says how the program takes
/// token ids) or the text is empty.
inline InputIds prompt_input_ids(const MambaConfig& cfg, const std::string& text, const std::string& ids_instead) {
  MOSS_EXPECTS(cfg.tokenizer == "bytes", config_error, "--prompt: the model has no tokenizer (",
               cfg.source == "config" ? std::string("its config") : cfg.source,
               " does not say \"tokenizer\": \"bytes\"), so its text cannot be turned into token ids; ", ids_instead);
  MOSS_EXPECTS(!text.empty(), config_error, "--prompt is empty; the model needs at least one byte to continue");
  InputIds out;
  out.ids = encode_bytes(text);
  out.batch = 1;
  out.length = static_cast<index_t>(out.ids.size());
  return out;
}

/// `--name value` and `--flag` arguments, checked against the known names.
class Args {
 public:
  Args(int argc, char** argv, const std::set<std::string>& with_value, const std::set<std::string>& flags) {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      // insert_or_assign with whole strings: g++ 12 warns (-Wrestrict, a false positive) about
      // the inlined copy of `values_[a] = "1"`.
      if (flags.count(a)) {
        values_.insert_or_assign(a, std::string(1, '1'));
      } else if (with_value.count(a)) {
        MOSS_EXPECTS(i + 1 < argc, config_error, "option ", a, " needs a value");
        values_.insert_or_assign(a, std::string(argv[++i]));
      } else {
        raise<config_error>("unknown argument \"", a, "\" (see --help)");
      }
    }
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? fallback : it->second;
  }
  std::int64_t get_int(const std::string& k, std::int64_t fallback) const {
    if (!has(k)) return fallback;
    const std::string s = get(k);
    std::size_t used = 0;
    std::int64_t v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOSS_EXPECTS(used == s.size() && !s.empty(), config_error, "option ", k, " needs an integer, got \"", s, "\"");
    return v;
  }
  double get_double(const std::string& k, double fallback) const {
    if (!has(k)) return fallback;
    const std::string s = get(k);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOSS_EXPECTS(used == s.size() && !s.empty(), config_error, "option ", k, " needs a number, got \"", s, "\"");
    return v;
  }

 private:
  std::map<std::string, std::string> values_;
};

/// One tensor of a `SafetensorsStream`: its name, dtype and row-major shape.
struct StreamedTensor {
  std::string name;
  DType dtype;
  std::vector<index_t> shape;
  /// Number of elements.
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (index_t s : shape) n *= static_cast<std::uint64_t>(s);
    return n;
  }
};

/// A safetensors file written piece by piece, for tensors too large to hold twice in memory
/// (moss-run's (batch, seqlen, vocab) logits): the tensors are declared up front, then any part
/// of each is written at its element offset, in any order. The data goes to `PATH.partial`,
/// which `commit()` renames to `PATH`; destroyed without a commit (an exception), it removes the
/// partial file. The file reads like `SafetensorsWriter`'s: the header is padded with spaces to
/// a multiple of 8 bytes, the tensors follow in declaration order (declare larger elements first
/// to keep each tensor aligned to its element size). Failures raise `io_error` with the
/// system's reason.
class SafetensorsStream {
 public:
  /// Creates `path.partial` and writes the header of `tensors`. `io_error` when `path` is a
  /// directory or the file cannot be created (checked here, before any work is done).
  SafetensorsStream(std::filesystem::path path, std::vector<StreamedTensor> tensors)
      : path_(std::move(path)), partial_(path_.string() + ".partial"), tensors_(std::move(tensors)) {
    std::error_code ec;
    if (std::filesystem::is_directory(path_, ec))
      raise<io_error>(path_.string(), ": cannot write the output file there (", std::strerror(EISDIR), ")");
    io::Json header = io::Json::object();
    std::uint64_t offset = 0;
    for (const StreamedTensor& t : tensors_) {
      const std::uint64_t bytes = t.numel() * dtype_size(t.dtype);
      io::Json entry = io::Json::object();
      entry["dtype"] = tag(t.dtype);
      entry["shape"] = t.shape;
      entry["data_offsets"] = {offset, offset + bytes};
      header[t.name] = std::move(entry);
      offsets_.push_back(offset);
      offset += bytes;
    }
    std::string text = io::dump_json(header, -1);
    text.append((8 - text.size() % 8) % 8, ' ');
    data_start_ = 8 + text.size();
    data_bytes_ = offset;
    file_ = std::fopen(partial_.string().c_str(), "wb");
    if (!file_) {
      const int err = errno;  // before anything else can change it
      raise<io_error>(path_.string(), ": cannot create ", partial_.string(), " (", std::strerror(err), ")");
    }
    unsigned char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>((std::uint64_t(text.size()) >> (8 * b)) & 0xffu);
    put(0, len, 8);
    put(8, text.data(), text.size());
  }
  SafetensorsStream(const SafetensorsStream&) = delete;
  SafetensorsStream& operator=(const SafetensorsStream&) = delete;
  ~SafetensorsStream() {
    if (file_) std::fclose(file_);
    if (!committed_) {
      std::error_code ignored;
      std::filesystem::remove(partial_, ignored);
    }
  }

  /// Writes `values` into tensor `name` from element `offset` on (row-major).
  template <class T>
  void write(const std::string& name, std::uint64_t offset, std::span<const T> values) {
    const std::size_t i = find(name);
    const StreamedTensor& t = tensors_[i];
    MOSS_EXPECTS(dtype_of<T> == t.dtype, config_error, "SafetensorsStream::write: tensor \"", name, "\" holds ",
                 dtype_name(t.dtype), " but ", dtype_name(dtype_of<T>), " values were given");
    MOSS_EXPECTS(offset <= t.numel() && values.size() <= t.numel() - offset, shape_error,
                 "SafetensorsStream::write: elements ", offset, " to ", offset + values.size(), " of tensor \"", name,
                 "\" are outside its ", t.numel(), " elements");
    put(data_start_ + offsets_[i] + offset * sizeof(T), values.data(), values.size_bytes());
  }

  /// Closes the file and moves it to its final name. `io_error` (with the system's reason) on
  /// failure; the partial file is removed then.
  void commit() {
    std::FILE* f = std::exchange(file_, nullptr);
    if (std::fclose(f) != 0) {
      const int err = errno;
      raise<io_error>(path_.string(), ": write failed (", std::strerror(err), ")");
    }
    std::error_code ec;
    std::filesystem::rename(partial_, path_, ec);
    if (ec) raise<io_error>(path_.string(), ": cannot move the written file into place (", ec.message(), ")");
    committed_ = true;
  }

  /// Bytes the file holds (header and data).
  std::uint64_t file_bytes() const { return data_start_ + data_bytes_; }

 private:
  static const char* tag(DType d) {
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
        raise<unsupported_error>("SafetensorsStream: dtype ", dtype_name(d), " is not written");
    }
  }
  std::size_t find(const std::string& name) const {
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      if (tensors_[i].name == name) return i;
    raise<config_error>("SafetensorsStream::write: no tensor \"", name, "\" was declared");
  }
  void put(std::uint64_t at, const void* data, std::size_t n) {
    if (n == 0) return;
    if (::fseeko(file_, static_cast<off_t>(at), SEEK_SET) != 0 || std::fwrite(data, 1, n, file_) != n) {
      const int err = errno;
      raise<io_error>(path_.string(), ": write of ", n, " bytes at offset ", at, " to ", partial_.string(), " failed (",
                      std::strerror(err), ")");
    }
  }

  std::filesystem::path path_, partial_;
  std::vector<StreamedTensor> tensors_;
  std::vector<std::uint64_t> offsets_;
  std::uint64_t data_start_ = 0, data_bytes_ = 0;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace moss::cli
