// moss/cuda/reduce.cuh: warp and block reductions (sum, max) built on CUB (needs nvcc).
//
// Every reduction here returns its result to every participating thread, in a fixed order for
// a given block shape (so the result is deterministic run to run), and propagates NaN: `sum`
// by IEEE addition, `max` through `NanMax`, which returns NaN when either side is NaN (CUB's
// own maximum keeps or drops a NaN depending on where it stands).
//  - `WarpReduce<T, kLanes>`: cub::WarpReduce over logical warps of kLanes lanes (a power of
//    two: CUB's shuffle form, which needs no memory); `warp_sum` / `warp_max` for short.
//  - `BlockReduce<T, kThreads>`: cub::BlockReduce (warp-reductions algorithm) for kernels whose
//    block size is a compile-time constant.
//  - `BlockReduceUpTo<T, kMaxThreads>`: for kernels whose block size is chosen at run time (any
//    multiple of 32 up to kMaxThreads): a cub::WarpReduce per warp, then every warp reduces the
//    warps' partials itself, so the result needs no broadcast barrier.
// Each exposes its `TempStorage` (shared memory the caller declares); a block reduction ends
// with a barrier, so the caller may reuse its storage at once.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "moss/core/config.hpp"
#include "moss/cuda/launch.cuh"

namespace moss::cuda {

/// a + b.
struct Sum {
  template <class T>
  MOSS_HD T operator()(const T& a, const T& b) const {
    return a + b;
  }
};

/// The larger of a and b, or NaN when either is NaN (fmaxf would drop it). Of +0 and −0 it
/// returns the second.
struct NanMax {
  template <class T>
  MOSS_HD T operator()(const T& a, const T& b) const {
    return (a > b || a != a) ? a : b;
  }
};

/// Reductions over logical warps of `kLanes` lanes (a power of two ≤ 32: lanes 0 … kLanes−1,
/// kLanes … 2·kLanes−1, … of each warp reduce separately), built on cub::WarpReduce. All 32
/// lanes of the warp must call; each lane gets its logical warp's result.
template <class T = float, int kLanes = kWarpThreads>
struct WarpReduce {
  static_assert(kLanes >= 1 && kLanes <= kWarpThreads && (kLanes & (kLanes - 1)) == 0,
                "moss::cuda::WarpReduce: kLanes must be a power of two in 1 ... 32");
  using Cub = cub::WarpReduce<T, kLanes>;
  /// Memory of one logical warp: empty (CUB's shuffle form for power-of-two widths), so a
  /// local variable serves; kept in the interface so callers never depend on that.
  using TempStorage = typename Cub::TempStorage;

  /// The reduction of `v` by `op` over the logical warp.
  template <class Op>
  MOSS_DEVICE static T reduce(T v, TempStorage& storage, Op op) {
    return broadcast(Cub(storage).Reduce(v, op));
  }
  /// The reduction over the first `valid` lanes of the logical warp (1 ≤ valid ≤ kLanes); the
  /// other lanes' values are ignored.
  template <class Op>
  MOSS_DEVICE static T reduce(T v, TempStorage& storage, Op op, int valid) {
    return broadcast(Cub(storage).Reduce(v, op, valid));
  }
  MOSS_DEVICE static T sum(T v, TempStorage& storage) { return reduce(v, storage, Sum{}); }
  MOSS_DEVICE static T max(T v, TempStorage& storage) { return reduce(v, storage, NanMax{}); }

