// CUDA tests of moss::selective_scan and moss::selective_scan_step: every scan strategy
// (SequentialScan, ChunkedScan, AutoScan and a user's one-thread-per-channel strategy defined
// here) against the host oracle on the same inputs, over dtypes, layouts (channel-last,
// channel-first, generic strides, misaligned bases), lengths that are not multiples of the chunk
// or of the segment, channel counts that are not multiples of the channel tile, every
// state-size bucket, groups, constant B / C and every optional input; ChunkedScan's segments
// forced from one staged chunk up, its workspace, and batch 1 × dim 4096 × long L.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan/cuda.cuh"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// Memory layout of u, delta, z, out and of variable B, C.
enum class Layout {
  channel_last,      // (batch, L, ·) buffers: unit stride along dim / N, 16-byte aligned
  channel_first,     // (batch, dim, L) buffers: unit stride along L, 16-byte aligned
  strided,           // no unit stride anywhere: the scalar paths
  misaligned,        // channel-last but one element off 16-byte alignment: the scalar paths
  misaligned_first,  // channel-first, one element off: the scalar paths into row-major tiles
};

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::channel_last:
      return "channel_last";
    case Layout::channel_first:
      return "channel_first";
    case Layout::strided:
      return "strided";
    case Layout::misaligned:
      return "misaligned";
    default:
      return "misaligned_first";
  }
}

struct Config {
  index_t batch = 2, dim = 37, L = 7, N = 16, groups_b = 1, groups_c = 1;
  bool const_b = false, const_c = false;
  bool has_d = true, has_z = true, has_bias = true, softplus = true, has_init = true, has_final = true;
  Layout layout = Layout::channel_last;
};

index_t round_up(index_t x, index_t m) { return (x + m - 1) / m * m; }

/// Moves a view from one buffer to the same offsets in another.
template <class V, class H, class D>
V rebase(V v, const H* from, D* to) {
  if (v.data) v.data = to + (v.data - from);
  return v;
}

