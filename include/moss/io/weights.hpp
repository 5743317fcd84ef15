// moss/io/weights.hpp: the concept through which layers read weights, and an in-memory source.
//
// A layer's `load` takes any `WeightSource`: `Checkpoint` (a safetensors folder, index or file),
// `SafetensorsFile`, `WeightMap` below (tensors held in memory, for tests and for parts built in
// code), or a type of the user's own with the same three members.
#pragma once

#include <concepts>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/checkpoint.hpp"
#include "moss/io/safetensors.hpp"

namespace moss {

/// Where layers read weights from. `read_as<T>(name, shape)` returns tensor `name` converted to
/// T (float, f16, bf16) after checking it has `shape` (row-major; a negative entry matches any
/// extent) and throws `io_error` naming `where()` and the tensor when it is missing or has
/// another shape; `contains` lets a layer treat a tensor as optional.
template <class S>
concept WeightSource = requires(const S& s, const std::string& name, const std::vector<index_t>& shape) {
  { s.contains(name) } -> std::convertible_to<bool>;
  { s.template read_as<float>(name, shape) } -> std::same_as<std::vector<float>>;
  { s.template read_as<f16>(name, shape) } -> std::same_as<std::vector<f16>>;
  { s.template read_as<bf16>(name, shape) } -> std::same_as<std::vector<bf16>>;
  { s.where() } -> std::convertible_to<std::string>;  // for messages: the folder, file or label
};

/// A `WeightSource` held in memory: tensor name → shape and float values. Reads convert to f16
/// and bf16 rounding to nearest even, as a float32 checkpoint read as f16 or bf16 would.
class WeightMap {
 public:
  /// An empty map; `label` names it in messages ("weights: missing tensor \"x\"").
  explicit WeightMap(std::string label = "weights") : label_(std::move(label)) {}

  /// Adds tensor `name` with row-major `shape` and `values` (numel of `shape` floats).
  /// `config_error` when the name is taken, `shape_error` for a negative extent or a count
  /// that does not match the shape.
  void add(std::string name, std::vector<index_t> shape, std::vector<float> values) {
    MOSS_EXPECTS(!tensors_.contains(name), config_error, "WeightMap::add: ", label_, ": tensor \"", name,
                 "\" was already added");
    index_t n = 1;
    for (index_t s : shape) {
      MOSS_EXPECTS(s >= 0, shape_error, "WeightMap::add: ", label_, ": tensor \"", name, "\" has a negative extent in ",
                   detail::st::dims_string(shape));
      n *= s;
    }
    MOSS_EXPECTS(static_cast<index_t>(values.size()) == n, shape_error, "WeightMap::add: ", label_, ": tensor \"", name,
                 "\" ", detail::st::dims_string(shape), " needs ", n, " values but ", values.size(), " were given");
    tensors_.emplace(std::move(name), Tensor{std::move(shape), std::move(values)});
  }

  /// The label given at construction.
  std::string where() const { return label_; }
  /// True when tensor `name` was added.
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  /// Number of tensors.
  std::size_t size() const { return tensors_.size(); }
  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(tensors_.size());
    for (const auto& [k, v] : tensors_) r.push_back(k);
    return r;
  }
  /// The shape of tensor `name`; `io_error` "missing tensor" when absent.
  const std::vector<index_t>& shape(std::string_view name) const { return find(name).shape; }

  /// Tensor `name` converted to T (float, f16 or bf16) after checking it has `expected_shape`
  /// (a negative entry matches any extent); `io_error` naming the map and the tensor otherwise.
  template <class T>
  std::vector<T> read_as(std::string_view name, const std::vector<index_t>& expected_shape) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>,
                  "WeightMap::read_as<T>: T is float, moss::f16 or moss::bf16");
    const Tensor& t = find(name);
    bool ok = t.shape.size() == expected_shape.size();
    for (std::size_t i = 0; ok && i < expected_shape.size(); ++i)
      ok = expected_shape[i] < 0 || expected_shape[i] == t.shape[i];
    MOSS_EXPECTS(ok, io_error, label_, ": tensor \"", name, "\" is ", detail::st::dims_string(t.shape),
                 " but expected ", detail::st::dims_string(expected_shape));
    if constexpr (std::is_same_v<T, float>) {
      return t.values;
    } else {
      std::vector<T> r(t.values.size());
      for (std::size_t i = 0; i < r.size(); ++i) r[i] = from_float<T>(t.values[i]);
      return r;
    }
  }

 private:
  struct Tensor {
    std::vector<index_t> shape;
    std::vector<float> values;  // row-major, numel of shape
  };

  const Tensor& find(std::string_view name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end())
      raise<io_error>(label_, ": missing tensor \"", name, "\" (the map holds ", tensors_.size(), " tensors)");
    return it->second;
  }

  std::string label_;
  std::map<std::string, Tensor, std::less<>> tensors_;
};

static_assert(WeightSource<WeightMap> && WeightSource<Checkpoint> && WeightSource<SafetensorsFile>);

}  // namespace moss
