// CUDA tests of moss::selective_scan_backward (docs/math.md §4.1): every gradient of the CUDA
// backward against the host backward (the oracle, itself checked against float64 finite
// differences in selective_scan_backward_test.cpp) on the same inputs, stored in T, over float,
// f16 and bf16 and shapes that are ragged or degenerate: L = 1, L not a multiple of the chunk and
// spanning several chunks, L = 0, batch 0, 1 and 3, d_state 1 to 256 (every kernel shape),
// channels not a multiple of the sub-tile, groups of B / C that cross sub-tiles and super-tiles,
// zero-stride (summed) B / C along batch, L or both (the constant B / C of `constant_bc`), every
// optional input absent, softplus off, channel-last and channel-first activations and gradients
// (mixed too); super-tiles of several sub-tiles forced and from the plan's rule; gradients asked
// for alone; `accumulate`; bitwise repeatability; validation before any launch.
//
// Tolerances (relative L2 over each gradient tensor, moss::test::rel_l2). Host and device run the
// same float32 formulas on the same T-rounded inputs; they differ only by the device's exp2 / SiLU
// from the special-function unit (a few ulp each, math.hpp), expf in σ, and the order of the sums
// (a warp tree over the states, the channel sums of dB / dC split by super-tile). These few-ulp
// differences pass through the adjoint recurrence over up to 300 steps and through sums over
// batch × L terms (dA, dD, d delta_bias) that partly cancel, so float32 outputs are held to 1e-4
// (the CUDA end-to-end bound of the precision contract, 10× the one-op bound; the host's own float
// vs double check is 1e-5). A T-typed gradient (du, ddelta, dz, dB, dC) is that float value rounded
// once to T on both sides; where the two float values straddle a rounding boundary the results
// differ by one ulp of T, at most 2^-10 (f16) or 2^-7 (bf16) relative, so those get 1e-4 plus one
// ulp. A wrong index or a missing term gives errors of order 1, and an element left unwritten
// stays NaN (the outputs are poisoned), which fails every comparison.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "moss/ops/selective_scan_backward.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Extents;
using moss::index_t;
using moss::TensorView;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Which axes of B (or C) have zero strides, so that their gradient sums over them.
enum class Zero { none, batch, time, both };

/// Which gradients a run asks for.
enum Want : unsigned {
  kDu = 1,
  kDdelta = 2,
  kDA = 4,
  kDB = 8,
  kDC = 16,
  kDD = 32,
  kDz = 64,
  kDbias = 128,
  kDinit = 256,
  kAll = 511
};

/// One problem.
struct Config {
  index_t batch = 2, dim = 37, L = 100, N = 16, groups_b = 1, groups_c = 1;
  Zero zero_b = Zero::none, zero_c = Zero::none;
  bool has_d = true, has_z = true, has_bias = true, softplus = true, has_init = true, has_dfinal = true;
  bool channel_last = true;       // u, delta, z and B, C: unit stride along dim / N, else along L
  bool grad_channel_last = true;  // dout and the T-typed gradients
  unsigned want = kAll;
  bool accumulate = false;          // dA, dD, d delta_bias start from random priors
  index_t subtiles = 0;             // sub-tiles per block: 0 = the plan's rule
  int states_per_warp = 0;          // warp-per-state kernel: states per warp, 0 = the plan's
  bool kernel_checkpoints = false;  // warp-per-state kernel: its own checkpoint pass, not the forward kernel's
};

const char* zero_name(Zero z) {
  switch (z) {
    case Zero::none:
      return "none";
    case Zero::batch:
      return "batch";
    case Zero::time:
      return "time";
    default:
      return "both";
  }
}

std::string describe(const Config& c) {
  char s[400];
  std::snprintf(s, sizeof s,
                "batch %lld dim %lld L %lld N %lld groups %lld/%lld zero strides %s/%s D %d z %d bias %d softplus %d "
                "init %d dfinal %d channel_last %d/%d want %u accumulate %d subtiles %lld states per warp %d "
                "kernel checkpoints %d",
                static_cast<long long>(c.batch), static_cast<long long>(c.dim), static_cast<long long>(c.L),
                static_cast<long long>(c.N), static_cast<long long>(c.groups_b), static_cast<long long>(c.groups_c),
                zero_name(c.zero_b), zero_name(c.zero_c), c.has_d, c.has_z, c.has_bias, c.softplus, c.has_init,
                c.has_dfinal, c.channel_last, c.grad_channel_last, c.want, c.accumulate,
                static_cast<long long>(c.subtiles), c.states_per_warp, c.kernel_checkpoints);
  return s;
}

/// A host vector (the exact elements of one view, in its storage order) and its device copy.
template <class E>
struct Mirror {
  std::vector<E> host;
  std::vector<E> initial;  // outputs: the contents before a run (poison or priors)
  moss::Buffer<E> dev;
  index_t numel = 0;  // elements of the view (0: empty; the vectors keep one element so pointers are not null)

