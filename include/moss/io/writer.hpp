// moss/io/writer.hpp: writing safetensors files and sharded checkpoints.
//
// `SafetensorsWriter` collects tensors and writes one file or a sharded folder (shards plus
// `model.safetensors.index.json`) that `Checkpoint` and Hugging Face's loaders read. Failures
// raise `io_error` naming the file; bad tensors `config_error`, `shape_error` or
// `unsupported_error` naming the tensor.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/io/checkpoint.hpp"
#include "moss/io/json.hpp"
#include "moss/io/safetensors.hpp"

namespace moss {

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
    io::Json weight_map = io::Json::object();  // sorted by tensor name; names are unique (checked by add)
    for (auto& [tensor, file] : sorted_map) io::detail::append_member(weight_map, tensor, file);
    io::Json meta = io::Json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    meta["total_size"] = total;
    io::Json index = io::Json::object();
    index["metadata"] = std::move(meta);
    index["weight_map"] = std::move(weight_map);
    const std::string text = io::dump_json(index, 2) + "\n";
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
      if (!out) {
        const int err = errno;  // read before anything else can change it
        raise<io_error>(path.string(), ": cannot create file ", tmp.string(), " (", std::strerror(err), ")");
      }
      errno = 0;
      body(out);
      out.flush();
      if (!out) {
        const int err = errno;
        out.close();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        raise<io_error>(path.string(), ": write failed (", err ? std::strerror(err) : "disk full?", ")");
      }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      const std::string why = ec.message();  // before the clean-up below reuses an error code
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      raise<io_error>(path.string(), ": cannot move the written file into place (", why, ")");
    }
  }

  void write_file(const std::filesystem::path& path, const std::vector<std::size_t>& which,
                  const std::map<std::string, std::string>& metadata) const {
    io::Json header = io::Json::object();  // tensor names are unique (checked by add): members are appended
    if (!metadata.empty()) {
      io::Json meta = io::Json::object();
      for (const auto& [k, v] : metadata) meta[k] = v;
      io::detail::append_member(header, "__metadata__", std::move(meta));
    }
    std::uint64_t offset = 0;
    for (std::size_t i : which) {
      const Entry& e = entries_[i];
      io::Json entry = io::Json::object();
      entry["dtype"] = detail::st::safetensors_dtype_tag(e.dtype);
      entry["shape"] = e.shape;
      entry["data_offsets"] = {offset, offset + e.bytes.size()};
      offset += e.bytes.size();
      io::detail::append_member(header, e.name, std::move(entry));
    }
    std::string text = io::dump_json(header, -1);
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
