// CUDA tests of causal_conv1d and causal_conv1d_step: every kernel path (channel-last vector and
// scalar, channel-first, step) against the host oracle run on the same rounded inputs, over
// dtypes, layouts, widths, lengths, dims and every optional argument; outputs are poisoned with
// NaN first and the padding around strided views must stay untouched.
#include <algorithm>
#include <array>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "moss/ops/causal_conv1d/cuda.cuh"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Extents;
using moss::index_t;
using moss::TensorView;

/// How a tensor sits in its storage: axes from outermost to innermost in memory, the stride of
/// the innermost axis (`step`), how much longer than its extent the innermost run is (`pitch`,
/// 2 for the x half of an in_proj output), and leading padding elements (`offset`, 1 breaks the
/// alignment that vector accesses need).
template <std::size_t R>
struct Layout {
  std::array<int, R> order;
  index_t pitch = 1, step = 1, offset = 0;
};

constexpr Layout<3> kChannelFirst{{0, 1, 2}};
constexpr Layout<3> kChannelLast{{0, 2, 1}};
constexpr Layout<3> kInProjSlice{{0, 2, 1}, 2};
constexpr Layout<3> kChannelLastMisaligned{{0, 2, 1}, 1, 1, 1};
constexpr Layout<3> kChannelFirstMisaligned{{0, 1, 2}, 1, 1, 1};
constexpr Layout<3> kStrided{{0, 1, 2}, 1, 2, 0};  // unit stride nowhere: the generic path
constexpr std::array<Layout<3>, 6> kSequenceLayouts{
    kChannelFirst, kChannelLast, kInProjSlice, kChannelLastMisaligned, kChannelFirstMisaligned, kStrided};
const char* const kSequenceLayoutNames[] = {"channel-first",  "channel-last",    "in_proj slice",
                                            "channel-last+1", "channel-first+1", "strided"};

/// A tensor in host storage with a device copy of the same layout (padding included).
template <class T, std::size_t R>
struct Mirror {
  std::vector<T> storage;
  TensorView<T, R> host;    // view of `storage`
  moss::Buffer<T> buffer;   // device copy of `storage`
  TensorView<T, R> device;  // the same view on the device

  Mirror(const moss::Cuda& gpu, const Extents<R>& shape, const Layout<R>& layout, const char* name) {
    Extents<R> stride{};
    index_t s = layout.step;
    for (std::size_t i = R; i-- > 0;) {
      const int axis = layout.order[i];
      stride[axis] = s;
      s *= shape[axis] * (i + 1 == R ? layout.pitch : 1);
    }
    storage.resize(static_cast<std::size_t>(layout.offset + s));
    host = TensorView<T, R>(storage.data() + layout.offset, shape, stride, name);
    buffer = gpu.alloc<T>(static_cast<index_t>(storage.size()));
    device = TensorView<T, R>(buffer.data() + layout.offset, shape, stride, name);
  }
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;

  void randomize(std::uint64_t seed, float stddev = 1.0f) {
    const auto v = moss::test::randn(storage.size(), seed, stddev);
    for (std::size_t i = 0; i < v.size(); ++i) storage[i] = moss::from_float<T>(v[i]);
  }
  void poison() {
    for (auto& e : storage) e = moss::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  }
  void upload(const moss::Cuda& gpu) const {
    if (storage.empty()) return;
    MOSS_CUDA_CHECK(
        cudaMemcpyAsync(buffer.data(), storage.data(), storage.size() * sizeof(T), cudaMemcpyHostToDevice, gpu.stream));
    gpu.synchronize();
  }
  /// The device storage, downloaded.
  std::vector<T> download(const moss::Cuda& gpu) const {
    std::vector<T> r(storage.size());
    if (!r.empty())
      MOSS_CUDA_CHECK(
          cudaMemcpyAsync(r.data(), buffer.data(), r.size() * sizeof(T), cudaMemcpyDeviceToHost, gpu.stream));
    gpu.synchronize();
    return r;
  }
  ConstView<T, R> chost() const { return host; }
  ConstView<T, R> cdevice() const { return device; }
  /// Storage offsets of the view's elements in row-major logical order.
  std::vector<std::size_t> offsets() const {
    std::vector<std::size_t> r;
    Extents<R> idx{};
    for (index_t n = 0; n < host.numel(); ++n) {
      index_t off = host.data - storage.data();
      for (std::size_t i = 0; i < R; ++i) off += idx[i] * host.stride[i];
      r.push_back(static_cast<std::size_t>(off));
      for (std::size_t i = R; i-- > 0;) {
        if (++idx[i] < host.shape[i]) break;
        idx[i] = 0;
      }
    }
    return r;
  }
};

