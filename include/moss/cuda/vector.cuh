// moss/cuda/vector.cuh: vector loads and stores, and the alignment tests that allow them (needs nvcc).
//
// A bandwidth-bound kernel moves N consecutive elements of T as one 4-, 8- or 16-byte access
// (4 floats or 8 halves in one 16-byte instruction instead of 4 or 8), widened to float on the
// way in and rounded once from float on the way out. The access needs an address aligned to its
// size; whether a strided tensor view allows it is decided on the host, once per launch, by
// `vector_aligned` / `vector_rows`, and the kernel takes a scalar path otherwise.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::cuda {

/// The unsigned vector type of `Bytes` bytes: one load or store instruction.
template <std::size_t Bytes>
struct RawVectorOf;
template <>
struct RawVectorOf<4> {
  using type = std::uint32_t;
};
template <>
struct RawVectorOf<8> {
  using type = uint2;
};
template <>
struct RawVectorOf<16> {
  using type = uint4;
};

/// True when N elements of T form one 4-, 8- or 16-byte access.
template <class T, int N>
inline constexpr bool kIsVectorAccess = N * sizeof(T) == 4 || N * sizeof(T) == 8 || N * sizeof(T) == 16;

/// N elements of T as one raw access (N · sizeof(T) ∈ {4, 8, 16}).
template <class T, int N>
using RawVector = typename RawVectorOf<N * sizeof(T)>::type;

/// Elements of T in one 16-byte access: 4 floats, 8 f16 or bf16.
template <class T>
inline constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

/// How a vector load reaches memory.
enum class Load : std::uint8_t {
  cached,     // ld.global: the default
  read_only,  // ld.global.nc (__ldg): data no thread writes during the kernel
};

/// How a vector store reaches memory.
enum class Store : std::uint8_t {
  cached,     // st.global: the default
  streaming,  // st.global.cs (__stcs): evict first, for output nothing reads again soon
};

namespace detail {

MOSS_DEVICE void vector_words(std::uint32_t raw, std::uint32_t (&w)[1]) { w[0] = raw; }
MOSS_DEVICE void vector_words(const uint2& raw, std::uint32_t (&w)[2]) { w[0] = raw.x, w[1] = raw.y; }
MOSS_DEVICE void vector_words(const uint4& raw, std::uint32_t (&w)[4]) {
  w[0] = raw.x, w[1] = raw.y, w[2] = raw.z, w[3] = raw.w;
}
MOSS_DEVICE std::uint32_t words_vector(const std::uint32_t (&w)[1]) { return w[0]; }
MOSS_DEVICE uint2 words_vector(const std::uint32_t (&w)[2]) { return make_uint2(w[0], w[1]); }
MOSS_DEVICE uint4 words_vector(const std::uint32_t (&w)[4]) { return make_uint4(w[0], w[1], w[2], w[3]); }

}  // namespace detail

/// One load of N elements of T at `p` (aligned to N · sizeof(T)), as raw bits.
template <class T, int N, Load kLoad = Load::cached>
MOSS_DEVICE RawVector<T, N> load_raw(const T* p) {
  static_assert(kIsVectorAccess<T, N>, "moss::cuda::load_raw: N elements of T must be 4, 8 or 16 bytes");
  using Raw = RawVector<T, N>;
  if constexpr (kLoad == Load::read_only) {
    return __ldg(reinterpret_cast<const Raw*>(p));
  } else {
    return *reinterpret_cast<const Raw*>(p);
  }
}

/// One store of N elements of T, given as raw bits, at `p` (aligned to N · sizeof(T)).
template <class T, int N, Store kStore = Store::cached>
MOSS_DEVICE void store_raw(T* p, const RawVector<T, N>& raw) {
  static_assert(kIsVectorAccess<T, N>, "moss::cuda::store_raw: N elements of T must be 4, 8 or 16 bytes");
  using Raw = RawVector<T, N>;
  if constexpr (kStore == Store::streaming) {
    __stcs(reinterpret_cast<Raw*>(p), raw);
  } else {
    *reinterpret_cast<Raw*>(p) = raw;
  }
}