/// Copies a host vector to a new device buffer.
template <class T>
moss::Buffer<T> upload(const moss::Cuda& gpu, const std::vector<T>& h) {
  moss::Buffer<T> d = gpu.alloc<T>(static_cast<index_t>(h.size()));
  if (!h.empty())
    MOSS_CUDA_CHECK(cudaMemcpyAsync(d.data(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, gpu.stream));
  return d;
}

template <class T>
std::vector<T> download(const moss::Cuda& gpu, const moss::Buffer<T>& d, std::size_t n) {
  std::vector<T> h(n);
  if (n) MOSS_CUDA_CHECK(cudaMemcpyAsync(h.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
  return h;
}

/// Inputs of one scan in host memory, laid out as the config says, and the views over them.
template <class T>
struct Problem {
  Config cfg;
  std::vector<T> act, bc, out;
  std::vector<float> A, D, bias, init, final_state;
  moss::SelectiveScanArgs<T> args;

  Problem(const Config& c, std::uint64_t seed) : cfg(c) {
    const index_t batch = c.batch, dim = c.dim, L = c.L, N = c.N;
    auto fill = [&](TensorView<T, 3> v, std::uint64_t s, float stddev, float mean, bool positive) {
      const auto vals = positive ? moss::test::uniform(static_cast<std::size_t>(v.numel()), s, 0.01f, 0.3f)
                                 : moss::test::randn(static_cast<std::size_t>(v.numel()), s, stddev, mean);
      std::size_t i = 0;
      for (index_t b = 0; b < v.shape[0]; ++b)
        for (index_t d = 0; d < v.shape[1]; ++d)
          for (index_t t = 0; t < v.shape[2]; ++t) v(b, d, t) = moss::from_float<T>(vals[i++]);
      return ConstView<T, 3>(v);
    };

    // Activations and out: three input slots and the output.
    const index_t Dp = round_up(dim, 8), Lp = round_up(L, 8);
    TensorView<T, 3> slots[3];
    TensorView<T, 3> out_view;
    const index_t n_act = batch * dim * L;
    switch (c.layout) {
      case Layout::channel_last:
      case Layout::misaligned: {
        const index_t W = 3 * Dp + 8, off = c.layout == Layout::misaligned ? 1 : 0;
        act.resize(batch * L * W);
        out.resize(batch * L * Dp + off);
        for (int s = 0; s < 3; ++s)
          slots[s] = TensorView<T, 3>(act.data() + s * Dp + off, {batch, dim, L}, {L * W, 1, W});
        out_view = TensorView<T, 3>(out.data() + off, {batch, dim, L}, {L * Dp, 1, Dp});
        break;
      }
      case Layout::channel_first:
      case Layout::misaligned_first: {
        const index_t off = c.layout == Layout::misaligned_first ? 1 : 0;
        act.resize(3 * batch * dim * Lp + off);
        out.resize(batch * dim * Lp + off);
        for (int s = 0; s < 3; ++s)
          slots[s] = TensorView<T, 3>(act.data() + s * batch * dim * Lp + off, {batch, dim, L}, {dim * Lp, Lp, 1});
        out_view = TensorView<T, 3>(out.data() + off, {batch, dim, L}, {dim * Lp, Lp, 1});
        break;
      }
      case Layout::strided: {
        act.resize(3 * n_act);
        out.resize(2 * n_act);
        for (int s = 0; s < 3; ++s)
          slots[s] = TensorView<T, 3>(act.data() + s, {batch, dim, L}, {L * dim * 3, 3, dim * 3});
        out_view = TensorView<T, 3>(out.data(), {batch, dim, L}, {L * dim * 2, 2, dim * 2});
        break;
      }
    }
    args.u = fill(slots[0], seed + 1, 1.0f, 0.0f, false);
    args.delta = fill(slots[1], seed + 2, 1.0f, -1.0f, !c.softplus);
    if (c.has_z) args.z = fill(slots[2], seed + 3, 1.0f, 0.0f, false);
    // Poisoned: an element the op forgets to write stays NaN and fails every comparison.
    std::fill(out.begin(), out.end(), moss::from_float<T>(std::numeric_limits<float>::quiet_NaN()));
    args.out = out_view;

    // B and C: one buffer holds both (and the constant (dim, N) matrices after them).
    const index_t nb_var = batch * c.groups_b * N * L, nc_var = batch * c.groups_c * N * L;
    const index_t R = 8, W2 = round_up(R + (c.groups_b + c.groups_c) * N + 1, 8);  // + 1: room for misaligned
    index_t var_size = 0;
    if (c.layout == Layout::channel_first || c.layout == Layout::misaligned_first)
      var_size = batch * (c.groups_b + c.groups_c) * N * Lp + 1;
    else if (c.layout == Layout::strided)
      var_size = nb_var + nc_var;
    else
      var_size = batch * L * W2;
    bc.assign(var_size + 2 * dim * N, moss::from_float<T>(0.0f));
    auto make_bc = [&](bool constant, index_t groups, index_t slot, std::uint64_t s) -> ConstView<T, 4> {
      if (constant) {
        TensorView<T, 2> m(bc.data() + var_size + slot * dim * N, {dim, N});
        const auto vals = moss::test::randn(static_cast<std::size_t>(dim * N), s);
        for (index_t i = 0; i < dim * N; ++i) m.data[i] = moss::from_float<T>(vals[i]);
        return moss::constant_bc(m, batch, L);
      }
      TensorView<T, 4> v;
      const index_t g0 = slot == 0 ? 0 : c.groups_b;  // first group column of this tensor
      switch (c.layout) {
        case Layout::channel_first:
        case Layout::misaligned_first:
          v = TensorView<T, 4>(bc.data() + batch * g0 * N * Lp + (c.layout == Layout::misaligned_first ? 1 : 0),
                               {batch, groups, N, L}, {groups * N * Lp, N * Lp, Lp, 1});
          break;
        case Layout::strided:  // (batch, L, N, groups) storage
          v = TensorView<T, 4>(bc.data() + (slot == 0 ? 0 : nb_var), {batch, groups, N, L},
                               {L * N * groups, 1, groups, N * groups});
          break;
        default:
          v = TensorView<T, 4>(bc.data() + R + g0 * N + (c.layout == Layout::misaligned ? 1 : 0), {batch, groups, N, L},
                               {L * W2, N, 1, W2});
          break;
      }
      const auto vals = moss::test::randn(static_cast<std::size_t>(v.numel()), s);
      std::size_t i = 0;
      for (index_t b = 0; b < batch; ++b)
        for (index_t g = 0; g < groups; ++g)
          for (index_t n = 0; n < N; ++n)
            for (index_t t = 0; t < L; ++t) v(b, g, n, t) = moss::from_float<T>(vals[i++]);
      return v;
    };
    args.B = make_bc(c.const_b, c.groups_b, 0, seed + 4);
    args.C = make_bc(c.const_c, c.groups_c, 1, seed + 5);

    // Float inputs. A[d, n] = -(n + 1)·U(0.5, 1.5), as Mamba's S4D-real initialisation, keeps
    // every decay window short enough that float32 rounding does not pile up over 4097 steps.
    A = moss::test::uniform(static_cast<std::size_t>(dim * N), seed + 6, 0.5f, 1.5f);
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n) A[d * N + n] *= -static_cast<float>(n + 1);
    D = moss::test::randn(static_cast<std::size_t>(dim), seed + 7);
    bias = c.softplus ? moss::test::uniform(static_cast<std::size_t>(dim), seed + 8, -1.0f, 0.5f)
                      : moss::test::uniform(static_cast<std::size_t>(dim), seed + 8, 0.0f, 0.1f);
    init = moss::test::randn(static_cast<std::size_t>(batch * dim * N), seed + 9);
    final_state.assign(batch * dim * N, std::numeric_limits<float>::quiet_NaN());
    args.A = ConstView<float, 2>(A.data(), {dim, N});
    if (c.has_d) args.D = ConstView<float, 1>(D.data(), {dim});
    if (c.has_bias) args.delta_bias = ConstView<float, 1>(bias.data(), {dim});
    args.delta_softplus = c.softplus;
    if (c.has_init) args.initial_state = ConstView<float, 3>(init.data(), {batch, dim, N});
    if (c.has_final) args.final_state = TensorView<float, 3>(final_state.data(), {batch, dim, N});
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;
};

/// The elements of a (batch, dim, L) view in logical order.
template <class T>
std::vector<T> logical(const TensorView<T, 3>& v) {
  std::vector<T> r;
  r.reserve(static_cast<std::size_t>(v.numel()));
  for (index_t b = 0; b < v.shape[0]; ++b)
    for (index_t d = 0; d < v.shape[1]; ++d)
      for (index_t t = 0; t < v.shape[2]; ++t) r.push_back(v(b, d, t));
  return r;
}

/// Runs the scan on the host (the oracle) and on the GPU through `run(gpu, args)` from the same
/// inputs and compares.
template <class T, class Run>
void check_scan(const Config& c, std::uint64_t seed, Run run) {
  INFO("batch " << c.batch << " dim " << c.dim << " L " << c.L << " N " << c.N << " groups " << c.groups_b << "/"
                << c.groups_c << " const " << c.const_b << c.const_c << " D " << c.has_d << " z " << c.has_z << " bias "
                << c.has_bias << " softplus " << c.softplus << " init " << c.has_init << " final " << c.has_final
                << " layout " << layout_name(c.layout) << " seed " << seed);
  Problem<T> p(c, seed);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const auto d_act = upload(gpu, p.act);
  const auto d_bc = upload(gpu, p.bc);
  const auto d_out = upload(gpu, p.out);  // poisoned
  const auto d_A = upload(gpu, p.A);
  const auto d_D = upload(gpu, p.D);
  const auto d_bias = upload(gpu, p.bias);
  const auto d_init = upload(gpu, p.init);
  const auto d_final = upload(gpu, p.final_state);  // poisoned

  moss::SelectiveScanArgs<T> g = p.args;
  g.u = rebase(g.u, p.act.data(), d_act.data());
  g.delta = rebase(g.delta, p.act.data(), d_act.data());
  g.z = rebase(g.z, p.act.data(), d_act.data());
  g.B = rebase(g.B, p.bc.data(), d_bc.data());
  g.C = rebase(g.C, p.bc.data(), d_bc.data());
  g.out = rebase(g.out, p.out.data(), d_out.data());
  g.A = rebase(g.A, p.A.data(), d_A.data());
  g.D = rebase(g.D, p.D.data(), d_D.data());
  g.delta_bias = rebase(g.delta_bias, p.bias.data(), d_bias.data());
  g.initial_state = rebase(g.initial_state, p.init.data(), d_init.data());
  g.final_state = rebase(g.final_state, p.final_state.data(), d_final.data());
  run(gpu, g);
  std::vector<T> cuda_out_buf = download(gpu, d_out, p.out.size());
  const std::vector<float> cuda_final = download(gpu, d_final, p.final_state.size());

  moss::selective_scan<moss::SequentialScan>(moss::Host{}, p.args);
  const std::vector<T> host_out = logical(p.args.out);
  const std::vector<T> cuda_out = logical(rebase(p.args.out, p.out.data(), cuda_out_buf.data()));
  CHECK(moss::test::rel_l2(cuda_out, host_out) <= moss::test::op_tolerance<T>());
  if (c.has_final) CHECK(moss::test::rel_l2(cuda_final, p.final_state) <= 1e-5);
  // The output buffer outside the view (padding) is untouched: still the poison.
  std::size_t untouched = 0;
  for (std::size_t i = 0; i < cuda_out_buf.size(); ++i)
    untouched += std::isnan(moss::to_float(cuda_out_buf[i])) && std::isnan(moss::to_float(p.out[i]));
  CHECK(untouched == cuda_out_buf.size() - cuda_out.size());
}

/// The scan configurations every dtype runs: lengths, channel counts, state sizes, groups,
/// constant B / C and optional inputs, each in several layouts.
std::vector<Config> scan_configs() {
  std::vector<Config> v;
  const Layout layouts[] = {Layout::channel_last, Layout::channel_first, Layout::strided, Layout::misaligned,
                            Layout::misaligned_first};
  // Lengths around and far beyond the chunk, with a small dim.
  for (index_t L : {1, 7, 1000, 2049, 4097})
    for (Layout l : {Layout::channel_last, Layout::channel_first}) {
      Config c;
      c.batch = 3;
      c.dim = 37;
      c.L = L;
      c.layout = l;
      v.push_back(c);
    }
  // Channel counts that are not multiples of the channel tile, and one large dim.
  for (index_t dim : {1, 37, 1000})
    for (Layout l : layouts) {
      Config c;
      c.dim = dim;
      c.L = dim == 1000 ? 300 : 130;
      c.layout = l;
      v.push_back(c);
    }
  // Every tuning row and both sides of its bounds.
  for (index_t N : {1, 4, 8, 9, 16, 17, 64, 65, 256}) {
    Config c;
    c.N = N;
    c.dim = N > 64 ? 40 : 100;
    c.L = 75;
    c.layout = layouts[N % 5];
    v.push_back(c);
  }
  // Groups: channels per group smaller than the channel tile (B / C read per channel) and larger
  // (staged once per block).
  for (Layout l : layouts) {
    Config c;
    c.dim = 64;
    c.groups_b = 4;
    c.groups_c = 2;
    c.L = 50;
    c.layout = l;
    v.push_back(c);
    c.dim = 512;
    c.groups_b = 2;
    c.groups_c = 1;
    v.push_back(c);
  }
  // Constant B and / or C.
  for (int k = 1; k < 4; ++k) {
    Config c;
    c.const_b = k & 1;
    c.const_c = k & 2;
    c.L = 90;
    c.layout = layouts[k + 1];
    v.push_back(c);
  }
  // Optional inputs off one at a time, and all at once.
  for (int k = 0; k < 7; ++k) {
    Config c;
    c.L = 66;
    c.batch = 1 + k % 3;
    c.has_d = k != 0;
    c.has_z = k != 1;
    c.has_bias = k != 2;
    c.softplus = k != 3;
    c.has_init = k != 4;
    c.has_final = k != 5;
    if (k == 6) c.has_d = c.has_z = c.has_bias = c.softplus = c.has_init = false;
    c.layout = layouts[k % 5];
    v.push_back(c);
  }
  // L = 0: only the final state (= the initial state, or zeros).
  for (bool init : {true, false}) {
    Config c;
    c.L = 0;
    c.has_init = init;
    v.push_back(c);
  }
  return v;
}

/// `selective_scan<S>` on the GPU, as a runner of check_scan.
template <class S>
struct WithStrategy {
  template <class T>
  void operator()(const moss::Cuda& gpu, const moss::SelectiveScanArgs<T>& a) const {
    moss::selective_scan<S>(gpu, a);
  }
};

/// ChunkedScan's kernels with segments of `segment_len` steps (rounded up to the staged chunk),
/// whatever the device: the decomposition at small shapes.
struct ForcedSegments {
  index_t segment_len;
  template <class T>
  void operator()(const moss::Cuda& gpu, const moss::SelectiveScanArgs<T>& a) const {
    namespace s = moss::detail::scan;
    moss::validate(a, "selective_scan");
    const s::SegmentPlan plan = s::with_tuning(a.A.shape[1], [&]<moss::detail::ScanTuning cfg>() {
      return s::fixed_segments<T, cfg>(a.u.shape[2], segment_len);
    });
    REQUIRE(plan.segments >= 2);
    s::run_segments(gpu, a, plan);
  }
};

// A user's strategy, one struct in this file: one thread per (batch, channel) walks L with the
// states in a local array, straight from the contract (expf, log1pf: no moss math); its CPU
// path is moss's oracle.
template <class T>
__global__ void one_thread_scan_kernel(const moss::SelectiveScanArgs<T> a) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * dim) return;
  const index_t b = i / dim, d = i % dim;
  const index_t gb = d / (dim / a.B.shape[1]), gc = d / (dim / a.C.shape[1]);
  float h[moss::kMaxStateSize];
  for (index_t n = 0; n < N; ++n) h[n] = a.initial_state.data ? a.initial_state(b, d, n) : 0.0f;
  for (index_t t = 0; t < L; ++t) {
    float dt = moss::to_float(a.delta(b, d, t)) + (a.delta_bias.data ? a.delta_bias(d) : 0.0f);
    if (a.delta_softplus && dt <= 20.0f) dt = log1pf(expf(dt));
    const float u = moss::to_float(a.u(b, d, t));
    float y = 0.0f;
    for (index_t n = 0; n < N; ++n) {
      h[n] = expf(dt * a.A(d, n)) * h[n] + dt * moss::to_float(a.B(b, gb, n, t)) * u;
      y += moss::to_float(a.C(b, gc, n, t)) * h[n];
    }
    if (a.D.data) y += a.D(d) * u;
    if (a.z.data) {
      const float z = moss::to_float(a.z(b, d, t));
      y *= z / (1.0f + expf(-z));
    }
    a.out(b, d, t) = moss::from_float<T>(y);
  }
  if (a.final_state.data)
    for (index_t n = 0; n < N; ++n) a.final_state(b, d, n) = h[n];
}

struct OneThreadScan {
  static constexpr std::string_view name = "one thread per channel";
  template <class T>
  static void run(const moss::Host& host, const moss::SelectiveScanArgs<T>& a) {
    moss::SequentialScan::run(host, a);
  }
  template <class T>
  static void run(const moss::Cuda& gpu, const moss::SelectiveScanArgs<T>& a) {
    const index_t rows = a.u.shape[0] * a.u.shape[1];
    if (rows == 0) return;
    one_thread_scan_kernel<T><<<static_cast<unsigned>((rows + 127) / 128), 128, 0, gpu.stream>>>(a);
    MOSS_CHECK_LAUNCH("one_thread_scan_kernel", gpu.stream);
  }
};
static_assert(moss::ScanStrategy<OneThreadScan, moss::bf16>);

/// Every strategy of check_scan's runs, by name.
template <class T>
void check_every_strategy(const Config& c, std::uint64_t seed) {
  {
    INFO("strategy sequential");
    check_scan<T>(c, seed, WithStrategy<moss::SequentialScan>{});
  }
  {
    INFO("strategy chunked");
    check_scan<T>(c, seed, WithStrategy<moss::ChunkedScan>{});
  }
  {
    INFO("strategy auto");
    check_scan<T>(c, seed, WithStrategy<moss::AutoScan>{});
  }
  {
    INFO("strategy one thread per channel (the user's)");
    check_scan<T>(c, seed, WithStrategy<OneThreadScan>{});
  }
}

}  // namespace

