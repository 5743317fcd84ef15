// moss/ops/selective_scan/backward_state_kernel.cuh: the selective-scan backward for d_state ≤ 16,
// one warp per state (needs nvcc; docs/math.md §4.1; the plan and launch are in backward_cuda.cuh).
//
// One block per (batch row b, slice of `slice_channels` channels) with one warp per S states
// (S = 1 or 2: 32·⌈N / S⌉ threads). Time goes in chunks of kWsChunk = 256 steps; lane l of every warp owns the chunk's
// steps 8l … 8l + 7, so each state's two recurrences
//   forward   h_t = a_t·h_{t−1} + Δ_t·u_t·B_t            a_t = exp(Δ_t·A)
//   adjoint   ν_t = a_t·(g_t + ν_{t+1}),  λ_t = g_t + ν_{t+1} = dL/dh_t,   g_t = dy_t·C_t
// are a sequential walk over the lane's 8 steps plus one warp scan of affine pairs: no barrier
// inside a scan, and the scan's shuffles are shared by 8 steps (the previous kernel, threads
// along time with 2 steps each, spent most of its 8 G instructions in block scans).
//
// Per chunk the block stages the inputs of 16 channels at a time (kWsGroup) in shared memory,
// loaded as (channel, step) tiles so that both layouts read whole sectors (channel-last: 16
// channels of a step are 32 contiguous bytes), and writes the gradients back the same way. Per
// channel, the warp of states n keeps in registers only the chunk's B and C of its states (loaded
// once per chunk, used by every channel of the slice) and its dB / dC sums over the slice's
// channels; what needs a sum over the states (λ·B, λ·h_{t−1}·a_t·A and, for dz, C·h_t) is added
// over the warp's S states in registers and goes to shared memory, and after one barrier one half of the warps adds
// them over n in increasing order and forms du, ddelta and dz while the other half works on the next channel (the
// halves swap every channel).
//
//  1. Forward over the chunks in order: the state entering every chunk goes to the checkpoint
//     workspace (from the warp's total pair; no per-channel barrier). Skipped when the forward
//     scan kernel has written them (`ckpt_ready`, the default: its sequential recurrence takes a
//     fraction of this pass's time; backward_cuda.cuh).
//  2. The chunks from the last to the first: per channel, the chunk's states from its checkpoint
//     (forward warp scan, then the lane's walk), the adjoint (reverse warp scan, carried between
//     chunks in shared memory), the per-step terms; dA per (channel, state) as a warp sum added
//     over the chunks in shared memory.
// Sums, each in one order fixed by the shapes and S (bitwise repeatable): du, ddelta, y over a
// warp's states, then over the warps in increasing order; dA over the lane's steps, the warp (a fixed shuffle tree),
// then the chunks from the last; dD and d delta_bias per half-warp set over its steps, its warps, then the chunks, then
// the warps in order; dB / dC over the slice's channels in increasing order in registers, written
// to the slot (slice + group) of the partial workspace when the group changes and at the chunk's
// end, then `backward_bc_reduce_kernel` adds the slices of each group in increasing order.
#pragma once

#include <cuda_runtime.h>

#include "moss/ops/selective_scan/backward_kernel.cuh"
#include "moss/ops/selective_scan/kernel.cuh"

