// moss/ops/selective_scan/backward_kernel.cuh: the kernels of the CUDA selective-scan backward
// (needs nvcc; docs/math.md §4.1, the host oracle is backward_host.hpp, the launch code and the
// design notes are in backward_cuda.cuh).
//
// Main kernel: one block per (batch row b, super-tile of channels). A super-tile is `subtiles`
// sub-tiles of kThreads / kLanes channels, walked one after the other; inside a sub-tile a channel
// is a logical warp of kLanes lanes, lane l holding the states n = l + i·kLanes (i < kSpt) in
// registers. Per sub-tile:
//  1. Forward over L with the forward's arithmetic (math.hpp), writing the state entering every
//     chunk of `chunk` steps to the checkpoint workspace (the thread reads back only what it wrote).
//  2. Chunks from the last to the first: the chunk's states are recomputed from its checkpoint
//     into shared memory (with y, the output before the gate, for dz), then its steps are walked
//     from last to first with the adjoint λ = dL/dh in registers (the reverse-time recurrence
//     λ_{t−1} = a_t·λ_t + dy_{t−1}·C_{t−1}, itself a linear scan). Each step writes du, ddelta and
//     dz (one lane per channel), and leaves its per-channel contributions to dC (dy·h_t, over the
//     shared state slot of h_t, no longer needed) and dB (λ·Δ·u) in shared memory; after a barrier
//     the block adds them over the channels of each group (increasing channel order) into its
//     slots of the dB / dC partial workspace.
//  3. λ left is dinitial_state; the per-(b, d) sums over t of dA, dD and d delta_bias (t from
//     L − 1 down to 0, like the host) go to the per-batch-row partial workspace.
// Second pass: `backward_bc_reduce_kernel` adds the dB / dC partials over the super-tiles of a
// group (increasing) and, for a view with zero strides, over batch (outer) and L (done in the main
// kernel already, t decreasing); `backward_param_reduce_kernel` adds dA, dD and d delta_bias over
// batch in increasing order. No atomics: every sum has one order, fixed by the shapes.
#pragma once

#include <cuda_runtime.h>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/ops/selective_scan/math.hpp"