TEMPLATE_TEST_CASE("selective_scan (cuda): every strategy equals the host oracle", "[cuda]", float, moss::f16,
                   moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 1000;
  for (const Config& c : scan_configs()) check_every_strategy<TestType>(c, seed += 17);
}

TEST_CASE("selective_scan (cuda): dim 4096 at the layer's channel-last layout", "[cuda][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  Config c;
  c.batch = 2;
  c.dim = 4096;
  c.L = 256;
  check_every_strategy<moss::bf16>(c, 4096);
  c.layout = Layout::channel_first;
  check_every_strategy<moss::bf16>(c, 4097);
}

TEST_CASE("selective_scan (cuda): batch 1 × dim 4096 × long L, where AutoScan chunks", "[cuda][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  Config c;
  c.batch = 1;
  c.dim = 4096;
  c.L = 2048;
  for (Layout l : {Layout::channel_last, Layout::channel_first}) {
    c.layout = l;
    check_scan<moss::bf16>(c, 777, WithStrategy<moss::SequentialScan>{});
    check_scan<moss::bf16>(c, 777, WithStrategy<moss::ChunkedScan>{});
    check_scan<moss::bf16>(c, 777, WithStrategy<moss::AutoScan>{});
  }
  // The plan on this device really splits L here, and AutoScan takes it.
  Problem<moss::bf16> p(c, 1);
  const auto plan = moss::detail::scan::chunked_plan(p.args);
  INFO("segments " << plan.segments << " of " << plan.segment_len);
  CHECK(plan.segments >= 2);
  CHECK(moss::detail::scan::auto_chunks(p.args));
  c.L = 8192;
  c.layout = Layout::channel_last;
  check_scan<moss::bf16>(c, 778, WithStrategy<moss::ChunkedScan>{});
  check_scan<float>(c, 779, WithStrategy<moss::AutoScan>{});
}