/// Twice the spacing of T near |h| + 1: the CUDA and host float results differ by a few float
/// ulps (FMA contraction, SiLU on the special-function unit), which can flip one rounding of T.
template <class T>
double element_tolerance(double h) {
  if constexpr (std::is_same_v<T, float>)
    return 0x1p-17 * (std::abs(h) + 1);
  else if constexpr (std::is_same_v<T, moss::f16>)
    return 0x1p-9 * (std::abs(h) + 1);
  else
    return 0x1p-6 * (std::abs(h) + 1);
}

/// Accumulates ‖cuda − host‖² and ‖host‖² over many runs for one relative L2 error.
struct ErrorSum {
  double num = 0, den = 0;
  double rel_l2() const { return den > 0 ? std::sqrt(num / den) : std::sqrt(num); }
};

/// Compares the device result of `m` with the host result: per element within
/// `element_tolerance`, every element written (no NaN left from the poison), the padding
/// untouched. `exact`: bit-equal (states are raw copies).
template <class T, std::size_t R>
void compare(const moss::Cuda& gpu, const Mirror<T, R>& m, bool exact, ErrorSum* sum) {
  const std::vector<T> got = m.download(gpu);
  std::vector<bool> inside(got.size(), false);
  int bad = 0, unwritten = 0;
  double worst = 0;
  for (const std::size_t off : m.offsets()) {
    inside[off] = true;
    const double c = moss::test::as_double(got[off]), h = moss::test::as_double(m.storage[off]);
    if (std::isnan(c)) {
      ++unwritten;
      continue;
    }
    const double err = std::abs(c - h);
    worst = std::max(worst, err);
    if (exact ? err != 0 : !(err <= element_tolerance<T>(h))) ++bad;
    if (sum) {
      sum->num += (c - h) * (c - h);
      sum->den += h * h;
    }
  }
  int padding_written = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!inside[i] && !std::isnan(moss::test::as_double(got[i]))) ++padding_written;
  INFO(m.host.name << ": worst |cuda - host| = " << worst);
  CHECK(unwritten == 0);
  CHECK(bad == 0);
  CHECK(padding_written == 0);
}

/// One causal_conv1d comparison: arguments, layouts and (optionally) a forced run length.
struct Case {
  index_t batch, dim, seqlen, width;
  int x_layout = 1, out_layout = 1, state_layout = 0;
  bool bias = true, silu = true, init = true, final_state = true;
  bool weight_transposed = false;
  index_t steps_per_thread = 0;  // > 0: run the channel-last kernel with this plan override
};