namespace moss::detail::scan {

inline constexpr int kWsItems = 8;              // consecutive steps per lane
inline constexpr int kWsChunk = 32 * kWsItems;  // steps per chunk
static_assert(kWsChunk == kScanCheckpointSteps, "moss: the forward scan writes the checkpoints this kernel reads");
inline constexpr int kWsGroup = 16;                  // channels staged at once
inline constexpr int kWsRow = kWsChunk + 4;          // floats per staged (channel) row: padding against bank conflicts
inline constexpr int kWsMaxN = 16;                   // d_state the kernel takes
inline constexpr int kWsMaxHalfWarps = kWsMaxN / 2;  // warps of one half (the per-warp dD / d delta_bias slots)

/// Warps of the kernel for d_state N with S states per warp.
constexpr int ws_warps(int N, int S) { return (N + S - 1) / S; }

/// Shared memory of the warp-per-state kernel for d_state N, S states per warp and
/// `slice_channels` channels (bytes).
constexpr std::size_t ws_shared_bytes(int N, int S, int slice_channels) {
  return (std::size_t(6) * kWsGroup * kWsRow                      // dt, dy, u, x, z, dout (then du, dΔ, dz)
          + std::size_t(2) * ws_warps(N, S) * 3 * kWsChunk        // per-warp terms, two buffers
          + std::size_t(2) * slice_channels * kWsMaxN             // carried state / adjoint, dA per (channel, state)
          + std::size_t(2) * slice_channels * kWsMaxHalfWarps) *  // dD, d delta_bias per (channel, warp)
         sizeof(float);
}

/// Where step j of a chunk sits in a staged row: lane l's steps 8l … 8l + 7 as two float4 at
/// (q·32 + l)·4, q = 0, 1, so that a warp's 128-bit loads of one quad touch 32 consecutive
/// float4 (no bank conflict).
MOSS_DEVICE int ws_pos(int j) { return ((((j & 7) >> 2) * 32) + (j >> 3)) * 4 + (j & 3); }
/// The step stored at position `pos` of a staged row (the inverse of ws_pos).
MOSS_DEVICE int ws_step(int pos) { return ((pos >> 2) & 31) * 8 + ((pos >> 7) << 2) + (pos & 3); }

/// Loads lane `lane`'s 8 steps of a staged row (positions of ws_pos) into v.
MOSS_DEVICE void ws_load8(const float* row, int lane, float (&v)[kWsItems]) {
  const float4 a = reinterpret_cast<const float4*>(row)[lane];
  const float4 c = reinterpret_cast<const float4*>(row)[32 + lane];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = c.x, v[5] = c.y, v[6] = c.z, v[7] = c.w;
}
/// Stores lane `lane`'s 8 values into a row laid out as ws_pos.
MOSS_DEVICE void ws_store8(float* row, int lane, const float (&v)[kWsItems]) {
  reinterpret_cast<float4*>(row)[lane] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(row)[32 + lane] = make_float4(v[4], v[5], v[6], v[7]);
}

/// Sum over the 32 lanes of a warp in a fixed shuffle order.
MOSS_DEVICE float ws_warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Inclusive warp scans of S affine pairs (h ↦ a·h + b), then shifted to the exclusive pairs.
/// Forward (kReverse false): a lane's pair follows the lower lanes' and lane 0 gets the identity;
/// reverse: it follows the higher lanes' and lane 31 gets the identity. Returns the inclusive
/// pairs in (a, b) and the exclusive ones in (ea, eb). The S scans interleave.
template <int S, bool kReverse>
MOSS_DEVICE void ws_scan(float (&a)[S], float (&b)[S], float (&ea)[S], float (&eb)[S]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  // The pair `off` lanes back along the scan's direction.
  const auto before = [](float v, int off) {
    return kReverse ? __shfl_down_sync(0xffffffffu, v, off) : __shfl_up_sync(0xffffffffu, v, off);
  };
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const float pa = before(a[s], off), pb = before(b[s], off);
      if (kReverse ? lane + off < 32 : lane >= off) {
        b[s] = a[s] * pb + b[s];
        a[s] = a[s] * pa;
      }
    }
  }
#pragma unroll
  for (int s = 0; s < S; ++s) {
    ea[s] = before(a[s], 1);
    eb[s] = before(b[s], 1);
    if (lane == (kReverse ? 31 : 0)) ea[s] = 1.0f, eb[s] = 0.0f;
  }
}

