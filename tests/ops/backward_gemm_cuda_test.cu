// tests/ops/backward_gemm_cuda_test.cu: the CUDA backward passes of linear, grouped_linear,
// gather_rows / combine_rows and the fused LM-head cross-entropy against their host oracles
// (which have their own finite-difference tests), from the same rounded inputs, over float, f16
// and bf16 and over ragged and degenerate shapes: 0 and 1 rows, odd sizes, bias on and off,
// accumulate on and off, absent outputs, empty expert segments, every row on one expert, strided
// views, dropped slots, ignored rows (with NaN hidden states that must never be read), a prime
// vocabulary and several chunks. Each op also gets a determinism test: two runs, bitwise equal.
//
// Tolerances (relative L2 over the whole tensor, docs/math.md "Precision contract"):
//  - gradients stored in T (dx, dhidden): the per-op tolerance of T (op_tolerance<T>: 1e-5,
//    3e-3, 1e-2). Both backends accumulate in float32 and round once; they differ in summation
//    order (cuBLAS's vs the host's), which moves a float32 sum by far less than one ulp of T but
//    can flip a rounding to T, and for float by a few float32 ulps.
//  - float32 parameter gradients from GEMMs with T operands (linear and grouped dW, db): 1e-5, the
//    float32 contract. Products of two f16 / bf16 values are exact in float32, so only the order
//    of float32 additions differs (errors ~ √K · 2⁻²⁴ relative for these K ≤ 1000).
//  - cross-entropy dweight: 1e-5 for float; op_tolerance<T> for f16 / bf16, because the CUDA op
//    rounds the logits' gradient (in [−1, 1]) once to T before the cuBLAS GEMMs (one operand type
//    per GEMM): a relative error of at most 2⁻⁹ (bf16) / 2⁻¹² (f16) per term, which the host, in
//    float32 throughout, does not have. The loss itself is 1e-5 relative for every T (the logits
//    are float32 GEMMs of exactly representable products).
//  - gather_rows_backward and the dy of combine_rows_backward run the host's arithmetic term for
//    term (float32 sums in slot order, one product), so they must be bitwise the host's.
//    dgate is a float32 dot product over the weighted columns in another order: 1e-5.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/cross_entropy.hpp"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/linear_backward.hpp"
#include "moss/ops/permute_backward.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::test::device_copy;
using moss::test::host_copy;
using moss::test::rel_l2;
using moss::test::same_bits;

using moss::bf16;
using moss::Buffer;
using moss::ConstView;
using moss::Cuda;
using moss::f16;
using moss::Host;
using moss::index_t;
using moss::TensorView;

/// Float32 results computed from T operands (parameter gradients): the float32 contract.
constexpr double kFloatGradTol = 1e-5;

template <class T, class Tout>
struct Types {
  using In = T;
  using Out = Tout;
};

/// n values of N(0, sd²) rounded to T.
template <class T>
std::vector<T> random_t(index_t n, std::uint64_t seed, float sd = 1.0f) {
  return moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(n), seed, sd));
}

/// The dense (rows, cols) matrix `m` laid out with row stride ld ≥ cols, the gaps set to `fill`.
template <class T>
std::vector<T> padded(const std::vector<T>& m, index_t rows, index_t cols, index_t ld, T fill) {
  std::vector<T> p(static_cast<std::size_t>(rows * ld), fill);
  for (index_t r = 0; r < rows; ++r) std::copy_n(m.begin() + r * cols, cols, p.begin() + r * ld);
  return p;
}

/// The dense (rows, cols) matrix of a row-stride-ld layout.
template <class T>
std::vector<T> unpadded(const std::vector<T>& p, index_t rows, index_t cols, index_t ld) {
  std::vector<T> m(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r) std::copy_n(p.begin() + r * ld, cols, m.begin() + r * cols);
  return m;
}

/// True when every gap element of a row-stride-ld layout still holds `fill`'s bits.
template <class T>
bool gaps_hold(const std::vector<T>& p, index_t rows, index_t cols, index_t ld, T fill) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = cols; c < ld; ++c)
      if (std::memcmp(&p[static_cast<std::size_t>(r * ld + c)], &fill, sizeof(T)) != 0) return false;
  return true;
}

template <class T>
T nan_t() {
  return moss::from_float<T>(NAN);
}

/// A device buffer holding `v`; one element when `v` is empty, so that empty views have data.
template <class T>
Buffer<T> dev(const Cuda& gpu, const std::vector<T>& v) {
  return device_copy(gpu, v.empty() ? std::vector<T>(1) : v);
}

/// The first n elements of a device buffer.
template <class T>
std::vector<T> back(const Cuda& gpu, const Buffer<T>& b, index_t n) {
  std::vector<T> v = host_copy(gpu, b);
  v.resize(static_cast<std::size_t>(n));
  return v;
}

// ------------------------------------------------------------------------------------------------
// linear_backward

/// Which gradients a call asks for.
struct Outputs {
  const char* name;
  bool dx, dw, db;
};
constexpr Outputs kOutputs[] = {{"all", true, true, true},
                                {"dx only", true, false, false},
                                {"dw and db", false, true, true},
                                {"db only", false, false, true}};

struct LinearShape {
  index_t rows, in, out;
};
// 0 and 1 rows, width-1 features, odd sizes, and a few hundred rows with K = rows for dW.
constexpr LinearShape kLinearShapes[] = {{0, 7, 5},     {1, 1, 1},      {1, 33, 17},   {7, 7, 7},
                                         {37, 129, 65}, {300, 64, 200}, {1000, 31, 1}, {513, 1, 96}};

template <class T>
struct LinearGrads {
  std::vector<T> dx;
  std::vector<float> dw, db;
};