TEMPLATE_TEST_CASE("selective_scan (cuda): ChunkedScan's segments from one staged chunk up equal the oracle", "[cuda]",
                   float, moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  const Layout layouts[] = {Layout::channel_last, Layout::channel_first, Layout::strided, Layout::misaligned,
                            Layout::misaligned_first};
  std::uint64_t seed = 9000, k = 0;
  // Ragged and exact L over segments of one or more staged chunks (16 steps for f32, 32 for
  // 2-byte types; shorter requests round up), every tuning row, every layout, optional inputs.
  for (index_t L : {33, 64, 100, 257, 1000})
    for (index_t segment : {1, 32, 48, 96}) {
      Config c;
      c.L = L;
      c.batch = 1 + static_cast<index_t>(k % 3);
      c.dim = k % 4 == 0 ? 37 : (k % 4 == 1 ? 130 : 5);
      const index_t Ns[] = {1, 8, 16, 17, 64, 65, 256};
      c.N = Ns[k % 7];
      c.groups_b = c.dim == 130 ? 2 : 1;
      c.groups_c = c.dim == 130 ? (k % 2 ? 65 : 1) : 1;
      c.const_b = k % 9 == 4;
      c.const_c = k % 7 == 5;
      c.has_d = k % 2 == 0;
      c.has_z = k % 3 != 2;
      c.has_bias = k % 4 != 3;
      c.softplus = k % 5 != 1;
      c.has_init = k % 2 == 1;
      c.has_final = k % 6 != 4;
      c.layout = layouts[k % 5];
      ++k;
      const index_t chunk = sizeof(TestType) == 2 ? 32 : 16;  // the staged chunk of the row (N ≤ 64)
      const index_t step = c.N > 64 ? 8 : chunk;
      const index_t len = (segment + step - 1) / step * step;
      if (L <= len) continue;  // one segment: nothing to force
      INFO("segment " << segment);
      check_scan<TestType>(c, seed += 13, ForcedSegments{segment});
    }
  CHECK(k == 20);
}