  /// `n` values (converted from float) as the contents.
  void set(const std::vector<float>& v, index_t n) {
    numel = n;
    host.assign(static_cast<std::size_t>(n > 0 ? n : 1), moss::from_float<E>(0.0f));
    for (index_t i = 0; i < n; ++i)
      host[static_cast<std::size_t>(i)] = moss::from_float<E>(v[static_cast<std::size_t>(i)]);
    initial = host;
  }
  /// `n` copies of `x` as the contents.
  void fill(float x, index_t n) { set(std::vector<float>(static_cast<std::size_t>(n > 0 ? n : 1), x), n); }
  /// The device copy of `initial` (allocated on first use).
  void upload(const moss::Cuda& gpu) {
    if (dev.size() == 0) dev = gpu.alloc<E>(static_cast<index_t>(initial.size()));
    MOSS_CUDA_CHECK(
        cudaMemcpyAsync(dev.data(), initial.data(), initial.size() * sizeof(E), cudaMemcpyHostToDevice, gpu.stream));
    gpu.synchronize();
  }
  /// The view `v` over `host` moved to the same offsets in `dev`.
  template <class V>
  V on_device(V v) const {
    if (v.data) v.data = dev.data() + (v.data - host.data());
    return v;
  }
};

/// Strides of a (batch, dim, L) activation stored channel-last ((batch, L, dim) buffer) or
/// channel-first ((batch, dim, L) buffer).
Extents<3> act_strides(const Config& c, bool channel_last) {
  return channel_last ? Extents<3>{c.L * c.dim, 1, c.dim} : Extents<3>{c.dim * c.L, c.L, 1};
}

/// Strides of a (batch, groups, N, L) B / C (or gradient) with zero strides per `z`, stored
/// channel-last ((batch, L, groups, N) buffer) or channel-first; `size` receives its elements.
Extents<4> bc_strides(const Config& c, index_t groups, Zero z, bool channel_last, index_t& size) {
  const bool zb = z == Zero::batch || z == Zero::both, zt = z == Zero::time || z == Zero::both;
  const index_t rb = zb ? 1 : c.batch, rl = zt ? 1 : c.L, G = groups, N = c.N;
  size = rb * G * N * rl;
  if (channel_last) return Extents<4>{zb ? 0 : rl * G * N, N, 1, zt ? 0 : G * N};
  return Extents<4>{zb ? 0 : G * N * rl, N * rl, rl, zt ? 0 : 1};
}

/// One problem in host memory, its device copy, and the Args over both.
template <class T>
struct Problem {
  Config c;
  Mirror<T> u, delta, z, dout, B, C, du, ddelta, dz, dB, dC;
  Mirror<float> A, D, bias, init, dfinal, dA, dD, dbias, dinit;
  moss::SelectiveScanBackwardArgs<T> h;  // over the host vectors

  Problem(const Config& cfg, std::uint64_t seed) : c(cfg) {
    using moss::test::randn;
    using moss::test::uniform;
    const index_t batch = c.batch, dim = c.dim, L = c.L, N = c.N;
    const index_t n_act = batch * dim * L, n_state = batch * dim * N;
    auto sz = [](index_t n) { return static_cast<std::size_t>(n > 0 ? n : 1); };

    u.set(randn(sz(n_act), seed + 1), n_act);
    delta.set(c.softplus ? randn(sz(n_act), seed + 2, 1.0f, -1.0f) : uniform(sz(n_act), seed + 2, 0.01f, 0.3f), n_act);
    dout.set(randn(sz(n_act), seed + 3), n_act);
    h.u = ConstView<T, 3>(u.host.data(), {batch, dim, L}, act_strides(c, c.channel_last), "u");
    h.delta = ConstView<T, 3>(delta.host.data(), {batch, dim, L}, act_strides(c, c.channel_last), "delta");
    h.dout = ConstView<T, 3>(dout.host.data(), {batch, dim, L}, act_strides(c, c.grad_channel_last), "dout");
    if (c.has_z) {
      z.set(randn(sz(n_act), seed + 4), n_act);
      h.z = ConstView<T, 3>(z.host.data(), {batch, dim, L}, act_strides(c, c.channel_last), "z");
    }
    index_t nb = 0, nc = 0;
    const Extents<4> sb = bc_strides(c, c.groups_b, c.zero_b, c.channel_last, nb);
    const Extents<4> sc = bc_strides(c, c.groups_c, c.zero_c, c.channel_last, nc);
    B.set(randn(sz(nb), seed + 5), nb);
    C.set(randn(sz(nc), seed + 6), nc);
    h.B = ConstView<T, 4>(B.host.data(), {batch, c.groups_b, N, L}, sb, "B");
    h.C = ConstView<T, 4>(C.host.data(), {batch, c.groups_c, N, L}, sc, "C");

    // A[d, n] = -(n + 1)·U(0.5, 1.5), Mamba's S4D-real initialisation (as the forward's CUDA test).
    std::vector<float> a = uniform(sz(dim * N), seed + 7, 0.5f, 1.5f);
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n) a[static_cast<std::size_t>(d * N + n)] *= -static_cast<float>(n + 1);
    A.set(a, dim * N);
    h.A = ConstView<float, 2>(A.host.data(), {dim, N}, "A");
    if (c.has_d) {
      D.set(randn(sz(dim), seed + 8), dim);
      h.D = ConstView<float, 1>(D.host.data(), {dim}, "D");
    }
    if (c.has_bias) {
      bias.set(c.softplus ? uniform(sz(dim), seed + 9, -1.0f, 0.5f) : uniform(sz(dim), seed + 9, 0.0f, 0.1f), dim);
      h.delta_bias = ConstView<float, 1>(bias.host.data(), {dim}, "delta_bias");
    }
    h.delta_softplus = c.softplus;
    if (c.has_init) {
      init.set(randn(sz(n_state), seed + 10), n_state);
      h.initial_state = ConstView<float, 3>(init.host.data(), {batch, dim, N}, "initial_state");
    }
    if (c.has_dfinal) {
      dfinal.set(randn(sz(n_state), seed + 11), n_state);
      h.dfinal_state = ConstView<float, 3>(dfinal.host.data(), {batch, dim, N}, "dfinal_state");
    }

