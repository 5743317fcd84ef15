// moss/io/checkpoint.hpp: a Hugging Face-style safetensors checkpoint, single or sharded.
//
// `Checkpoint` opens what Hugging Face writes: a folder holding `model.safetensors` or the
// sharded `model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {tensor: shard}}`),
// an index file, or one `.safetensors` file. It satisfies `WeightSource` (io/weights.hpp), the
// concept through which layers read weights. Every failure raises `io_error` naming the file
// and, where there is one, the tensor.
#pragma once

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/io/json.hpp"
#include "moss/io/safetensors.hpp"

namespace moss {

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

  /// Opens `path` (folder, index or .safetensors file); `io_error` naming what is wrong
  /// ("checkpoint /x does not exist", "checkpoint folder /x holds neither ...").
  explicit Checkpoint(std::filesystem::path path) : path_(std::move(path)) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path_, ec)) {
      if (fs::exists(path_ / single_file_name, ec)) {
        open_single(path_ / single_file_name);
      } else if (fs::exists(path_ / index_file_name, ec)) {
        open_index(path_ / index_file_name);
      } else {
        raise<io_error>("checkpoint folder ", path_.string(), " holds neither ", single_file_name, " nor ",
                        index_file_name);
      }
    } else if (!fs::exists(path_, ec)) {
      raise<io_error>("checkpoint ", path_.string(), " does not exist (expected a folder holding ", single_file_name,
                      " or ", index_file_name, ", an index file or a .safetensors file)");
    } else if (path_.filename().string().ends_with(".index.json")) {
      open_index(path_);
    } else {
      open_single(path_);
    }
  }

  /// What was opened (folder, index or file).
  const std::filesystem::path& path() const { return path_; }
  /// The path as messages print it (the `WeightSource` name of the checkpoint).
  std::string where() const { return path_.string(); }
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
    const io::Json doc = io::parse_json(io::read_text_file(index_path), index);
    MOSS_EXPECTS(doc.is_object(), io_error, index, ": is ", io::kind_name(doc), ", expected a JSON object");
    if (const auto meta = doc.find("metadata"); meta != doc.end()) {
      MOSS_EXPECTS(meta->is_object() || meta->is_null(), io_error, index, ": \"metadata\" is ", io::kind_name(*meta),
                   ", expected an object");
      if (meta->is_object())
        for (auto it = meta->begin(); it != meta->end(); ++it)
          metadata_.emplace(it.key(),
                            it.value().is_string() ? it.value().get<std::string>() : io::dump_json(it.value(), -1));
    }
    const auto map_it = doc.find("weight_map");
    MOSS_EXPECTS(map_it != doc.end(), io_error, index, ": has no \"weight_map\"");
    const io::Json& map = *map_it;
    MOSS_EXPECTS(map.is_object(), io_error, index, ": \"weight_map\" is ", io::kind_name(map),
                 ", expected an object {tensor: shard file}");
    // Collect the shards in file-name order, so `files()` is deterministic.
    std::map<std::string, std::size_t> shard_index;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string& tensor = it.key();
      MOSS_EXPECTS(it.value().is_string(), io_error, index, ": weight_map entry for tensor ",
                   detail::st::quoted(tensor), " is ", io::kind_name(it.value()), ", expected a shard file name");
      const std::string& shard = it.value().get_ref<const std::string&>();
      const fs::path rel(shard);
      const bool escapes = std::any_of(rel.begin(), rel.end(), [](const fs::path& p) { return p == ".."; });
      MOSS_EXPECTS(!shard.empty() && rel.is_relative() && !escapes, io_error, index, ": shard ",
                   detail::st::quoted(shard), " of tensor ", detail::st::quoted(tensor),
                   " must be a file name relative to the index's folder");
      shard_index.emplace(shard, 0);
    }
    const fs::path dir = index_path.parent_path();
    for (auto& [shard, k] : shard_index) {
      const fs::path file = dir / shard;
      std::error_code ec;
      if (!fs::exists(file, ec)) {
        std::string first_tensor;
        for (auto it = map.begin(); it != map.end(); ++it)
          if (it.value().get_ref<const std::string&>() == shard) {
            first_tensor = it.key();
            break;
          }
        raise<io_error>(index, ": shard ", detail::st::quoted(shard), " (holding tensor ",
                        detail::st::quoted(first_tensor), ") is missing: ", file.string(), " does not exist");
      }
      k = files_.size();
      files_.emplace_back(file);
    }
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string& shard = it.value().get_ref<const std::string&>();
      const std::size_t k = shard_index.at(shard);
      MOSS_EXPECTS(files_[k].contains(it.key()), io_error, index, ": tensor ", detail::st::quoted(it.key()),
                   " is mapped to shard ", detail::st::quoted(shard), " but ", files_[k].path().string(),
                   " does not contain it");
      where_.emplace(it.key(), k);
    }
  }

  std::filesystem::path path_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> where_;  // tensor → index into files_
  std::map<std::string, std::string> metadata_;
};

}  // namespace moss
