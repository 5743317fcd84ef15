// tests/ops/mamba_step_cuda_test.cu: the fused CUDA `mamba_step` (two kernels) against the host
// step (the ops in turn) and against the same ops in turn on the GPU, over dtypes, ragged channel
// counts (one, several and a partial slice of 256 channels), d_state, dt_rank, conv widths and
// batches, for several consecutive steps (the caches carry over); bitwise repeatable.
//
// Tolerances: both sides compute in float and round v, x_dbl and delta to T at the same points;
// the x_proj and dt_proj sums run in other orders (a warp tree per slice, then the slices; the
// host's loop; cuBLAS), so a value may round to the neighbouring T: out and the SSM state within
// the op tolerance of T plus that one rounding, compared over the whole tensor (relative L2). The
// conv state only moves stored inputs: bitwise.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moss/ops/mamba_step.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::index_t;
using moss::TensorView;
using moss::test::device_copy;
using moss::test::host_copy;

struct Shape {
  index_t batch, ED, N, R, W;
  bool bias;
};

/// Host copies of one problem's tensors and their device copies.
template <class T>
struct Problem {
  Shape s;
  std::vector<T> conv_state, conv_weight, conv_bias, x_proj, dt_proj;
  std::vector<float> dt_bias, A, D, ssm_state;
  Problem(const Shape& sh, std::uint64_t seed) : s(sh) {
    using moss::test::randn;
    using moss::test::to_storage;
    using moss::test::uniform;
    const auto n = [](index_t x) { return static_cast<std::size_t>(x); };
    conv_state = to_storage<T>(randn(n(s.batch * s.ED * (s.W - 1)), seed));
    conv_weight = to_storage<T>(randn(n(s.ED * s.W), seed + 1, 0.5f));
    conv_bias = to_storage<T>(randn(n(s.ED), seed + 2, 0.5f));
    x_proj = to_storage<T>(randn(n((s.R + 2 * s.N) * s.ED), seed + 3, 1.0f / std::sqrt(float(s.ED))));
    dt_proj = to_storage<T>(randn(n(s.ED * s.R), seed + 4, 1.0f / std::sqrt(float(s.R))));
    dt_bias = uniform(n(s.ED), seed + 5, -4.0f, -2.0f);
    A = uniform(n(s.ED * s.N), seed + 6, -4.0f, -0.5f);
    D = randn(n(s.ED), seed + 7);
    ssm_state = randn(n(s.batch * s.ED * s.N), seed + 8);
  }
};

/// The op's Args over buffers of one backend.
template <class T>
moss::MambaStepArgs<T> args_over(const Shape& s, const T* xz, T* conv_state, const T* conv_weight, const T* conv_bias,
                                 const T* x_proj, const T* dt_proj, const float* dt_bias, const float* A,
                                 const float* D, float* ssm_state, T* out) {
  moss::MambaStepArgs<T> a;
  a.xz = ConstView<T, 2>(xz, {s.batch, 2 * s.ED}, "xz");
  a.conv_state = TensorView<T, 3>(conv_state, {s.batch, s.ED, s.W - 1}, "conv_state");
  a.conv_weight = ConstView<T, 2>(conv_weight, {s.ED, s.W}, "conv_weight");
  if (s.bias) a.conv_bias = ConstView<T, 1>(conv_bias, {s.ED}, "conv_bias");
  a.x_proj = ConstView<T, 2>(x_proj, {s.R + 2 * s.N, s.ED}, "x_proj");
  a.dt_proj = ConstView<T, 2>(dt_proj, {s.ED, s.R}, "dt_proj");
  a.dt_bias = ConstView<float, 1>(dt_bias, {s.ED}, "dt_bias");
  a.A = ConstView<float, 2>(A, {s.ED, s.N}, "A");
  a.D = ConstView<float, 1>(D, {s.ED}, "D");
  a.ssm_state = TensorView<float, 3>(ssm_state, {s.batch, s.ED, s.N}, "ssm_state");
  a.out = TensorView<T, 2>(out, {s.batch, s.ED}, "out");
  return a;
}

/// One side's state through the steps: the caches and each step's output.
template <class T>
struct Run {
  std::vector<T> conv_state;
  std::vector<float> ssm_state;
  std::vector<std::vector<T>> outs;
};

/// `steps` steps on the host from `p`'s caches, with inputs xz_k.
template <class T>
Run<T> run_host(const Problem<T>& p, const std::vector<std::vector<T>>& xzs) {
  Run<T> r{p.conv_state, p.ssm_state, {}};
  for (const auto& xz : xzs) {
    std::vector<T> out(static_cast<std::size_t>(p.s.batch * p.s.ED), moss::from_float<T>(std::nanf("")));
    moss::mamba_step(moss::Host{}, args_over<T>(p.s, xz.data(), r.conv_state.data(), p.conv_weight.data(),
                                                p.conv_bias.data(), p.x_proj.data(), p.dt_proj.data(), p.dt_bias.data(),
                                                p.A.data(), p.D.data(), r.ssm_state.data(), out.data()));
    r.outs.push_back(out);
  }
  return r;
}