namespace moss::detail::scan {

/// Everything the main backward kernel needs, by value. Views are the caller's (validated); an
/// absent optional one has null data.
template <class T>
struct BackwardParams {
  ConstView<T, 3> u, delta, z, dout;
  ConstView<float, 2> A;
  ConstView<T, 4> B, C;
  ConstView<float, 1> D, delta_bias;
  ConstView<float, 3> initial_state, dfinal_state;
  bool delta_softplus = false;
  TensorView<T, 3> du, ddelta, dz;
  TensorView<float, 3> dinitial_state;
  bool want_db = false, want_dc = false;
  // Workspace (see backward_cuda.cuh for the layouts).
  float* ckpt = nullptr;                  // (batch, dim, chunks, N): the state entering each chunk
  bool ckpt_ready = false;                // the warp-per-state kernel: ckpt already holds them
  float* dA_part = nullptr;               // (batch, dim, N), null when dA is not asked for
  float* dD_part = nullptr;               // (batch, dim), null when dD is not asked for
  float* dbias_part = nullptr;            // (batch, dim), null when d delta_bias is not asked for
  float* dB_part = nullptr;               // (batch, slots_b, N, L or 1)
  float* dC_part = nullptr;               // (batch, slots_c, N, L or 1)
  index_t slots_b = 0, slots_c = 0;       // super-tiles + groups − 1
  index_t cpg_b = 1, cpg_c = 1;           // channels per group of B / C
  bool sum_t_b = false, sum_t_c = false;  // the dB / dC view sums over L (zero stride)
  index_t batch = 0, dim = 0, L = 0;
  int N = 0;
  int chunk = 1;           // steps per recomputed chunk
  index_t chunks = 0;      // ceil(L / chunk)
  int subtiles = 1;        // sub-tiles per super-tile
  index_t supertiles = 1;  // super-tiles per batch row (the warp-per-state kernel: slices)
  int slice_channels = 0;  // channels per block of the warp-per-state kernel (backward_state_kernel.cuh)
};

/// d softplus(x) / dx = σ(x), and 1 above 20 where the forward's softplus is x itself (the host's
/// `softplus_grad`, with the device's expf).
MOSS_DEVICE float softplus_grad_f(float x) { return x > 20.0f ? 1.0f : 1.0f / (1.0f + expf(-x)); }

/// d silu(z) / dz = σ(z) · (1 + z · (1 − σ(z))) (the host's `silu_grad`, with the device's expf).
MOSS_DEVICE float silu_grad_f(float z) {
  const float s = 1.0f / (1.0f + expf(-z));
  return s * (1.0f + z * (1.0f - s));
}

/// Adds one recomputed chunk's per-channel contributions `buf` (shared memory, element (channel
/// c, state n, step j) at (j·kSpt + n / kLanes)·kThreads + c·kLanes + n % kLanes) over the
/// channels of each group of the sub-tile [sub_d0, sub_d0 + rows), channels in increasing order,
/// into the block's slots of the partial workspace `part` (batch, slots, N, lp): written by the
/// first sub-tile of the super-tile that holds the group, added to by the later ones; with
/// `sum_t` (lp = 1) also summed over the steps, from the last to the first, into a slot the block
/// zeroed at its start.
template <int kLanes, int kSpt, int kThreads>
MOSS_DEVICE void reduce_chunk(const float* buf, float* part, bool sum_t, index_t slots, index_t lp, index_t cpg,
                              index_t b, index_t st, index_t st_d0, index_t sub_d0, int rows, int N, index_t t0,
                              int nt) {
  const index_t g_lo = sub_d0 / cpg, g_hi = (sub_d0 + rows - 1) / cpg;
  const int groups = static_cast<int>(g_hi - g_lo + 1);
  const int per_group = sum_t ? N : N * nt;
  for (int i = static_cast<int>(threadIdx.x); i < groups * per_group; i += kThreads) {
    const int j = i / per_group, r = i - j * per_group;
    const int n = sum_t ? r : r / nt;
    const int tt = sum_t ? 0 : r - n * nt;
    const index_t g = g_lo + j;
    const index_t first_d = g * cpg > st_d0 ? g * cpg : st_d0;  // the group's first channel in the super-tile
    const int c_begin = static_cast<int>((g * cpg > sub_d0 ? g * cpg : sub_d0) - sub_d0);
    const int c_end = static_cast<int>(((g + 1) * cpg < sub_d0 + rows ? (g + 1) * cpg : sub_d0 + rows) - sub_d0);
    const int base = (n / kLanes) * kThreads + n % kLanes;
    float* dst = part + ((b * slots + st + g) * N + n) * lp;
    if (sum_t) {
      float acc = *dst;
      for (int jj = nt - 1; jj >= 0; --jj) {
        float v = 0.0f;
        for (int c = c_begin; c < c_end; ++c) v += buf[jj * kSpt * kThreads + base + c * kLanes];
        acc += v;
      }
      *dst = acc;
    } else {
      float v = 0.0f;
      for (int c = c_begin; c < c_end; ++c) v += buf[tt * kSpt * kThreads + base + c * kLanes];
      float& out = dst[t0 + tt];
      out = first_d >= sub_d0 ? v : out + v;
    }
  }
}

/// Zeroes the slots (batch row b, super-tile st) of a summed-over-L partial workspace.
template <int kThreads>
MOSS_DEVICE void zero_time_slots(float* part, index_t slots, index_t cpg, index_t b, index_t st, index_t st_d0,
                                 index_t st_d1, int N) {
  const index_t g_lo = st_d0 / cpg, g_hi = (st_d1 - 1) / cpg;
  const index_t items = (g_hi - g_lo + 1) * N;
  for (index_t i = threadIdx.x; i < items; i += kThreads) {
    const index_t g = g_lo + i / N, n = i % N;
    part[(b * slots + st + g) * N + n] = 0.0f;
  }
}

/// The main backward kernel: one block per (batch row, super-tile of channels); see the top.
template <class T, int kLanes, int kSpt, int kThreads>
__global__ void __launch_bounds__(kThreads) selective_scan_backward_kernel(const BackwardParams<T> p) {
  static_assert(kThreads % kLanes == 0 && kLanes <= 32, "moss: a channel is a logical warp of kLanes lanes");
  constexpr int kChannels = kThreads / kLanes;  // per sub-tile
  extern __shared__ __align__(16) unsigned char smem[];
  const index_t slab = static_cast<index_t>(p.chunk) * kSpt * kThreads;
  float* hbuf = reinterpret_cast<float*>(smem);  // states of the chunk, then the dC contributions
  float* dbbuf = hbuf + slab;                    // dB contributions (when asked for)
  float* ybuf = dbbuf + (p.want_db ? slab : 0);  // (channel, step): y before the gate
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid / kLanes, lane = tid - c * kLanes;
  const index_t st = blockIdx.x % p.supertiles;
  const index_t b = blockIdx.x / p.supertiles;
  const index_t st_d0 = st * p.subtiles * kChannels;
  const index_t st_d1 = st_d0 + p.subtiles * kChannels < p.dim ? st_d0 + p.subtiles * kChannels : p.dim;
  const index_t N = p.N, L = p.L, K = p.chunk;
  const bool has_z = p.z.data != nullptr, has_d = p.D.data != nullptr;
  const bool want_dz = p.dz.data != nullptr;

  if (p.want_db && p.sum_t_b) zero_time_slots<kThreads>(p.dB_part, p.slots_b, p.cpg_b, b, st, st_d0, st_d1, p.N);
  if (p.want_dc && p.sum_t_c) zero_time_slots<kThreads>(p.dC_part, p.slots_c, p.cpg_c, b, st, st_d0, st_d1, p.N);
  // (the first barrier below, before any reduce_chunk, orders these stores before the additions)

  for (int s = 0; s < p.subtiles; ++s) {
    const index_t sub_d0 = st_d0 + static_cast<index_t>(s) * kChannels;
    if (sub_d0 >= p.dim) break;  // the same for the whole block
    const int rows = static_cast<int>(p.dim - sub_d0 < kChannels ? p.dim - sub_d0 : kChannels);
    const bool active = c < rows;
    // Inactive channels run the loops (warp reductions, barriers) on channel sub_d0's inputs and
    // write nothing; their states never leave their own lanes and shared-memory slots.
    const index_t d = active ? sub_d0 + c : sub_d0;
    const index_t gb = d / p.cpg_b, gc = d / p.cpg_c;

    float a_raw[kSpt], a_scaled[kSpt], h[kSpt], h_in[kSpt], lam[kSpt], dA_acc[kSpt];
#pragma unroll
    for (int i = 0; i < kSpt; ++i) {
      const index_t n = lane + i * kLanes;
      const bool ok = n < N;
      a_raw[i] = ok ? p.A(d, n) : 0.0f;
      a_scaled[i] = a_log2e(a_raw[i]);
      lam[i] = ok && p.dfinal_state.data ? p.dfinal_state(b, d, n) : 0.0f;
      h[i] = ok && p.initial_state.data ? p.initial_state(b, d, n) : 0.0f;
      dA_acc[i] = 0.0f;
    }
    const float d_skip = has_d ? p.D(d) : 0.0f;
    const float bias = p.delta_bias.data ? p.delta_bias(d) : 0.0f;
    float dD_acc = 0.0f, dbias_acc = 0.0f;
    auto b_at = [&](index_t n, index_t t) { return n < N ? to_float(p.B(b, gb, n, t)) : 0.0f; };
    auto c_at = [&](index_t n, index_t t) { return n < N ? to_float(p.C(b, gc, n, t)) : 0.0f; };
    float* ck = p.ckpt + (b * p.dim + d) * p.chunks * N;

    // 1. Forward, writing the state entering every chunk (the last chunk's steps are not needed).
    const index_t t_last = p.chunks > 0 ? (p.chunks - 1) * K : 0;
    for (index_t t = 0; p.chunks > 0; ++t) {
      if (t % K == 0 && active) {
#pragma unroll
        for (int i = 0; i < kSpt; ++i)
          if (lane + i * kLanes < N) ck[(t / K) * N + lane + i * kLanes] = h[i];
      }
      if (t == t_last) break;
      const float u = to_float(p.u(b, d, t));
      const float dt = delta_value(to_float(p.delta(b, d, t)), bias, p.delta_softplus);
      const float dt_u = dt * u;
#pragma unroll
      for (int i = 0; i < kSpt; ++i) h[i] = update_state(h[i], dt, a_scaled[i], dt_u, b_at(lane + i * kLanes, t));
    }

    // 2. The chunks from the last to the first.
    for (index_t k = p.chunks - 1; k >= 0; --k) {
      const index_t t0 = k * K;
      const int nt = static_cast<int>(L - t0 < K ? L - t0 : K);
#pragma unroll
      for (int i = 0; i < kSpt; ++i) {
        const bool ok = active && lane + i * kLanes < N;
        h[i] = ok ? ck[k * N + lane + i * kLanes] : 0.0f;
        h_in[i] = h[i];
      }
      // Recompute the chunk's states (and y when dz needs it).
      for (int j = 0; j < nt; ++j) {
        const index_t t = t0 + j;
        const float u = to_float(p.u(b, d, t));
        const float dt = delta_value(to_float(p.delta(b, d, t)), bias, p.delta_softplus);
        const float dt_u = dt * u;
        float y = 0.0f;
#pragma unroll
        for (int i = 0; i < kSpt; ++i) {
          const index_t n = lane + i * kLanes;
          h[i] = update_state(h[i], dt, a_scaled[i], dt_u, b_at(n, t));
          hbuf[(j * kSpt + i) * kThreads + tid] = h[i];
          if (want_dz) y += c_at(n, t) * h[i];
        }
        if (want_dz) {
          y = cuda::warp_sum<kLanes>(y);
          if (has_d) y = add_skip(y, d_skip, u);
          if (lane == 0) ybuf[c * K + j] = y;  // read back by this lane only
        }
      }
      // Walk the chunk backwards.
      for (int j = nt - 1; j >= 0; --j) {
        const index_t t = t0 + j;
        const float u = to_float(p.u(b, d, t));
        const float x = to_float(p.delta(b, d, t)) + bias;
        const float dt = delta_value(to_float(p.delta(b, d, t)), bias, p.delta_softplus);
        const float g = to_float(p.dout(b, d, t));
        float dy = g;
        if (has_z) {
          const float zv = to_float(p.z(b, d, t));
          if (want_dz && lane == 0 && active) p.dz(b, d, t) = from_float<T>(g * ybuf[c * K + j] * silu_grad_f(zv));
          dy = g * silu(zv);
        }
        dD_acc += dy * u;
        float du_part = 0.0f, ddt_part = 0.0f;
#pragma unroll
        for (int i = 0; i < kSpt; ++i) {
          const index_t n = lane + i * kLanes;
          const float bn = b_at(n, t), cn = c_at(n, t);
          float* h_slot = hbuf + (j * kSpt + i) * kThreads + tid;
          const float h_t = *h_slot;
          const float h_prev = j == 0 ? h_in[i] : hbuf[((j - 1) * kSpt + i) * kThreads + tid];
          lam[i] += dy * cn;  // λ_t = dL/dh_t
          if (p.want_dc) *h_slot = dy * h_t;
          if (p.want_db) dbbuf[(j * kSpt + i) * kThreads + tid] = lam[i] * dt * u;
          const float decay = pow2(dt * a_scaled[i]);  // exp(Δ·A), as the forward computes it
          du_part += lam[i] * dt * bn;
          ddt_part += lam[i] * (h_prev * decay * a_raw[i] + bn * u);
          dA_acc[i] += lam[i] * h_prev * decay * dt;
          lam[i] *= decay;  // → the part of dL/dh_{t−1} that flows through the recurrence
        }
        float du = cuda::warp_sum<kLanes>(du_part);
        if (has_d) du = dy * d_skip + du;
        const float ddt = cuda::warp_sum<kLanes>(ddt_part);
        const float dx = p.delta_softplus ? ddt * softplus_grad_f(x) : ddt;
        dbias_acc += dx;
        if (lane == 0 && active) {
          if (p.du.data) p.du(b, d, t) = from_float<T>(du);
          if (p.ddelta.data) p.ddelta(b, d, t) = from_float<T>(dx);
        }
      }
      __syncthreads();  // every channel's contributions of the chunk are in shared memory
      if (p.want_db)
        reduce_chunk<kLanes, kSpt, kThreads>(dbbuf, p.dB_part, p.sum_t_b, p.slots_b, p.sum_t_b ? 1 : L, p.cpg_b, b, st,
                                             st_d0, sub_d0, rows, p.N, t0, nt);
      if (p.want_dc)
        reduce_chunk<kLanes, kSpt, kThreads>(hbuf, p.dC_part, p.sum_t_c, p.slots_c, p.sum_t_c ? 1 : L, p.cpg_c, b, st,
                                             st_d0, sub_d0, rows, p.N, t0, nt);
      __syncthreads();  // before the next chunk overwrites the buffers
    }

    // 3. λ is now dL/dh_{-1}; the per-(b, d) sums over t.
    if (active) {
#pragma unroll
      for (int i = 0; i < kSpt; ++i) {
        const index_t n = lane + i * kLanes;
        if (n >= N) continue;
        if (p.dinitial_state.data) p.dinitial_state(b, d, n) = lam[i];
        if (p.dA_part) p.dA_part[(b * p.dim + d) * N + n] = dA_acc[i];
      }
      if (lane == 0) {
        if (p.dD_part) p.dD_part[b * p.dim + d] = dD_acc;
        if (p.dbias_part) p.dbias_part[b * p.dim + d] = dbias_acc;
      }
    }
  }
}

/// Second pass of dB or dC: element (b', g, n, t') of `out` is the sum of the partials of group g
/// over its super-tiles (increasing) and, where `out` has a zero stride, over batch (outer,
/// increasing); the time sum of a zero stride along L was formed by the main kernel. Rounded to T
/// once. One thread per element, grid-stride.
template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    backward_bc_reduce_kernel(const float* part, TensorView<T, 4> out, index_t batch, index_t slots, index_t lp,
                              index_t cpg, index_t supertile_channels, bool sum_b, bool sum_t) {
  const index_t groups = out.shape[1], N = out.shape[2];
  const index_t rb = sum_b ? 1 : batch, rl = sum_t ? 1 : out.shape[3];
  const index_t total = rb * groups * N * rl;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t tt = i % rl, n = (i / rl) % N, g = (i / (rl * N)) % groups, bb = i / (rl * N * groups);
    const index_t st_lo = g * cpg / supertile_channels, st_hi = ((g + 1) * cpg - 1) / supertile_channels;
    float acc = 0.0f;
    const index_t b_begin = sum_b ? 0 : bb, b_end = sum_b ? batch : bb + 1;
    for (index_t b = b_begin; b < b_end; ++b)
      for (index_t st = st_lo; st <= st_hi; ++st) acc += part[((b * slots + st + g) * N + n) * lp + (sum_t ? 0 : tt)];
    out(bb, g, n, tt) = from_float<T>(acc);
  }
}

