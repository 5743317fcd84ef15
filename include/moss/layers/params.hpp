// moss/layers/params.hpp: making parameters: seeded random init, reading them from a weight
// source (a checkpoint), writing them to a checkpoint, on any backend.
//
// Templates over the backend object: `upload` / `download` move the data. The host overloads
// come from backend/host.hpp (included here); the CUDA ones from backend/cuda.cuh, found by
// argument-dependent lookup when a layer is instantiated with `moss::Cuda`. So every layer
// writes its load, init and save once for both backends.
//
// A parameter is a `Tensor` named by its checkpoint name relative to its block ("in_proj.weight",
// "experts.wi.weight"); the block's prefix ("backbone.layers.3.mixer.") is added when it is
// read or written, so the same layer serves any position.
#pragma once

#include <array>
#include <initializer_list>
#include <string>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/random.hpp"
#include "moss/io/weights.hpp"
#include "moss/io/writer.hpp"

namespace moss {

/// Reads tensor `name` of exactly `shape` from `ckpt`, converted to T, onto `backend`.
/// A missing tensor or a wrong shape is an `io_error` naming the file and the tensor.
template <class T, class Backend, WeightSource Source>
Buffer<T> load_param(const Backend& backend, const Source& ckpt, const std::string& name,
                     const std::vector<index_t>& shape) {
  const std::vector<T> host = ckpt.template read_as<T>(name, shape);
  return upload(backend, host.data(), static_cast<index_t>(host.size()));
}

/// Uploads host values (as float) converted to T.
template <class T, class Backend>
Buffer<T> upload_values(const Backend& backend, const std::vector<float>& values) {
  std::vector<T> host(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) host[i] = from_float<T>(values[i]);
  return upload(backend, host.data(), static_cast<index_t>(host.size()));
}

/// `n` values drawn from N(0, stddev²).
inline std::vector<float> normal_values(Rng& rng, index_t n, double stddev) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<float>(stddev * rng.normal());
  return v;
}

/// `n` values drawn from U(lo, hi).
inline std::vector<float> uniform_values(Rng& rng, index_t n, double lo, double hi) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.uniform(lo, hi));
  return v;
}

/// Copies `b` (on `backend`) to the host and adds it to `writer` as tensor `name` of `shape`.
template <class T, class Backend>
void save_param(const Backend& backend, SafetensorsWriter& writer, const std::string& name, const Buffer<T>& b,
                const std::vector<index_t>& shape) {
  std::vector<T> host(static_cast<std::size_t>(b.size()));
  download(backend, host.data(), b.data(), b.size());
  writer.add(name, shape, host);
}

/// Number of elements of `shape`.
template <std::size_t Rank>
index_t element_count(const Extents<Rank>& shape) {
  index_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

/// A tensor named `name` holding `values` (as float, converted to T) on `backend`.
template <class T, std::size_t Rank, class Backend>
Tensor<T, Rank> tensor_of(const Backend& backend, const Extents<Rank>& shape, const std::vector<float>& values,
                          std::string name) {
  MOSS_EXPECTS(static_cast<index_t>(values.size()) == element_count(shape), shape_error, "tensor_of: ", name, " ",
               shape_string(shape), " needs ", element_count(shape), " values but got ", values.size());
  return Tensor<T, Rank>(upload_values<T>(backend, values), shape, std::move(name));
}

/// A tensor of N(0, stddev²) draws.
template <class T, std::size_t Rank, class Backend>
Tensor<T, Rank> normal_tensor(const Backend& backend, Rng& rng, const Extents<Rank>& shape, double stddev,
                              std::string name) {
  return tensor_of<T>(backend, shape, normal_values(rng, element_count(shape), stddev), std::move(name));
}

/// A tensor of U(lo, hi) draws.
template <class T, std::size_t Rank, class Backend>
Tensor<T, Rank> uniform_tensor(const Backend& backend, Rng& rng, const Extents<Rank>& shape, double lo, double hi,
                               std::string name) {
  return tensor_of<T>(backend, shape, uniform_values(rng, element_count(shape), lo, hi), std::move(name));
}

/// A tensor with every element `value`.
template <class T, std::size_t Rank, class Backend>
Tensor<T, Rank> constant_tensor(const Backend& backend, const Extents<Rank>& shape, float value, std::string name) {
  return tensor_of<T>(backend, shape, std::vector<float>(static_cast<std::size_t>(element_count(shape)), value),
                      std::move(name));
}

/// A zeroed tensor of element type U shaped and named like `t` (absent when `t` is absent): the
/// float32 gradient of a parameter.
template <class U, class T, std::size_t Rank, class Backend>
Tensor<U, Rank> zeros_like(const Backend& backend, const Tensor<T, Rank>& t) {
  if (!t.present()) return {};
  return constant_tensor<U>(backend, t.shape(), 0.0f, t.name());
}

/// The gradients of a backward pass over no token: written as zeros, or, when the pass
/// accumulates, left as they are (there is nothing to add). `visit(g, f)` calls f(name, tensor)
/// for every gradient tensor of `g` (a block's visit_params, an expert kind's visit).
template <class Backend, class G, class Visit>
void no_token_gradients(const Backend& backend, G& g, Visit&& visit, bool accumulate) {
  if (!accumulate) visit(g, [&](const auto&, auto& t) { fill_zero(backend, t.buffer()); });
}

/// Reads `prefix + name` of exactly `shape` from `src` (converted to T) into a tensor named `name`.
/// A missing tensor or another shape is an `io_error` naming the file and the tensor.
template <class T, std::size_t Rank, class Backend, WeightSource Source>
Tensor<T, Rank> load_tensor(const Backend& backend, const Source& src, const std::string& prefix,
                            const std::string& name, const Extents<Rank>& shape) {
  return Tensor<T, Rank>(load_param<T>(backend, src, prefix + name, std::vector<index_t>(shape.begin(), shape.end())),
                         shape, name);
}

/// Like `load_tensor`, but the tensor may be stored under any of `names` (the first is the
/// canonical one, later ones are accepted aliases, e.g. Hugging Face's); the tensor is named
/// after the canonical one.
template <class T, std::size_t Rank, class Backend, WeightSource Source>
Tensor<T, Rank> load_tensor_any(const Backend& backend, const Source& src, const std::string& prefix,
                                std::initializer_list<std::string> names, const Extents<Rank>& shape) {
  const std::string& canonical = *names.begin();
  for (const std::string& n : names)
    if (src.contains(prefix + n)) {
      Tensor<T, Rank> t = load_tensor<T>(backend, src, prefix, n, shape);
      return Tensor<T, Rank>(std::move(t.buffer()), shape, canonical);
    }
  return load_tensor<T>(backend, src, prefix, canonical, shape);  // raises the missing-tensor error
}

/// Adds `t` to `writer` as `prefix + t.name()` (absent tensors are skipped).
template <class T, std::size_t Rank, class Backend>
void save_tensor(const Backend& backend, SafetensorsWriter& writer, const std::string& prefix,
                 const Tensor<T, Rank>& t) {
  if (!t.present()) return;
  save_param(backend, writer, prefix + t.name(), t.buffer(), t.dims());
}

}  // namespace moss