/// The CUDA gradients of one call: dy, x and dx with row stride (width + pad), dx's gaps poisoned
/// (and checked), dw and db starting from dw0 and db0.
template <class T, class Tout>
LinearGrads<T> linear_cuda(const Cuda& gpu, const LinearShape& s, index_t pad, const Outputs& o, bool accumulate,
                           const std::vector<Tout>& dy, const std::vector<T>& x, const std::vector<T>& w,
                           const std::vector<float>& dw0, const std::vector<float>& db0) {
  const index_t ldy = s.out + pad, ldx = s.in + pad;
  const auto d_dy = dev(gpu, padded(dy, s.rows, s.out, ldy, nan_t<Tout>()));
  const auto d_x = dev(gpu, padded(x, s.rows, s.in, ldx, nan_t<T>()));
  const auto d_w = dev(gpu, w);
  auto d_dx = dev(gpu, std::vector<T>(static_cast<std::size_t>(s.rows * ldx), nan_t<T>()));
  auto d_dw = dev(gpu, dw0);
  auto d_db = dev(gpu, db0);
  moss::LinearBackwardArgs<T, Tout> a;
  a.dy = ConstView<Tout, 2>(d_dy.data(), {s.rows, s.out}, {ldy, 1}, "dy");
  a.x = ConstView<T, 2>(d_x.data(), {s.rows, s.in}, {ldx, 1}, "x");
  a.weight = ConstView<T, 2>(d_w.data(), {s.out, s.in}, "weight");
  if (o.dx) a.dx = TensorView<T, 2>(d_dx.data(), {s.rows, s.in}, {ldx, 1}, "dx");
  if (o.dw) a.dweight = TensorView<float, 2>(d_dw.data(), {s.out, s.in}, "dweight");
  if (o.db) a.dbias = TensorView<float, 1>(d_db.data(), {s.out}, "dbias");
  a.accumulate = accumulate;
  moss::linear_backward(gpu, a);
  LinearGrads<T> g;
  const auto dx_wide = back(gpu, d_dx, s.rows * ldx);
  CHECK(gaps_hold(dx_wide, s.rows, s.in, ldx, nan_t<T>()));
  g.dx = unpadded(dx_wide, s.rows, s.in, ldx);
  g.dw = back(gpu, d_dw, s.out * s.in);
  g.db = back(gpu, d_db, s.out);
  return g;
}