/// The warp-per-state backward kernel; see the top. S states per warp (1 or 2); block:
/// 32·⌈N / S⌉ threads; grid: batch × slices.
template <class T, int S>
__global__ void __launch_bounds__(32 * ws_warps(kWsMaxN, S), 1)
    selective_scan_backward_state_kernel(const BackwardParams<T> p) {
  static_assert(S == 1 || S == 2, "moss: the warp-per-state kernel takes one or two states per warp");
  extern __shared__ __align__(16) float ws_smem[];
  const int N = p.N, Cb = p.slice_channels;
  const int W = ws_warps(N, S), threads = 32 * W;
  float* s_dt = ws_smem;                     // [group][row]: Δ
  float* s_dy = s_dt + kWsGroup * kWsRow;    // dy = dout·silu(z) (dout without z)
  float* s_u = s_dy + kWsGroup * kWsRow;     // u, then du
  float* s_x = s_u + kWsGroup * kWsRow;      // delta + delta_bias, then ddelta
  float* s_z = s_x + kWsGroup * kWsRow;      // z, then dz
  float* s_g = s_z + kWsGroup * kWsRow;      // dout
  float* s_terms = s_g + kWsGroup * kWsRow;  // [2][W][3][kWsChunk]: Σ λ·B, Σ λ·h_{t−1}·a_t·A, Σ C·h_t
  float* s_carry = s_terms + 2 * W * 3 * kWsChunk;  // [Cb][16]
  float* s_dA = s_carry + Cb * kWsMaxN;             // [Cb][16]
  float* s_dD = s_dA + Cb * kWsMaxN;                // [Cb][8]
  float* s_dbias = s_dD + Cb * kWsMaxHalfWarps;     // [Cb][8]

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, w = tid >> 5;
  int ns[S];    // the warp's states
  bool has[S];  // ns[s] < N
#pragma unroll
  for (int s = 0; s < S; ++s) ns[s] = w * S + s, has[s] = S == 1 || ns[s] < N;  // one per warp: every warp's is
  const index_t st = blockIdx.x % p.supertiles, b = blockIdx.x / p.supertiles;
  const index_t d0 = st * Cb, d1 = d0 + Cb < p.dim ? d0 + Cb : p.dim;
  const int nc = static_cast<int>(d1 - d0);
  const index_t L = p.L;
  const bool has_z = p.z.data != nullptr, has_d = p.D.data != nullptr, want_dz = has_z && p.dz.data != nullptr;
  // Staged tiles: channel-fast when channels are contiguous (channel-last), else step-fast.
  const bool channel_fast = p.u.stride[1] == 1;

  // Stages the inputs of channels [dg, dg + kWsGroup) ∩ slice at the chunk starting at t0 (grads:
  // also dout and z). Elements past L or the slice are zero (Δ = 0: the identity step).
  // Tile element e of a staged group: its channel c and step j (the same map to stage and back).
  const auto element = [channel_fast](int e, int& c, int& j) {
    c = channel_fast ? e % kWsGroup : e / kWsChunk;
    j = channel_fast ? e / kWsGroup : e % kWsChunk;
  };
  const auto stage = [&](index_t dg, index_t t0, bool grads) {
    for (int e = tid; e < kWsGroup * kWsChunk; e += threads) {
      int c = 0, j = 0;
      element(e, c, j);
      const index_t d = dg + c, t = t0 + j;
      const bool ok = d < d1 && t < L;
      float u = 0.0f, x = 0.0f, dt = 0.0f, g = 0.0f, z = 0.0f, dy = 0.0f;
      if (ok) {
        const float bias = p.delta_bias.data ? p.delta_bias(d) : 0.0f;
        const float dl = to_float(p.delta(b, d, t));
        u = to_float(p.u(b, d, t));
        x = dl + bias;
        dt = delta_value(dl, bias, p.delta_softplus);
        if (grads) {
          g = to_float(p.dout(b, d, t));
          dy = g;
          if (has_z) {
            z = to_float(p.z(b, d, t));
            dy = g * silu(z);
          }
        }
      }
      const int at = c * kWsRow + ws_pos(j);
      s_dt[at] = dt;
      s_u[at] = u;
      if (grads) {
        s_dy[at] = dy;
        s_x[at] = x;
        s_z[at] = z;
        s_g[at] = g;
      }
    }
  };
  // Writes the staged gradients (du, ddelta, dz in the u, x, z rows) of the group at dg.
  const auto unstage = [&](index_t dg, index_t t0) {
    for (int e = tid; e < kWsGroup * kWsChunk; e += threads) {
      int c = 0, j = 0;
      element(e, c, j);
      const index_t d = dg + c, t = t0 + j;
      if (d >= d1 || t >= L) continue;
      const int at = c * kWsRow + ws_pos(j);
      if (p.du.data) p.du(b, d, t) = from_float<T>(s_u[at]);
      if (p.ddelta.data) p.ddelta(b, d, t) = from_float<T>(s_x[at]);
      if (want_dz) p.dz(b, d, t) = from_float<T>(s_z[at]);
    }
  };
  // B or C of group g for the warp's states at the lane's steps of the chunk at t0 (0 past L or N).
  const auto load_bc = [&](const ConstView<T, 4>& v, index_t g, index_t t0, float(&out)[S][kWsItems]) {
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int i = 0; i < kWsItems; ++i) {
        const index_t t = t0 + lane * kWsItems + i;
        out[s][i] = has[s] && t < L ? to_float(v(b, g, ns[s], t)) : 0.0f;
      }
  };
  // A[d, n] of the warp's states (0 past N: with B = C = 0 such a state stays 0 and adds nothing).
  const auto load_a = [&](index_t d, float(&a)[S]) {
#pragma unroll
    for (int s = 0; s < S; ++s) a[s] = has[s] ? p.A(d, ns[s]) : 0.0f;
  };

  for (int i = tid; i < Cb * kWsMaxN; i += threads) s_dA[i] = 0.0f;
  for (int i = tid; i < 2 * Cb * kWsMaxHalfWarps; i += threads) s_dD[i] = 0.0f;  // s_dD and s_dbias
  // 1. Checkpoints: the state entering every chunk, chunks in order (unless the forward scan
  // kernel wrote them: p.ckpt_ready).
  for (int c = tid; c < nc * kWsMaxN; c += threads) {
    const int ch = c / kWsMaxN, m = c % kWsMaxN;
    s_carry[c] = m < N && p.initial_state.data ? p.initial_state(b, d0 + ch, m) : 0.0f;
  }
  for (index_t k = 0; k < (p.ckpt_ready ? 0 : p.chunks); ++k) {
    const index_t t0 = k * kWsChunk;
    float bn[S][kWsItems];
    index_t cur_gb = d0 / p.cpg_b;
    load_bc(p.B, cur_gb, t0, bn);
    for (int cg = 0; cg < nc; cg += kWsGroup) {
      __syncthreads();  // the previous group's rows are no longer read
      stage(d0 + cg, t0, false);
      __syncthreads();
      const int ce = cg + kWsGroup < nc ? cg + kWsGroup : nc;
      for (int ch = cg; ch < ce; ++ch) {
        const index_t d = d0 + ch, gb = d / p.cpg_b;
        if (gb != cur_gb) load_bc(p.B, cur_gb = gb, t0, bn);
        float an[S];
        load_a(d, an);
        float dt[kWsItems], u[kWsItems];
        ws_load8(s_dt + (ch - cg) * kWsRow, lane, dt);
        ws_load8(s_u + (ch - cg) * kWsRow, lane, u);
        float a[S], bb[S], ea[S], eb[S];
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float as = a_log2e(an[s]);
          a[s] = 1.0f, bb[s] = 0.0f;
#pragma unroll
          for (int i = 0; i < kWsItems; ++i) {
            const float at = pow2(dt[i] * as);
            bb[s] = at * bb[s] + dt[i] * u[i] * bn[s][i];
            a[s] *= at;
          }
        }
        ws_scan<S, false>(a, bb, ea, eb);
        if (lane == 31) {
#pragma unroll
          for (int s = 0; s < S; ++s) {
            if (!has[s]) continue;
            const float h0 = s_carry[ch * kWsMaxN + ns[s]];
            p.ckpt[((b * p.dim + d) * p.chunks + k) * N + ns[s]] = h0;
            s_carry[ch * kWsMaxN + ns[s]] = a[s] * h0 + bb[s];
          }
        }
      }
    }
  }
  __syncthreads();
  for (int c = tid; c < nc * kWsMaxN; c += threads) {
    const int ch = c / kWsMaxN, m = c % kWsMaxN;
    s_carry[c] = m < N && p.dfinal_state.data ? p.dfinal_state(b, d0 + ch, m) : 0.0f;
  }

  // 2. The chunks from the last to the first.
  const int half_warps_even = (W + 1) / 2, half_warps_odd = W / 2;
  int parity = 0;  // which term buffer the next channel writes
  for (index_t k = p.chunks - 1; k >= 0; --k) {
    const index_t t0 = k * kWsChunk;
    float bn[S][kWsItems], cn[S][kWsItems], dB_acc[S][kWsItems] = {}, dC_acc[S][kWsItems] = {};
    const auto flush = [&](float(&acc)[S][kWsItems], float* part, index_t slots, index_t g) {
#pragma unroll
      for (int s = 0; s < S; ++s)
#pragma unroll
        for (int i = 0; i < kWsItems; ++i) {
          const index_t t = t0 + lane * kWsItems + i;
          if (has[s] && t < L) part[((b * slots + st + g) * N + ns[s]) * L + t] = acc[s][i];
          acc[s][i] = 0.0f;
        }
    };
    index_t cur_gb = d0 / p.cpg_b, cur_gc = d0 / p.cpg_c;
    load_bc(p.B, cur_gb, t0, bn);
    load_bc(p.C, cur_gc, t0, cn);
    for (int cg = 0; cg < nc; cg += kWsGroup) {
      __syncthreads();  // the previous group's gradients are written and its rows free
      stage(d0 + cg, t0, true);
      __syncthreads();
      const int ce = cg + kWsGroup < nc ? cg + kWsGroup : nc;
      for (int ch = cg; ch <= ce; ++ch) {
        // (a) This channel's per-state work (every warp), unless past the group's end.
        if (ch < ce) {
          const int r = ch - cg;
          const index_t d = d0 + ch, gb = d / p.cpg_b, gc = d / p.cpg_c;
          if (gb != cur_gb) {
            if (p.want_db) flush(dB_acc, p.dB_part, p.slots_b, cur_gb);
            load_bc(p.B, cur_gb = gb, t0, bn);
          }
          if (gc != cur_gc) {
            if (p.want_dc) flush(dC_acc, p.dC_part, p.slots_c, cur_gc);
            load_bc(p.C, cur_gc = gc, t0, cn);
          }
          float an[S], h0_own[S], v0_own[S];
          load_a(d, an);
#pragma unroll
          for (int s = 0; s < S; ++s) {
            h0_own[s] = lane == 0 && has[s] ? p.ckpt[((b * p.dim + d) * p.chunks + k) * N + ns[s]] : 0.0f;
            v0_own[s] = lane == 31 ? s_carry[ch * kWsMaxN + ns[s]] : 0.0f;
          }
          float dt[kWsItems], dy[kWsItems], u[kWsItems], at[S][kWsItems], hpa[S][kWsItems];
          ws_load8(s_dt + r * kWsRow, lane, dt);
          ws_load8(s_dy + r * kWsRow, lane, dy);
          ws_load8(s_u + r * kWsRow, lane, u);
#pragma unroll
          for (int i = 0; i < kWsItems; ++i) u[i] *= dt[i];  // Δ·u from here on
          float fa[S], fb[S], ra[S];
#pragma unroll
          for (int s = 0; s < S; ++s) {
            const float as = a_log2e(an[s]);
            fa[s] = 1.0f, fb[s] = 0.0f;
#pragma unroll
            for (int i = 0; i < kWsItems; ++i) {
              at[s][i] = pow2(dt[i] * as);
              fb[s] = at[s][i] * fb[s] + u[i] * bn[s][i];
              fa[s] *= at[s][i];
            }
            ra[s] = fa[s];
          }
          // The chunk's states: ea·h0 + eb enters the lane's first step.
          float ea[S], eb[S];
          ws_scan<S, false>(fa, fb, ea, eb);
          float* terms = s_terms + (parity * W + w) * 3 * kWsChunk;
          float y[kWsItems];
#pragma unroll
          for (int s = 0; s < S; ++s) {
            float hv = ea[s] * __shfl_sync(0xffffffffu, h0_own[s], 0) + eb[s];
#pragma unroll
            for (int i = 0; i < kWsItems; ++i) {
              hpa[s][i] = hv * at[s][i];
              hv = hpa[s][i] + u[i] * bn[s][i];
              dC_acc[s][i] += dy[i] * hv;
              y[i] = s == 0 ? cn[s][i] * hv : y[i] + cn[s][i] * hv;
            }
          }
          if (want_dz) ws_store8(terms + 2 * kWsChunk, lane, y);
          // The adjoint: era·v0 + erb enters the lane's last step from the right.
          float rb[S], era[S], erb[S], v0[S];
#pragma unroll
          for (int s = 0; s < S; ++s) {
            rb[s] = 0.0f;
#pragma unroll
            for (int i = kWsItems - 1; i >= 0; --i) rb[s] = at[s][i] * (rb[s] + dy[i] * cn[s][i]);
          }
          ws_scan<S, true>(ra, rb, era, erb);
#pragma unroll
          for (int s = 0; s < S; ++s) v0[s] = __shfl_sync(0xffffffffu, v0_own[s], 31);
          __syncwarp();  // lane 31 has read the carries
          if (lane == 0) {
#pragma unroll
            for (int s = 0; s < S; ++s)  // ν leaving the chunk's first step
              if (has[s]) s_carry[ch * kWsMaxN + ns[s]] = ra[s] * v0[s] + rb[s];
          }
          float q[kWsItems], rq[kWsItems], dA_l[S];
#pragma unroll
          for (int s = 0; s < S; ++s) {
            float v = era[s] * v0[s] + erb[s];
            dA_l[s] = 0.0f;
#pragma unroll
            for (int i = kWsItems - 1; i >= 0; --i) {
              const float lam = dy[i] * cn[s][i] + v;  // λ_t = dL/dh_t
              const float rr = lam * hpa[s][i];
              q[i] = s == 0 ? lam * bn[s][i] : q[i] + lam * bn[s][i];
              rq[i] = s == 0 ? rr * an[s] : rq[i] + rr * an[s];
              dA_l[s] += rr * dt[i];
              dB_acc[s][i] += lam * u[i];
              v = at[s][i] * lam;
            }
          }
          ws_store8(terms, lane, q);
          ws_store8(terms + kWsChunk, lane, rq);
#pragma unroll
          for (int s = 0; s < S; ++s) {
            const float sum = ws_warp_sum(dA_l[s]);
            if (lane == 0 && has[s]) s_dA[ch * kWsMaxN + ns[s]] += sum;
          }
        }
        // (b) The previous channel's sums over the warps, by its half of the warps.
        if (ch > cg) {
          const int r = ch - 1 - cg, cp = ch - 1;
          const bool mine = W == 1 || (w & 1) == (cp & 1);
          if (mine) {
            const int nw = W == 1 ? 1 : (cp & 1) ? half_warps_odd : half_warps_even;
            const int rank = W == 1 ? tid : (w >> 1) * 32 + lane;  // rank within the half
            const float* terms = s_terms + (parity ^ 1) * W * 3 * kWsChunk;
            const index_t d = d0 + cp;
            const float d_skip = has_d ? p.D(d) : 0.0f;
            float dD_t = 0.0f, dbias_t = 0.0f;
            for (int pos = rank; pos < kWsChunk; pos += nw * 32) {
              float qs = 0.0f, rs = 0.0f, ys = 0.0f;
              for (int m = 0; m < W; ++m) {
                qs += terms[m * 3 * kWsChunk + pos];
                rs += terms[m * 3 * kWsChunk + kWsChunk + pos];
                if (want_dz) ys += terms[m * 3 * kWsChunk + 2 * kWsChunk + pos];
              }
              const int at = r * kWsRow + pos;
              const float dt = s_dt[at], dy = s_dy[at], u = s_u[at], x = s_x[at];
              const bool ok = t0 + ws_step(pos) < L;
              const float du = has_d ? dy * d_skip + dt * qs : dt * qs;
              const float ddt = rs + u * qs;
              const float dx = p.delta_softplus ? ddt * softplus_grad_f(x) : ddt;
              if (want_dz) {
                const float yv = has_d ? add_skip(ys, d_skip, u) : ys;
                s_z[at] = s_g[at] * yv * silu_grad_f(s_z[at]);
              }
              s_u[at] = du;
              s_x[at] = dx;
              if (ok) {
                dD_t += dy * u;
                dbias_t += dx;
              }
            }
            dD_t = ws_warp_sum(dD_t);
            dbias_t = ws_warp_sum(dbias_t);
            if (lane == 0) {
              const int slot = W == 1 ? 0 : w >> 1;
              s_dD[cp * kWsMaxHalfWarps + slot] += dD_t;
              s_dbias[cp * kWsMaxHalfWarps + slot] += dbias_t;
            }
          }
        }
        if (ch < ce) {
          __syncthreads();  // this channel's terms are complete; the buffer of the one before is free
          parity ^= 1;
        }
      }
      __syncthreads();
      unstage(d0 + cg, t0);
    }
    if (p.want_db) flush(dB_acc, p.dB_part, p.slots_b, cur_gb);
    if (p.want_dc) flush(dC_acc, p.dC_part, p.slots_c, cur_gc);
  }
  __syncthreads();

  // 3. ν_0 is the initial state's gradient; the per-(b, d) partials.
  for (int c = tid; c < nc * kWsMaxN; c += threads) {
    const int ch = c / kWsMaxN, m = c % kWsMaxN;
    if (m >= N) continue;
    const index_t d = d0 + ch;
    if (p.dinitial_state.data) p.dinitial_state(b, d, m) = s_carry[c];
    if (p.dA_part) p.dA_part[(b * p.dim + d) * N + m] = s_dA[c];
    if (m == 0) {
      float sd = 0.0f, sb = 0.0f;
      for (int k = 0; k < kWsMaxHalfWarps; ++k)
        sd += s_dD[ch * kWsMaxHalfWarps + k], sb += s_dbias[ch * kWsMaxHalfWarps + k];
      if (p.dD_part) p.dD_part[b * p.dim + d] = sd;
      if (p.dbias_part) p.dbias_part[b * p.dim + d] = sb;
    }
  }
}

}  // namespace moss::detail::scan
