// tests/ops/backward_ops_cuda_test.cu: the CUDA backward passes of rms_norm, activation,
// causal_conv1d and embedding against their host backward (the oracle, itself checked against
// finite differences in tests/ops/*_backward_test.cpp) from the same inputs, over float, f16 and
// bf16 and ragged and degenerate shapes (zero rows / batch / length, dim 1, odd sizes, L < W−1),
// strided and sliced views, absent outputs, in-place outputs, accumulation; plus, per op, two
// CUDA runs that must agree bit for bit (no atomics, fixed summation orders).
//
// Both backends get byte-identical buffers, outputs and the padding around sliced views
// included, poisoned with NaN where the op must write; the whole buffers are compared, so a write
// outside a view (a number where both sides hold the NaN poison) or a missing write (NaN on the
// GPU side only) fails.
//
// Tolerances (`close_to`: |got − want| ≤ tol · (|want| + rms(want)) per element, NaN only where
// the host has NaN, infinities equal). The rms term is an absolute floor at the scale of the
// tensor, for elements that are small because their terms cancel (an error of a few float ulp of
// the terms is then large relative to the element). A wrong index, term or scale is an error of
// order 1 and fails at every tolerance below.
//  - float32 results: both sides compute in float; the CUDA kernels sum in other orders (block
//    trees, per-run partials), contract multiply-adds into FMAs and use the device's expf / erff
//    (a few ulp). For sums of up to ~10⁴ random terms the order changes the result by ~√n · 2⁻²⁴
//    relative (~1e-5 in the worst case here), so kFloatTol = 5e-5.
//  - results stored in T: the float32 value rounded once. Two float values a few ulp apart can
//    round to neighbouring T values, one ulp of T apart: ≤ 2⁻¹⁰ |x| for f16 (9.8e-4), ≤ 2⁻⁷ |x|
//    for bf16 (7.8e-3), so 1.5e-3 and 1.2e-2 (the ulp plus the float tolerance, with margin).
//  - embedding: the CUDA op sums each id's rows in ascending row order from zero, exactly the
//    host's float additions (no products to contract), so its result must be bitwise the host's.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "moss/ops/activation_backward.hpp"
#include "moss/ops/causal_conv1d_backward.hpp"
#include "moss/ops/embedding_backward.hpp"
#include "moss/ops/rms_norm_backward.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;
using moss::test::device_copy;
using moss::test::host_copy;
using moss::test::same_bits;

constexpr double kFloatTol = 5e-5;

/// Tolerance of a result stored in T (see the file comment).
template <class T>
constexpr double stored_tol() {
  if constexpr (std::is_same_v<T, float>)
    return kFloatTol;
  else if constexpr (std::is_same_v<T, f16>)
    return 1.5e-3;
  else
    return 1.2e-2;
}

/// A quiet NaN in T: the poison of elements an op must write (or must leave alone).
template <class T>
T poison() {
  return moss::from_float<T>(std::numeric_limits<float>::quiet_NaN());
}

/// `v` rounded to T.
template <class T>
std::vector<T> as(const std::vector<float>& v) {
  return moss::test::to_storage<T>(v);
}

/// Checks `got` (CUDA) against `want` (host) element by element (see the file comment). `floor`
/// adds an absolute scale for results formed by cancellation (|g − w| ≤ tol · (|w| + rms + floor)).
template <class T>
void close_to(const char* what, const std::vector<T>& got, const std::vector<T>& want, double tol, double floor = 0) {
  REQUIRE(got.size() == want.size());
  double squares = 0;
  std::size_t finite = 0;
  for (const T& w : want) {
    const double v = moss::test::as_double(w);
    if (std::isfinite(v)) squares += v * v, ++finite;
  }
  const double rms = finite ? std::sqrt(squares / static_cast<double>(finite)) : 0.0;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = moss::test::as_double(got[i]), w = moss::test::as_double(want[i]);
    bool ok;
    if (std::isnan(w) || std::isnan(g)) {
      ok = std::isnan(w) && std::isnan(g);
    } else if (std::isinf(w) || std::isinf(g)) {
      ok = g == w;
    } else {
      ok = std::fabs(g - w) <= tol * (std::fabs(w) + rms + floor);
    }
    if (!ok && bad++ == 0) first = i;
  }
  const double got_first = bad ? moss::test::as_double(got[first]) : 0.0;
  const double want_first = bad ? moss::test::as_double(want[first]) : 0.0;
  CAPTURE(what, want.size(), bad, first, got_first, want_first, rms, tol, floor);
  CHECK(bad == 0);
}

/// Rows of a (rows, cols) tensor inside a wider buffer: `offset` elements before the first row,
/// row stride cols + pad. offset 0 / pad 0 is contiguous; offsets and pads that are multiples of
/// 8 keep the rows 16-byte aligned (vector paths), 1 / 3 force the scalar paths.
struct Layout {
  const char* name;
  index_t offset, pad;
};
constexpr Layout kLayouts[] = {{"contiguous", 0, 0}, {"aligned slice", 8, 8}, {"odd slice", 1, 3}};

/// The buffer of a (rows, cols) tensor in layout `l`: `dense` (row-major) at its place, `fill`
/// everywhere else.
template <class T>
std::vector<T> place_rows(const std::vector<T>& dense, index_t rows, index_t cols, const Layout& l, T fill) {
  std::vector<T> wide(static_cast<std::size_t>(rows * (cols + l.pad) + l.offset), fill);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) wide[r * (cols + l.pad) + l.offset + c] = dense[r * cols + c];
  return wide;
}

/// A (rows, cols) view of layout `l` over a buffer from `place_rows`.
template <class T>
TensorView<T, 2> rows_view(T* base, index_t rows, index_t cols, const Layout& l, const char* name) {
  return TensorView<T, 2>(base + l.offset, {rows, cols}, {cols + l.pad, 1}, name);
}

/// A buffer of `n` NaN poison values, or `v` when `use_v`.
template <class T>
std::vector<T> poisoned_or(bool use_v, const std::vector<T>& v, std::size_t n) {
  return use_v ? v : std::vector<T>(n, poison<T>());
}