 private:
  /// CUB leaves the result in the logical warp's lane 0.
  MOSS_DEVICE static T broadcast(T v) {
    if constexpr (kLanes == 1) {
      return v;
    } else {
      return __shfl_sync(0xffffffffu, v, 0, kLanes);
    }
  }
};

/// Sum of `v` over each logical warp of `kLanes` lanes (a power of two ≤ 32), to every lane.
template <int kLanes = kWarpThreads, class T>
MOSS_DEVICE T warp_sum(T v) {
  typename WarpReduce<T, kLanes>::TempStorage none;  // CUB's shuffle form never touches it
  return WarpReduce<T, kLanes>::sum(v, none);
}

/// Maximum of `v` over each logical warp of `kLanes` lanes (a power of two ≤ 32), to every
/// lane; NaN when any lane holds NaN.
template <int kLanes = kWarpThreads, class T>
MOSS_DEVICE T warp_max(T v) {
  typename WarpReduce<T, kLanes>::TempStorage none;  // CUB's shuffle form never touches it
  return WarpReduce<T, kLanes>::max(v, none);
}

/// Reductions over a 1-D block of exactly `kThreads` threads, built on cub::BlockReduce
/// (BLOCK_REDUCE_WARP_REDUCTIONS: a fixed order). Every thread of the block must call.
template <class T, int kThreads>
struct BlockReduce {
  static_assert(kThreads >= 1 && kThreads <= kMaxBlockThreads,
                "moss::cuda::BlockReduce: kThreads must be in 1 ... 1024");
  using Cub = cub::BlockReduce<T, kThreads, cub::BLOCK_REDUCE_WARP_REDUCTIONS>;
  /// Shared memory of one reduction: CUB's, and the slot that hands thread 0's result to all.
  struct TempStorage {
    typename Cub::TempStorage cub;
    T result;
  };

  /// The reduction of `v` by `op` over the block, to every thread.
  template <class Op>
  MOSS_DEVICE static T reduce(T v, TempStorage& storage, Op op) {
    const T r = Cub(storage.cub).Reduce(v, op);
    if (threadIdx.x == 0) storage.result = r;
    __syncthreads();
    const T all = storage.result;
    __syncthreads();
    return all;
  }
  MOSS_DEVICE static T sum(T v, TempStorage& storage) { return reduce(v, storage, Sum{}); }
  MOSS_DEVICE static T max(T v, TempStorage& storage) { return reduce(v, storage, NanMax{}); }
};

/// Reductions over a 1-D block whose size is chosen at launch: blockDim.x a multiple of 32 and
/// at most `kMaxThreads`. A cub::WarpReduce per warp, one barrier, then every warp reduces the
/// warps' partials (in warp order) itself; a second barrier frees the storage. Every thread of
/// the block must call.
template <class T, int kMaxThreads = kMaxBlockThreads>
struct BlockReduceUpTo {
  static_assert(kMaxThreads % kWarpThreads == 0 && kMaxThreads <= kMaxBlockThreads,
                "moss::cuda::BlockReduceUpTo: kMaxThreads must be a multiple of 32, at most 1024");
  using Warp = WarpReduce<T, kWarpThreads>;
  /// Shared memory of one reduction: one partial per warp.
  struct TempStorage {
    T partial[kMaxThreads / kWarpThreads];
  };

  /// The reduction of `v` by `op` over the block, to every thread.
  template <class Op>
  MOSS_DEVICE static T reduce(T v, TempStorage& storage, Op op) {
    typename Warp::TempStorage none;  // the 32-lane shuffle form needs no memory
    const int lane = static_cast<int>(threadIdx.x) % kWarpThreads;
    const int warps = static_cast<int>(blockDim.x) / kWarpThreads;
    v = Warp::reduce(v, none, op);
    if (lane == 0) storage.partial[threadIdx.x / kWarpThreads] = v;
    __syncthreads();
    const T all = Warp::reduce(lane < warps ? storage.partial[lane] : storage.partial[0], none, op, warps);
    __syncthreads();
    return all;
  }
  MOSS_DEVICE static T sum(T v, TempStorage& storage) { return reduce(v, storage, Sum{}); }
  MOSS_DEVICE static T max(T v, TempStorage& storage) { return reduce(v, storage, NanMax{}); }
};

}  // namespace moss::cuda