    // Outputs, poisoned (or the priors of `accumulate`).
    if (c.want & kDu) {
      du.fill(kNaN, n_act);
      h.du = TensorView<T, 3>(du.host.data(), {batch, dim, L}, act_strides(c, c.grad_channel_last), "du");
    }
    if (c.want & kDdelta) {
      ddelta.fill(kNaN, n_act);
      h.ddelta = TensorView<T, 3>(ddelta.host.data(), {batch, dim, L}, act_strides(c, c.grad_channel_last), "ddelta");
    }
    if ((c.want & kDz) && c.has_z) {
      dz.fill(kNaN, n_act);
      h.dz = TensorView<T, 3>(dz.host.data(), {batch, dim, L}, act_strides(c, c.grad_channel_last), "dz");
    }
    if (c.want & kDB) {
      index_t n = 0;
      const Extents<4> s = bc_strides(c, c.groups_b, c.zero_b, c.grad_channel_last, n);
      dB.fill(kNaN, batch * L == 0 ? 0 : n);
      h.dB = TensorView<T, 4>(dB.host.data(), {batch, c.groups_b, N, L}, s, "dB");
    }
    if (c.want & kDC) {
      index_t n = 0;
      const Extents<4> s = bc_strides(c, c.groups_c, c.zero_c, c.grad_channel_last, n);
      dC.fill(kNaN, batch * L == 0 ? 0 : n);
      h.dC = TensorView<T, 4>(dC.host.data(), {batch, c.groups_c, N, L}, s, "dC");
    }
    auto prior = [&](Mirror<float>& m, index_t n, std::uint64_t s) {
      if (c.accumulate)
        m.set(randn(sz(n), s), n);
      else
        m.fill(kNaN, n);
    };
    if (c.want & kDA) {
      prior(dA, dim * N, seed + 12);
      h.dA = TensorView<float, 2>(dA.host.data(), {dim, N}, "dA");
    }
    if (c.want & kDD) {
      prior(dD, dim, seed + 13);
      h.dD = TensorView<float, 1>(dD.host.data(), {dim}, "dD");
    }
    if (c.want & kDbias) {
      prior(dbias, dim, seed + 14);
      h.ddelta_bias = TensorView<float, 1>(dbias.host.data(), {dim}, "ddelta_bias");
    }
    if (c.want & kDinit) {
      dinit.fill(kNaN, n_state);
      h.dinitial_state = TensorView<float, 3>(dinit.host.data(), {batch, dim, N}, "dinitial_state");
    }
    h.accumulate = c.accumulate;
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  /// Copies every input and the initial contents of every output to the device.
  void upload(const moss::Cuda& gpu) {
    for (Mirror<T>* m : {&u, &delta, &z, &dout, &B, &C, &du, &ddelta, &dz, &dB, &dC})
      if (!m->host.empty()) m->upload(gpu);
    for (Mirror<float>* m : {&A, &D, &bias, &init, &dfinal, &dA, &dD, &dbias, &dinit})
      if (!m->host.empty()) m->upload(gpu);
  }

  /// The Args over the device copies.
  moss::SelectiveScanBackwardArgs<T> device_args() const {
    moss::SelectiveScanBackwardArgs<T> g = h;
    g.u = u.on_device(h.u);
    g.delta = delta.on_device(h.delta);
    g.z = z.on_device(h.z);
    g.dout = dout.on_device(h.dout);
    g.B = B.on_device(h.B);
    g.C = C.on_device(h.C);
    g.A = A.on_device(h.A);
    g.D = D.on_device(h.D);
    g.delta_bias = bias.on_device(h.delta_bias);
    g.initial_state = init.on_device(h.initial_state);
    g.dfinal_state = dfinal.on_device(h.dfinal_state);
    g.du = du.on_device(h.du);
    g.ddelta = ddelta.on_device(h.ddelta);
    g.dz = dz.on_device(h.dz);
    g.dB = dB.on_device(h.dB);
    g.dC = dC.on_device(h.dC);
    g.dA = dA.on_device(h.dA);
    g.dD = dD.on_device(h.dD);
    g.ddelta_bias = dbias.on_device(h.ddelta_bias);
    g.dinitial_state = dinit.on_device(h.dinitial_state);
    return g;
  }
};

