// moss/ops/embedding/backward_cuda.cuh: `embedding_backward` on CUDA (needs nvcc), queued on the
// stream; the kernels are in backward_kernel.cuh.
//
// The (id, row) pairs are sorted by a CUB radix sort (stable: rows stay ascending within an id),
// then each run of equal ids is summed in ascending row order from zero, as on the host: the
// result is bitwise the host's and bitwise repeatable. Instantiations: 2 key widths (32-bit ids
// when vocab ≤ 2³², else 64-bit) × vec ∈ {1, 4} segment kernels, one keys kernel per width, one
// fill kernel; T only names the forward's table type (the gradients are float32 for every T).
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/embedding/backward_kernel.cuh"
#include "moss/ops/embedding/tuning.cuh"
#include "moss/ops/embedding_backward.hpp"

namespace moss {

namespace detail {

/// Bits that hold every id of a table with `vocab` ≥ 1 rows (at least 1).
inline int embedding_key_bits(index_t vocab) {
  int b = 1;
  while (b < 63 && (index_t(1) << b) < vocab) ++b;
  return b;
}

/// Zeroes (or, with a bad id in the flag, NaN-fills) dtable; a null flag means no bad id.
inline void embedding_backward_fill(const Cuda& gpu, const TensorView<float, 2>& dtable, bool zero,
                                    const unsigned long long* first_bad_row) {
  const index_t vocab = dtable.shape[0], dim = dtable.shape[1];
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("embedding_backward_fill_kernel", embedding_backward_fill_kernel<float>,
               cuda::grid_blocks(vocab * dim, threads), threads, 0, gpu.stream, dtable.data,
               vocab > 1 ? dtable.stride[0] : dim, vocab, dim, zero, first_bad_row);
}

/// The sort and the segment sums with `Key` ids (validated arguments, rows ≥ 1).
template <class Key, class T>
void run_embedding_backward(const Cuda& gpu, const EmbeddingBackwardArgs<T>& a) {
  const index_t rows = a.ids.shape[0], vocab = a.dtable.shape[0], dim = a.dtable.shape[1];
  const int key_bits = embedding_key_bits(vocab);
  const int n = static_cast<int>(rows);
  Buffer<Key> keys = gpu.alloc<Key>(2 * rows, "embedding_backward sort keys");  // (2, rows): input, sorted
  Buffer<std::int32_t> values = gpu.alloc<std::int32_t>(2 * rows, "embedding_backward sort values");
  Buffer<unsigned long long> first_bad = gpu.alloc<unsigned long long>(1, "embedding_backward bad-id flag");
  std::size_t sort_bytes = 0;
  MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys.data(), keys.data() + rows, values.data(),
                                                  values.data() + rows, n, 0, key_bits, gpu.stream));
  Buffer<std::byte> sort_temp =
      gpu.alloc<std::byte>(static_cast<index_t>(sort_bytes > 0 ? sort_bytes : 1), "embedding_backward sort storage");

  MOSS_CUDA_CHECK(cudaMemsetAsync(first_bad.data(), 0xff, sizeof(unsigned long long), gpu.stream));
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("embedding_backward_keys_kernel", embedding_backward_keys_kernel<Key>, cuda::grid_blocks(rows, threads),
               threads, 0, gpu.stream, a.ids.data, a.ids.stride[0], rows, vocab, keys.data(), values.data(),
               first_bad.data());
  MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.data(), sort_bytes, keys.data(), keys.data() + rows,
                                                  values.data(), values.data() + rows, n, 0, key_bits, gpu.stream));
  embedding_backward_fill(gpu, a.dtable, !a.accumulate, first_bad.data());

  const bool vec = cuda::vector_rows(a.dout, 4) && cuda::vector_rows(a.dtable, 4);
  const cuda::RowConfig cfg = embedding_config(dim, vec);
  const auto kernel =
      cfg.vec == 4 ? embedding_backward_segments_kernel<Key, 4> : embedding_backward_segments_kernel<Key, 1>;
  cuda::launch("embedding_backward_segments_kernel", kernel, cuda::row_blocks(rows), cfg.threads, 0, gpu.stream,
               static_cast<const Key*>(keys.data() + rows), static_cast<const std::int32_t*>(values.data() + rows),
               rows, a.dout.data, rows > 1 ? a.dout.stride[0] : dim, a.dtable.data,
               vocab > 1 ? a.dtable.stride[0] : dim, dim, a.accumulate,
               static_cast<const unsigned long long*>(first_bad.data()));
}

}  // namespace detail

/// dtable[v, :] = Σ_{ids[r] = v} dout[r, :] on the GPU (docs/math.md §4), queued on
/// `gpu.stream`; does not synchronise. Unlike the host op, ids are device memory (the forward's
/// ids on CUDA), like dout and dtable. Written (rows of unseen ids become zero) or added when
/// `a.accumulate`. The ids are checked on the device, and the host is not told (that would need
/// a synchronisation): when any id is outside [0, vocab), every element of dtable becomes NaN
/// instead of the host's shape_error, so the bad id shows in the gradient norm (the CUDA forward
/// has already refused such ids unless its caller set `ids_checked`). Scratch from `gpu.alloc`:
/// the sort's keys and values (2 · rows each) and CUB's storage, freed on the stream.
template <class T>
void embedding_backward(const Cuda& gpu, const EmbeddingBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::embedding_backward (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(a, "embedding_backward");
  const index_t rows = a.ids.shape[0], vocab = a.dtable.shape[0];
  if (rows == 0) {  // every row is unseen
    if (!a.accumulate) detail::embedding_backward_fill(gpu, a.dtable, true, nullptr);
    return;
  }
  MOSS_EXPECTS(rows <= INT_MAX, unsupported_error, "embedding_backward (cuda): ", rows,
               " ids exceed the sort's limit of ", INT_MAX, " rows; split the batch");
  if (vocab - 1 <= index_t(UINT32_MAX)) {
    detail::run_embedding_backward<std::uint32_t>(gpu, a);
  } else {
    detail::run_embedding_backward<std::uint64_t>(gpu, a);
  }
}

}  // namespace moss