/// The same on the GPU: the fused op (`fused`) or the ops in turn.
template <class T>
Run<T> run_cuda(const moss::Cuda& gpu, const Problem<T>& p, const std::vector<std::vector<T>>& xzs, bool fused) {
  auto conv = device_copy(gpu, p.conv_state);
  auto ssm = device_copy(gpu, p.ssm_state);
  const auto cw = device_copy(gpu, p.conv_weight), cb = device_copy(gpu, p.conv_bias), xp = device_copy(gpu, p.x_proj),
             dp = device_copy(gpu, p.dt_proj);
  const auto db = device_copy(gpu, p.dt_bias), A = device_copy(gpu, p.A), D = device_copy(gpu, p.D);
  Run<T> r;
  for (const auto& xz_h : xzs) {
    const auto xz = device_copy(gpu, xz_h);
    auto out = device_copy(
        gpu, std::vector<T>(static_cast<std::size_t>(p.s.batch * p.s.ED), moss::from_float<T>(std::nanf(""))));
    const auto a = args_over<T>(p.s, xz.data(), conv.data(), cw.data(), cb.data(), xp.data(), dp.data(), db.data(),
                                A.data(), D.data(), ssm.data(), out.data());
    if (fused)
      moss::mamba_step(gpu, a);
    else
      moss::mamba_step_composed(gpu, a);
    r.outs.push_back(host_copy(gpu, out));
  }
  r.conv_state = host_copy(gpu, conv);
  r.ssm_state = host_copy(gpu, ssm);
  return r;
}

template <class T>
double out_tol() {
  return moss::test::op_tolerance<T>() + (std::is_same_v<T, float>       ? 1e-5
                                          : std::is_same_v<T, moss::f16> ? 2e-3
                                                                         : 1.6e-2);
}

template <class T>
void check_close(const Run<T>& got, const Run<T>& want) {
  REQUIRE(got.outs.size() == want.outs.size());
  for (std::size_t k = 0; k < got.outs.size(); ++k) {
    CAPTURE(k);
    CHECK(moss::test::rel_l2(got.outs[k], want.outs[k]) <= out_tol<T>());
  }
  CHECK(moss::test::rel_l2(got.ssm_state, want.ssm_state) <= out_tol<T>());
  CHECK(moss::test::same_bits(got.conv_state, want.conv_state));
}

constexpr Shape kShapes[] = {{1, 1, 1, 1, 2, true},   {1, 37, 16, 3, 4, true},     {3, 256, 16, 16, 4, false},
                             {2, 300, 5, 8, 3, true}, {17, 1536, 16, 48, 4, true}, {1, 2048, 16, 128, 4, true},
                             {4, 513, 1, 2, 3, true}};

}  // namespace

TEMPLATE_TEST_CASE("mamba_step: the fused CUDA step equals the host's and the ops in turn on the GPU", "[cuda][ops]",
                   float, moss::f16, moss::bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::uint64_t seed = 70;
  for (const Shape& s : kShapes) {
    CAPTURE(s.batch, s.ED, s.N, s.R, s.W, s.bias);
    const Problem<T> p(s, seed += 20);
    std::vector<std::vector<T>> xzs;
    for (int k = 0; k < 3; ++k)
      xzs.push_back(moss::test::to_storage<T>(moss::test::randn(std::size_t(s.batch * 2 * s.ED), seed + 100 + k)));
    const Run<T> host = run_host(p, xzs);
    const Run<T> fused = run_cuda(gpu, p, xzs, true);
    check_close(fused, host);
    check_close(fused, run_cuda(gpu, p, xzs, false));
    // Bitwise repeatable.
    const Run<T> again = run_cuda(gpu, p, xzs, true);
    for (std::size_t k = 0; k < xzs.size(); ++k) CHECK(moss::test::same_bits(again.outs[k], fused.outs[k]));
    CHECK(moss::test::same_bits(again.ssm_state, fused.ssm_state));
  }
}

TEST_CASE("mamba_step: CUDA refuses a conv width the CUDA conv has no kernel for", "[cuda][ops]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const Shape s{1, 4, 2, 1, 9, false};
  const Problem<float> p(s, 5);
  const std::vector<std::vector<float>> xzs{std::vector<float>(8, 0.5f)};
  REQUIRE_THROWS_AS(run_cuda(gpu, p, xzs, true), moss::unsupported_error);
}