// ---------------------------------------------------------------------------------------------
// rms_norm_backward

template <class Tdelta, class Tout>
struct RmsTypes {
  using Delta = Tdelta;
  using Out = Tout;
};

/// Which gradients one rms_norm case asks for.
struct RmsCase {
  const char* name;
  bool dres_out, in_place, dres, ddelta, dweight, accumulate;
};
constexpr RmsCase kRmsCases[] = {
    {"all outputs", true, false, true, true, true, false},
    {"in place, accumulate", true, true, true, true, true, true},
    {"no dresidual_out, dresidual only", false, false, true, false, false, false},
    {"dweight only, accumulate", false, false, false, false, true, true},
    {"ddelta only", true, false, false, true, false, false},
    {"dweight only", true, false, false, false, true, false},
};

}  // namespace

TEMPLATE_TEST_CASE("rms_norm_backward: CUDA matches the host", "[cuda][backward]", (RmsTypes<float, float>),
                   (RmsTypes<f16, f16>), (RmsTypes<bf16, bf16>), (RmsTypes<bf16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using Tdelta = typename TestType::Delta;
  using Tout = typename TestType::Out;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::uint64_t seed = 9100;
  // (rows, dim): zero rows, dim 1, odd dims, one and several row chunks (chunks of 4 rows up to
  // 4096 rows; 5000 rows take chunks of 5).
  const std::pair<index_t, index_t> shapes[] = {{0, 1},    {0, 64},   {1, 1},    {1, 7},      {5, 7},    {5, 768},
                                                {3, 2048}, {37, 768}, {300, 64}, {300, 4097}, {5000, 64}};
  for (const auto& [rows, dim] : shapes) {
    seed += 10;
    const std::size_t n = static_cast<std::size_t>(rows * dim);
    const auto residual = moss::test::randn(n, seed, 2.0f);
    const auto dout = as<Tout>(moss::test::randn(n, seed + 1));
    const auto dres_out = moss::test::randn(n, seed + 2);
    const auto weight = moss::test::uniform(static_cast<std::size_t>(dim), seed + 3, 0.5f, 1.5f);
    const auto dweight0 = moss::test::randn(static_cast<std::size_t>(dim), seed + 4);
    // dresidual = s·g − r·(s³/dim)·Σ g·r cancels when r²·s² → 1 (dim 1: r²/(r² + eps)), leaving a
    // result far below its two terms, each of size up to s·|g| (g = dout ⊙ weight); both backends
    // round those terms, so the difference is judged against that scale.
    double floor = 0;
    for (index_t r = 0; r < rows; ++r) {
      double ss = 0, gmax = 0;
      for (index_t i = 0; i < dim; ++i) {
        const double x = residual[static_cast<std::size_t>(r * dim + i)];
        ss += x * x;
        gmax = std::max(gmax, std::fabs(moss::test::as_double(dout[static_cast<std::size_t>(r * dim + i)]) *
                                        weight[static_cast<std::size_t>(i)]));
      }
      floor = std::max(floor, gmax / std::sqrt(ss / static_cast<double>(dim) + 1e-5));
    }
    for (const RmsCase& c : kRmsCases) {
      for (const Layout& l : kLayouts) {
        CAPTURE(rows, dim, c.name, l.name);
        // Host buffers (the GPU gets byte copies): inputs with NaN padding, outputs all NaN.
        const auto residual_w = place_rows(residual, rows, dim, l, nan);
        const auto dout_w = place_rows(dout, rows, dim, l, poison<Tout>());
        auto dres_out_w = place_rows(dres_out, rows, dim, l, nan);
        const std::size_t wide = residual_w.size();
        auto dres_w = std::vector<float>(wide, nan);
        auto ddelta_w = std::vector<Tdelta>(wide, poison<Tdelta>());
        auto dweight_h = poisoned_or(c.accumulate, dweight0, static_cast<std::size_t>(dim));

        const auto d_residual = device_copy(gpu, residual_w);
        const auto d_dout = device_copy(gpu, dout_w);
        const auto d_weight = device_copy(gpu, weight);
        auto d_dres_out = device_copy(gpu, dres_out_w);
        auto d_dres = device_copy(gpu, dres_w);
        auto d_ddelta = device_copy(gpu, ddelta_w);
        auto d_dweight = device_copy(gpu, dweight_h);

        const auto args = [&](const float* res, const Tout* g, const float* w, float* dro, float* dr, Tdelta* dd,
                              float* dw) {
          moss::RmsNormBackwardArgs<Tdelta, Tout> a;
          a.residual = rows_view(res, rows, dim, l, "residual");
          a.weight = ConstView<float, 1>(w, {dim}, "weight");
          a.eps = 1e-5f;
          a.dout = rows_view(g, rows, dim, l, "dout");
          if (c.dres_out) a.dresidual_out = rows_view<const float>(dro, rows, dim, l, "dresidual_out");
          if (c.dres) a.dresidual = rows_view(c.in_place ? dro : dr, rows, dim, l, "dresidual");
          if (c.ddelta) a.ddelta = rows_view(dd, rows, dim, l, "ddelta");
          if (c.dweight) a.dweight = TensorView<float, 1>(dw, {dim}, "dweight");
          a.accumulate = c.accumulate;
          return a;
        };
        moss::rms_norm_backward(moss::Host{}, args(residual_w.data(), dout_w.data(), weight.data(), dres_out_w.data(),
                                                   dres_w.data(), ddelta_w.data(), dweight_h.data()));
        const auto gpu_args = args(d_residual.data(), d_dout.data(), d_weight.data(), d_dres_out.data(), d_dres.data(),
                                   d_ddelta.data(), d_dweight.data());
        moss::rms_norm_backward(gpu, gpu_args);

        close_to("dresidual_out (the in-place dresidual)", host_copy(gpu, d_dres_out), dres_out_w, kFloatTol, floor);
        close_to("dresidual", host_copy(gpu, d_dres), dres_w, kFloatTol, floor);
        close_to("ddelta", host_copy(gpu, d_ddelta), ddelta_w, stored_tol<Tdelta>(), floor);
        close_to("dweight", host_copy(gpu, d_dweight), dweight_h, kFloatTol);

        // Determinism: a second run from the same inputs gives the same bits.
        if (!c.in_place && &l == &kLayouts[0]) {
          const auto first_dres = host_copy(gpu, d_dres);
          const auto first_ddelta = host_copy(gpu, d_ddelta);
          const auto first_dweight = host_copy(gpu, d_dweight);
          auto d_dres2 = device_copy(gpu, std::vector<float>(wide, nan));
          auto d_ddelta2 = device_copy(gpu, std::vector<Tdelta>(wide, poison<Tdelta>()));
          auto d_dweight2 = device_copy(gpu, poisoned_or(c.accumulate, dweight0, static_cast<std::size_t>(dim)));
          moss::rms_norm_backward(gpu, args(d_residual.data(), d_dout.data(), d_weight.data(), d_dres_out.data(),
                                            d_dres2.data(), d_ddelta2.data(), d_dweight2.data()));
          CHECK(same_bits(host_copy(gpu, d_dres2), first_dres));
          CHECK(same_bits(host_copy(gpu, d_ddelta2), first_ddelta));
          CHECK(same_bits(host_copy(gpu, d_dweight2), first_dweight));
        }
      }
    }
  }
}

TEST_CASE("rms_norm_backward: CUDA with no output asked for writes nothing", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t rows = 3, dim = 8;
  const auto d_residual = device_copy(gpu, moss::test::randn(rows * dim, 1));
  const auto d_dout = device_copy(gpu, as<bf16>(moss::test::randn(rows * dim, 2)));
  const auto d_weight = device_copy(gpu, std::vector<float>(dim, 1.0f));
  moss::RmsNormBackwardArgs<bf16, bf16> a;
  a.residual = ConstView<float, 2>(d_residual.data(), {rows, dim}, "residual");
  a.weight = ConstView<float, 1>(d_weight.data(), {dim}, "weight");
  a.dout = ConstView<bf16, 2>(d_dout.data(), {rows, dim}, "dout");
  REQUIRE_NOTHROW(moss::rms_norm_backward(gpu, a));
  REQUIRE_NOTHROW(gpu.synchronize());
}

// ---------------------------------------------------------------------------------------------
// activation_backward

namespace {

/// Which gradients one activation case asks for, and which outputs alias which inputs.
struct ActCase {
  const char* name;
  bool gated, dx, dup;
  enum Alias { none, dx_is_dout, dx_is_x, dup_is_up } alias;
};
constexpr ActCase kActCases[] = {
    {"ungated", false, true, false, ActCase::none},
    {"gated, both", true, true, true, ActCase::none},
    {"gated, dx only", true, true, false, ActCase::none},
    {"gated, dup only", true, false, true, ActCase::none},
    {"ungated, dx in dout", false, true, false, ActCase::dx_is_dout},
    {"gated, dx in x", true, true, true, ActCase::dx_is_x},
    {"gated, dup in up", true, true, true, ActCase::dup_is_up},
};

/// One activation over every shape, case and layout.
template <class Act, class T>
void check_activation_backward(const moss::Cuda& gpu, std::uint64_t seed) {
  const std::pair<index_t, index_t> shapes[] = {{0, 8}, {4, 0}, {1, 1}, {3, 7}, {5, 64}, {17, 1000}, {64, 4096}};
  for (const auto& [rows, cols] : shapes) {
    seed += 10;
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    auto xf = moss::test::randn(n, seed, 3.0f);
    if (n >= 8) {  // the kink, the limits and NaN
      xf[0] = 0.0f;
      xf[1] = std::numeric_limits<float>::infinity();
      xf[2] = -std::numeric_limits<float>::infinity();
      xf[3] = std::numeric_limits<float>::quiet_NaN();
      xf[4] = -0.75f;  // near GELU's zero of the derivative: cancellation
    }
    const auto x = as<T>(xf);
    const auto up = as<T>(moss::test::randn(n, seed + 1));
    const auto dout = as<T>(moss::test::randn(n, seed + 2));
    for (const ActCase& c : kActCases) {
      for (const Layout& l : kLayouts) {
        CAPTURE(Act::name, rows, cols, c.name, l.name);
        auto x_w = place_rows(x, rows, cols, l, poison<T>());
        auto up_w = place_rows(up, rows, cols, l, poison<T>());
        auto dout_w = place_rows(dout, rows, cols, l, poison<T>());
        auto dx_w = std::vector<T>(x_w.size(), poison<T>());
        auto dup_w = std::vector<T>(x_w.size(), poison<T>());
        auto d_x = device_copy(gpu, x_w), d_up = device_copy(gpu, up_w), d_dout = device_copy(gpu, dout_w);
        auto d_dx = device_copy(gpu, dx_w), d_dup = device_copy(gpu, dup_w);

        const auto args = [&](T* px, T* pup, T* pdout, T* pdx, T* pdup) {
          moss::ActivationBackwardArgs<T> a;
          a.x = rows_view<const T>(px, rows, cols, l, "x");
          if (c.gated) a.up = rows_view<const T>(pup, rows, cols, l, "up");
          a.dout = rows_view<const T>(pdout, rows, cols, l, "dout");
          T* dx_base = c.alias == ActCase::dx_is_dout ? pdout : c.alias == ActCase::dx_is_x ? px : pdx;
          T* dup_base = c.alias == ActCase::dup_is_up ? pup : pdup;
          if (c.dx) a.dx = rows_view(dx_base, rows, cols, l, "dx");
          if (c.dup) a.dup = rows_view(dup_base, rows, cols, l, "dup");
          return a;
        };
        moss::activation_backward<Act>(moss::Host{},
                                       args(x_w.data(), up_w.data(), dout_w.data(), dx_w.data(), dup_w.data()));
        moss::activation_backward<Act>(gpu, args(d_x.data(), d_up.data(), d_dout.data(), d_dx.data(), d_dup.data()));
        const double tol = stored_tol<T>();
        close_to("x (or dx in place)", host_copy(gpu, d_x), x_w, tol);
        close_to("up (or dup in place)", host_copy(gpu, d_up), up_w, tol);
        close_to("dout (or dx in place)", host_copy(gpu, d_dout), dout_w, tol);
        close_to("dx", host_copy(gpu, d_dx), dx_w, tol);
        close_to("dup", host_copy(gpu, d_dup), dup_w, tol);

        if (c.alias == ActCase::none && &l == &kLayouts[0]) {  // determinism
          auto d_dx2 = device_copy(gpu, std::vector<T>(x_w.size(), poison<T>()));
          auto d_dup2 = device_copy(gpu, std::vector<T>(x_w.size(), poison<T>()));
          moss::activation_backward<Act>(gpu,
                                         args(d_x.data(), d_up.data(), d_dout.data(), d_dx2.data(), d_dup2.data()));
          CHECK(same_bits(host_copy(gpu, d_dx2), host_copy(gpu, d_dx)));
          CHECK(same_bits(host_copy(gpu, d_dup2), host_copy(gpu, d_dup)));
        }
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("activation_backward: CUDA matches the host", "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  SECTION("relu") { check_activation_backward<moss::Relu, TestType>(gpu, 9300); }
  SECTION("gelu") { check_activation_backward<moss::Gelu, TestType>(gpu, 9400); }
  SECTION("silu") { check_activation_backward<moss::Silu, TestType>(gpu, 9500); }
}

TEST_CASE("activation_backward: the device derivatives match the host ones", "[cuda][backward]") {
  // ActivationGradCuda is MOSS_HD: its host pass must agree with ActivationGrad (same formula).
  for (float x : {-30.0f, -5.0f, -1.0f, -0.75f, -1e-3f, 0.0f, 1e-3f, 0.5f, 1.0f, 3.0f, 30.0f}) {
    CAPTURE(x);
    CHECK(moss::ActivationGradCuda<moss::Relu>::derivative(x) == moss::ActivationGrad<moss::Relu>::derivative(x));
    CHECK(moss::ActivationGradCuda<moss::Gelu>::derivative(x) == moss::ActivationGrad<moss::Gelu>::derivative(x));
    CHECK(moss::ActivationGradCuda<moss::Silu>::derivative(x) == moss::ActivationGrad<moss::Silu>::derivative(x));
  }
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(moss::ActivationGradCuda<moss::Gelu>::derivative(inf) == 1.0f);
  CHECK(moss::ActivationGradCuda<moss::Gelu>::derivative(-inf) == 0.0f);
  CHECK(moss::ActivationGradCuda<moss::Silu>::derivative(inf) == 1.0f);
  CHECK(moss::ActivationGradCuda<moss::Silu>::derivative(-inf) == 0.0f);
  CHECK(std::isnan(moss::ActivationGradCuda<moss::Relu>::derivative(std::numeric_limits<float>::quiet_NaN())));
}

// ---------------------------------------------------------------------------------------------
// causal_conv1d_backward

namespace {

/// The memory layout of a (batch, dim, L) tensor of causal_conv1d.
enum class SeqLayout { channel_first, channel_last, padded };

/// Strides and size of a (batch, dim, L) tensor in `layout` (padded: channel-first rows of
/// L + 3 in a (batch, dim + 1) grid, 2 elements in).
struct SeqPlace {
  moss::Extents<3> stride;
  index_t offset, size;
};
SeqPlace seq_place(index_t batch, index_t dim, index_t seqlen, SeqLayout layout) {
  switch (layout) {
    case SeqLayout::channel_first:
      return {{dim * seqlen, seqlen, 1}, 0, batch * dim * seqlen};
    case SeqLayout::channel_last:
      return {{seqlen * dim, 1, dim}, 0, batch * dim * seqlen};
    default:
      return {{(dim + 1) * (seqlen + 3), seqlen + 3, 1}, 2, batch * (dim + 1) * (seqlen + 3) + 2};
  }
}

/// The buffer of a (batch, dim, L) tensor given row-major as `dense`, placed as `p` says, `fill`
/// elsewhere.
template <class T>
std::vector<T> place_seq(const std::vector<T>& dense, index_t batch, index_t dim, index_t seqlen, const SeqPlace& p,
                         T fill) {
  std::vector<T> v(static_cast<std::size_t>(p.size), fill);
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d)
      for (index_t t = 0; t < seqlen; ++t)
        v[p.offset + b * p.stride[0] + d * p.stride[1] + t * p.stride[2]] = dense[(b * dim + d) * seqlen + t];
  return v;
}

/// One causal_conv1d case: the shape and the options.
struct ConvCase {
  index_t batch, dim, seqlen, width;
  bool silu, bias, init, dfinal;
};

/// Which gradients one causal_conv1d call asks for.
struct ConvOutputs {
  const char* name;
  bool dx, dweight, dbias, dinit, accumulate;
};
constexpr ConvOutputs kConvOutputs[] = {
    {"all", true, true, true, true, false},
    {"all, accumulate", true, true, true, true, true},
    {"dx only", true, false, false, false, false},
    {"parameters only, accumulate", false, true, true, false, true},
    {"dweight and dinitial_state", false, true, false, true, false},
};

}  // namespace

TEMPLATE_TEST_CASE("causal_conv1d_backward: CUDA matches the host", "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  using R = moss::compute_t<T>;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const R nan = std::numeric_limits<R>::quiet_NaN();
  // Batch 0 and 1, L 0, L < W−1, L = 1, dim 1, odd sizes; several runs per sequence (runs of
  // 32 steps: L 700 with batch · dim 32 has 22 runs, L 300 with 64 channels 10).
  const ConvCase cases[] = {
      {1, 1, 1, 2, false, false, false, false}, {1, 3, 2, 4, true, true, true, true},
      {2, 5, 0, 3, true, true, true, true},     {0, 4, 5, 4, true, true, true, true},
      {1, 2, 1, 4, true, false, true, true},    {2, 8, 37, 4, true, true, false, false},
      {3, 13, 100, 3, false, true, true, true}, {1, 64, 300, 2, true, true, true, false},
      {2, 16, 700, 4, true, true, true, true},  {2, 16, 700, 4, false, false, false, true},
  };
  std::uint64_t seed = 9600;
  for (const ConvCase& cs : cases) {
    seed += 10;
    const index_t B = cs.batch, D = cs.dim, L = cs.seqlen, W = cs.width;
    const auto x = as<T>(moss::test::randn(B * D * L, seed));
    const auto dout = as<T>(moss::test::randn(B * D * L, seed + 1));
    const auto weight = as<T>(moss::test::randn(D * W, seed + 2, 0.5f));
    const auto bias = as<T>(moss::test::randn(D, seed + 3, 0.5f));
    const auto init = as<T>(moss::test::randn(B * D * (W - 1), seed + 4));
    const auto dfinal = as<T>(moss::test::randn(B * D * (W - 1), seed + 5));
    const auto dweight0 = moss::test::randn(D * W, seed + 6);
    const auto dbias0 = moss::test::randn(D, seed + 7);
    const auto d_weight = device_copy(gpu, weight), d_bias = device_copy(gpu, bias), d_init = device_copy(gpu, init);
    const auto d_dfinal = device_copy(gpu, dfinal);
    for (const ConvOutputs& o : kConvOutputs) {
      for (SeqLayout layout : {SeqLayout::channel_first, SeqLayout::channel_last, SeqLayout::padded}) {
        CAPTURE(B, D, L, W, cs.silu, cs.bias, cs.init, cs.dfinal, o.name, static_cast<int>(layout));
        const SeqPlace place = seq_place(B, D, L, layout);
        const auto x_w = place_seq(x, B, D, L, place, poison<T>());
        const auto dout_w = place_seq(dout, B, D, L, place, poison<T>());
        auto dx_w = std::vector<T>(static_cast<std::size_t>(place.size), poison<T>());
        auto dinit_h = std::vector<T>(static_cast<std::size_t>(B * D * (W - 1)), poison<T>());
        auto dweight_h = poisoned_or(o.accumulate, dweight0, static_cast<std::size_t>(D * W));
        auto dbias_h = poisoned_or(o.accumulate, dbias0, static_cast<std::size_t>(D));
        const auto d_x = device_copy(gpu, x_w), d_dout = device_copy(gpu, dout_w);
        auto d_dx = device_copy(gpu, dx_w), d_dinit = device_copy(gpu, dinit_h);
        auto d_dweight = device_copy(gpu, dweight_h), d_dbias = device_copy(gpu, dbias_h);

        const auto args = [&](const T* px, const T* pw, const T* pb, const T* pinit, const T* pdout, const T* pdfinal,
                              T* pdx, R* pdw, R* pdb, T* pdinit) {
          moss::CausalConv1dBackwardArgs<T> a;
          a.x = ConstView<T, 3>(px + place.offset, {B, D, L}, place.stride, "x");
          a.weight = ConstView<T, 2>(pw, {D, W}, "weight");
          if (cs.bias) a.bias = ConstView<T, 1>(pb, {D}, "bias");
          a.silu = cs.silu;
          if (cs.init) a.initial_state = ConstView<T, 3>(pinit, {B, D, W - 1}, "initial_state");
          a.dout = ConstView<T, 3>(pdout + place.offset, {B, D, L}, place.stride, "dout");
          if (cs.dfinal) a.dfinal_state = ConstView<T, 3>(pdfinal, {B, D, W - 1}, "dfinal_state");
          if (o.dx) a.dx = TensorView<T, 3>(pdx + place.offset, {B, D, L}, place.stride, "dx");
          if (o.dweight) a.dweight = TensorView<R, 2>(pdw, {D, W}, "dweight");
          if (o.dbias) a.dbias = TensorView<R, 1>(pdb, {D}, "dbias");
          if (o.dinit) a.dinitial_state = TensorView<T, 3>(pdinit, {B, D, W - 1}, "dinitial_state");
          a.accumulate = o.accumulate;
          return a;
        };
        moss::causal_conv1d_backward(
            moss::Host{}, args(x_w.data(), weight.data(), bias.data(), init.data(), dout_w.data(), dfinal.data(),
                               dx_w.data(), dweight_h.data(), dbias_h.data(), dinit_h.data()));
        moss::causal_conv1d_backward(
            gpu, args(d_x.data(), d_weight.data(), d_bias.data(), d_init.data(), d_dout.data(), d_dfinal.data(),
                      d_dx.data(), d_dweight.data(), d_dbias.data(), d_dinit.data()));
        close_to("dx", host_copy(gpu, d_dx), dx_w, stored_tol<T>());
        close_to("dinitial_state", host_copy(gpu, d_dinit), dinit_h, stored_tol<T>());
        close_to("dweight", host_copy(gpu, d_dweight), dweight_h, kFloatTol);
        close_to("dbias", host_copy(gpu, d_dbias), dbias_h, kFloatTol);

        if (layout == SeqLayout::channel_first) {  // determinism
          auto d_dx2 = device_copy(gpu, std::vector<T>(static_cast<std::size_t>(place.size), poison<T>()));
          auto d_dinit2 = device_copy(gpu, std::vector<T>(static_cast<std::size_t>(B * D * (W - 1)), poison<T>()));
          auto d_dweight2 = device_copy(gpu, poisoned_or(o.accumulate, dweight0, static_cast<std::size_t>(D * W)));
          auto d_dbias2 = device_copy(gpu, poisoned_or(o.accumulate, dbias0, static_cast<std::size_t>(D)));
          moss::causal_conv1d_backward(
              gpu, args(d_x.data(), d_weight.data(), d_bias.data(), d_init.data(), d_dout.data(), d_dfinal.data(),
                        d_dx2.data(), d_dweight2.data(), d_dbias2.data(), d_dinit2.data()));
          CHECK(same_bits(host_copy(gpu, d_dx2), host_copy(gpu, d_dx)));
          CHECK(same_bits(host_copy(gpu, d_dinit2), host_copy(gpu, d_dinit)));
          CHECK(same_bits(host_copy(gpu, d_dweight2), host_copy(gpu, d_dweight)));
          CHECK(same_bits(host_copy(gpu, d_dbias2), host_copy(gpu, d_dbias)));
        }
      }
    }
  }
}

namespace {

/// The CUDA op's per-thread routines run on the host over every thread of both kernels, with
/// runs of `steps` timesteps (any steps ≥ 1, shorter than the device's 32 to cross many run
/// boundaries): what the kernels compute, without a GPU.
template <class T, int W, int C, int U>
void emulate_conv1d_backward(const moss::CausalConv1dBackwardArgs<T>& a, index_t steps) {
  const index_t batch = a.x.shape[0], dim = a.x.shape[1], seqlen = a.x.shape[2];
  const index_t runs = seqlen > 0 ? moss::ceil_div<index_t>(seqlen, steps) : 1;
  std::vector<float> partial(static_cast<std::size_t>(batch * runs * dim * (W + 1)), std::nanf(""));
  const bool want_params = present(a.dweight) || present(a.dbias);
  const moss::detail::Conv1dBackwardParams<T> p{.x = a.x,
                                                .weight = a.weight,
                                                .bias = a.bias,
                                                .silu = a.silu,
                                                .initial_state = a.initial_state,
                                                .dout = a.dout,
                                                .dfinal_state = a.dfinal_state,
                                                .dx = a.dx,
                                                .dinitial_state = a.dinitial_state,
                                                .steps = steps,
                                                .runs = runs,
                                                .partial = want_params ? partial.data() : nullptr};
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < runs; ++r)
      for (index_t d = 0; d < dim; d += C) moss::detail::conv1d_backward_thread<T, W, C, U>(p, b, r, d);
  if (!want_params) return;
  for (index_t j = 0; j < dim * (W + 1); ++j)
    moss::detail::conv1d_backward_param_thread<float>(partial.data(), batch * runs, dim, W, a.dweight, a.dbias,
                                                      a.accumulate, j);
}

/// emulate_conv1d_backward for the runtime width W with C channels per thread and U timesteps per
/// load group.
template <int C, int U, class T>
void emulate_widths(const moss::CausalConv1dBackwardArgs<T>& a, index_t W, index_t steps) {
  if (W == 2)
    emulate_conv1d_backward<T, 2, C, U>(a, steps);
  else if (W == 3)
    emulate_conv1d_backward<T, 3, C, U>(a, steps);
  else
    emulate_conv1d_backward<T, 4, C, U>(a, steps);
}

template <class T>
void check_conv1d_emulation() {
  using R = moss::compute_t<T>;
  const ConvCase cases[] = {
      {1, 1, 1, 2, false, false, false, false}, {1, 3, 2, 4, true, true, true, true},
      {2, 5, 0, 3, true, true, true, true},     {1, 2, 1, 4, true, false, true, true},
      {2, 3, 2, 3, false, true, true, true},    {2, 8, 37, 4, true, true, false, false},
      {3, 5, 23, 3, false, true, true, true},   {2, 4, 50, 2, true, true, true, true},
  };
  std::uint64_t seed = 9700;
  for (const ConvCase& cs : cases) {
    seed += 10;
    const index_t B = cs.batch, D = cs.dim, L = cs.seqlen, W = cs.width;
    const auto x = as<T>(moss::test::randn(B * D * L, seed));
    const auto dout = as<T>(moss::test::randn(B * D * L, seed + 1));
    const auto weight = as<T>(moss::test::randn(D * W, seed + 2, 0.5f));
    const auto bias = as<T>(moss::test::randn(D, seed + 3, 0.5f));
    const auto init = as<T>(moss::test::randn(B * D * (W - 1), seed + 4));
    const auto dfinal = as<T>(moss::test::randn(B * D * (W - 1), seed + 5));
    const auto dweight0 = moss::test::randn(D * W, seed + 6);
    const auto dbias0 = moss::test::randn(D, seed + 7);
    for (const ConvOutputs& o : kConvOutputs) {
      for (index_t steps : {1, 2, 3, 5, 32}) {
        CAPTURE(B, D, L, W, cs.silu, cs.bias, cs.init, cs.dfinal, o.name, steps);
        const SeqPlace place = seq_place(B, D, L, SeqLayout::padded);
        const auto x_w = place_seq(x, B, D, L, place, poison<T>());
        const auto dout_w = place_seq(dout, B, D, L, place, poison<T>());
        std::vector<T> dx[4], dinit[4];
        std::vector<R> dweight[4], dbias[4];
        // 0: the host op; the emulated kernels: 1 as launched, 2 with 2 channels a thread and rows
        // loaded one timestep at a time, 3 with rows loaded 8 timesteps at a time.
        for (int side = 0; side < 4; ++side) {
          if (side == 2 && D % 2 != 0) continue;
          dx[side] = std::vector<T>(static_cast<std::size_t>(place.size), poison<T>());
          dinit[side] = std::vector<T>(static_cast<std::size_t>(B * D * (W - 1)), poison<T>());
          dweight[side] = poisoned_or(o.accumulate, dweight0, static_cast<std::size_t>(D * W));
          dbias[side] = poisoned_or(o.accumulate, dbias0, static_cast<std::size_t>(D));
          moss::CausalConv1dBackwardArgs<T> a;
          a.x = ConstView<T, 3>(x_w.data() + place.offset, {B, D, L}, place.stride, "x");
          a.weight = ConstView<T, 2>(weight.data(), {D, W}, "weight");
          if (cs.bias) a.bias = ConstView<T, 1>(bias.data(), {D}, "bias");
          a.silu = cs.silu;
          if (cs.init) a.initial_state = ConstView<T, 3>(init.data(), {B, D, W - 1}, "initial_state");
          a.dout = ConstView<T, 3>(dout_w.data() + place.offset, {B, D, L}, place.stride, "dout");
          if (cs.dfinal) a.dfinal_state = ConstView<T, 3>(dfinal.data(), {B, D, W - 1}, "dfinal_state");
          if (o.dx) a.dx = TensorView<T, 3>(dx[side].data() + place.offset, {B, D, L}, place.stride, "dx");
          if (o.dweight) a.dweight = TensorView<R, 2>(dweight[side].data(), {D, W}, "dweight");
          if (o.dbias) a.dbias = TensorView<R, 1>(dbias[side].data(), {D}, "dbias");
          if (o.dinit) a.dinitial_state = TensorView<T, 3>(dinit[side].data(), {B, D, W - 1}, "dinitial_state");
          a.accumulate = o.accumulate;
          if (side == 0) {
            moss::causal_conv1d_backward(moss::Host{}, a);
          } else if (side == 1) {
            emulate_widths<1, moss::detail::kConv1dBackwardLoadSteps>(a, W, steps);
          } else if (side == 2) {
            emulate_widths<2, 1>(a, W, steps);
          } else {
            emulate_widths<1, 8>(a, W, steps);
          }
        }
        // 8 timesteps per load group: the same arithmetic in the same order, so the same bits.
        CHECK(same_bits(dx[3], dx[1]));
        CHECK(same_bits(dinit[3], dinit[1]));
        CHECK(same_bits(dweight[3], dweight[1]));
        CHECK(same_bits(dbias[3], dbias[1]));
        if (D % 2 == 0) {  // C channels per thread (and one timestep per load group): the same bits
          CHECK(same_bits(dx[2], dx[1]));
          CHECK(same_bits(dinit[2], dinit[1]));
          CHECK(same_bits(dweight[2], dweight[1]));
          CHECK(same_bits(dbias[2], dbias[1]));
        }
        // The input gradients sum the same terms in the same order with the host's float
        // arithmetic here: the same bits. The parameter sums are ordered by runs.
        CHECK(same_bits(dx[1], dx[0]));
        CHECK(same_bits(dinit[1], dinit[0]));
        close_to("dweight", dweight[1], dweight[0], kFloatTol);
        close_to("dbias", dbias[1], dbias[0], kFloatTol);
      }
    }
  }
}

}  // namespace

TEST_CASE("causal_conv1d_backward: the CUDA per-thread routines run on the host match the host op", "[backward]") {
  // Needs no GPU: checks the kernels' indexing (runs, halos, state columns, dfinal_state) here.
  check_conv1d_emulation<float>();
  check_conv1d_emulation<bf16>();
}

TEST_CASE("causal_conv1d_backward: CUDA rows loaded 1, 4 or 8 timesteps at a time give the same bits",
          "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  // Several runs per sequence, channel-last (the vector path) and channel-first (one channel a
  // thread), a length that is no multiple of 8.
  const index_t B = 2, D = 16, L = 701, W = 4;
  for (SeqLayout layout : {SeqLayout::channel_last, SeqLayout::channel_first}) {
    CAPTURE(static_cast<int>(layout));
    const SeqPlace place = seq_place(B, D, L, layout);
    const auto x = device_copy(gpu, place_seq(as<bf16>(moss::test::randn(B * D * L, 9901)), B, D, L, place, bf16{}));
    const auto dout = device_copy(gpu, place_seq(as<bf16>(moss::test::randn(B * D * L, 9902)), B, D, L, place, bf16{}));
    const auto weight = device_copy(gpu, as<bf16>(moss::test::randn(D * W, 9903, 0.5f)));
    const auto bias = device_copy(gpu, as<bf16>(moss::test::randn(D, 9904, 0.5f)));
    std::vector<bf16> dx_ref;
    std::vector<float> dweight_ref, dbias_ref;
    for (int load_steps : {0, 1, 4, 8}) {
      CAPTURE(load_steps);
      auto dx = device_copy(gpu, std::vector<bf16>(static_cast<std::size_t>(place.size), poison<bf16>()));
      auto dweight = gpu.alloc<float>(D * W);
      auto dbias = gpu.alloc<float>(D);
      moss::CausalConv1dBackwardArgs<bf16> a;
      a.x = ConstView<bf16, 3>(x.data() + place.offset, {B, D, L}, place.stride, "x");
      a.weight = ConstView<bf16, 2>(weight.data(), {D, W}, "weight");
      a.bias = ConstView<bf16, 1>(bias.data(), {D}, "bias");
      a.silu = true;
      a.dout = ConstView<bf16, 3>(dout.data() + place.offset, {B, D, L}, place.stride, "dout");
      a.dx = TensorView<bf16, 3>(dx.data() + place.offset, {B, D, L}, place.stride, "dx");
      a.dweight = TensorView<float, 2>(dweight.data(), {D, W}, "dweight");
      a.dbias = TensorView<float, 1>(dbias.data(), {D}, "dbias");
      moss::detail::run_conv1d_backward(gpu, a, load_steps);
      if (load_steps == 0) {
        dx_ref = host_copy(gpu, dx), dweight_ref = host_copy(gpu, dweight), dbias_ref = host_copy(gpu, dbias);
        continue;
      }
      CHECK(same_bits(host_copy(gpu, dx), dx_ref));
      CHECK(same_bits(host_copy(gpu, dweight), dweight_ref));
      CHECK(same_bits(host_copy(gpu, dbias), dbias_ref));
    }
  }
  CHECK_THROWS_AS(moss::detail::run_conv1d_backward(gpu, moss::CausalConv1dBackwardArgs<bf16>{}, 3),
                  moss::config_error);
}

TEST_CASE("causal_conv1d_backward: CUDA refuses a width it has no kernel for", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const moss::Cuda gpu{};
  const index_t B = 1, D = 2, L = 3, W = 5;
  const auto d_x = device_copy(gpu, std::vector<float>(B * D * L, 1.0f));
  const auto d_w = device_copy(gpu, std::vector<float>(D * W, 1.0f));
  auto d_dx = device_copy(gpu, std::vector<float>(B * D * L, 0.0f));
  moss::CausalConv1dBackwardArgs<float> a;
  a.x = ConstView<float, 3>(d_x.data(), {B, D, L}, "x");
  a.weight = ConstView<float, 2>(d_w.data(), {D, W}, "weight");
  a.dout = ConstView<float, 3>(d_x.data(), {B, D, L}, "dout");
  a.dx = TensorView<float, 3>(d_dx.data(), {B, D, L}, "dx");
  CHECK_THROWS_AS(moss::causal_conv1d_backward(gpu, a), moss::unsupported_error);
}

// ---------------------------------------------------------------------------------------------
// embedding_backward

TEMPLATE_TEST_CASE("embedding_backward: CUDA matches the host bit for bit", "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  struct Shape {
    index_t rows, vocab, dim;
  };
  // Zero rows, one row, vocab 1, one id repeated, dims 1 / odd / vector-wide, a byte-level
  // vocabulary with long runs, a large sparse vocabulary.
  const Shape shapes[] = {{0, 5, 3},      {1, 1, 1},        {7, 3, 5},        {10, 4, 4},  {100, 17, 64},
                          {1000, 50, 33}, {4096, 256, 768}, {300, 100000, 4}, {2000, 1, 8}};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::uint64_t seed = 9800;
  for (const Shape& s : shapes) {
    seed += 10;
    std::vector<std::int64_t> ids(static_cast<std::size_t>(2 * s.rows));  // every other entry is an id
    {
      const auto u = moss::test::uniform(static_cast<std::size_t>(2 * s.rows), seed, 0.0f, 1.0f);
      for (std::size_t i = 0; i < ids.size(); ++i) {
        // Skewed toward small ids (long runs), every id possible; rows 10 of shape {10, 4, 4}: all 3.
        const double r = static_cast<double>(u[i]) * u[i];
        ids[i] = s.rows == 10 ? 3 : std::min<std::int64_t>(static_cast<std::int64_t>(r * s.vocab), s.vocab - 1);
        ids[i] = i % 2 ? -7 : ids[i];  // the entries between ids are never read
      }
    }
    const auto dout = moss::test::randn(static_cast<std::size_t>(s.rows * s.dim), seed + 1);
    const auto dtable0 = moss::test::randn(static_cast<std::size_t>(s.vocab * s.dim), seed + 2);
    const auto d_ids = device_copy(gpu, ids);
    for (bool accumulate : {false, true}) {
      for (const Layout& l : kLayouts) {
        CAPTURE(s.rows, s.vocab, s.dim, accumulate, l.name);
        const auto dout_w = place_rows(dout, s.rows, s.dim, l, nan);
        auto dtable_w =
            place_rows(accumulate ? dtable0 : std::vector<float>(dtable0.size(), nan), s.vocab, s.dim, l, nan);
        const auto d_dout = device_copy(gpu, dout_w);
        auto d_dtable = device_copy(gpu, dtable_w);
        const auto args = [&](const std::int64_t* pids, const float* pdout, float* pdtable) {
          moss::EmbeddingBackwardArgs<T> a;
          a.ids = ConstView<std::int64_t, 1>(pids, {s.rows}, {2}, "ids");
          a.dout = rows_view(pdout, s.rows, s.dim, l, "dout");
          a.dtable = rows_view(pdtable, s.vocab, s.dim, l, "dtable");
          a.accumulate = accumulate;
          return a;
        };
        moss::embedding_backward(moss::Host{}, args(ids.data(), dout_w.data(), dtable_w.data()));
        moss::embedding_backward(gpu, args(d_ids.data(), d_dout.data(), d_dtable.data()));
        const auto got = host_copy(gpu, d_dtable);
        CHECK(same_bits(got, dtable_w));
        if (!same_bits(got, dtable_w)) close_to("dtable", got, dtable_w, kFloatTol);  // how far off

        auto d_dtable2 = device_copy(
            gpu, place_rows(accumulate ? dtable0 : std::vector<float>(dtable0.size(), nan), s.vocab, s.dim, l, nan));
        moss::embedding_backward(gpu, args(d_ids.data(), d_dout.data(), d_dtable2.data()));
        CHECK(same_bits(host_copy(gpu, d_dtable2), got));  // determinism
      }
    }
  }
}

TEST_CASE("embedding_backward: CUDA turns dtable to NaN for an id outside the table", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t rows = 6, vocab = 4, dim = 3;
  for (std::int64_t bad : {std::int64_t(-1), std::int64_t(vocab), std::int64_t(1) << 40}) {
    for (bool accumulate : {false, true}) {
      CAPTURE(bad, accumulate);
      const std::vector<std::int64_t> ids{0, 1, bad, 3, 1, 2};
      const auto d_ids = device_copy(gpu, ids);
      const auto d_dout = device_copy(gpu, moss::test::randn(rows * dim, 5));
      auto d_dtable = device_copy(gpu, moss::test::randn(vocab * dim, 6));
      moss::EmbeddingBackwardArgs<bf16> a;
      a.ids = ConstView<std::int64_t, 1>(d_ids.data(), {rows}, "ids");
      a.dout = ConstView<float, 2>(d_dout.data(), {rows, dim}, "dout");
      a.dtable = TensorView<float, 2>(d_dtable.data(), {vocab, dim}, "dtable");
      a.accumulate = accumulate;
      REQUIRE_NOTHROW(moss::embedding_backward(gpu, a));
      const auto got = host_copy(gpu, d_dtable);
      bool all_nan = true;
      for (float v : got) all_nan = all_nan && std::isnan(v);
      CHECK(all_nan);
      // The host refuses the same ids before writing anything.
      std::vector<float> dtable_h(static_cast<std::size_t>(vocab * dim), 0.0f);
      const auto dout_h = moss::test::randn(rows * dim, 5);
      moss::EmbeddingBackwardArgs<bf16> h;
      h.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, "ids");
      h.dout = ConstView<float, 2>(dout_h.data(), {rows, dim}, "dout");
      h.dtable = TensorView<float, 2>(dtable_h.data(), {vocab, dim}, "dtable");
      CHECK_THROWS_AS(moss::embedding_backward(moss::Host{}, h), moss::shape_error);
    }
  }
}
