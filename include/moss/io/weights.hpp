// moss/io/weights.hpp: the concept through which layers read weights, and an in-memory source.
//
// A layer's `load` takes any `WeightSource`: `Checkpoint` (a safetensors folder, index or file),
// `SafetensorsFile`, `WeightMap` below (tensors held in memory, for tests and for parts built in
// code), or a type of the user's own with the same three members. `CheckedSource` wraps any of
// them to record which tensors are read and check their values (what a model's `load` does,
// as `LoadOptions` says).
#pragma once

#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <set>
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

/// How a model's `load` validates a checkpoint (see `CheckedSource`). The defaults refuse every
/// checkpoint that the model could not run exactly as its author meant.
struct LoadOptions {
  /// Accept tensors that the model does not read. Off: a tensor the model leaves unread (a layer
  /// beyond num_hidden_layers, a conv1d.bias under use_conv_bias false, ...) is an `io_error`
  /// listing them, since running without them computes something other than the checkpoint.
  bool allow_unused_tensors = false;
  /// Check every floating tensor read (f32, f16, bf16 as stored, and after the conversion to
  /// the model's storage type) for NaN and ±Inf: an `io_error` names the tensor, the first bad
  /// flat index and its value. Off: the values are used as they are.
  bool check_finite = true;
};

namespace detail {

/// The largest finite value of storage type T (float, f16 or bf16), for messages.
template <class T>
constexpr double largest_finite() {
  if constexpr (std::is_same_v<T, f16>) return 65504.0;
  if constexpr (std::is_same_v<T, bf16>) return 3.3895313892515355e38;
  return 3.4028234663852886e38;
}

/// "f32", "f16" or "bf16": the name of storage type T in messages.
template <class T>
constexpr std::string_view storage_name() {
  return dtype_name(dtype_of<T>);
}

/// `x` in the shortest text that reads back to the same float ("0.1", "70000", "nan", "-inf").
inline std::string float_text(float x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

/// Up to `max_listed` names in double quotes, then "and N more".
inline std::string listed_names(const std::vector<std::string>& names, std::size_t max_listed = 5) {
  std::string s;
  for (std::size_t i = 0; i < names.size() && i < max_listed; ++i) s += (i ? ", " : "") + st::quoted(names[i]);
  if (names.size() > max_listed) s += cat(" and ", names.size() - max_listed, " more");
  return s;
}

}  // namespace detail

/// A `WeightSource` that wraps another one (by reference), records which tensors are read and
/// checks their values: what a model's `load` reads through, so that a checkpoint the model
/// cannot run as meant is an error naming the tensor. Wrap a source yourself to give a layer's
/// own `load` the same checks:
///   const moss::Checkpoint ckpt(dir);
///   const moss::CheckedSource src(ckpt, moss::LoadOptions{});
///   auto p = layer.load(backend, src, "backbone.layers.0.mixer.");
///   src.expect_all_read("Mamba layer 0");
/// Reads are safe from several threads (the record is guarded by a mutex).
template <WeightSource S>
class CheckedSource {
 public:
  /// Wraps `source` (which must outlive this object) with `options`.
  explicit CheckedSource(const S& source, LoadOptions options = {}) : src_(source), opt_(options) {}

  /// The wrapped source's `where()`.
  std::string where() const { return src_.where(); }
  /// True when the wrapped source holds `name` (not recorded as a read).
  bool contains(std::string_view name) const { return src_.contains(std::string(name)); }
  /// The options given at construction.
  const LoadOptions& options() const { return opt_; }
  /// True when the wrapped source can list its tensors (has `names()`), so unread ones can be found.
  static constexpr bool lists_names = requires(const S& s) {
    { s.names() } -> std::convertible_to<std::vector<std::string>>;
  };
  /// The wrapped source's tensor names (only for sources that list them).
  std::vector<std::string> names() const requires lists_names { return src_.names(); }

  /// `read_as` of the wrapped source; records `name` as read and, with `check_finite`, raises
  /// `io_error` at the first NaN or ±Inf (naming the tensor, the flat index and the value, and
  /// telling a stored non-finite value from a finite one that overflows T).
  template <class T>
  std::vector<T> read_as(std::string_view name, const std::vector<index_t>& expected_shape) const {
    const std::string key(name);
    std::vector<T> v = src_.template read_as<T>(key, expected_shape);
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      read_.insert(key);
    }
    if (opt_.check_finite) expect_finite(key, expected_shape, v);
    return v;
  }