TEST_CASE("selective_scan (cuda): ChunkedScan takes its scratch from the workspace and refuses a short one", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  Config c;
  c.batch = 1;
  c.dim = 512;
  c.L = 1024;
  Problem<moss::bf16> p(c, 31);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const auto plan = moss::detail::scan::chunked_plan(p.args);
  REQUIRE(plan.segments >= 2);
  const std::size_t bytes = moss::workspace_bytes<moss::ChunkedScan>(gpu, p.args);
  auto piece = [](index_t floats) {
    const std::size_t a = moss::kWorkspaceAlignment;
    return (static_cast<std::size_t>(floats) * sizeof(float) + a - 1) / a * a;
  };
  const index_t rows = (plan.segments - 1) * c.batch * c.dim;
  CHECK(bytes == piece(rows * c.N) + piece(rows));
  CHECK(moss::workspace_bytes<moss::SequentialScan>(gpu, p.args) == 0);
  CHECK(moss::workspace_bytes<OneThreadScan>(gpu, p.args) == 0);
  CHECK(moss::workspace_bytes<moss::AutoScan>(gpu, p.args) ==
        (moss::detail::scan::auto_chunks(p.args) ? bytes : std::size_t{0}));
  auto scratch = gpu.alloc<std::byte>(static_cast<index_t>(bytes));
  // With a caller workspace of exactly workspace_bytes: equal to the oracle.
  check_scan<moss::bf16>(c, 31, [&](const moss::Cuda& g, moss::SelectiveScanArgs<moss::bf16> a) {
    a.workspace = moss::Workspace{scratch.data(), bytes};
    moss::selective_scan<moss::ChunkedScan>(g, a);
  });
  // One byte short: refused before any launch.
  p.args.workspace = moss::Workspace{scratch.data(), bytes - 1};
  REQUIRE_THROWS_AS(moss::selective_scan<moss::ChunkedScan>(gpu, p.args), moss::config_error);
  REQUIRE_THROWS_WITH(moss::selective_scan<moss::ChunkedScan>(gpu, p.args),
                      Catch::Matchers::ContainsSubstring("selective_scan (cuda, chunked): the workspace holds " +
                                                         std::to_string(bytes - 1) + " bytes but this call needs " +
                                                         std::to_string(bytes)));
}

