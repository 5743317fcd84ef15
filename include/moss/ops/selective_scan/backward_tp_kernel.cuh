// moss/ops/selective_scan/backward_tp_kernel.cuh: the time-parallel selective-scan backward for
// d_state ≤ 16 (needs nvcc; docs/math.md §4.1; launch and choice in backward_cuda.cuh).
//
// One block per (batch row b, slice of kTpSliceChannels channels); its 256 threads lie along
// time, each holding 2 consecutive steps of a 512-step chunk. Both recurrences are linear, so each
// is a block scan of affine pairs instead of a walk over L:
//   forward   h_t = a_t·h_{t−1} + Δ_t·u_t·B_t            a_t = exp(Δ_t·A)
//   adjoint   ν_t = a_t·(g_t + ν_{t+1}),  λ_t = g_t + ν_{t+1} = dL/dh_t,   g_t = dy_t·C_t
// with ν_L the final state's gradient and ν_0 the initial state's. Four states go through one
// scan together (their shuffles interleave; one barrier per scan). Within a chunk the loops run
// states outer, channels inner, so the chunk's B and C for four states are loaded once into
// registers and serve every channel of the slice (the first version, channels outer, re-read them
// from L2 for every channel: 33.6 ms at the canonical shape, 60 % of its cycles waiting on loads).
// Measured (H100, bf16, canonical shape, both versions in one run, bench/results/2026-12-07-h100.md):
// 27.5 ms against the first version's 33.6, where 12-15 ms was predicted; mamba_ssm takes 4.79.
// ncu: 8.07 G instructions (7.7 ms at the full issue rate) and 7 of 13 cycles between issues
// waiting on L1TEX: the next step is fewer instructions per (step, state, channel).
//  1. Forward over the chunks in order: the state entering every chunk goes to the checkpoint
//     workspace (the chunk's end state is the scan's total).
//  2. The chunks from the last to the first: per four states and channel, the chunk's states from
//     its checkpoint (forward scan), the adjoint (reverse scan, carried between chunks in shared
//     memory), then the per-step sums over the states (du, dΔ and y, for dz) added into the
//     thread's own column of shared memory, dA (a warp sum into per-warp shared slots), dB and dC
//     (over the slice's channels in registers). After the last state group, per channel and step:
//     du, ddelta, dz, and the dD / d delta_bias sums.
// dB / dC: each thread keeps its steps' sums over the slice's channels (increasing order) for the
// four states in registers and writes them to the slot (slice + group) of the partial workspace
// when the group changes and at the end of the slice; `backward_bc_reduce_kernel` then adds the
// slices of each group in increasing order, as for the sequential kernel. dA, dD, d delta_bias:
// per-warp shared slots added over the chunks (last to first), then over the warps in order, into
// the per-(b, d) partials. Every sum has one order fixed by the shapes: bitwise repeatable.
#pragma once

#include <cuda_runtime.h>

#include "moss/ops/selective_scan/backward_kernel.cuh"