/// The N elements of T (float, f16 or bf16) in `raw`, in address order, widened to float.
template <class T, int N>
MOSS_DEVICE void unpack(const RawVector<T, N>& raw, float (&v)[N]) {
  static_assert(StorageType<T>, "moss::cuda::unpack: T must be float, moss::f16 or moss::bf16");
  constexpr int kWords = static_cast<int>(N * sizeof(T) / 4);
  std::uint32_t w[kWords];
  detail::vector_words(raw, w);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (sizeof(T) == 4) {
      v[i] = __uint_as_float(w[i]);
    } else {
      T e;
      e.bits = static_cast<std::uint16_t>(w[i / 2] >> (16 * (i % 2)));
      v[i] = to_float(e);
    }
  }
}

/// N floats rounded once to T (float, f16 or bf16), packed in address order.
template <class T, int N>
MOSS_DEVICE RawVector<T, N> pack(const float (&v)[N]) {
  static_assert(StorageType<T>, "moss::cuda::pack: T must be float, moss::f16 or moss::bf16");
  constexpr int kWords = static_cast<int>(N * sizeof(T) / 4);
  std::uint32_t w[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    if constexpr (sizeof(T) == 4) {
      w[i] = __float_as_uint(v[i]);
    } else {
      w[i] = from_float<T>(v[2 * i]).bits | (std::uint32_t(from_float<T>(v[2 * i + 1]).bits) << 16);
    }
  }
  return detail::words_vector(w);
}

/// Loads N consecutive elements of T at `p` and widens them to float: one access when N
/// elements make 4, 8 or 16 bytes (`p` aligned to that), else element by element (N = 1, say:
/// the scalar path of a kernel written for both).
template <int N, Load kLoad = Load::cached, class T>
MOSS_DEVICE void load_vec(const T* p, float (&v)[N]) {
  if constexpr (kIsVectorAccess<T, N>) {
    unpack<T, N>(load_raw<T, N, kLoad>(p), v);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_float(p[i]);
  }
}

/// Rounds N floats to T and stores them at `p`: one access when N elements make 4, 8 or 16
/// bytes (`p` aligned to that), else element by element.
template <int N, Store kStore = Store::cached, class T>
MOSS_DEVICE void store_vec(T* p, const float (&v)[N]) {
  if constexpr (kIsVectorAccess<T, N>) {
    store_raw<T, N, kStore>(p, pack<T, N>(v));
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_float<T>(v[i]);
  }
}

/// True when `p` is a multiple of `bytes` (a power of two).
MOSS_HD bool is_aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

/// The largest power of two, at most `cap` (a power of two), that divides the address of `p`
/// (`cap` for null). cuBLASLt picks kernels by this.
inline std::uint32_t address_alignment(const void* p, std::uint32_t cap = 256) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t low = a & (~a + 1);  // the lowest set bit
  return (low == 0 || low > cap) ? cap : static_cast<std::uint32_t>(low);
}

/// True when `v` may be accessed `n` elements at a time along `axis`, in pieces that start at
/// multiples of n along it: unit stride along `axis`, the base aligned to n elements, and the
/// stride of every other axis of extent > 1 a multiple of n (so every piece's start stays
/// aligned). Says nothing of the extent along `axis`: a last piece shorter than n needs the
/// scalar path (see `vector_rows`).
template <class T, std::size_t Rank>
bool vector_aligned(const TensorView<T, Rank>& v, index_t n, std::size_t axis = Rank - 1) {
  if (!is_aligned(v.data, static_cast<std::size_t>(n) * sizeof(T)) || v.stride[axis] != 1) return false;
  for (std::size_t ax = 0; ax < Rank; ++ax)
    if (ax != axis && v.shape[ax] > 1 && v.stride[ax] % n != 0) return false;
  return true;
}

/// True when every row (the last axis) of `v` is whole, aligned vectors of `n` elements: the
/// row length a multiple of n and `vector_aligned` along the last axis.
template <class T, std::size_t Rank>
bool vector_rows(const TensorView<T, Rank>& v, index_t n) {
  return v.shape[Rank - 1] % n == 0 && vector_aligned(v, n, Rank - 1);
}

}  // namespace moss::cuda