template <class T>
void run_case(const moss::Cuda& gpu, const Case& c, std::uint64_t seed, ErrorSum* sum) {
  CAPTURE(c.batch, c.dim, c.seqlen, c.width, c.bias, c.silu, c.init, c.final_state, c.weight_transposed,
          c.steps_per_thread);
  INFO("x " << kSequenceLayoutNames[c.x_layout] << ", out " << kSequenceLayoutNames[c.out_layout] << ", states "
            << (c.state_layout ? "(batch, W-1, dim)" : "(batch, dim, W-1)"));
  const Layout<3> state_layout = c.state_layout ? kChannelLast : kChannelFirst;
  Mirror<T, 3> x(gpu, {c.batch, c.dim, c.seqlen}, kSequenceLayouts[c.x_layout], "x");
  Mirror<T, 2> w(gpu, {c.dim, c.width}, Layout<2>{{c.weight_transposed ? 1 : 0, c.weight_transposed ? 0 : 1}},
                 "weight");
  Mirror<T, 1> bias(gpu, {c.dim}, Layout<1>{{0}}, "bias");
  Mirror<T, 3> init(gpu, {c.batch, c.dim, c.width - 1}, state_layout, "initial_state");
  Mirror<T, 3> out(gpu, {c.batch, c.dim, c.seqlen}, kSequenceLayouts[c.out_layout], "out");
  Mirror<T, 3> fin(gpu, {c.batch, c.dim, c.width - 1}, state_layout, "final_state");
  x.randomize(seed);
  w.randomize(seed + 1, 0.5f);
  bias.randomize(seed + 2);
  init.randomize(seed + 3);
  out.poison();
  fin.poison();
  for (auto* m : {&x, &init, &out, &fin}) m->upload(gpu);
  w.upload(gpu);
  bias.upload(gpu);

  auto args = [&](bool on_device) {
    moss::CausalConv1dArgs<T> a;
    a.x = on_device ? x.cdevice() : x.chost();
    a.weight = on_device ? w.cdevice() : w.chost();
    if (c.bias) a.bias = on_device ? bias.cdevice() : bias.chost();
    a.silu = c.silu;
    if (c.init) a.initial_state = on_device ? init.cdevice() : init.chost();
    a.out = on_device ? out.device : out.host;
    if (c.final_state) a.final_state = on_device ? fin.device : fin.host;
    return a;
  };
  const auto dev = args(true);
  if (c.steps_per_thread > 0) {
    moss::validate(dev, "causal_conv1d");
    const auto plan = moss::detail::plan_causal_conv1d(dev, c.steps_per_thread);
    INFO("plan " << plan);
    moss::detail::run_causal_conv1d(gpu, dev, plan);
  } else {
    moss::causal_conv1d(gpu, dev);
  }
  gpu.synchronize();
  moss::causal_conv1d(moss::Host{}, args(false));
  INFO("plan " << moss::detail::plan_causal_conv1d(dev));
  compare(gpu, out, false, sum);
  if (c.final_state) {
    compare(gpu, fin, true, nullptr);
  } else {
    const auto untouched = fin.download(gpu);  // an absent final state is never written
    CHECK(std::all_of(untouched.begin(), untouched.end(), [](T v) { return std::isnan(moss::test::as_double(v)); }));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("causal_conv1d CUDA matches the host over widths, lengths, dims and layouts", "[cuda]", float,
                   moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  ErrorSum sum;
  int i = 0;
  for (index_t width : {2, 3, 4}) {
    for (index_t seqlen : {1, 2, 3, 7, 1000, 2049, 4097}) {
      for (index_t dim : {1, 7, 64, 4096}) {
        Case c{};
        c.width = width;
        c.seqlen = seqlen;
        c.dim = dim;
        c.batch = seqlen * dim >= 4'000'000 ? 1 : 1 + i % 3;
        c.x_layout = i % 6;
        c.out_layout = (i / 6 + i) % 6;
        c.state_layout = (i / 3) % 2;
        c.bias = i % 2;
        c.silu = (i / 2) % 2;
        c.init = (i / 4) % 2;
        c.final_state = (i / 8) % 2 == 0;
        c.weight_transposed = (i / 5) % 2;
        run_case<T>(gpu, c, 1000 + 17 * i, &sum);
        ++i;
      }
    }
  }
  // Far below the precision contract: both sides compute in float32 from the same inputs.
  CHECK(sum.rel_l2() <= moss::test::op_tolerance<T>() / 10);
}

TEMPLATE_TEST_CASE("causal_conv1d CUDA: every optional argument on every layout", "[cuda]", float, moss::f16,
                   moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  ErrorSum sum;
  std::uint64_t seed = 7;
  for (index_t width : {2, 3, 4}) {
    for (int layout = 0; layout < 6; ++layout) {
      for (int options = 0; options < 16; ++options) {
        Case c{};
        c.width = width;
        c.batch = 2;
        c.dim = options % 2 ? 64 : 36;  // 36: 9 channel groups, blocks of 16 × 8 threads
        c.seqlen = options % 3 ? 1000 : 2049;
        c.x_layout = layout;
        c.out_layout = (layout + options) % 6;
        c.state_layout = options % 2;
        c.bias = options & 1;
        c.silu = options & 2;
        c.init = options & 4;
        c.final_state = options & 8;
        run_case<T>(gpu, c, seed += 5, &sum);
      }
    }
  }
  CHECK(sum.rel_l2() <= moss::test::op_tolerance<T>() / 10);
}

TEMPLATE_TEST_CASE("causal_conv1d CUDA: any run length per thread", "[cuda]", float, moss::bf16) {
  // Runs shorter than W−1 make the halo span several previous runs and the initial state.
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::uint64_t seed = 99;
  for (index_t width : {2, 3, 4}) {
    for (index_t steps : {1, 2, 3, 5, 16, 64, 1000}) {
      for (int layout : {1, 2, 3}) {
        Case c{};
        c.width = width;
        c.batch = 3;
        c.dim = 36;
        c.seqlen = 67;
        c.x_layout = layout;
        c.out_layout = layout;
        c.steps_per_thread = steps;
        run_case<T>(gpu, c, seed += 5, nullptr);
        c.seqlen = 2;  // L < W−1 for W = 4: the final state keeps part of the initial state
        run_case<T>(gpu, c, seed += 5, nullptr);
      }
    }
  }
}

TEST_CASE("causal_conv1d CUDA: the canonical layer shape", "[cuda][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  Case c{};
  c.batch = 8;
  c.dim = 4096;
  c.seqlen = 2048;
  c.width = 4;
  ErrorSum sum;
  for (int layout : {1, 2}) {  // (batch, L, dim) buffer and the x half of an in_proj output
    c.x_layout = c.out_layout = layout;
    run_case<moss::bf16>(gpu, c, 4242 + layout, &sum);
  }
  CHECK(sum.rel_l2() <= moss::test::op_tolerance<moss::bf16>() / 10);
}

TEST_CASE("causal_conv1d CUDA: L = 0 passes the state through, empty batches do nothing", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  for (int layout : {0, 1}) {
    for (bool init : {false, true}) {
      Case c{};
      c.batch = 2;
      c.dim = 8;
      c.seqlen = 0;
      c.width = 4;
      c.x_layout = c.out_layout = layout;
      c.init = init;
      run_case<float>(gpu, c, 5, nullptr);
    }
  }
  Case c{};
  c.batch = 0;
  c.dim = 8;
  c.seqlen = 5;
  c.width = 3;
  run_case<float>(gpu, c, 6, nullptr);
}

TEMPLATE_TEST_CASE("causal_conv1d_step CUDA matches the host step", "[cuda]", float, moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  ErrorSum sum;
  int i = 0;
  for (index_t width : {2, 3, 4}) {
    for (index_t batch : {1, 3, 64}) {
      for (index_t dim : {1, 7, 4096}) {
        const bool has_bias = i % 2, silu = (i / 2) % 2;
        const Layout<3> state_layout = i % 3 ? kChannelFirst : kChannelLast;
        CAPTURE(width, batch, dim, has_bias, silu, i % 3);
        Mirror<T, 3> state(gpu, {batch, dim, width - 1}, state_layout, "state");
        Mirror<T, 2> x(gpu, {batch, dim}, Layout<2>{{0, 1}, i % 2 ? 2 : 1}, "x");
        Mirror<T, 2> w(gpu, {dim, width}, Layout<2>{{0, 1}}, "weight");
        Mirror<T, 1> bias(gpu, {dim}, Layout<1>{{0}}, "bias");
        Mirror<T, 2> out(gpu, {batch, dim}, Layout<2>{{0, 1}, 1, 1, i % 2}, "out");
        state.randomize(50 + i);
        w.randomize(60 + i, 0.5f);
        bias.randomize(70 + i);
        state.upload(gpu);
        w.upload(gpu);
        bias.upload(gpu);
        auto args = [&](bool on_device) {
          moss::CausalConv1dStepArgs<T> a;
          a.state = on_device ? state.device : state.host;
          a.x = on_device ? x.cdevice() : x.chost();
          a.weight = on_device ? w.cdevice() : w.chost();
          if (has_bias) a.bias = on_device ? bias.cdevice() : bias.chost();
          a.silu = silu;
          a.out = on_device ? out.device : out.host;
          return a;
        };
        for (int token = 0; token < 4; ++token) {  // the state carries from step to step on both sides
          x.randomize(80 + 7 * i + token);
          x.upload(gpu);
          out.poison();
          out.upload(gpu);
          moss::causal_conv1d_step(gpu, args(true));
          gpu.synchronize();
          moss::causal_conv1d_step(moss::Host{}, args(false));
          compare(gpu, out, false, &sum);
          compare(gpu, state, true, nullptr);
        }
        ++i;
      }
    }
  }
  CHECK(sum.rel_l2() <= moss::test::op_tolerance<T>() / 10);
}

TEMPLATE_TEST_CASE("causal_conv1d CUDA: prefill then decode steps equals one pass", "[cuda]", float, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t batch = 2, dim = 64, prefill = 100, decode = 5, seqlen = prefill + decode;
  for (index_t width : {2, 3, 4}) {
    CAPTURE(width);
    Mirror<T, 3> x(gpu, {batch, dim, seqlen}, kInProjSlice, "x");
    Mirror<T, 2> w(gpu, {dim, width}, Layout<2>{{0, 1}}, "weight");
    Mirror<T, 1> bias(gpu, {dim}, Layout<1>{{0}}, "bias");
    Mirror<T, 3> whole(gpu, {batch, dim, seqlen}, kChannelLast, "out");
    Mirror<T, 3> whole_state(gpu, {batch, dim, width - 1}, kChannelFirst, "final_state");
    Mirror<T, 3> parts(gpu, {batch, dim, seqlen}, kChannelLast, "out");
    Mirror<T, 3> state(gpu, {batch, dim, width - 1}, kChannelFirst, "state");
    x.randomize(11 * width);
    w.randomize(12 * width, 0.5f);
    bias.randomize(13 * width);
    parts.poison();
    for (auto* m : {&x, &whole, &whole_state, &parts, &state}) m->upload(gpu);
    w.upload(gpu);
    bias.upload(gpu);

    moss::CausalConv1dArgs<T> a;
    a.x = x.cdevice();
    a.weight = w.cdevice();
    a.bias = bias.cdevice();
    a.silu = true;
    a.out = whole.device;
    a.final_state = whole_state.device;
    moss::causal_conv1d(gpu, a);

    auto b = a;
    b.x = ConstView<T, 3>(x.device.data, {batch, dim, prefill}, x.device.stride, "x");
    b.out = TensorView<T, 3>(parts.device.data, {batch, dim, prefill}, parts.device.stride, "out");
    b.final_state = state.device;
    moss::causal_conv1d(gpu, b);
    for (index_t t = prefill; t < seqlen; ++t) {
      moss::CausalConv1dStepArgs<T> s;
      s.state = state.device;
      s.x = ConstView<T, 2>(x.device.data + t * x.device.stride[2], {batch, dim},
                            {x.device.stride[0], x.device.stride[1]}, "x");
      s.weight = a.weight;
      s.bias = a.bias;
      s.silu = true;
      s.out = TensorView<T, 2>(parts.device.data + t * parts.device.stride[2], {batch, dim},
                               {parts.device.stride[0], parts.device.stride[1]}, "out");
      moss::causal_conv1d_step(gpu, s);
    }
    // Same float32 operations in the same order on one device: equal up to FMA contraction.
    const auto got = parts.download(gpu), want = whole.download(gpu);
    REQUIRE(std::none_of(got.begin(), got.end(), [](T v) { return std::isnan(moss::test::as_double(v)); }));
    REQUIRE(moss::test::rel_l2(got, want) <= moss::test::op_tolerance<T>() / 10);
    REQUIRE(moss::test::rel_l2(state.download(gpu), whole_state.download(gpu)) == 0);
  }
}

TEST_CASE("causal_conv1d CUDA refuses widths it has no kernel for, and validates first", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  using Catch::Matchers::ContainsSubstring;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  for (index_t width : {1, 5}) {
    CAPTURE(width);
    Mirror<float, 3> x(gpu, {1, 4, 8}, kChannelLast, "x");
    Mirror<float, 2> w(gpu, {4, width}, Layout<2>{{0, 1}}, "weight");
    Mirror<float, 3> out(gpu, {1, 4, 8}, kChannelLast, "out");
    Mirror<float, 3> state(gpu, {1, 4, width - 1}, kChannelFirst, "state");
    Mirror<float, 2> xt(gpu, {1, 4}, Layout<2>{{0, 1}}, "x");
    Mirror<float, 2> yt(gpu, {1, 4}, Layout<2>{{0, 1}}, "out");
    moss::CausalConv1dArgs<float> a;
    a.x = x.cdevice();
    a.weight = w.cdevice();
    a.out = out.device;
    REQUIRE_THROWS_AS(moss::causal_conv1d(gpu, a), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(gpu, a), ContainsSubstring("causal_conv1d (cuda)") &&
                                                         ContainsSubstring("supported on CUDA: W = 2, 3, 4"));
    moss::CausalConv1dStepArgs<float> s;
    s.state = state.device;
    s.x = xt.cdevice();
    s.weight = w.cdevice();
    s.out = yt.device;
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(gpu, s), moss::unsupported_error);
  }
  Mirror<float, 3> x(gpu, {1, 4, 8}, kChannelLast, "x");
  Mirror<float, 2> w(gpu, {4, 4}, Layout<2>{{0, 1}}, "weight");
  moss::CausalConv1dArgs<float> a;
  a.x = x.cdevice();
  a.weight = w.cdevice();
  a.out = TensorView<float, 3>(x.device.data, x.device.shape, x.device.stride, "out");
  REQUIRE_THROWS_AS(moss::causal_conv1d(gpu, a), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::causal_conv1d(gpu, a), ContainsSubstring("out [1, 4, 8] overlaps x"));
}
