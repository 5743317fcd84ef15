// moss/core/param_io.hpp: moving parameters between checkpoints, random init and a backend.
//
// Templates over the backend object: `upload` / `download` (found by argument-dependent
// lookup in backend/host.hpp and backend/cuda.cuh) move the data, so every layer writes its
// load, init and save once for both backends.
#pragma once

#include <string>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/random.hpp"
#include "moss/core/safetensors.hpp"

namespace moss {

/// Reads tensor `name` of exactly `shape` from `ckpt`, converted to T, onto `backend`.
/// A missing tensor or a wrong shape is an `io_error` naming the file and the tensor.
template <class T, class Backend>
Buffer<T> load_param(const Backend& backend, const Checkpoint& ckpt, const std::string& name,
                     const std::vector<index_t>& shape) {
  const std::vector<T> host = ckpt.read_as<T>(name, shape);
  return upload(backend, host.data(), static_cast<index_t>(host.size()));
}

/// Like `load_param` but returns an empty buffer when the checkpoint has no tensor `name`.
template <class T, class Backend>
Buffer<T> load_optional_param(const Backend& backend, const Checkpoint& ckpt, const std::string& name,
                              const std::vector<index_t>& shape) {
  if (!ckpt.contains(name)) return Buffer<T>();
  return load_param<T>(backend, ckpt, name, shape);
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

}  // namespace moss