/// The gradients of one device run, in storage order (empty when not asked for).
template <class T>
struct Result {
  std::vector<T> du, ddelta, dz, dB, dC;
  std::vector<float> dA, dD, dbias, dinit;
};

/// Runs the CUDA backward on `p`'s device copies (outputs reset to their initial contents) and
/// reads every gradient back. `subtiles` > 0 forces the sub-tiles per block, `states_per_warp`
/// > 0 the warp-per-state kernel's states per warp, `kernel_checkpoints` its own checkpoint pass.
template <class T>
Result<T> run_device(Problem<T>& p, const moss::Cuda& gpu, index_t subtiles, int states_per_warp = 0,
                     bool kernel_checkpoints = false) {
  p.upload(gpu);
  const moss::SelectiveScanBackwardArgs<T> g = p.device_args();
  if (subtiles > 0 || states_per_warp > 0 || kernel_checkpoints) {
    moss::validate(g, "selective_scan_backward (test)");
    moss::detail::scan::run_backward(gpu, g, subtiles, states_per_warp, kernel_checkpoints);
  } else {
    moss::selective_scan_backward(gpu, g);
  }
  gpu.synchronize();
  Result<T> r;
  auto read = [&](const auto& m, auto& out) {
    if (m.dev.size() > 0 && m.numel > 0) out = moss::test::host_copy(gpu, m.dev);
  };
  read(p.du, r.du);
  read(p.ddelta, r.ddelta);
  read(p.dz, r.dz);
  read(p.dB, r.dB);
  read(p.dC, r.dC);
  read(p.dA, r.dA);
  read(p.dD, r.dD);
  read(p.dbias, r.dbias);
  read(p.dinit, r.dinit);
  return r;
}

/// One ulp of T relative (at most), for the T-typed gradients: 0 for float.
template <class T>
constexpr double t_ulp() {
  if constexpr (std::is_same_v<T, float>)
    return 0.0;
  else if constexpr (std::is_same_v<T, moss::f16>)
    return 0x1p-10;
  else
    return 0x1p-7;
}

/// Tolerance of the float32 outputs (see the top of the file).
constexpr double kFloatTol = 1e-4;

/// Compares one gradient of the device with the host's (skipped when not asked for or empty).
template <class E>
void compare(const char* name, const Mirror<E>& m, const std::vector<E>& got, double tol) {
  if (m.host.empty() || m.numel == 0) return;
  INFO(name);
  REQUIRE(got.size() == m.host.size());
  const double e = moss::test::rel_l2(got, m.host);
  CAPTURE(e, tol);
  CHECK(e <= tol);
}

/// The CUDA backward of `c` against the host backward on the same inputs.
template <class T>
void check_backward(const Config& c, std::uint64_t seed) {
  INFO(describe(c) << " seed " << seed);
  moss::CudaStream stream;  // declared first: it outlives the device buffers, which free on it
  const moss::Cuda gpu{stream.get()};
  Problem<T> p(c, seed);
  const Result<T> r = run_device(p, gpu, c.subtiles, c.states_per_warp, c.kernel_checkpoints);
  moss::selective_scan_backward(moss::Host{}, p.h);  // overwrites the host outputs
  const double tol_t = kFloatTol + t_ulp<T>();
  compare("du", p.du, r.du, tol_t);
  compare("ddelta", p.ddelta, r.ddelta, tol_t);
  compare("dz", p.dz, r.dz, tol_t);
  compare("dB", p.dB, r.dB, tol_t);
  compare("dC", p.dC, r.dC, tol_t);
  compare("dA", p.dA, r.dA, kFloatTol);
  compare("dD", p.dD, r.dD, kFloatTol);
  compare("ddelta_bias", p.dbias, r.dbias, kFloatTol);
  compare("dinitial_state", p.dinit, r.dinit, kFloatTol);
}