namespace moss::detail::scan {

inline constexpr int kTpThreads = 256;                  // threads per block, along time
inline constexpr int kTpItems = 2;                      // consecutive steps per thread
inline constexpr int kTpChunk = kTpThreads * kTpItems;  // steps per chunk
inline constexpr int kTpStates = 4;                     // states per scan
inline constexpr int kTpMaxN = 16;                      // d_state the kernel takes
inline constexpr int kTpWarps = kTpThreads / 32;

/// Shared memory of the time-parallel kernel for `slice_channels` channels per block (bytes).
constexpr std::size_t tp_shared_bytes(int slice_channels) {
  return (std::size_t(2) * kTpWarps * kTpStates * 2           // two scan buffers of warp totals
          + std::size_t(slice_channels) * kTpMaxN             // carried state / adjoint per (channel, state)
          + std::size_t(slice_channels) * kTpMaxN * kTpWarps  // dA per (channel, state, warp)
          + std::size_t(2) * slice_channels * kTpWarps        // dD, d delta_bias per (channel, warp)
          + std::size_t(3) * slice_channels * kTpChunk) *     // du, dΔ, y sums per (channel, step)
         sizeof(float);
}
/// Channels per block of the time-parallel kernel: two blocks per SM fit (106 KiB each).
inline constexpr int kTpSliceChannels = 16;

/// Forward block scan of four affine pairs per thread (a, b: the composition of the thread's
/// steps, h ↦ a·h + b): `h_in` gets the state entering the thread's first step given `h0` entering
/// the chunk, `h_end` the state leaving the chunk. `buf`: kTpWarps·kTpStates·2 floats of shared
/// memory, not reused until another scan has passed its barrier.
MOSS_DEVICE void tp_scan_forward(float (&a)[kTpStates], float (&b)[kTpStates], const float (&h0)[kTpStates],
                                 float (&h_in)[kTpStates], float (&h_end)[kTpStates], float* buf) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
#pragma unroll
    for (int j = 0; j < kTpStates; ++j) {
      const float pa = __shfl_up_sync(0xffffffffu, a[j], off), pb = __shfl_up_sync(0xffffffffu, b[j], off);
      if (lane >= off) {
        b[j] = a[j] * pb + b[j];
        a[j] = a[j] * pa;
      }
    }
  }
  float ea[kTpStates], eb[kTpStates];
#pragma unroll
  for (int j = 0; j < kTpStates; ++j) {
    ea[j] = __shfl_up_sync(0xffffffffu, a[j], 1);
    eb[j] = __shfl_up_sync(0xffffffffu, b[j], 1);
    if (lane == 0) ea[j] = 1.0f, eb[j] = 0.0f;
    if (lane == 31) buf[(warp * kTpStates + j) * 2] = a[j], buf[(warp * kTpStates + j) * 2 + 1] = b[j];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kTpStates; ++j) {
    float h = h0[j];
    for (int w = 0; w < kTpWarps; ++w) {
      if (w == warp) h_in[j] = ea[j] * h + eb[j];
      h = buf[(w * kTpStates + j) * 2] * h + buf[(w * kTpStates + j) * 2 + 1];
    }
    h_end[j] = h;
  }
}

/// Reverse block scan of the adjoint pairs (ν ↦ a·ν + b, the composition of the thread's steps
/// from its last to its first): `v_in` gets ν entering the thread's last step from the right given
/// `v0` entering the chunk's last step, `v_out` ν leaving the chunk's first step.
MOSS_DEVICE void tp_scan_reverse(float (&a)[kTpStates], float (&b)[kTpStates], const float (&v0)[kTpStates],
                                 float (&v_in)[kTpStates], float (&v_out)[kTpStates], float* buf) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
#pragma unroll
    for (int j = 0; j < kTpStates; ++j) {
      const float pa = __shfl_down_sync(0xffffffffu, a[j], off), pb = __shfl_down_sync(0xffffffffu, b[j], off);
      if (lane + off < 32) {
        b[j] = a[j] * pb + b[j];
        a[j] = a[j] * pa;
      }
    }
  }
  float ea[kTpStates], eb[kTpStates];
#pragma unroll
  for (int j = 0; j < kTpStates; ++j) {
    ea[j] = __shfl_down_sync(0xffffffffu, a[j], 1);
    eb[j] = __shfl_down_sync(0xffffffffu, b[j], 1);
    if (lane == 31) ea[j] = 1.0f, eb[j] = 0.0f;
    if (lane == 0) buf[(warp * kTpStates + j) * 2] = a[j], buf[(warp * kTpStates + j) * 2 + 1] = b[j];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kTpStates; ++j) {
    float v = v0[j];
    for (int w = kTpWarps - 1; w >= 0; --w) {
      if (w == warp) v_in[j] = ea[j] * v + eb[j];
      v = buf[(w * kTpStates + j) * 2] * v + buf[(w * kTpStates + j) * 2 + 1];
    }
    v_out[j] = v;
  }
}