/// dA (dim, N), dD and d delta_bias (dim): the per-batch-row partials added over b in increasing
/// order from zero, written, or added to the output with `accumulate` (the host's order). Null
/// partials / absent outputs are skipped. One thread per (d, n), grid-stride. (A template, as
/// every kernel defined in a header must be, so that each translation unit may instantiate it.)
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    backward_param_reduce_kernel(const float* dA_part, TensorView<float, 2> dA, const float* dD_part,
                                 TensorView<float, 1> dD, const float* dbias_part, TensorView<float, 1> dbias,
                                 index_t batch, index_t dim, index_t N, bool accumulate) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < dim * N;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t d = i / N, n = i % N;
    if (dA.data) {
      float s = 0.0f;
      for (index_t b = 0; b < batch; ++b) s += dA_part[(b * dim + d) * N + n];
      dA(d, n) = accumulate ? dA(d, n) + s : s;
    }
    if (n != 0) continue;
    if (dD.data) {
      float s = 0.0f;
      for (index_t b = 0; b < batch; ++b) s += dD_part[b * dim + d];
      dD(d) = accumulate ? dD(d) + s : s;
    }
    if (dbias.data) {
      float s = 0.0f;
      for (index_t b = 0; b < batch; ++b) s += dbias_part[b * dim + d];
      dbias(d) = accumulate ? dbias(d) + s : s;
    }
  }
}

}  // namespace moss::detail::scan