template <class T, class Tout>
void check_linear_against_host() {
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 100;
  for (const LinearShape& s : kLinearShapes) {
    const std::pair<index_t, bool> layouts[] = {{0, false}, {3, true}};  // (pad, accumulate)
    for (const auto& [pad, accumulate] : layouts) {
      seed += 10;
      const auto dy = random_t<Tout>(s.rows * s.out, seed);
      const auto x = random_t<T>(s.rows * s.in, seed + 1);
      const auto w = random_t<T>(s.out * s.in, seed + 2, 0.1f);
      const auto dw0 = moss::test::randn(static_cast<std::size_t>(s.out * s.in), seed + 3);
      const auto db0 = moss::test::randn(static_cast<std::size_t>(s.out), seed + 4);
      // The host oracle with every output (an absent output does not change the others).
      std::vector<T> dx_h(static_cast<std::size_t>(s.rows * s.in));
      std::vector<float> dw_h = dw0, db_h = db0;
      moss::LinearBackwardArgs<T, Tout> h;
      h.dy = ConstView<Tout, 2>(dy.data(), {s.rows, s.out}, "dy");
      h.x = ConstView<T, 2>(x.data(), {s.rows, s.in}, "x");
      h.weight = ConstView<T, 2>(w.data(), {s.out, s.in}, "weight");
      h.dx = TensorView<T, 2>(dx_h.data(), {s.rows, s.in}, "dx");
      h.dweight = TensorView<float, 2>(dw_h.data(), {s.out, s.in}, "dweight");
      h.dbias = TensorView<float, 1>(db_h.data(), {s.out}, "dbias");
      h.accumulate = accumulate;
      moss::linear_backward(Host{}, h);
      for (const Outputs& o : kOutputs) {
        CAPTURE(s.rows, s.in, s.out, pad, accumulate, o.name);
        const auto g = linear_cuda<T, Tout>(gpu, s, pad, o, accumulate, dy, x, w, dw0, db0);
        if (o.dx && s.rows > 0) CHECK(rel_l2(g.dx, dx_h) <= moss::test::op_tolerance<T>());
        if (s.rows == 0) {
          // No rows: exactly zero, or exactly the old values when accumulating.
          if (o.dw) CHECK(same_bits(g.dw, dw_h));
          if (o.db) CHECK(same_bits(g.db, db_h));
        } else {
          if (o.dw) CHECK(rel_l2(g.dw, dw_h) <= kFloatGradTol);
          if (o.db) CHECK(rel_l2(g.db, db_h) <= kFloatGradTol);
        }
        // An absent output is not written.
        if (!o.dw) CHECK(same_bits(g.dw, dw0));
        if (!o.db) CHECK(same_bits(g.db, db0));
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("linear_backward: CUDA matches the host over shapes, strides, outputs and accumulation",
                   "[cuda][backward]", (Types<float, float>), (Types<f16, f16>), (Types<bf16, bf16>),
                   (Types<bf16, float>), (Types<f16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  check_linear_against_host<typename TestType::In, typename TestType::Out>();
}

TEMPLATE_TEST_CASE("linear_backward: CUDA gives bitwise the same gradients twice", "[cuda][backward]",
                   (Types<float, float>), (Types<f16, f16>), (Types<bf16, bf16>), (Types<bf16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = typename TestType::In;
  using Tout = typename TestType::Out;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const LinearShape s{2049, 192, 320};  // above one column-sum part, K = 2049 for dW
  const auto dy = random_t<Tout>(s.rows * s.out, 7);
  const auto x = random_t<T>(s.rows * s.in, 8);
  const auto w = random_t<T>(s.out * s.in, 9, 0.1f);
  const auto dw0 = moss::test::randn(static_cast<std::size_t>(s.out * s.in), 10);
  const auto db0 = moss::test::randn(static_cast<std::size_t>(s.out), 11);
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    const auto a = linear_cuda<T, Tout>(gpu, s, 0, kOutputs[0], accumulate, dy, x, w, dw0, db0);
    const auto b = linear_cuda<T, Tout>(gpu, s, 0, kOutputs[0], accumulate, dy, x, w, dw0, db0);
    CHECK(same_bits(a.dx, b.dx));
    CHECK(same_bits(a.dw, b.dw));
    CHECK(same_bits(a.db, b.db));
  }
}

TEST_CASE("linear_backward: CUDA keeps a tiny float dy of an f16 LM head instead of flushing it", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  // An LM head's dy is dloss / N · (softmax − onehot): values near 1e-9, below f16's smallest
  // subnormal (6e-8). The CUDA op widens the f16 operand rather than rounding dy to f16, so dW
  // matches the host's float32 arithmetic; rounding dy to f16 would zero it.
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const LinearShape s{64, 48, 80};
  auto dy = moss::test::randn(static_cast<std::size_t>(s.rows * s.out), 31, 1e-9f);
  const auto x = random_t<f16>(s.rows * s.in, 32);
  const auto w = random_t<f16>(s.out * s.in, 33, 0.1f);
  const std::vector<float> dw0(static_cast<std::size_t>(s.out * s.in), 0.0f),
      db0(static_cast<std::size_t>(s.out), 0.0f);
  std::vector<f16> dx_h(static_cast<std::size_t>(s.rows * s.in));
  std::vector<float> dw_h = dw0, db_h = db0;
  moss::LinearBackwardArgs<f16, float> h;
  h.dy = ConstView<float, 2>(dy.data(), {s.rows, s.out}, "dy");
  h.x = ConstView<f16, 2>(x.data(), {s.rows, s.in}, "x");
  h.weight = ConstView<f16, 2>(w.data(), {s.out, s.in}, "weight");
  h.dx = TensorView<f16, 2>(dx_h.data(), {s.rows, s.in}, "dx");
  h.dweight = TensorView<float, 2>(dw_h.data(), {s.out, s.in}, "dweight");
  h.dbias = TensorView<float, 1>(db_h.data(), {s.out}, "dbias");
  moss::linear_backward(Host{}, h);
  const auto g = linear_cuda<f16, float>(gpu, s, 0, kOutputs[0], false, dy, x, w, dw0, db0);
  CHECK(rel_l2(g.dw, dw_h) <= kFloatGradTol);
  CHECK(rel_l2(g.db, db_h) <= kFloatGradTol);
  // dx (≈ 1e-9) is below f16's range on both sides: the same rounding of the same float32 sums.
  CHECK(rel_l2(g.dx, dx_h) <= moss::test::op_tolerance<f16>());
}

TEST_CASE("linear_backward: CUDA validates like the host", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const Cuda gpu{};
  std::vector<float> dummy(64);
  moss::LinearBackwardArgs<float> a;
  a.dy = ConstView<float, 2>(dummy.data(), {2, 3}, "dy");
  a.x = ConstView<float, 2>(dummy.data(), {2, 4}, "x");
  a.weight = ConstView<float, 2>(dummy.data(), {3, 5}, "weight");
  REQUIRE_THROWS_AS(moss::linear_backward(gpu, a), moss::shape_error);
}

// ------------------------------------------------------------------------------------------------
// grouped_linear_backward

namespace {

struct GroupedCase {
  const char* name;
  std::vector<std::int32_t> offsets;  // (X + 1)
  index_t rows;                       // ≥ offsets[X]: the rest get dx = 0
  index_t in, out;
};

/// How the CUDA op gets the offsets: given on the host, read from the device by the op (one
/// synchronisation), or resident (moss's sync-free kernels read them on the device only).
enum class OffsetsMode { host, read, resident };

template <class T>
struct GroupedGrads {
  std::vector<T> dx;
  std::vector<float> dw, db;
};

template <class T>
GroupedGrads<T> grouped_cuda(const Cuda& gpu, const GroupedCase& c, OffsetsMode mode, bool accumulate, bool with_db,
                             const std::vector<T>& dy, const std::vector<T>& x, const std::vector<T>& w,
                             const std::vector<float>& dw0, const std::vector<float>& db0) {
  const index_t X = static_cast<index_t>(c.offsets.size()) - 1;
  const auto d_dy = dev(gpu, dy);
  const auto d_x = dev(gpu, x);
  const auto d_w = dev(gpu, w);
  const auto d_off = dev(gpu, c.offsets);
  auto d_dx = dev(gpu, std::vector<T>(static_cast<std::size_t>(c.rows * c.in), nan_t<T>()));
  auto d_dw = dev(gpu, dw0);
  auto d_db = dev(gpu, db0);
  moss::GroupedLinearBackwardArgs<T> a;
  a.dy = ConstView<T, 2>(d_dy.data(), {c.rows, c.out}, "dy");
  a.x = ConstView<T, 2>(d_x.data(), {c.rows, c.in}, "x");
  a.weight = ConstView<T, 3>(d_w.data(), {X, c.out, c.in}, "weight");
  a.offsets = ConstView<std::int32_t, 1>(d_off.data(), {X + 1}, "offsets");
  if (mode == OffsetsMode::host) a.host_offsets = c.offsets.data();
  a.resident_offsets = mode == OffsetsMode::resident;
  a.dx = TensorView<T, 2>(d_dx.data(), {c.rows, c.in}, "dx");
  a.dweight = TensorView<float, 3>(d_dw.data(), {X, c.out, c.in}, "dweight");
  if (with_db) a.dbias = TensorView<float, 2>(d_db.data(), {X, c.out}, "dbias");
  a.accumulate = accumulate;
  moss::grouped_linear_backward(gpu, a);
  return {back(gpu, d_dx, c.rows * c.in), back(gpu, d_dw, X * c.out * c.in), back(gpu, d_db, X * c.out)};
}

/// The (n) elements of `v` from `begin`.
template <class T>
std::vector<T> slice(const std::vector<T>& v, index_t begin, index_t n) {
  return std::vector<T>(v.begin() + begin, v.begin() + begin + n);
}

const std::vector<GroupedCase>& grouped_cases() {
  static const std::vector<GroupedCase> cases = {
      {"ragged, an empty segment, 3 tail rows", {0, 5, 5, 12, 20}, 23, 33, 17},
      {"every segment empty", {0, 0, 0, 0, 0}, 4, 7, 9},
      {"every row on one expert", {0, 0, 31, 31}, 31, 64, 128},
      {"single-row segments", {0, 1, 2, 3}, 3, 5, 3},
      {"one expert, no rows", {0, 0}, 0, 8, 8},
      {"one expert, 1 row", {0, 1}, 1, 1, 1},
      {"many rows, 8 experts", {0, 100, 100, 350, 351, 600, 700, 1000, 1025}, 1030, 96, 80},
      // Sizes for the sync-free tensor-core kernels: dX in 256-wide tiles with a partial one (in =
      // 264), k blocks of 64 with a partial one (out = 136), dW tiles partial in both directions and
      // segments of several k blocks, one not a multiple of 64 long.
      {"tensor-core tiles, partial everywhere", {0, 300, 300, 700, 1037}, 1040, 264, 136},
  };
  return cases;
}

template <class T>
void check_grouped_against_host() {
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 500;
  for (const GroupedCase& c : grouped_cases()) {
    const index_t X = static_cast<index_t>(c.offsets.size()) - 1, rows = c.rows, in = c.in, out = c.out;
    for (bool accumulate : {false, true}) {
      seed += 10;
      const auto dy = random_t<T>(rows * out, seed);
      const auto x = random_t<T>(rows * in, seed + 1);
      const auto w = random_t<T>(X * out * in, seed + 2, 0.1f);
      const auto dw0 = moss::test::randn(static_cast<std::size_t>(X * out * in), seed + 3);
      const auto db0 = moss::test::randn(static_cast<std::size_t>(X * out), seed + 4);
      std::vector<T> dx_h(static_cast<std::size_t>(rows * in));
      std::vector<float> dw_h = dw0, db_h = db0;
      moss::GroupedLinearBackwardArgs<T> h;
      h.dy = ConstView<T, 2>(dy.data(), {rows, out}, "dy");
      h.x = ConstView<T, 2>(x.data(), {rows, in}, "x");
      h.weight = ConstView<T, 3>(w.data(), {X, out, in}, "weight");
      h.offsets = ConstView<std::int32_t, 1>(c.offsets.data(), {X + 1}, "offsets");
      h.dx = TensorView<T, 2>(dx_h.data(), {rows, in}, "dx");
      h.dweight = TensorView<float, 3>(dw_h.data(), {X, out, in}, "dweight");
      h.dbias = TensorView<float, 2>(db_h.data(), {X, out}, "dbias");
      h.accumulate = accumulate;
      moss::grouped_linear_backward(Host{}, h);
      for (OffsetsMode mode : {OffsetsMode::host, OffsetsMode::read, OffsetsMode::resident}) {
        for (bool with_db : {true, false}) {
          CAPTURE(c.name, accumulate, static_cast<int>(mode), with_db);
          const auto g = grouped_cuda(gpu, c, mode, accumulate, with_db, dy, x, w, dw0, db0);
          const index_t kept = c.offsets[static_cast<std::size_t>(X)];
          if (kept > 0)
            CHECK(rel_l2(slice(g.dx, 0, kept * in), slice(dx_h, 0, kept * in)) <= moss::test::op_tolerance<T>());
          // Rows past offsets[X]: exactly zero, as on the host.
          CHECK(same_bits(slice(g.dx, kept * in, (rows - kept) * in), slice(dx_h, kept * in, (rows - kept) * in)));
          CHECK(rel_l2(g.dw, dw_h) <= kFloatGradTol);
          if (with_db) {
            CHECK(rel_l2(g.db, db_h) <= kFloatGradTol);
          } else {
            CHECK(same_bits(g.db, db0));
          }
          for (index_t e = 0; e < X; ++e) {
            if (c.offsets[static_cast<std::size_t>(e + 1)] != c.offsets[static_cast<std::size_t>(e)]) continue;
            // An empty segment: exactly zero, or exactly the old gradient when accumulating.
            CAPTURE(e);
            CHECK(same_bits(slice(g.dw, e * out * in, out * in), slice(dw_h, e * out * in, out * in)));
            if (with_db) CHECK(same_bits(slice(g.db, e * out, out), slice(db_h, e * out, out)));
          }
        }
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("grouped_linear_backward: CUDA matches the host over ragged, empty and one-expert segments",
                   "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  check_grouped_against_host<TestType>();
}

TEMPLATE_TEST_CASE("grouped_linear_backward: CUDA gives bitwise the same gradients twice", "[cuda][backward]", float,
                   bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const GroupedCase& c = grouped_cases().back();
  const index_t X = static_cast<index_t>(c.offsets.size()) - 1;
  const auto dy = random_t<T>(c.rows * c.out, 21);
  const auto x = random_t<T>(c.rows * c.in, 22);
  const auto w = random_t<T>(X * c.out * c.in, 23, 0.1f);
  const auto dw0 = moss::test::randn(static_cast<std::size_t>(X * c.out * c.in), 24);
  const auto db0 = moss::test::randn(static_cast<std::size_t>(X * c.out), 25);
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    for (OffsetsMode mode : {OffsetsMode::read, OffsetsMode::resident}) {
      CAPTURE(static_cast<int>(mode));
      const auto a = grouped_cuda(gpu, c, mode, accumulate, true, dy, x, w, dw0, db0);
      const auto b = grouped_cuda(gpu, c, mode == OffsetsMode::read ? OffsetsMode::host : mode, accumulate, true, dy, x,
                                  w, dw0, db0);
      CHECK(same_bits(a.dx, b.dx));
      CHECK(same_bits(a.dw, b.dw));
      CHECK(same_bits(a.db, b.db));
    }
  }
}

TEST_CASE("grouped_linear_backward: CUDA refuses bad offsets as the host does", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const Cuda gpu{};
  const GroupedCase c{"bad", {0, 3, 2}, 4, 2, 2};
  const auto dy = random_t<float>(8, 1);
  const auto x = random_t<float>(8, 2);
  const auto w = random_t<float>(8, 3);
  const std::vector<float> dw0(8, 0.0f), db0(4, 0.0f);
  REQUIRE_THROWS_AS(grouped_cuda(gpu, c, OffsetsMode::host, false, true, dy, x, w, dw0, db0), moss::shape_error);
  REQUIRE_THROWS_AS(grouped_cuda(gpu, c, OffsetsMode::read, false, true, dy, x, w, dw0, db0), moss::shape_error);
}

// ------------------------------------------------------------------------------------------------
// gather_rows_backward, combine_rows_backward

namespace {

/// A plan's pair_row (tokens, K): a random permutation of the tokens·K rows with about
/// `drop_percent` % of the pairs dropped (−1).
std::vector<std::int32_t> random_pair_row(index_t tokens, index_t K, int drop_percent, std::uint64_t seed) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(tokens * K));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(p.begin(), p.end(), rng);
  std::uniform_int_distribution<int> pct(0, 99);
  for (auto& r : p)
    if (pct(rng) < drop_percent) r = -1;
  return p;
}

struct PermuteShape {
  index_t tokens, K, D;
};
// No tokens, one token, one slot, D = 1, odd D (scalar path) and D a multiple of 8 (vector path).
constexpr PermuteShape kPermuteShapes[] = {{0, 2, 8},   {1, 1, 1},   {1, 3, 7},    {5, 2, 33},
                                           {37, 1, 64}, {64, 3, 96}, {300, 2, 17}, {257, 4, 128}};

template <class T>
std::vector<T> gather_backward_cuda(const Cuda& gpu, const PermuteShape& s, index_t pad,
                                    const std::vector<std::int32_t>& pair_row, const std::vector<T>& dout) {
  const index_t rows = s.tokens * s.K, ld = s.D + pad;
  const auto d_dout = dev(gpu, padded(dout, rows, s.D, ld, nan_t<T>()));
  const auto d_pr = dev(gpu, pair_row);
  auto d_dx = dev(gpu, std::vector<T>(static_cast<std::size_t>(s.tokens * ld), nan_t<T>()));
  moss::GatherRowsBackwardArgs<T> a;
  a.dout = ConstView<T, 2>(d_dout.data(), {rows, s.D}, {ld, 1}, "dout");
  a.pair_row = ConstView<std::int32_t, 2>(d_pr.data(), {s.tokens, s.K}, "pair_row");
  a.dx = TensorView<T, 2>(d_dx.data(), {s.tokens, s.D}, {ld, 1}, "dx");
  moss::gather_rows_backward(gpu, a);
  const auto wide = back(gpu, d_dx, s.tokens * ld);
  CHECK(gaps_hold(wide, s.tokens, s.D, ld, nan_t<T>()));
  return unpadded(wide, s.tokens, s.D, ld);
}

/// The weighted columns of a combine: none (no gate), all, or an inner range.
struct Weighting {
  const char* name;
  bool gate;
  int kind;  // 0: [0, 0), 1: [0, D), 2: [1, D − 1) (or [0, D) when D < 3)
};
constexpr Weighting kWeightings[] = {{"no gate", false, 0},
                                     {"gate on every column", true, 1},
                                     {"gate on inner columns", true, 2},
                                     {"gate, no weighted column", true, 0}};

template <class T>
struct CombineGrads {
  std::vector<T> dy;
  std::vector<float> dgate;
};

template <class T>
CombineGrads<T> combine_backward_cuda(const Cuda& gpu, const PermuteShape& s, index_t pad, index_t w0, index_t w1,
                                      bool gate, const Outputs& o, const std::vector<std::int32_t>& pair_row,
                                      const std::vector<T>& dout, const std::vector<T>& y,
                                      const std::vector<float>& g) {
  const index_t rows = s.tokens * s.K, ld = s.D + pad;
  const auto d_dout = dev(gpu, padded(dout, s.tokens, s.D, ld, nan_t<T>()));
  const auto d_y = dev(gpu, padded(y, rows, s.D, ld, nan_t<T>()));
  const auto d_pr = dev(gpu, pair_row);
  const auto d_g = dev(gpu, g);
  auto d_dy = dev(gpu, std::vector<T>(static_cast<std::size_t>(rows * s.D), nan_t<T>()));
  auto d_dg = dev(gpu, std::vector<float>(static_cast<std::size_t>(rows), NAN));
  moss::CombineRowsBackwardArgs<T> a;
  a.dout = ConstView<T, 2>(d_dout.data(), {s.tokens, s.D}, {ld, 1}, "dout");
  a.y = ConstView<T, 2>(d_y.data(), {rows, s.D}, {ld, 1}, "y");
  a.pair_row = ConstView<std::int32_t, 2>(d_pr.data(), {s.tokens, s.K}, "pair_row");
  if (gate) a.gate = ConstView<float, 2>(d_g.data(), {s.tokens, s.K}, "gate");
  a.weight_begin = w0;
  a.weight_end = w1;
  if (o.dx) a.dy = TensorView<T, 2>(d_dy.data(), {rows, s.D}, "dy");
  if (o.dw) a.dgate = TensorView<float, 2>(d_dg.data(), {s.tokens, s.K}, "dgate");
  moss::combine_rows_backward(gpu, a);
  return {back(gpu, d_dy, rows * s.D), back(gpu, d_dg, rows)};
}

}  // namespace

TEMPLATE_TEST_CASE("gather_rows_backward: CUDA is bitwise the host over plans with dropped slots", "[cuda][backward]",
                   float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 900;
  for (const PermuteShape& s : kPermuteShapes) {
    for (int drop : {0, 30, 100}) {
      for (index_t pad : {0, 8, 3}) {
        seed += 3;
        CAPTURE(s.tokens, s.K, s.D, drop, pad);
        const auto pair_row = random_pair_row(s.tokens, s.K, drop, seed);
        const auto dout = random_t<T>(s.tokens * s.K * s.D, seed + 1);
        std::vector<T> want(static_cast<std::size_t>(s.tokens * s.D));
        moss::GatherRowsBackwardArgs<T> h;
        h.dout = ConstView<T, 2>(dout.data(), {s.tokens * s.K, s.D}, "dout");
        h.pair_row = ConstView<std::int32_t, 2>(pair_row.data(), {s.tokens, s.K}, "pair_row");
        h.dx = TensorView<T, 2>(want.data(), {s.tokens, s.D}, "dx");
        moss::gather_rows_backward(Host{}, h);
        const auto got = gather_backward_cuda(gpu, s, pad, pair_row, dout);
        CHECK(same_bits(got, want));
        // Twice: the same bits (the kernel is also the forward's deterministic combine).
        CHECK(same_bits(gather_backward_cuda(gpu, s, pad, pair_row, dout), got));
      }
    }
  }
}

TEMPLATE_TEST_CASE("combine_rows_backward: CUDA matches the host over gates, weighted columns and outputs",
                   "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 1300;
  const Outputs outputs[] = {
      {"dy and dgate", true, true, false}, {"dy only", true, false, false}, {"dgate only", false, true, false}};
  for (const PermuteShape& s : kPermuteShapes) {
    for (const Weighting& wt : kWeightings) {
      for (int drop : {0, 30}) {
        seed += 5;
        const index_t rows = s.tokens * s.K, pad = (seed % 2 == 0) ? 0 : 5;
        const index_t w0 = wt.kind == 2 && s.D >= 3 ? 1 : 0;
        const index_t w1 = wt.kind == 0 ? 0 : (wt.kind == 2 && s.D >= 3 ? s.D - 1 : s.D);
        const auto pair_row = random_pair_row(s.tokens, s.K, drop, seed);
        const auto dout = random_t<T>(s.tokens * s.D, seed + 1);
        const auto y = random_t<T>(rows * s.D, seed + 2);
        const auto g = moss::test::uniform(static_cast<std::size_t>(rows), seed + 3, 0.0f, 1.0f);
        std::vector<T> dy_h(static_cast<std::size_t>(rows * s.D));
        std::vector<float> dg_h(static_cast<std::size_t>(rows));
        moss::CombineRowsBackwardArgs<T> h;
        h.dout = ConstView<T, 2>(dout.data(), {s.tokens, s.D}, "dout");
        h.y = ConstView<T, 2>(y.data(), {rows, s.D}, "y");
        h.pair_row = ConstView<std::int32_t, 2>(pair_row.data(), {s.tokens, s.K}, "pair_row");
        if (wt.gate) h.gate = ConstView<float, 2>(g.data(), {s.tokens, s.K}, "gate");
        h.weight_begin = w0;
        h.weight_end = w1;
        h.dy = TensorView<T, 2>(dy_h.data(), {rows, s.D}, "dy");
        h.dgate = TensorView<float, 2>(dg_h.data(), {s.tokens, s.K}, "dgate");
        moss::combine_rows_backward(Host{}, h);
        for (const Outputs& o : outputs) {
          CAPTURE(s.tokens, s.K, s.D, wt.name, w0, w1, drop, pad, o.name);
          const auto got = combine_backward_cuda(gpu, s, pad, w0, w1, wt.gate, o, pair_row, dout, y, g);
          if (o.dx) {
            CHECK(same_bits(got.dy, dy_h));  // every row written: unowned rows 0, owned rows w · dout
          } else {
            CHECK(gaps_hold(got.dy, 1, 0, rows * s.D, nan_t<T>()));  // absent: untouched
          }
          if (o.dw) {
            CHECK(rel_l2(got.dgate, dg_h) <= kFloatGradTol);
            for (index_t p = 0; p < rows; ++p)
              if (pair_row[static_cast<std::size_t>(p)] < 0) CHECK(got.dgate[static_cast<std::size_t>(p)] == 0.0f);
          } else {
            for (float v : got.dgate) CHECK(std::isnan(v));  // absent: untouched
          }
          if (o.dx && o.dw) {
            const auto again = combine_backward_cuda(gpu, s, pad, w0, w1, wt.gate, o, pair_row, dout, y, g);
            CHECK(same_bits(again.dy, got.dy));
            CHECK(same_bits(again.dgate, got.dgate));
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// cross_entropy

namespace {

struct CeCase {
  index_t tokens, d, vocab, chunk;
  int ignore;  // 0: no row ignored; 1: every row; n ≥ 2: every n-th row
};
// 0 and 1 rows, vocab 1 (the loss and gradients are exactly 0), odd and prime sizes, one chunk,
// several chunks, a last chunk of one row, chunk_rows 1.
constexpr CeCase kCeCases[] = {{0, 8, 5, 4, 0},        {1, 1, 1, 1, 0},       {1, 7, 5, 1024, 0},
                               {5, 7, 5, 2, 2},        {6, 33, 257, 1, 3},    {37, 64, 1031, 7, 0},
                               {37, 64, 1031, 7, 3},   {129, 33, 257, 64, 1}, {300, 96, 1000, 1024, 4},
                               {300, 96, 1000, 64, 0}, {300, 96, 1000, 71, 5}};

template <class T>
struct CeData {
  std::vector<T> hidden, weight;  // hidden densely (tokens, d); ignored rows hold NaN
  std::vector<std::int64_t> targets;
  std::vector<float> dw0;
};

template <class T>
CeData<T> ce_data(const CeCase& c, std::int64_t ignore_index, std::uint64_t seed) {
  CeData<T> data;
  data.hidden = random_t<T>(c.tokens * c.d, seed);
  // Logits of a few units: W ~ N(0, (2 / √d)²).
  data.weight = random_t<T>(c.vocab * c.d, seed + 1, 2.0f / std::sqrt(static_cast<float>(c.d)));
  std::mt19937_64 rng(seed + 2);
  std::uniform_int_distribution<std::int64_t> id(0, c.vocab - 1);
  data.targets.resize(static_cast<std::size_t>(c.tokens));
  for (index_t r = 0; r < c.tokens; ++r) {
    const bool ignored = c.ignore == 1 || (c.ignore >= 2 && r % c.ignore == 1);
    data.targets[static_cast<std::size_t>(r)] = ignored ? ignore_index : id(rng);
    if (ignored)  // an ignored row's H must never be read into anything
      for (index_t k = 0; k < c.d; ++k) data.hidden[static_cast<std::size_t>(r * c.d + k)] = nan_t<T>();
  }
  data.dw0 = moss::test::randn(static_cast<std::size_t>(c.vocab * c.d), seed + 3);
  return data;
}

template <class T>
struct CeOut {
  moss::CrossEntropyResult<float> result;
  std::vector<T> dh;
  std::vector<float> dw;
};

template <class T>
CeOut<T> ce_cuda(const Cuda& gpu, const CeCase& c, index_t pad, bool want_dh, bool want_dw, bool accumulate,
                 float dloss, std::int64_t ignore_index, const CeData<T>& data) {
  const index_t ld = c.d + pad;
  const auto d_h = dev(gpu, padded(data.hidden, c.tokens, c.d, ld, nan_t<T>()));
  const auto d_w = dev(gpu, data.weight);
  auto d_dh = dev(gpu, std::vector<T>(static_cast<std::size_t>(c.tokens * ld), nan_t<T>()));
  auto d_dw = dev(gpu, data.dw0);
  moss::CrossEntropyArgs<T> a;
  a.hidden = ConstView<T, 2>(d_h.data(), {c.tokens, c.d}, {ld, 1}, "hidden");
  a.weight = ConstView<T, 2>(d_w.data(), {c.vocab, c.d}, "weight");
  a.targets = ConstView<std::int64_t, 1>(data.targets.data(), {c.tokens}, "targets");
  if (want_dh) a.dhidden = TensorView<T, 2>(d_dh.data(), {c.tokens, c.d}, {ld, 1}, "dhidden");
  if (want_dw) a.dweight = TensorView<float, 2>(d_dw.data(), {c.vocab, c.d}, "dweight");
  a.ignore_index = ignore_index;
  a.chunk_rows = c.chunk;
  a.dloss = dloss;
  a.accumulate = accumulate;
  CeOut<T> out;
  out.result = moss::cross_entropy(gpu, a);
  const auto wide = back(gpu, d_dh, c.tokens * ld);
  CHECK(gaps_hold(wide, c.tokens, c.d, ld, nan_t<T>()));
  out.dh = unpadded(wide, c.tokens, c.d, ld);
  out.dw = back(gpu, d_dw, c.vocab * c.d);
  return out;
}

template <class T>
CeOut<T> ce_host(const CeCase& c, bool accumulate, float dloss, std::int64_t ignore_index, const CeData<T>& data) {
  CeOut<T> out;
  out.dh.assign(static_cast<std::size_t>(c.tokens * c.d), nan_t<T>());
  out.dw = data.dw0;
  moss::CrossEntropyArgs<T> a;
  a.hidden = ConstView<T, 2>(data.hidden.data(), {c.tokens, c.d}, "hidden");
  a.weight = ConstView<T, 2>(data.weight.data(), {c.vocab, c.d}, "weight");
  a.targets = ConstView<std::int64_t, 1>(data.targets.data(), {c.tokens}, "targets");
  a.dhidden = TensorView<T, 2>(out.dh.data(), {c.tokens, c.d}, "dhidden");
  a.dweight = TensorView<float, 2>(out.dw.data(), {c.vocab, c.d}, "dweight");
  a.ignore_index = ignore_index;
  a.chunk_rows = c.chunk;
  a.dloss = dloss;
  a.accumulate = accumulate;
  out.result = moss::cross_entropy(Host{}, a);
  return out;
}

/// The tolerance of dweight: see the file comment (dl is rounded to T on CUDA).
template <class T>
constexpr double ce_dweight_tolerance() {
  return std::is_same_v<T, float> ? kFloatGradTol : moss::test::op_tolerance<T>();
}

template <class T>
void check_ce_against_host() {
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 2000;
  for (const CeCase& c : kCeCases) {
    // Configurations: (pad, accumulate, dloss, ignore_index); ignore_index 3 is a valid id
    // (it wins over the id) when the vocabulary has it.
    struct Config {
      index_t pad;
      bool accumulate;
      float dloss;
      std::int64_t ignore_index;
    };
    const Config configs[] = {{0, false, 1.0f, -100}, {3, true, 0.37f, -100}, {8, false, 2.5f, c.vocab > 3 ? 3 : -1}};
    for (const Config& cfg : configs) {
      seed += 7;
      const auto data = ce_data<T>(c, cfg.ignore_index, seed);
      const auto want = ce_host(c, cfg.accumulate, cfg.dloss, cfg.ignore_index, data);
      const std::pair<bool, bool> wanted[] = {{true, true}, {true, false}, {false, true}};  // (dhidden, dweight)
      for (const auto& [want_dh, want_dw] : wanted) {
        CAPTURE(c.tokens, c.d, c.vocab, c.chunk, c.ignore, cfg.pad, cfg.accumulate, cfg.dloss, cfg.ignore_index,
                want_dh, want_dw);
        const auto got = ce_cuda(gpu, c, cfg.pad, want_dh, want_dw, cfg.accumulate, cfg.dloss, cfg.ignore_index, data);
        CHECK(got.result.count == want.result.count);
        CHECK(moss::test::close(got.result.loss, want.result.loss, 1e-5));
        if (want_dh) {
          CHECK(rel_l2(got.dh, want.dh) <= moss::test::op_tolerance<T>());
          for (index_t r = 0; r < c.tokens; ++r) {
            if (data.targets[static_cast<std::size_t>(r)] != cfg.ignore_index) continue;
            // Ignored rows: exactly zero, as on the host.
            CAPTURE(r);
            CHECK(same_bits(slice(got.dh, r * c.d, c.d), slice(want.dh, r * c.d, c.d)));
          }
        } else {
          CHECK(gaps_hold(got.dh, 1, 0, c.tokens * c.d, nan_t<T>()));  // absent: untouched
        }
        if (want_dw) {
          if (want.result.count == 0) {
            CHECK(same_bits(got.dw, want.dw));  // exactly 0, or exactly dw0 when accumulating
          } else {
            CHECK(rel_l2(got.dw, want.dw) <= ce_dweight_tolerance<T>());
          }
        } else {
          CHECK(same_bits(got.dw, data.dw0));  // absent: untouched
        }
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cross_entropy: CUDA matches the host over chunks, ignored rows, vocabularies and outputs",
                   "[cuda][backward]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  check_ce_against_host<TestType>();
}

TEMPLATE_TEST_CASE("cross_entropy: CUDA gives bitwise the same loss and gradients twice", "[cuda][backward]", float,
                   f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  // Both paths: no row ignored (H read in place) and some ignored (rows gathered); several chunks.
  for (const CeCase& c : {CeCase{513, 128, 2053, 100, 0}, CeCase{513, 128, 2053, 100, 4}}) {
    for (bool accumulate : {false, true}) {
      CAPTURE(c.ignore, accumulate);
      const auto data = ce_data<T>(c, -100, 77);
      const auto a = ce_cuda(gpu, c, 0, true, true, accumulate, 1.0f, -100, data);
      const auto b = ce_cuda(gpu, c, 0, true, true, accumulate, 1.0f, -100, data);
      CHECK(std::memcmp(&a.result.loss, &b.result.loss, sizeof(float)) == 0);
      CHECK(a.result.count == b.result.count);
      CHECK(same_bits(a.dh, b.dh));
      CHECK(same_bits(a.dw, b.dw));
      // Another chunk size: the same count, and the same values to rounding (cuBLAS may sum
      // in another order for another row count, so not necessarily the same bits).
      CeCase one_chunk = c;
      one_chunk.chunk = 1024;
      const auto d = ce_cuda(gpu, one_chunk, 0, true, true, accumulate, 1.0f, -100, data);
      CHECK(d.result.count == a.result.count);
      CHECK(moss::test::close(d.result.loss, a.result.loss, 1e-5));
      CHECK(rel_l2(d.dh, a.dh) <= moss::test::op_tolerance<T>());
      CHECK(rel_l2(d.dw, a.dw) <= ce_dweight_tolerance<T>());
    }
  }
}

TEST_CASE("cross_entropy: a bad target throws on CUDA before anything is written", "[cuda][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const Cuda gpu{};
  CeCase c{6, 8, 10, 4, 0};
  auto data = ce_data<float>(c, -100, 5);
  data.targets[4] = 10;  // outside [0, 10)
  const auto d_h = dev(gpu, data.hidden);
  const auto d_w = dev(gpu, data.weight);
  auto d_dh = dev(gpu, std::vector<float>(static_cast<std::size_t>(c.tokens * c.d), 7.0f));
  auto d_dw = dev(gpu, std::vector<float>(static_cast<std::size_t>(c.vocab * c.d), 7.0f));
  moss::CrossEntropyArgs<float> a;
  a.hidden = ConstView<float, 2>(d_h.data(), {c.tokens, c.d}, "hidden");
  a.weight = ConstView<float, 2>(d_w.data(), {c.vocab, c.d}, "weight");
  a.targets = ConstView<std::int64_t, 1>(data.targets.data(), {c.tokens}, "targets");
  a.dhidden = TensorView<float, 2>(d_dh.data(), {c.tokens, c.d}, "dhidden");
  a.dweight = TensorView<float, 2>(d_dw.data(), {c.vocab, c.d}, "dweight");
  REQUIRE_THROWS_AS(moss::cross_entropy(gpu, a), moss::shape_error);
  for (float v : host_copy(gpu, d_dh)) CHECK(v == 7.0f);
  for (float v : host_copy(gpu, d_dw)) CHECK(v == 7.0f);
}