/// The configurations every dtype runs.
std::vector<Config> backward_configs() {
  std::vector<Config> v;
  {  // L = 1, batch 1, fewer channels than a sub-tile
    Config c;
    c.batch = 1;
    c.dim = 5;
    c.L = 1;
    v.push_back(c);
  }
  {  // L not a multiple of the chunk (64 at N = 16), batch 3, 37 channels (ragged sub-tile), channel-first
    Config c;
    c.batch = 3;
    c.L = 100;
    c.channel_last = c.grad_channel_last = false;
    v.push_back(c);
  }
  {  // L = 300 over five chunks; groups of 10 and 5 channels crossing the 8-channel sub-tiles
    Config c;
    c.dim = 20;
    c.L = 300;
    c.groups_b = 2;
    c.groups_c = 4;
    v.push_back(c);
  }
  {  // d_state 1, z and D absent, gradients channel-first under channel-last inputs
    Config c;
    c.batch = 3;
    c.dim = 9;
    c.L = 70;
    c.N = 1;
    c.has_z = c.has_d = false;
    c.grad_channel_last = false;
    v.push_back(c);
  }
  {  // d_state 5 (padding lanes); no delta_bias, no softplus, no initial state, no final-state gradient
    Config c;
    c.dim = 12;
    c.L = 65;
    c.N = 5;
    c.has_bias = c.softplus = c.has_init = c.has_dfinal = false;
    c.channel_last = false;
    c.grad_channel_last = true;
    v.push_back(c);
  }
  {  // constant (dim, N) B and C: zero strides along batch and L, groups = dim
    Config c;
    c.batch = 3;
    c.dim = 11;
    c.L = 130;
    c.groups_b = c.groups_c = 11;
    c.zero_b = c.zero_c = Zero::both;
    v.push_back(c);
  }
  {  // B shared over the batch (summed over it), C constant in time (summed over L), groups
    Config c;
    c.batch = 3;
    c.dim = 12;
    c.L = 77;
    c.groups_b = 3;
    c.groups_c = 2;
    c.zero_b = Zero::batch;
    c.zero_c = Zero::time;
    c.channel_last = false;
    v.push_back(c);
  }
  // Every kernel shape: (16 lanes, 1 state), (32, 1), (32, 2), (32, 4), (32, 8: chunk of 8 steps).
  for (index_t N : {16, 17, 32, 64, 100, 256}) {
    Config c;
    c.N = N;
    c.dim = N > 64 ? 6 : 10;
    c.L = 70;
    c.groups_c = 2;
    c.channel_last = N % 2 == 0;
    v.push_back(c);
  }
  {  // super-tiles of 2 and 3 sub-tiles: groups of 8 and 20 channels across them, summed B too
    Config c;
    c.dim = 40;
    c.L = 90;
    c.groups_b = 5;
    c.groups_c = 2;
    c.subtiles = 2;
    v.push_back(c);
    c.subtiles = 3;
    c.zero_b = Zero::both;
    c.groups_b = 40;
    v.push_back(c);
    c.subtiles = 3;
    c.zero_b = Zero::none;
    c.groups_b = 1;
    c.zero_c = Zero::time;
    c.N = 40;  // 4 channels per sub-tile
    v.push_back(c);
  }
  {  // more channels: 38 sub-tiles in one batch row
    Config c;
    c.batch = 3;
    c.dim = 300;
    c.L = 130;
    c.groups_b = 2;
    v.push_back(c);
  }
  {  // the warp-per-state kernel over several 256-step chunks: 150 channels in slices of 16 (the
     // last ragged) that groups of 50 (B) and 75 (C) channels cross; d_state 10 (10 warps: halves
     // of 5), channel-last, then channel-first over two chunks and a bit
    Config c;
    c.batch = 2;
    c.dim = 150;
    c.L = 1100;
    c.groups_b = 3;
    c.groups_c = 2;
    v.push_back(c);
    c.batch = 3;
    c.dim = 20;
    c.L = 600;
    c.N = 10;
    c.groups_b = c.groups_c = 1;
    c.channel_last = !c.channel_last;
    v.push_back(c);
  }
  {  // the warp-per-state kernel with one and with an odd number of states (the two halves of
     // warps that form du / ddelta / dz take unequal shares), dims not a multiple of 16
    Config c;
    c.dim = 21;
    c.L = 260;
    c.N = 1;
    v.push_back(c);
    c.N = 3;
    c.dim = 5;
    c.channel_last = false;
    c.grad_channel_last = false;
    v.push_back(c);
  }
  {  // everything optional absent at once
    Config c;
    c.batch = 1;
    c.dim = 8;
    c.L = 64;
    c.has_d = c.has_z = c.has_bias = c.softplus = c.has_init = c.has_dfinal = false;
    v.push_back(c);
  }
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("selective_scan_backward (cuda): every gradient equals the host backward", "[cuda]", float,
                   moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 100;
  for (const Config& c : backward_configs()) check_backward<TestType>(c, seed += 31);
}

TEMPLATE_TEST_CASE("selective_scan_backward (cuda): two states per warp equal the host backward", "[cuda]", float,
                   moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  // The warp-per-state kernel with S = 2 (odd d_state: the last warp's second state is absent).
  std::uint64_t seed = 900;
  for (Config c : backward_configs()) {
    c.states_per_warp = 2;
    check_backward<TestType>(c, seed += 31);
  }
}

TEMPLATE_TEST_CASE("selective_scan_backward (cuda): the kernel's own checkpoint pass equals the host backward",
                   "[cuda]", float, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  // The warp-per-state kernel computing its checkpoints itself (pass 1) instead of taking the
  // forward scan kernel's, with one and two states per warp.
  std::uint64_t seed = 1300;
  for (Config c : backward_configs()) {
    c.kernel_checkpoints = true;
    check_backward<TestType>(c, seed += 31);
    c.states_per_warp = 2;
    check_backward<TestType>(c, seed += 31);
  }
}

TEMPLATE_TEST_CASE("selective_scan (cuda): the backward's checkpoints are the host scan's states every 256 steps",
                   "[cuda]", float, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  constexpr index_t kSteps = moss::detail::scan::kScanCheckpointSteps;
  // Lengths around the checkpoint interval and the staged chunk, ragged dim, d_state 16 and 5
  // (both tuning rows of the warp-per-state plan), both layouts, with and without an initial state.
  struct Shape {
    index_t batch, dim, L, N;
    bool channel_last, init;
  };
  const Shape shapes[] = {{2, 37, 1, 16, true, true},    {2, 37, 255, 16, true, false}, {1, 130, 256, 16, false, true},
                          {2, 37, 257, 5, true, true},   {3, 20, 700, 16, false, true}, {1, 8, 1024, 16, true, false},
                          {2, 37, 1000, 5, false, false}};
  std::uint64_t seed = 1500;
  for (const Shape& s : shapes) {
    Config c;
    c.batch = s.batch, c.dim = s.dim, c.L = s.L, c.N = s.N, c.channel_last = s.channel_last, c.has_init = s.init;
    INFO(describe(c));
    Problem<T> p(c, seed += 17);
    p.upload(gpu);
    const moss::SelectiveScanBackwardArgs<T> g = p.device_args();
    const index_t chunks = moss::ceil_div(c.L, kSteps);
    auto ckpt = gpu.alloc<float>(c.batch * c.dim * chunks * c.N);
    moss::detail::scan::launch_checkpoints(gpu, moss::detail::scan::checkpoint_args(g), ckpt.data());
    const std::vector<float> got = moss::test::host_copy(gpu, ckpt);
    // The host scan over the first k·256 steps ends in the state entering step k·256.
    std::vector<float> want(got.size(), 0.0f);
    for (index_t k = 0; k < chunks; ++k) {
      const index_t len = k * kSteps;
      std::vector<float> state(static_cast<std::size_t>(c.batch * c.dim * c.N), 0.0f);
      if (len == 0) {
        if (c.has_init) state = p.init.host;
      } else {
        moss::SelectiveScanArgs<T> f = moss::detail::scan::checkpoint_args(p.h);
        f.u.shape[2] = f.delta.shape[2] = len;  // the first len steps: the same data and strides
        f.B.shape[3] = f.C.shape[3] = len;
        std::vector<T> out(static_cast<std::size_t>(c.batch * c.dim * len));
        f.out = TensorView<T, 3>(out.data(), {c.batch, c.dim, len}, "out");
        f.final_state = TensorView<float, 3>(state.data(), {c.batch, c.dim, c.N}, "final_state");
        moss::selective_scan(moss::Host{}, f);
      }
      for (index_t bd = 0; bd < c.batch * c.dim; ++bd)
        for (index_t n = 0; n < c.N; ++n)
          want[static_cast<std::size_t>((bd * chunks + k) * c.N + n)] = state[static_cast<std::size_t>(bd * c.N + n)];
    }
    CHECK(moss::test::rel_l2(got, want) <= 1e-5);
  }
}

TEST_CASE("selective_scan_backward (cuda): the configurations cover the kernel shapes and options", "[cuda]") {
  // Guards the list above (no device needed): both layouts, every d_state range, forced
  // super-tiles, each zero-stride kind and each optional input off.
  bool layouts[2] = {false, false}, zeros[4] = {false, false, false, false}, forced = false;
  bool shapes[5] = {false, false, false, false, false};
  bool off_d = false, off_z = false, off_bias = false, off_softplus = false, off_init = false, off_dfinal = false;
  for (const Config& c : backward_configs()) {
    layouts[c.channel_last] = true;
    zeros[static_cast<int>(c.zero_b)] = zeros[static_cast<int>(c.zero_c)] = true;
    forced = forced || c.subtiles > 1;
    shapes[c.N <= 16 ? 0 : c.N <= 32 ? 1 : c.N <= 64 ? 2 : c.N <= 128 ? 3 : 4] = true;
    off_d = off_d || !c.has_d;
    off_z = off_z || !c.has_z;
    off_bias = off_bias || !c.has_bias;
    off_softplus = off_softplus || !c.softplus;
    off_init = off_init || !c.has_init;
    off_dfinal = off_dfinal || !c.has_dfinal;
  }
  CHECK((layouts[0] && layouts[1]));
  CHECK((zeros[0] && zeros[1] && zeros[2] && zeros[3]));
  CHECK(forced);
  CHECK((shapes[0] && shapes[1] && shapes[2] && shapes[3] && shapes[4]));
  CHECK((off_d && off_z && off_bias && off_softplus && off_init && off_dfinal));
}

TEST_CASE("selective_scan_backward (cuda): super-tiles from the plan's rule at dim 8192", "[cuda][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  Config c;
  c.batch = 2;
  c.dim = 8192;
  c.L = 20;
  c.groups_c = 2;
  {  // d_state 16: the warp-per-state kernel, slices of 64 channels (4 staged groups each)
    Problem<moss::bf16> p(c, 8190);
    const auto plan = moss::detail::scan::backward_plan(p.h);
    CHECK(plan.warp_per_state);
    CHECK(plan.slice_channels == 64);  // 2 × 8192 / 64 = 256 blocks
    CHECK(plan.supertiles == 128);
    check_backward<moss::bf16>(c, 8190);
  }
  c.N = 32;  // the sequential kernel
  Problem<moss::bf16> p(c, 8192);
  const auto plan = moss::detail::scan::backward_plan(p.h);
  INFO("sub-tiles per block " << plan.subtiles << ", super-tiles " << plan.supertiles);
  CHECK(!plan.warp_per_state);
  CHECK(plan.subtiles >= 2);  // 2 × 2048 sub-tiles of 4 channels: the rule merges them
  check_backward<moss::bf16>(c, 8192);
  c.zero_b = Zero::both;
  c.groups_b = c.dim;
  check_backward<float>(c, 8193);
}

TEST_CASE("selective_scan_backward (cuda): slices of 64 channels that groups of B cross", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  // 8 × ⌈2000 / 64⌉ = 256 blocks: the plan takes slices of 64 channels (four staged groups of 16,
  // the last slice 16 channels); B groups of 40 channels end inside slices and staged groups.
  Config c;
  c.batch = 8;
  c.dim = 2000;
  c.L = 300;
  c.groups_b = 50;
  c.groups_c = 2;
  Problem<moss::bf16> p(c, 2000);
  const auto plan = moss::detail::scan::backward_plan(p.h);
  CHECK(plan.warp_per_state);
  CHECK(plan.slice_channels == 64);
  check_backward<moss::bf16>(c, 2001);
}

TEMPLATE_TEST_CASE("selective_scan_backward (cuda): each gradient asked for alone equals the host's and the full run's",
                   "[cuda]", float, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  // d_state 64: the recomputed chunk is 32 steps when dB is asked for and 64 when not. Neither the
  // chunk nor the set of outputs changes any arithmetic or order, so every gradient asked for
  // alone is bitwise the one of the full run.
  Config full;
  full.dim = 20;
  full.L = 150;
  full.N = 64;
  full.groups_b = 2;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  Problem<TestType> all(full, 500);
  const Result<TestType> ra = run_device(all, gpu, 0);
  for (unsigned w : {unsigned(kDu), unsigned(kDdelta), unsigned(kDA), unsigned(kDB), unsigned(kDC), unsigned(kDD),
                     unsigned(kDz), unsigned(kDbias), unsigned(kDinit), unsigned(kDB | kDA), unsigned(kDC | kDz), 0u}) {
    Config c = full;
    c.want = w;
    INFO("want " << w);
    check_backward<TestType>(c, 500);
    Problem<TestType> p(c, 500);
    const Result<TestType> r = run_device(p, gpu, 0);
    CHECK((r.du.empty() || moss::test::same_bits(r.du, ra.du)));
    CHECK((r.ddelta.empty() || moss::test::same_bits(r.ddelta, ra.ddelta)));
    CHECK((r.dz.empty() || moss::test::same_bits(r.dz, ra.dz)));
    CHECK((r.dB.empty() || moss::test::same_bits(r.dB, ra.dB)));
    CHECK((r.dC.empty() || moss::test::same_bits(r.dC, ra.dC)));
    CHECK((r.dA.empty() || moss::test::same_bits(r.dA, ra.dA)));
    CHECK((r.dD.empty() || moss::test::same_bits(r.dD, ra.dD)));
    CHECK((r.dbias.empty() || moss::test::same_bits(r.dbias, ra.dbias)));
    CHECK((r.dinit.empty() || moss::test::same_bits(r.dinit, ra.dinit)));
    // Exactly the outputs asked for came back.
    CHECK(r.du.empty() == !(w & kDu));
    CHECK(r.dB.empty() == !(w & kDB));
    CHECK(r.dA.empty() == !(w & kDA));
    CHECK(r.dinit.empty() == !(w & kDinit));
  }
  const auto with_db = moss::detail::scan::backward_plan(all.h);
  Config no_db = full;
  no_db.want = kAll & ~unsigned(kDB);
  Problem<TestType> q(no_db, 500);
  const auto without_db = moss::detail::scan::backward_plan(q.h);
  CHECK(with_db.chunk == 32);
  CHECK(without_db.chunk == 64);
}

TEST_CASE("selective_scan_backward (cuda): accumulate adds dA, dD and ddelta_bias into the outputs", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  Config c;
  c.dim = 20;
  c.L = 90;
  Config acc = c;
  acc.accumulate = true;
  check_backward<moss::bf16>(acc, 600);
  // Bitwise: the accumulated output is the prior plus the fresh sum, one float addition.
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  Problem<float> fresh(c, 601), added(acc, 601);
  const Result<float> rf = run_device(fresh, gpu, 0), ra = run_device(added, gpu, 0);
  auto expect_sum = [](const std::vector<float>& prior, const std::vector<float>& g) {
    std::vector<float> s(prior.size());
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = prior[i] + g[i];
    return s;
  };
  CHECK(moss::test::same_bits(ra.dA, expect_sum(added.dA.initial, rf.dA)));
  CHECK(moss::test::same_bits(ra.dD, expect_sum(added.dD.initial, rf.dD)));
  CHECK(moss::test::same_bits(ra.dbias, expect_sum(added.dbias.initial, rf.dbias)));
  CHECK(moss::test::same_bits(ra.du, rf.du));  // the others are written, not accumulated
  CHECK(moss::test::same_bits(ra.dB, rf.dB));
}

TEST_CASE("selective_scan_backward (cuda): L = 0 and batch = 0", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  for (bool dfinal : {true, false}) {
    Config c;
    c.L = 0;
    c.has_dfinal = dfinal;
    check_backward<float>(c, 700 + dfinal);  // dinitial_state = dfinal_state (or 0), parameters 0
    moss::CudaStream stream;
    const moss::Cuda gpu{stream.get()};
    Problem<float> p(c, 700 + dfinal);
    const Result<float> r = run_device(p, gpu, 0);
    CHECK(r.dinit == (dfinal ? p.dfinal.host : std::vector<float>(p.dinit.host.size(), 0.0f)));
    CHECK(r.dA == std::vector<float>(p.dA.host.size(), 0.0f));
  }
  Config c;
  c.batch = 0;
  check_backward<moss::f16>(c, 710);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  Problem<moss::f16> p(c, 710);
  const Result<moss::f16> r = run_device(p, gpu, 0);
  CHECK(r.dA == std::vector<float>(p.dA.host.size(), 0.0f));
  CHECK(r.dD == std::vector<float>(p.dD.host.size(), 0.0f));
  CHECK(r.dbias == std::vector<float>(p.dbias.host.size(), 0.0f));
}

TEST_CASE("selective_scan_backward (cuda): bitwise repeatable", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::vector<Config> cs(3);
  cs[0].dim = 20;
  cs[0].L = 300;
  cs[0].groups_b = 2;
  cs[0].groups_c = 4;
  cs[1] = cs[0];
  cs[1].subtiles = 3;
  cs[1].zero_c = Zero::both;
  cs[1].groups_c = 20;
  cs[2].batch = 3;
  cs[2].dim = 300;
  cs[2].N = 64;
  cs[2].L = 129;
  cs[2].zero_b = Zero::batch;
  cs.push_back(cs[0]);
  cs[3].states_per_warp = 2;
  cs.push_back(cs[0]);
  cs[4].kernel_checkpoints = true;
  for (const Config& c : cs) {
    INFO(describe(c));
    Problem<moss::bf16> p(c, 800);
    const Result<moss::bf16> a = run_device(p, gpu, c.subtiles, c.states_per_warp, c.kernel_checkpoints);
    // A second run into outputs poisoned differently: an element left unwritten would differ.
    for (auto* m : {&p.du, &p.ddelta, &p.dz, &p.dB, &p.dC})
      for (auto& x : m->initial) x = moss::from_float<moss::bf16>(7.0f);
    for (auto* m : {&p.dA, &p.dD, &p.dbias, &p.dinit})
      for (auto& x : m->initial) x = 7.0f;
    const Result<moss::bf16> b = run_device(p, gpu, c.subtiles, c.states_per_warp, c.kernel_checkpoints);
    CHECK(moss::test::same_bits(a.du, b.du));
    CHECK(moss::test::same_bits(a.ddelta, b.ddelta));
    CHECK(moss::test::same_bits(a.dz, b.dz));
    CHECK(moss::test::same_bits(a.dB, b.dB));
    CHECK(moss::test::same_bits(a.dC, b.dC));
    CHECK(moss::test::same_bits(a.dA, b.dA));
    CHECK(moss::test::same_bits(a.dD, b.dD));
    CHECK(moss::test::same_bits(a.dbias, b.dbias));
    CHECK(moss::test::same_bits(a.dinit, b.dinit));
    CHECK(!a.du.empty());
  }
}

TEST_CASE("selective_scan_backward (cuda): validates before any launch, like the host", "[cuda]") {
  // No device needed: the checks run before the first CUDA call.
  Config c;
  c.dim = 4;
  c.L = 5;
  Problem<float> p(c, 900);
  const moss::Cuda gpu{};
  auto a = p.h;
  a.dout.shape[2] = 6;
  REQUIRE_THROWS_AS(moss::selective_scan_backward(gpu, a), moss::shape_error);
  a = p.h;
  a.z = {};
  REQUIRE_THROWS_AS(moss::selective_scan_backward(gpu, a), moss::config_error);  // dz without z
  a = p.h;
  a.dB.stride[2] = 0;
  REQUIRE_THROWS_AS(moss::selective_scan_backward(gpu, a), moss::shape_error);
  a = p.h;
  a.A.shape[1] = 300;
  REQUIRE_THROWS_AS(moss::selective_scan_backward(gpu, a), moss::unsupported_error);
}