/// Sum over the 32 lanes of a warp in a fixed shuffle order.
MOSS_DEVICE float tp_warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// The time-parallel backward kernel; see the top. `p.slice_channels` channels per block,
/// `p.supertiles` slices per batch row, `p.chunks` chunks of kTpChunk steps.
template <class T>
__global__ void __launch_bounds__(kTpThreads, 2) selective_scan_backward_tp_kernel(const BackwardParams<T> p) {
  extern __shared__ __align__(16) float tp_smem[];
  const int Cb = p.slice_channels;
  float* scan_buf = tp_smem;                               // [2][warps][states][2]
  float* carry = scan_buf + 2 * kTpWarps * kTpStates * 2;  // [Cb][16]
  float* dA_w = carry + Cb * kTpMaxN;                      // [Cb][16][warps]
  float* dD_w = dA_w + Cb * kTpMaxN * kTpWarps;            // [Cb][warps]
  float* dbias_w = dD_w + Cb * kTpWarps;                   // [Cb][warps]
  float* sums = dbias_w + Cb * kTpWarps;                   // [Cb][3][items][threads]: du, dΔ, y over the
  //                                                          states; thread tid owns column tid (no barriers)
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const auto sum_at = [tid](int ch, int which, int i) { return ((ch * 3 + which) * kTpItems + i) * kTpThreads + tid; };
  const index_t st = blockIdx.x % p.supertiles, b = blockIdx.x / p.supertiles;
  const index_t d0 = st * Cb, d1 = d0 + Cb < p.dim ? d0 + Cb : p.dim;
  const int nc = static_cast<int>(d1 - d0), N = p.N, groups_n = (N + kTpStates - 1) / kTpStates;
  const index_t L = p.L;
  const bool has_z = p.z.data != nullptr, has_d = p.D.data != nullptr, want_dz = p.dz.data != nullptr;

  // The per-step inputs of channel d at the thread's steps of the chunk starting at t0.
  struct Steps {
    index_t t[kTpItems];
    bool ok[kTpItems];
    float u[kTpItems], x[kTpItems], dt[kTpItems], g[kTpItems], dy[kTpItems], z[kTpItems];
  };
  const auto load_steps = [&](index_t d, index_t t0, bool grads) {
    Steps s;
    const float bias = p.delta_bias.data ? p.delta_bias(d) : 0.0f;
#pragma unroll
    for (int i = 0; i < kTpItems; ++i) {
      s.t[i] = t0 + tid * kTpItems + i;
      s.ok[i] = s.t[i] < L;
      s.u[i] = s.ok[i] ? to_float(p.u(b, d, s.t[i])) : 0.0f;
      const float dl = s.ok[i] ? to_float(p.delta(b, d, s.t[i])) : 0.0f;
      s.x[i] = dl + bias;
      s.dt[i] = s.ok[i] ? delta_value(dl, bias, p.delta_softplus) : 0.0f;  // Δ = 0: the identity step
      s.g[i] = s.dy[i] = s.z[i] = 0.0f;
      if (grads && s.ok[i]) {
        s.g[i] = to_float(p.dout(b, d, s.t[i]));
        s.dy[i] = s.g[i];
        if (has_z) {
          s.z[i] = to_float(p.z(b, d, s.t[i]));
          s.dy[i] = s.g[i] * silu(s.z[i]);
        }
      }
    }
    return s;
  };
  // B or C of group g at the thread's steps for the states of group q (0 past N or L). Loaded
  // once per (chunk, state group, B/C group) and kept in registers for every channel of the slice.
  const auto load_bc = [&](const ConstView<T, 4>& v, index_t g, int q, index_t t0, float(&out)[kTpItems][kTpStates]) {
#pragma unroll
    for (int i = 0; i < kTpItems; ++i) {
      const index_t t = t0 + tid * kTpItems + i;
#pragma unroll
      for (int j = 0; j < kTpStates; ++j) {
        const int n = q * kTpStates + j;
        out[i][j] = n < N && t < L ? to_float(v(b, g, n, t)) : 0.0f;
      }
    }
  };

  // The per-warp sums start at zero (with L = 0 they stay so).
  for (int i = tid; i < Cb * kTpMaxN * kTpWarps + 2 * Cb * kTpWarps; i += kTpThreads) dA_w[i] = 0.0f;
  // 1. Checkpoints: the state entering every chunk, chunks in order; states outer, channels inner.
  for (int c = tid; c < nc * kTpMaxN; c += kTpThreads) {
    const int ch = c / kTpMaxN, n = c % kTpMaxN;
    carry[c] = n < N && p.initial_state.data ? p.initial_state(b, d0 + ch, n) : 0.0f;
  }
  __syncthreads();
  int parity = 0;
  for (index_t k = 0; k < p.chunks; ++k) {
    const index_t t0 = k * kTpChunk;
#pragma unroll 1
    for (int q = 0; q < groups_n; ++q) {
      index_t cur_gb = d0 / p.cpg_b;
      float bn[kTpItems][kTpStates];
      load_bc(p.B, cur_gb, q, t0, bn);
      for (int ch = 0; ch < nc; ++ch) {
        const index_t d = d0 + ch, gb = d / p.cpg_b;
        if (gb != cur_gb) load_bc(p.B, cur_gb = gb, q, t0, bn);
        const Steps s = load_steps(d, t0, false);
        float a[kTpStates], bb[kTpStates], h0[kTpStates], h_in[kTpStates], h_end[kTpStates];
#pragma unroll
        for (int j = 0; j < kTpStates; ++j) {
          const int n = q * kTpStates + j;
          const float as = n < N ? a_log2e(p.A(d, n)) : 0.0f;
          a[j] = 1.0f, bb[j] = 0.0f;
#pragma unroll
          for (int i = 0; i < kTpItems; ++i) {
            const float at = pow2(s.dt[i] * as);
            bb[j] = at * bb[j] + s.dt[i] * s.u[i] * bn[i][j];
            a[j] *= at;
          }
          h0[j] = carry[ch * kTpMaxN + n];
        }
        tp_scan_forward(a, bb, h0, h_in, h_end, scan_buf + parity * kTpWarps * kTpStates * 2);
        parity ^= 1;
        if (tid == 0) {
#pragma unroll
          for (int j = 0; j < kTpStates; ++j) {
            const int n = q * kTpStates + j;
            if (n < N) p.ckpt[((b * p.dim + d) * p.chunks + k) * N + n] = h0[j];
            carry[ch * kTpMaxN + n] = h_end[j];  // read again only after later barriers
          }
        }
      }
    }
  }
  __syncthreads();
  for (int c = tid; c < nc * kTpMaxN; c += kTpThreads) {
    const int ch = c / kTpMaxN, n = c % kTpMaxN;
    carry[c] = n < N && p.dfinal_state.data ? p.dfinal_state(b, d0 + ch, n) : 0.0f;
  }
  __syncthreads();

  // 2. The chunks from the last to the first; states outer, channels inner.
  for (index_t k = p.chunks - 1; k >= 0; --k) {
    const index_t t0 = k * kTpChunk;
    for (int ch = 0; ch < nc; ++ch)
#pragma unroll
      for (int i = 0; i < kTpItems; ++i) sums[sum_at(ch, 0, i)] = sums[sum_at(ch, 1, i)] = sums[sum_at(ch, 2, i)] = 0;
#pragma unroll 1
    for (int q = 0; q < groups_n; ++q) {
      // dB / dC of the q's states over the slice's channels of one group, in registers; written to
      // the group's slot (st + g) when the group changes and at the end of the slice.
      float dB_acc[kTpItems][kTpStates] = {}, dC_acc[kTpItems][kTpStates] = {};
      const auto flush = [&](float(&acc)[kTpItems][kTpStates], float* part, index_t slots, index_t g) {
#pragma unroll
        for (int i = 0; i < kTpItems; ++i) {
          const index_t t = t0 + tid * kTpItems + i;
#pragma unroll
          for (int j = 0; j < kTpStates; ++j) {
            const int n = q * kTpStates + j;
            if (n < N && t < L) part[((b * slots + st + g) * N + n) * L + t] = acc[i][j];
            acc[i][j] = 0.0f;
          }
        }
      };
      index_t cur_gb = d0 / p.cpg_b, cur_gc = d0 / p.cpg_c;
      float bn[kTpItems][kTpStates], cn[kTpItems][kTpStates];
      load_bc(p.B, cur_gb, q, t0, bn);
      load_bc(p.C, cur_gc, q, t0, cn);
      for (int ch = 0; ch < nc; ++ch) {
        const index_t d = d0 + ch, gb = d / p.cpg_b, gc = d / p.cpg_c;
        if (gb != cur_gb) {
          if (p.want_db) flush(dB_acc, p.dB_part, p.slots_b, cur_gb);
          load_bc(p.B, cur_gb = gb, q, t0, bn);
        }
        if (gc != cur_gc) {
          if (p.want_dc) flush(dC_acc, p.dC_part, p.slots_c, cur_gc);
          load_bc(p.C, cur_gc = gc, q, t0, cn);
        }
        const Steps s = load_steps(d, t0, true);
        float ar[kTpStates], at[kTpItems][kTpStates];
        float a[kTpStates], bb[kTpStates], h0[kTpStates], h_in[kTpStates], h_end[kTpStates];
#pragma unroll
        for (int j = 0; j < kTpStates; ++j) {
          const int n = q * kTpStates + j;
          ar[j] = n < N ? p.A(d, n) : 0.0f;
          const float as = a_log2e(ar[j]);
          a[j] = 1.0f, bb[j] = 0.0f;
#pragma unroll
          for (int i = 0; i < kTpItems; ++i) {
            at[i][j] = pow2(s.dt[i] * as);
            bb[j] = at[i][j] * bb[j] + s.dt[i] * s.u[i] * bn[i][j];
            a[j] *= at[i][j];
          }
          h0[j] = n < N ? p.ckpt[((b * p.dim + d) * p.chunks + k) * N + n] : 0.0f;
        }
        tp_scan_forward(a, bb, h0, h_in, h_end, scan_buf + parity * kTpWarps * kTpStates * 2);
        parity ^= 1;
        // The thread's states: hp[i] entering step i, h[i] after it.
        float hp[kTpItems][kTpStates], h[kTpItems][kTpStates], v0[kTpStates], v_in[kTpStates], v_out[kTpStates];
#pragma unroll
        for (int j = 0; j < kTpStates; ++j) {
          float hv = h_in[j];
#pragma unroll
          for (int i = 0; i < kTpItems; ++i) {
            hp[i][j] = hv;
            hv = at[i][j] * hv + s.dt[i] * s.u[i] * bn[i][j];
            h[i][j] = hv;
          }
          // adjoint pairs, the thread's steps from the last to the first: ν ↦ a_t·ν + a_t·g_t
          a[j] = 1.0f, bb[j] = 0.0f;
#pragma unroll
          for (int i = kTpItems - 1; i >= 0; --i) {
            bb[j] = at[i][j] * (bb[j] + s.dy[i] * cn[i][j]);
            a[j] *= at[i][j];
          }
          v0[j] = carry[ch * kTpMaxN + q * kTpStates + j];
        }
        tp_scan_reverse(a, bb, v0, v_in, v_out, scan_buf + parity * kTpWarps * kTpStates * 2);
        parity ^= 1;
        float du[kTpItems] = {}, ddt[kTpItems] = {}, y[kTpItems] = {};
#pragma unroll
        for (int j = 0; j < kTpStates; ++j) {
          const int n = q * kTpStates + j;
          float v = v_in[j], dA_t = 0.0f;
#pragma unroll
          for (int i = kTpItems - 1; i >= 0; --i) {
            const float lam = s.dy[i] * cn[i][j] + v;  // λ_t = dL/dh_t
            y[i] += cn[i][j] * h[i][j];
            du[i] += lam * s.dt[i] * bn[i][j];
            ddt[i] += lam * (hp[i][j] * at[i][j] * ar[j] + bn[i][j] * s.u[i]);
            dA_t += lam * hp[i][j] * at[i][j] * s.dt[i];
            dB_acc[i][j] += lam * s.dt[i] * s.u[i];
            dC_acc[i][j] += s.dy[i] * h[i][j];
            v = at[i][j] * lam;
          }
          dA_t = tp_warp_sum(dA_t);
          if (lane == 0 && n < N) dA_w[(ch * kTpMaxN + n) * kTpWarps + warp] += dA_t;
          if (tid == 0) carry[ch * kTpMaxN + n] = v_out[j];  // read again only after later barriers
        }
#pragma unroll
        for (int i = 0; i < kTpItems; ++i) {  // the states' sums, state groups in order
          sums[sum_at(ch, 0, i)] += du[i];
          sums[sum_at(ch, 1, i)] += ddt[i];
          sums[sum_at(ch, 2, i)] += y[i];
        }
      }
      if (p.want_db) flush(dB_acc, p.dB_part, p.slots_b, cur_gb);
      if (p.want_dc) flush(dC_acc, p.dC_part, p.slots_c, cur_gc);
    }
    // Per step: du, ddelta, dz; per channel: the dD and d delta_bias sums.
    for (int ch = 0; ch < nc; ++ch) {
      const index_t d = d0 + ch;
      const Steps s = load_steps(d, t0, true);
      const float d_skip = has_d ? p.D(d) : 0.0f;
      float dD_t = 0.0f, dbias_t = 0.0f;
#pragma unroll
      for (int i = 0; i < kTpItems; ++i) {
        if (!s.ok[i]) continue;
        const index_t t = s.t[i];
        if (want_dz && has_z) {
          const float y = sums[sum_at(ch, 2, i)];
          const float yv = has_d ? add_skip(y, d_skip, s.u[i]) : y;
          p.dz(b, d, t) = from_float<T>(s.g[i] * yv * silu_grad_f(s.z[i]));
        }
        const float du = sums[sum_at(ch, 0, i)], ddt = sums[sum_at(ch, 1, i)];
        const float du_v = has_d ? s.dy[i] * d_skip + du : du;
        const float dx = p.delta_softplus ? ddt * softplus_grad_f(s.x[i]) : ddt;
        if (p.du.data) p.du(b, d, t) = from_float<T>(du_v);
        if (p.ddelta.data) p.ddelta(b, d, t) = from_float<T>(dx);
        dD_t += s.dy[i] * s.u[i];
        dbias_t += dx;
      }
      dD_t = tp_warp_sum(dD_t);
      dbias_t = tp_warp_sum(dbias_t);
      if (lane == 0) {
        dD_w[ch * kTpWarps + warp] += dD_t;
        dbias_w[ch * kTpWarps + warp] += dbias_t;
      }
    }
  }
  __syncthreads();

  // 3. ν_0 is the initial state's gradient; the per-(b, d) partials, warps added in order.
  for (int c = tid; c < nc * kTpMaxN; c += kTpThreads) {
    const int ch = c / kTpMaxN, n = c % kTpMaxN;
    if (n >= N) continue;
    const index_t d = d0 + ch;
    if (p.dinitial_state.data) p.dinitial_state(b, d, n) = carry[c];
    if (p.dA_part) {
      float sum = 0.0f;
      for (int w = 0; w < kTpWarps; ++w) sum += dA_w[c * kTpWarps + w];
      p.dA_part[(b * p.dim + d) * N + n] = sum;
    }
    if (n == 0) {
      float sd = 0.0f, sb = 0.0f;
      for (int w = 0; w < kTpWarps; ++w) sd += dD_w[ch * kTpWarps + w], sb += dbias_w[ch * kTpWarps + w];
      if (p.dD_part) p.dD_part[b * p.dim + d] = sd;
      if (p.dbias_part) p.dbias_part[b * p.dim + d] = sb;
    }
  }
}

}  // namespace moss::detail::scan