  /// The names read so far, sorted.
  std::vector<std::string> read_names() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return {read_.begin(), read_.end()};
  }
  /// The wrapped source's tensors that were not read, sorted. A source without `names()` cannot
  /// be checked: `unsupported_error` (add `names()` to it, or allow unused tensors).
  std::vector<std::string> unread_names() const {
    if constexpr (lists_names) {
      const std::lock_guard<std::mutex> lock(mutex_);
      std::vector<std::string> r;
      for (const std::string& n : src_.names())
        if (!read_.contains(n)) r.push_back(n);
      return r;
    } else {
      raise<unsupported_error>(src_.where(), ": this weight source has no names(), so moss cannot check that ",
                               "every tensor of it is used; give it a names() member or load with ",
                               "LoadOptions{.allow_unused_tensors = true}");
    }
  }
  /// Unless `allow_unused_tensors`, raises `io_error` when a tensor of the source was not read:
  /// "{where}: N tensors are not used by {reader}: "a", "b", ... and K more{why(unread)}; ...".
  /// `why`, when given, explains the cause from the unread names (e.g. "; the config has
  /// num_hidden_layers 1 but the checkpoint also holds layer 1"); it may return "".
  void expect_all_read(const std::string& reader,
                       const std::function<std::string(const std::vector<std::string>&)>& why = {}) const {
    if (opt_.allow_unused_tensors) return;
    const std::vector<std::string> unread = unread_names();
    if (unread.empty()) return;
    const bool one = unread.size() == 1;
    raise<io_error>(src_.where(), ": ", unread.size(), one ? " tensor is" : " tensors are", " not used by ", reader,
                    ": ", detail::listed_names(unread), why ? why(unread) : std::string(), "; running without ",
                    one ? "it" : "them", " would not compute what the checkpoint holds (load with ",
                    "LoadOptions{.allow_unused_tensors = true} to ignore ", one ? "it" : "them", ")");
  }

 private:
  template <class T>
  void expect_finite(const std::string& name, const std::vector<index_t>& shape, const std::vector<T>& v) const {
    std::size_t first = v.size(), bad = 0;
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(to_float(v[i]))) {
        if (first == v.size()) first = i;
        ++bad;
      }
    if (bad == 0) return;
    const float got = to_float(v[first]);
    std::string stored_as;
    if constexpr (requires(const S& s) { s.info(std::string_view{}).dtype; })
      stored_as = cat(" (stored as ", dtype_name(src_.info(std::string_view(name)).dtype), ")");
    // The stored value: a float read is exact for f32, f16 and bf16 data.
    const float stored = std::is_same_v<T, float> ? got : src_.template read_as<float>(name, shape)[first];
    const std::string count = bad == 1 ? "" : cat(" (", bad, " non-finite values in all)");
    if (std::isfinite(stored))
      raise<io_error>(src_.where(), ": tensor ", detail::st::quoted(name), " element ", first, " (flat index) is ",
                      detail::float_text(stored), stored_as, ", which overflows ", detail::storage_name<T>(),
                      " (largest finite ", detail::largest_finite<T>(), ")", count, "; load the model in ",
                      std::is_same_v<T, f16> ? "bf16 or f32" : "f32", " instead");
    raise<io_error>(src_.where(), ": tensor ", detail::st::quoted(name), " holds a non-finite value: element ", first,
                    " (flat index) is ", detail::float_text(stored), stored_as, count,
                    "; the model's outputs would be NaN or Inf (load with LoadOptions{.check_finite = false} to use "
                    "it anyway)");
  }
  const S& src_;
  LoadOptions opt_;
  mutable std::mutex mutex_;
  mutable std::set<std::string, std::less<>> read_;
};

static_assert(WeightSource<WeightMap> && WeightSource<Checkpoint> && WeightSource<SafetensorsFile>);
static_assert(WeightSource<CheckedSource<WeightMap>> && WeightSource<CheckedSource<Checkpoint>>);

}  // namespace moss