namespace {

/// Runs one decode step on the host and on the GPU from the same state and inputs.
template <class T>
void check_step(index_t batch, index_t dim, index_t N, index_t groups, bool constant_bc, bool optional_inputs,
                std::uint64_t seed, bool padded_state = false) {
  INFO("step batch " << batch << " dim " << dim << " N " << N << " groups " << groups << " constant " << constant_bc
                     << " optional " << optional_inputs << " padded state " << padded_state);
  // u, delta, z side by side in one (batch, 3·dim) buffer, as slices of a projection's output.
  std::vector<T> act = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(batch * 3 * dim), seed));
  for (index_t i = 0; i < batch; ++i)
    for (index_t d = 0; d < dim; ++d)
      act[i * 3 * dim + dim + d] = moss::from_float<T>(std::fabs(moss::to_float(act[i * 3 * dim + dim + d])) * 0.2f);
  const index_t n_bc = constant_bc ? 2 * dim * N : 2 * batch * groups * N;
  std::vector<T> bc = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(n_bc), seed + 1));
  std::vector<float> A = moss::test::uniform(static_cast<std::size_t>(dim * N), seed + 2, -2.0f, -0.2f);
  std::vector<float> D = moss::test::randn(static_cast<std::size_t>(dim), seed + 3);
  std::vector<float> bias = moss::test::uniform(static_cast<std::size_t>(dim), seed + 4, -1.0f, 0.5f);
  // A padded state ((batch, dim, N + 1) rows, the last value of each never touched) takes the
  // general kernel; a contiguous one with N a multiple of 4 the float4 kernel.
  const index_t row = padded_state ? N + 1 : N;
  std::vector<float> state = moss::test::randn(static_cast<std::size_t>(batch * dim * row), seed + 5);
  std::vector<T> out(static_cast<std::size_t>(batch * dim), moss::from_float<T>(NAN));

  moss::SelectiveScanStepArgs<T> h;
  h.state = TensorView<float, 3>(state.data(), {batch, dim, N}, {dim * row, row, 1});
  h.u = ConstView<T, 2>(act.data(), {batch, dim}, {3 * dim, 1});
  h.delta = ConstView<T, 2>(act.data() + dim, {batch, dim}, {3 * dim, 1});
  if (optional_inputs) {
    h.z = ConstView<T, 2>(act.data() + 2 * dim, {batch, dim}, {3 * dim, 1});
    h.D = ConstView<float, 1>(D.data(), {dim});
    h.delta_bias = ConstView<float, 1>(bias.data(), {dim});
    h.delta_softplus = true;
  }
  h.A = ConstView<float, 2>(A.data(), {dim, N});
  if (constant_bc) {
    h.B = moss::constant_bc(ConstView<T, 2>(bc.data(), {dim, N}), batch);
    h.C = moss::constant_bc(ConstView<T, 2>(bc.data() + dim * N, {dim, N}), batch);
  } else {
    h.B = ConstView<T, 3>(bc.data(), {batch, groups, N});
    h.C = ConstView<T, 3>(bc.data() + batch * groups * N, {batch, groups, N});
  }
  h.out = TensorView<T, 2>(out.data(), {batch, dim});

  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const auto d_act = upload(gpu, act);
  const auto d_bc = upload(gpu, bc);
  const auto d_A = upload(gpu, A);
  const auto d_D = upload(gpu, D);
  const auto d_bias = upload(gpu, bias);
  const auto d_state = upload(gpu, state);
  const auto d_out = upload(gpu, out);
  moss::SelectiveScanStepArgs<T> g = h;
  g.state = rebase(g.state, state.data(), d_state.data());
  g.u = rebase(g.u, act.data(), d_act.data());
  g.delta = rebase(g.delta, act.data(), d_act.data());
  g.z = rebase(g.z, act.data(), d_act.data());
  g.A = rebase(g.A, A.data(), d_A.data());
  g.B = rebase(g.B, bc.data(), d_bc.data());
  g.C = rebase(g.C, bc.data(), d_bc.data());
  g.D = rebase(g.D, D.data(), d_D.data());
  g.delta_bias = rebase(g.delta_bias, bias.data(), d_bias.data());
  g.out = rebase(g.out, out.data(), d_out.data());
  moss::selective_scan_step(gpu, g);
  const std::vector<T> cuda_out = download(gpu, d_out, out.size());
  const std::vector<float> cuda_state = download(gpu, d_state, state.size());

  moss::selective_scan_step(moss::Host{}, h);
  CHECK(moss::test::rel_l2(cuda_out, out) <= moss::test::op_tolerance<T>());
  CHECK(moss::test::rel_l2(cuda_state, state) <= 1e-5);
}

}  // namespace

TEMPLATE_TEST_CASE("selective_scan_step (cuda) equals the host step", "[cuda]", float, moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 500;
  for (index_t N : {1, 4, 12, 16, 64, 128, 256})
    for (index_t dim : {1, 37, 4096}) check_step<TestType>(1 + N % 3, dim, N, 1, false, true, seed += 3);
  check_step<TestType>(3, 37, 16, 1, false, true, seed += 3, /*padded_state=*/true);
  check_step<TestType>(2, 64, 8, 2, false, true, seed += 3, /*padded_state=*/true);
  check_step<TestType>(3, 64, 16, 4, false, true, seed += 3);
  check_step<TestType>(2, 37, 16, 37, false, false, seed += 3);
  check_step<TestType>(2, 37, 16, 1, true, true, seed += 3);
  check_step<TestType>(256, 4096, 16, 1, false, true, seed += 3);
}

TEST_CASE("selective_scan (cuda): prefill on the GPU then steps on the GPU equal the whole scan", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  // A scan of the first 40 tokens with final_state, then 8 GPU steps on that state, equals the
  // GPU scan of all 48 tokens (outputs of the last 8 tokens and the final state).
  Config c;
  c.batch = 2;
  c.dim = 100;
  c.L = 48;
  c.has_init = false;
  Problem<float> p(c, 4242);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const auto d_act = upload(gpu, p.act);
  const auto d_bc = upload(gpu, p.bc);
  const auto d_out = upload(gpu, p.out);
  const auto d_A = upload(gpu, p.A);
  const auto d_D = upload(gpu, p.D);
  const auto d_bias = upload(gpu, p.bias);
  const auto d_final = upload(gpu, p.final_state);
  const auto d_state = upload(gpu, p.final_state);
  const auto d_step_out = upload(gpu, p.out);
  moss::SelectiveScanArgs<float> g = p.args;
  g.u = rebase(g.u, p.act.data(), d_act.data());
  g.delta = rebase(g.delta, p.act.data(), d_act.data());
  g.z = rebase(g.z, p.act.data(), d_act.data());
  g.B = rebase(g.B, p.bc.data(), d_bc.data());
  g.C = rebase(g.C, p.bc.data(), d_bc.data());
  g.out = rebase(g.out, p.out.data(), d_out.data());
  g.A = rebase(g.A, p.A.data(), d_A.data());
  g.D = rebase(g.D, p.D.data(), d_D.data());
  g.delta_bias = rebase(g.delta_bias, p.bias.data(), d_bias.data());
  g.final_state = rebase(g.final_state, p.final_state.data(), d_final.data());
  moss::selective_scan(gpu, g);  // the whole sequence

  const index_t prefill = 40;
  auto first = g;
  first.u.shape[2] = first.delta.shape[2] = first.z.shape[2] = first.out.shape[2] = prefill;
  first.B.shape[3] = first.C.shape[3] = prefill;
  first.out = rebase(first.out, d_out.data(), d_step_out.data());
  first.final_state = rebase(g.final_state, d_final.data(), d_state.data());
  moss::selective_scan(gpu, first);
  for (index_t t = prefill; t < c.L; ++t) {
    moss::SelectiveScanStepArgs<float> s;
    s.state = first.final_state;
    s.u = ConstView<float, 2>(g.u.data + t * g.u.stride[2], {c.batch, c.dim}, {g.u.stride[0], g.u.stride[1]});
    s.delta = ConstView<float, 2>(g.delta.data + t * g.delta.stride[2], {c.batch, c.dim},
                                  {g.delta.stride[0], g.delta.stride[1]});
    s.z = ConstView<float, 2>(g.z.data + t * g.z.stride[2], {c.batch, c.dim}, {g.z.stride[0], g.z.stride[1]});
    s.A = g.A;
    s.B = ConstView<float, 3>(g.B.data + t * g.B.stride[3], {c.batch, 1, c.N},
                              {g.B.stride[0], g.B.stride[1], g.B.stride[2]});
    s.C = ConstView<float, 3>(g.C.data + t * g.C.stride[3], {c.batch, 1, c.N},
                              {g.C.stride[0], g.C.stride[1], g.C.stride[2]});
    s.D = g.D;
    s.delta_bias = g.delta_bias;
    s.delta_softplus = g.delta_softplus;
    auto o = rebase(g.out, d_out.data(), d_step_out.data());
    s.out = TensorView<float, 2>(o.data + t * o.stride[2], {c.batch, c.dim}, {o.stride[0], o.stride[1]});
    moss::selective_scan_step(gpu, s);
  }
  std::vector<float> whole_buf = download(gpu, d_out, p.out.size());
  std::vector<float> stepped_buf = download(gpu, d_step_out, p.out.size());
  const std::vector<float> whole_state = download(gpu, d_final, p.final_state.size());
  const std::vector<float> stepped_state = download(gpu, d_state, p.final_state.size());
  const auto whole = logical(rebase(p.args.out, p.out.data(), whole_buf.data()));
  const auto stepped = logical(rebase(p.args.out, p.out.data(), stepped_buf.data()));
  CHECK(moss::test::rel_l2(stepped, whole) <= 1e-5);
  CHECK(moss::test::rel_l2(stepped_state, whole_state) <= 1e-5);
}

TEST_CASE("selective_scan (cuda): a user's strategy runs through selective_scan<S> on both backends", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CHECK(OneThreadScan::name == "one thread per channel");
  Config c;
  c.batch = 3;
  c.dim = 20;
  c.L = 45;
  c.N = 9;
  c.groups_b = 4;
  // The GPU path against the oracle, then the CPU path (the oracle itself) bit for bit.
  check_scan<float>(c, 55, WithStrategy<OneThreadScan>{});
  Problem<float> p(c, 56), q(c, 56);
  moss::selective_scan<OneThreadScan>(moss::Host{}, p.args);
  moss::selective_scan<moss::SequentialScan>(moss::Host{}, q.args);
  CHECK(logical(p.args.out) == logical(q.args.out));
  CHECK(p.final_state == q.final_state);
  // The 2-byte types on the CPU too (the struct is one template for every storage type).
  Problem<moss::f16> h1(c, 57), h2(c, 57);
  moss::selective_scan<OneThreadScan>(moss::Host{}, h1.args);
  moss::selective_scan<moss::SequentialScan>(moss::Host{}, h2.args);
  CHECK(moss::test::rel_l2(logical(h1.args.out), logical(h2.args.out)) == 0.0);
  Problem<moss::bf16> g1(c, 58), g2(c, 58);
  moss::selective_scan<OneThreadScan>(moss::Host{}, g1.args);
  moss::selective_scan<moss::SequentialScan>(moss::Host{}, g2.args);
  CHECK(moss::test::rel_l2(logical(g1.args.out), logical(g2.args.out)) == 0.0);
}
