// Host tests of moss::selective_scan and moss::selective_scan_step: hand-computed cases, an
// independent float64 loop, invariants (step = scan, prefill + continue = whole, linearity),
// every validation error, and the scan strategies: the chunk decomposition of ChunkedScan
// against the oracle (ragged L, L = 1, segments from 1 step to beyond L, initial / final
// states, f32 / f16 / bf16), its workspace, and a user's strategy.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_floating_point.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/ops/selective_scan.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::WithinRel;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// One scan problem: sizes, which optional inputs exist and the memory layout.
struct Config {
  index_t batch = 2, dim = 4, L = 5, N = 3, groups_b = 1, groups_c = 1;
  bool const_b = false, const_c = false;  // constant (dim, N) B / C through constant_bc
  bool has_d = true, has_z = true, has_bias = true, softplus = true, has_init = true, has_final = true;
  bool channel_last = true;  // u, delta, z, out, B, C unit-stride along dim / N, else along L
};

/// Inputs in storage type T laid out as `Config` says, the views over them, and the same
/// (rounded) values as doubles in logical order for the float64 reference.
template <class T>
struct Problem {
  Config cfg;
  std::vector<T> act;       // u, delta, z: (batch, L, 3·dim + 2) channel-last, or (3, batch, dim, L)
  std::vector<T> bc;        // variable B and C: (batch, L, 3 + (Gb + Gc)·N) channel-last, or two (batch, G, N, L)
  std::vector<T> bc_const;  // constant B and C: two (dim, N)
  std::vector<T> out;       // (batch, L, dim) channel-last, or (batch, dim, L)
  std::vector<float> A, D, bias, init, final_state;
  moss::SelectiveScanArgs<T> args;
  // Logical values (rounded to T where T stores them): u/delta/z (batch, dim, L), B/C either
  // (dim, N) when constant or (batch, groups, N, L).
  std::vector<double> u, delta, z, Bl, Cl;

  Problem(const Config& c, std::uint64_t seed) : cfg(c) {
    const index_t batch = c.batch, dim = c.dim, L = c.L, N = c.N;
    const index_t n_act = batch * dim * L;
    auto rounded = [](const std::vector<float>& v) { return moss::test::to_double(moss::test::to_storage<T>(v)); };
    u = rounded(moss::test::randn(n_act, seed + 1));
    delta = c.softplus ? rounded(moss::test::randn(n_act, seed + 2, 1.0f, -1.0f))
                       : rounded(moss::test::uniform(n_act, seed + 2, 0.01f, 0.3f));
    z = rounded(moss::test::randn(n_act, seed + 3));
    A = moss::test::uniform(dim * N, seed + 4, -2.5f, -0.1f);
    D = moss::test::randn(dim, seed + 5);
    bias =
        c.softplus ? moss::test::uniform(dim, seed + 6, -1.0f, 0.5f) : moss::test::uniform(dim, seed + 6, 0.0f, 0.1f);
    init = moss::test::randn(batch * dim * N, seed + 7);
    final_state.assign(batch * dim * N, std::numeric_limits<float>::quiet_NaN());
    const index_t nb = c.const_b ? dim * N : batch * c.groups_b * N * L;
    const index_t nc = c.const_c ? dim * N : batch * c.groups_c * N * L;
    Bl = rounded(moss::test::randn(nb, seed + 8));
    Cl = rounded(moss::test::randn(nc, seed + 9));

    // Activations.
    const index_t W = 3 * dim + 2;
    act.assign(c.channel_last ? batch * L * W : 3 * n_act, moss::from_float<T>(0.0f));
    const moss::Extents<3> st = c.channel_last ? moss::Extents<3>{L * W, 1, W} : moss::Extents<3>{dim * L, L, 1};
    auto place = [&](const std::vector<double>& src, index_t slot, const char* name) {
      const index_t base = c.channel_last ? slot * dim : slot * n_act;
      TensorView<T, 3> v(act.data() + base, {batch, dim, L}, st, name);
      for (index_t b = 0; b < batch; ++b)
        for (index_t d = 0; d < dim; ++d)
          for (index_t t = 0; t < L; ++t)
            v(b, d, t) = moss::from_float<T>(static_cast<float>(src[(b * dim + d) * L + t]));
      return ConstView<T, 3>(v);
    };
    args.u = place(u, 0, "u");
    args.delta = place(delta, 1, "delta");
    if (c.has_z) args.z = place(z, 2, "z");

    // B and C.
    const index_t R = 3, W2 = R + (c.groups_b + c.groups_c) * N;
    bc.assign(c.channel_last ? batch * L * W2 : nb + nc, moss::from_float<T>(0.0f));
    bc_const.assign(2 * dim * N, moss::from_float<T>(0.0f));
    auto place_bc = [&](const std::vector<double>& src, bool constant, index_t groups, index_t col,
                        index_t slot) -> ConstView<T, 4> {
      if (constant) {
        TensorView<T, 2> m(bc_const.data() + slot * dim * N, {dim, N}, "bc");
        for (index_t i = 0; i < dim * N; ++i) m.data[i] = moss::from_float<T>(static_cast<float>(src[i]));
        return moss::constant_bc(m, batch, L);
      }
      TensorView<T, 4> v = c.channel_last
                               ? TensorView<T, 4>(bc.data() + R + col, {batch, groups, N, L}, {L * W2, N, 1, W2})
                               : TensorView<T, 4>(bc.data() + slot * nb, {batch, groups, N, L});
      for (index_t b = 0; b < batch; ++b)
        for (index_t g = 0; g < groups; ++g)
          for (index_t n = 0; n < N; ++n)
            for (index_t t = 0; t < L; ++t)
              v(b, g, n, t) = moss::from_float<T>(static_cast<float>(src[((b * groups + g) * N + n) * L + t]));
      return v;
    };
    args.B = place_bc(Bl, c.const_b, c.groups_b, 0, 0);
    args.C = place_bc(Cl, c.const_c, c.groups_c, c.groups_b * N, 1);

    args.A = ConstView<float, 2>(A.data(), {dim, N});
    if (c.has_d) args.D = ConstView<float, 1>(D.data(), {dim});
    if (c.has_bias) args.delta_bias = ConstView<float, 1>(bias.data(), {dim});
    args.delta_softplus = c.softplus;
    if (c.has_init) args.initial_state = ConstView<float, 3>(init.data(), {batch, dim, N});
    if (c.has_final) args.final_state = TensorView<float, 3>(final_state.data(), {batch, dim, N});
    // Poisoned: an element the op forgets to write stays NaN and fails every comparison.
    out.assign(n_act, moss::from_float<T>(std::numeric_limits<float>::quiet_NaN()));
    args.out = c.channel_last ? TensorView<T, 3>(out.data(), {batch, dim, L}, {L * dim, 1, dim})
                              : TensorView<T, 3>(out.data(), {batch, dim, L});
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  /// The output in logical (batch, dim, L) order.
  std::vector<T> output() const {
    std::vector<T> r;
    for (index_t b = 0; b < cfg.batch; ++b)
      for (index_t d = 0; d < cfg.dim; ++d)
        for (index_t t = 0; t < cfg.L; ++t) r.push_back(args.out(b, d, t));
    return r;
  }
};

struct Reference {
  std::vector<double> out, final_state;
};

/// The scan in float64 straight from the contract (exp, not exp2; log1p(exp(x)) softplus).
template <class T>
Reference reference(const Problem<T>& p) {
  const Config& c = p.cfg;
  const index_t batch = c.batch, dim = c.dim, L = c.L, N = c.N;
  Reference r{std::vector<double>(batch * dim * L), std::vector<double>(batch * dim * N)};
  std::vector<double> h(N);
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d) {
      for (index_t n = 0; n < N; ++n) h[n] = c.has_init ? p.init[(b * dim + d) * N + n] : 0.0;
      const index_t gb = d / (dim / c.groups_b), gc = d / (dim / c.groups_c);
      for (index_t t = 0; t < L; ++t) {
        const index_t i = (b * dim + d) * L + t;
        double x = p.delta[i] + (c.has_bias ? p.bias[d] : 0.0);
        const double dt = c.softplus ? (x > 20.0 ? x : std::log1p(std::exp(x))) : x;
        double y = 0;
        for (index_t n = 0; n < N; ++n) {
          const double bv = c.const_b ? p.Bl[d * N + n] : p.Bl[((b * c.groups_b + gb) * N + n) * L + t];
          const double cv = c.const_c ? p.Cl[d * N + n] : p.Cl[((b * c.groups_c + gc) * N + n) * L + t];
          h[n] = std::exp(dt * p.A[d * N + n]) * h[n] + dt * bv * p.u[i];
          y += cv * h[n];
        }
        if (c.has_d) y += p.D[d] * p.u[i];
        if (c.has_z) y *= p.z[i] / (1.0 + std::exp(-p.z[i]));
        r.out[i] = y;
      }
      for (index_t n = 0; n < N; ++n) r.final_state[(b * dim + d) * N + n] = h[n];
    }
  return r;
}

/// Relative L2 bound for an output rounded once to T: twice the unit roundoff (f32: the op
/// tolerance, dominated by float32 arithmetic).
template <class T>
constexpr double output_tolerance() {
  if constexpr (std::is_same_v<T, float>)
    return 1e-5;
  else if constexpr (std::is_same_v<T, moss::f16>)
    return 0x1p-11;
  else
    return 0x1p-8;
}

/// The configurations of the float64 comparison: every optional input on and off, both
/// layouts, L = 1, groups > 1, constant B / C.
std::vector<Config> reference_configs() {
  std::vector<Config> v;
  std::uint64_t k = 0;
  for (bool channel_last : {true, false})
    for (index_t L : {1, 7, 40}) {
      Config c;
      c.channel_last = channel_last;
      c.L = L;
      c.batch = 1 + static_cast<index_t>(k % 2);
      c.dim = (k % 3 == 0) ? 1 : 6;
      c.N = (k % 4 == 0) ? 1 : (k % 4 == 1 ? 4 : 16);
      c.groups_b = c.dim == 6 ? (k % 2 ? 3 : 2) : 1;
      c.groups_c = c.dim == 6 ? (k % 3 == 1 ? 6 : 1) : 1;
      c.const_b = (k % 5 == 2);
      c.const_c = (k % 4 == 3);
      c.has_d = k % 2 == 0;
      c.has_z = k % 3 != 2;
      c.has_bias = k % 4 != 1;
      c.softplus = k % 5 != 3;
      c.has_init = k % 2 == 1;
      c.has_final = k % 6 != 5;
      v.push_back(c);
      ++k;
    }
  // Every optional input on, and every optional input off.
  Config all;
  all.const_b = true;
  v.push_back(all);
  Config none;
  none.has_d = none.has_z = none.has_bias = none.softplus = none.has_init = none.has_final = false;
  none.channel_last = false;
  v.push_back(none);
  return v;
}

template <class T>
void check_against_float64() {
  std::uint64_t seed = 100;
  for (const Config& c : reference_configs()) {
    INFO("batch " << c.batch << " dim " << c.dim << " L " << c.L << " N " << c.N << " groups " << c.groups_b << "/"
                  << c.groups_c << " const " << c.const_b << c.const_c << " D " << c.has_d << " z " << c.has_z
                  << " bias " << c.has_bias << " softplus " << c.softplus << " init " << c.has_init << " final "
                  << c.has_final << " channel_last " << c.channel_last);
    Problem<T> p(c, seed += 10);
    moss::selective_scan(moss::Host{}, p.args);
    const Reference r = reference(p);
    CHECK(moss::test::rel_l2(p.output(), r.out) <= output_tolerance<T>());
    if (c.has_final) CHECK(moss::test::rel_l2(p.final_state, r.final_state) <= 1e-5);
  }
}

}  // namespace

TEST_CASE("selective_scan: hand-computed dim 1, N 1, L 3", "[host]") {
  // A = -ln 2 and Δ ∈ {1, 2, 1} give decays 1/2, 1/4, 1/2.
  //   h1 = 0      + 1·1·1 = 1      y1 = 1·1    + 0.5·1 = 1.5
  //   h2 = h1/4   + 2·1·2 = 4.25   y2 = 2·4.25 + 0.5·2 = 9.5
  //   h3 = h2/2   + 1·2·3 = 8.125  y3 = 0.5·8.125 + 0.5·3 = 5.5625
  std::vector<float> u = {1, 2, 3}, delta = {1, 2, 1}, B = {1, 1, 2}, C = {1, 2, 0.5f};
  std::vector<float> A = {-std::log(2.0f)}, D = {0.5f}, out(3, NAN), fin(1, NAN);
  moss::SelectiveScanArgs<float> a;
  a.u = ConstView<float, 3>(u.data(), {1, 1, 3});
  a.delta = ConstView<float, 3>(delta.data(), {1, 1, 3});
  a.A = ConstView<float, 2>(A.data(), {1, 1});
  a.B = ConstView<float, 4>(B.data(), {1, 1, 1, 3});
  a.C = ConstView<float, 4>(C.data(), {1, 1, 1, 3});
  a.D = ConstView<float, 1>(D.data(), {1});
  a.out = TensorView<float, 3>(out.data(), {1, 1, 3});
  a.final_state = TensorView<float, 3>(fin.data(), {1, 1, 1});
  moss::selective_scan(moss::Host{}, a);
  CHECK_THAT(out[0], WithinRel(1.5f, 1e-6f));
  CHECK_THAT(out[1], WithinRel(9.5f, 1e-6f));
  CHECK_THAT(out[2], WithinRel(5.5625f, 1e-6f));
  CHECK_THAT(fin[0], WithinRel(8.125f, 1e-6f));

  SECTION("softplus, delta_bias, z gate and an initial state") {
    // delta + bias = 0 → Δ = softplus(0) = ln 2; A = -1 → decay 1/2; h0 = 4.
    //   h1 = 4/2 + ln2·1·1 = 2 + ln2          y1 = (2 + ln2)·silu(z1)   (no D)
    //   h2 = h1/2 + ln2·1·2 = 1 + 2.5·ln2     y2 = 2·h2·silu(z2)
    std::vector<float> u2 = {1, 2}, d2 = {-0.5f, -0.5f}, B2 = {1, 1}, C2 = {1, 2}, z2 = {1.0f, -2.0f};
    std::vector<float> A2 = {-1.0f}, bias = {0.5f}, h0 = {4.0f}, out2(2, NAN), fin2(1, NAN);
    moss::SelectiveScanArgs<float> b;
    b.u = ConstView<float, 3>(u2.data(), {1, 1, 2});
    b.delta = ConstView<float, 3>(d2.data(), {1, 1, 2});
    b.A = ConstView<float, 2>(A2.data(), {1, 1});
    b.B = ConstView<float, 4>(B2.data(), {1, 1, 1, 2});
    b.C = ConstView<float, 4>(C2.data(), {1, 1, 1, 2});
    b.z = ConstView<float, 3>(z2.data(), {1, 1, 2});
    b.delta_bias = ConstView<float, 1>(bias.data(), {1});
    b.delta_softplus = true;
    b.initial_state = ConstView<float, 3>(h0.data(), {1, 1, 1});
    b.out = TensorView<float, 3>(out2.data(), {1, 1, 2});
    b.final_state = TensorView<float, 3>(fin2.data(), {1, 1, 1});
    moss::selective_scan(moss::Host{}, b);
    const double ln2 = std::log(2.0);
    auto silu = [](double x) { return x / (1 + std::exp(-x)); };
    const double h1 = 2 + ln2, h2 = h1 / 2 + 2 * ln2;
    CHECK_THAT(out2[0], WithinRel(static_cast<float>(h1 * silu(1.0)), 1e-6f));
    CHECK_THAT(out2[1], WithinRel(static_cast<float>(2 * h2 * silu(-2.0)), 1e-6f));
    CHECK_THAT(fin2[0], WithinRel(static_cast<float>(h2), 1e-6f));
  }
}

TEST_CASE("selective_scan: softplus is x above 20 and log1p(exp(x)) below", "[host]") {
  namespace s = moss::detail::scan;
  CHECK(s::softplus(25.0f) == 25.0f);
  CHECK(s::softplus(20.5f) == 20.5f);
  CHECK_THAT(s::softplus(0.0f), WithinRel(static_cast<float>(std::log(2.0)), 1e-6f));
  CHECK_THAT(s::softplus(-30.0f), WithinRel(static_cast<float>(std::exp(-30.0)), 1e-5f));
  CHECK_THAT(s::softplus(19.0f), WithinRel(static_cast<float>(std::log1p(std::exp(19.0))), 1e-6f));
}

TEST_CASE("selective_scan: constant_bc is a zero-stride (batch, dim, N, L) view", "[host]") {
  std::vector<float> m(6);
  TensorView<float, 2> bc(m.data(), {3, 2}, "Bc");
  const ConstView<float, 4> v = moss::constant_bc(bc, 5, 7);
  CHECK(v.shape == moss::Extents<4>{5, 3, 2, 7});
  CHECK(v.stride == moss::Extents<4>{0, 2, 1, 0});
  CHECK(&v(4, 2, 1, 6) == &m[5]);
  const ConstView<float, 3> s = moss::constant_bc(ConstView<float, 2>(bc), 5);
  CHECK(s.shape == moss::Extents<3>{5, 3, 2});
  CHECK(s.stride == moss::Extents<3>{0, 2, 1});
}

TEST_CASE("selective_scan: f32 host equals an independent float64 loop", "[host]") { check_against_float64<float>(); }
TEST_CASE("selective_scan: f16 host equals the float64 loop on the same rounded inputs", "[host]") {
  check_against_float64<moss::f16>();
}
TEST_CASE("selective_scan: bf16 host equals the float64 loop on the same rounded inputs", "[host]") {
  check_against_float64<moss::bf16>();
}

TEST_CASE("selective_scan: L = 0 copies the initial state (or zeros) to the final state", "[host]") {
  for (bool has_init : {true, false}) {
    Config c;
    c.L = 0;
    c.has_init = has_init;
    Problem<float> p(c, 7);
    moss::selective_scan(moss::Host{}, p.args);
    for (std::size_t i = 0; i < p.final_state.size(); ++i) CHECK(p.final_state[i] == (has_init ? p.init[i] : 0.0f));
  }
}

TEST_CASE("selective_scan: batch 0 and dim 0 are no-ops", "[host]") {
  for (index_t batch : {0, 1}) {
    Config c;
    c.batch = batch;
    c.dim = batch == 0 ? 4 : 0;
    c.groups_b = c.groups_c = 1;
    Problem<float> p(c, 9);
    REQUIRE_NOTHROW(moss::selective_scan(moss::Host{}, p.args));
  }
}

TEST_CASE("selective_scan: stepping token by token equals the full scan", "[host]") {
  Config c;
  c.batch = 2;
  c.dim = 6;
  c.N = 16;
  c.L = 37;
  c.groups_b = 2;
  c.has_init = true;
  for (bool channel_last : {true, false}) {
    c.channel_last = channel_last;
    Problem<float> p(c, 31);
    moss::selective_scan(moss::Host{}, p.args);
    const std::vector<float> scan_out = p.output();

    std::vector<float> state = p.init;
    std::vector<float> step_out(p.out.size(), NAN);
    TensorView<float, 3> out_view = p.args.out;
    out_view.data = step_out.data();
    for (index_t t = 0; t < c.L; ++t) {
      const auto& a = p.args;
      moss::SelectiveScanStepArgs<float> s;
      s.state = TensorView<float, 3>(state.data(), {c.batch, c.dim, c.N});
      s.u = ConstView<float, 2>(&a.u(0, 0, t), {c.batch, c.dim}, {a.u.stride[0], a.u.stride[1]});
      s.delta = ConstView<float, 2>(&a.delta(0, 0, t), {c.batch, c.dim}, {a.delta.stride[0], a.delta.stride[1]});
      s.z = ConstView<float, 2>(&a.z(0, 0, t), {c.batch, c.dim}, {a.z.stride[0], a.z.stride[1]});
      s.A = a.A;
      s.B = ConstView<float, 3>(&a.B(0, 0, 0, t), {c.batch, c.groups_b, c.N},
                                {a.B.stride[0], a.B.stride[1], a.B.stride[2]});
      s.C = ConstView<float, 3>(&a.C(0, 0, 0, t), {c.batch, c.groups_c, c.N},
                                {a.C.stride[0], a.C.stride[1], a.C.stride[2]});
      s.D = a.D;
      s.delta_bias = a.delta_bias;
      s.delta_softplus = a.delta_softplus;
      s.out = TensorView<float, 2>(&out_view(0, 0, t), {c.batch, c.dim}, {out_view.stride[0], out_view.stride[1]});
      moss::selective_scan_step(moss::Host{}, s);
    }
    std::vector<float> stepped;
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t d = 0; d < c.dim; ++d)
        for (index_t t = 0; t < c.L; ++t) stepped.push_back(out_view(b, d, t));
    CHECK(moss::test::rel_l2(stepped, scan_out) <= 1e-6);
    CHECK(moss::test::rel_l2(state, p.final_state) <= 1e-6);
  }
}

TEST_CASE("selective_scan: step with a constant B and C equals the float64 loop", "[host]") {
  // One step of a scan with L = 1 is a step; constant B / C use the 3-D constant_bc.
  Config c;
  c.L = 1;
  c.N = 5;
  c.dim = 3;
  c.const_b = c.const_c = true;
  Problem<moss::bf16> p(c, 57);
  const Reference r = reference(p);
  std::vector<float> state = p.init;
  std::vector<moss::bf16> out(c.batch * c.dim, moss::from_float<moss::bf16>(NAN));
  moss::SelectiveScanStepArgs<moss::bf16> s;
  s.state = TensorView<float, 3>(state.data(), {c.batch, c.dim, c.N});
  s.u = ConstView<moss::bf16, 2>(p.args.u.data, {c.batch, c.dim}, {p.args.u.stride[0], p.args.u.stride[1]});
  s.delta =
      ConstView<moss::bf16, 2>(p.args.delta.data, {c.batch, c.dim}, {p.args.delta.stride[0], p.args.delta.stride[1]});
  s.z = ConstView<moss::bf16, 2>(p.args.z.data, {c.batch, c.dim}, {p.args.z.stride[0], p.args.z.stride[1]});
  s.A = p.args.A;
  s.B = moss::constant_bc(ConstView<moss::bf16, 2>(p.bc_const.data(), {c.dim, c.N}), c.batch);
  s.C = moss::constant_bc(ConstView<moss::bf16, 2>(p.bc_const.data() + c.dim * c.N, {c.dim, c.N}), c.batch);
  s.D = p.args.D;
  s.delta_bias = p.args.delta_bias;
  s.delta_softplus = p.args.delta_softplus;
  s.out = TensorView<moss::bf16, 2>(out.data(), {c.batch, c.dim});
  moss::selective_scan_step(moss::Host{}, s);
  CHECK(moss::test::rel_l2(out, r.out) <= output_tolerance<moss::bf16>());
  CHECK(moss::test::rel_l2(state, r.final_state) <= 1e-5);
}

TEST_CASE("selective_scan: prefill then continue equals one scan of the whole sequence", "[host]") {
  for (bool channel_last : {true, false}) {
    Config c;
    c.dim = 5;
    c.N = 16;
    c.L = 30;
    c.channel_last = channel_last;
    c.has_init = false;
    Problem<float> p(c, 77);
    moss::selective_scan(moss::Host{}, p.args);
    const std::vector<float> whole = p.output();
    const std::vector<float> whole_state = p.final_state;

    const index_t half = 13;
    auto slice = [](auto v, index_t axis, index_t from, index_t len) {
      v.data += from * v.stride[axis];
      v.shape[axis] = len;
      return v;
    };
    std::vector<float> state1(whole_state.size(), NAN), state2(whole_state.size(), NAN);
    std::vector<float> out(p.out.size(), NAN);
    auto first = p.args;
    first.out.data = out.data();
    auto second = first;
    first.u = slice(first.u, 2, 0, half);
    first.delta = slice(first.delta, 2, 0, half);
    first.z = slice(first.z, 2, 0, half);
    first.B = slice(first.B, 3, 0, half);
    first.C = slice(first.C, 3, 0, half);
    first.out = slice(first.out, 2, 0, half);
    first.final_state = TensorView<float, 3>(state1.data(), {c.batch, c.dim, c.N});
    moss::selective_scan(moss::Host{}, first);
    second.u = slice(second.u, 2, half, c.L - half);
    second.delta = slice(second.delta, 2, half, c.L - half);
    second.z = slice(second.z, 2, half, c.L - half);
    second.B = slice(second.B, 3, half, c.L - half);
    second.C = slice(second.C, 3, half, c.L - half);
    second.out = slice(second.out, 2, half, c.L - half);
    second.initial_state = ConstView<float, 3>(state1.data(), {c.batch, c.dim, c.N});
    second.final_state = TensorView<float, 3>(state2.data(), {c.batch, c.dim, c.N});
    moss::selective_scan(moss::Host{}, second);

    auto full_view = p.args.out;
    full_view.data = out.data();
    std::vector<float> joined;
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t d = 0; d < c.dim; ++d)
        for (index_t t = 0; t < c.L; ++t) joined.push_back(full_view(b, d, t));
    CHECK(moss::test::rel_l2(joined, whole) <= 1e-6);
    CHECK(moss::test::rel_l2(state2, whole_state) <= 1e-6);
  }
}

TEST_CASE("selective_scan: without z and initial state the scan is linear in u", "[host]") {
  Config c;
  c.has_z = false;
  c.has_init = false;
  c.dim = 3;
  c.N = 8;
  c.L = 20;
  Problem<float> p(c, 5);
  Problem<float> q(c, 5);  // same seed: same inputs; then q.u = 2·p.u
  const index_t u_base = q.args.u.data - q.act.data();
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t d = 0; d < c.dim; ++d)
      for (index_t t = 0; t < c.L; ++t) q.act[u_base + q.args.u.offset(b, d, t)] *= 2;
  moss::selective_scan(moss::Host{}, p.args);
  moss::selective_scan(moss::Host{}, q.args);
  std::vector<float> doubled = p.output();
  for (auto& x : doubled) x *= 2;
  CHECK(moss::test::rel_l2(q.output(), doubled) <= 1e-6);
  std::vector<float> state2 = p.final_state;
  for (auto& x : state2) x *= 2;
  CHECK(moss::test::rel_l2(q.final_state, state2) <= 1e-6);
}

TEST_CASE("selective_scan: every shape, stride and size error is reported", "[host]") {
  Config c;
  c.dim = 4;
  c.groups_b = 2;
  Problem<float> p(c, 3);
  const auto good = p.args;
  REQUIRE_NOTHROW(moss::validate(good, "selective_scan"));
  auto run = [](const moss::SelectiveScanArgs<float>& a) { moss::selective_scan(moss::Host{}, a); };
  std::vector<float> big(4096, 1.0f);
  using moss::config_error;
  using moss::shape_error;
  using moss::unsupported_error;

  auto a = good;
  a.u.data = nullptr;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("selective_scan: u [2, 4, 5] has no data"));
  a = good;
  a.u.stride[2] = -1;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("u has negative stride"));
  a = good;
  a.delta.shape[2] = 6;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta is [2, 4, 6] (batch, dim, L) but expected [2, 4, 5]"));
  a = good;
  a.A.shape[0] = 3;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("A is [3, 3] (dim, N) but expected [4, *]"));
  a = good;
  a.A.shape[1] = 0;
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("d_state N (A.shape[1]) is 0"));
  a = good;
  a.A = ConstView<float, 2>(big.data(), {4, 257});
  REQUIRE_THROWS_AS(run(a), unsupported_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("d_state N = 257 is not supported; supported: 1 to 256"));
  a = good;
  a.B.shape[3] = 4;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("B is [2, 2, 3, 4] (batch, groups, N, L) but expected [2, *, 3, 5]"));
  a = good;
  a.B.shape[1] = 3;
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a),
                      ContainsSubstring("B [2, 3, 3, 5] has 3 groups, which must be at least 1 and divide dim = 4"));
  a = good;
  a.C.shape[2] = 2;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("C is [2, 1, 2, 5]"));
  a = good;
  a.C.shape[1] = 0;
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("C [2, 0, 3, 5] has 0 groups"));
  a = good;
  a.D.shape[0] = 5;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("D is [5] (dim) but expected [4]"));
  a = good;
  a.z.shape[0] = 1;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("z is [1, 4, 5] (batch, dim, L)"));
  a = good;
  a.delta_bias.shape[0] = 2;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta_bias is [2] (dim) but expected [4]"));
  a = good;
  a.initial_state.shape[2] = 4;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("initial_state is [2, 4, 4] (batch, dim, N) but expected [2, 4, 3]"));
  a = good;
  a.out.shape[1] = 3;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("out is [2, 3, 5] (batch, dim, L)"));
  a = good;
  a.out.data = nullptr;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("out [2, 4, 5] has no data"));
  a = good;
  a.out.stride[2] = 0;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output out [2, 4, 5] has strides"));
  a = good;
  a.final_state.shape[0] = 3;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("final_state is [3, 4, 3] (batch, dim, N)"));
  a = good;
  a.final_state.stride[0] = 0;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output final_state [2, 4, 3] has strides [0, 3, 1]"));
}

TEST_CASE("selective_scan_step: every shape and size error is reported", "[host]") {
  const index_t batch = 2, dim = 4, N = 3;
  std::vector<float> state(batch * dim * N, 0.0f), act(batch * dim, 0.5f), A(dim * N, -1.0f), bc(batch * N, 1.0f);
  std::vector<float> out(batch * dim), big(4096, 1.0f);
  moss::SelectiveScanStepArgs<float> good;
  good.state = TensorView<float, 3>(state.data(), {batch, dim, N});
  good.u = ConstView<float, 2>(act.data(), {batch, dim});
  good.delta = ConstView<float, 2>(act.data(), {batch, dim});
  good.z = ConstView<float, 2>(act.data(), {batch, dim});
  good.A = ConstView<float, 2>(A.data(), {dim, N});
  good.B = ConstView<float, 3>(bc.data(), {batch, 1, N});
  good.C = ConstView<float, 3>(bc.data(), {batch, 1, N});
  good.D = ConstView<float, 1>(A.data(), {dim});
  good.delta_bias = ConstView<float, 1>(A.data(), {dim});
  good.out = TensorView<float, 2>(out.data(), {batch, dim});
  auto run = [](const moss::SelectiveScanStepArgs<float>& a) { moss::selective_scan_step(moss::Host{}, a); };
  REQUIRE_NOTHROW(run(good));
  using moss::config_error;
  using moss::shape_error;
  using moss::unsupported_error;

  auto a = good;
  a.state.shape[2] = 4;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("selective_scan_step: state is [2, 4, 4] (batch, dim, N)"));
  a = good;
  a.state.data = nullptr;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("state [2, 4, 3] has no data"));
  a = good;
  a.state.stride[1] = 0;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output state"));
  a = good;
  a.delta.shape[1] = 3;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta is [2, 3] (batch, dim)"));
  a = good;
  a.A.shape[0] = 2;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("A is [2, 3] (dim, N)"));
  a = good;
  a.A = ConstView<float, 2>(big.data(), {dim, 300});
  REQUIRE_THROWS_AS(run(a), unsupported_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("N = 300 is not supported"));
  a = good;
  a.B.shape[2] = 2;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("B is [2, 1, 2] (batch, groups, N)"));
  a = good;
  a.C.shape[1] = 3;
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("C [2, 3, 3] has 3 groups"));
  a = good;
  a.D.shape[0] = 1;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("D is [1] (dim)"));
  a = good;
  a.z.shape[0] = 1;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("z is [1, 4] (batch, dim)"));
  a = good;
  a.delta_bias.shape[0] = 8;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta_bias is [8] (dim)"));
  a = good;
  a.out.shape[0] = 3;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("out is [3, 4] (batch, dim)"));
  a = good;
  a.u.shape[1] = 5;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta is [2, 4] (batch, dim) but expected [2, 5]"));
}

// ---- Scan strategies ----

namespace {

/// The outputs of `selective_scan<SequentialScan>` (the oracle) on a fresh copy of the problem
/// (same config and seed): out in logical order and the final state.
template <class T>
std::pair<std::vector<T>, std::vector<float>> oracle_outputs(const Config& c, std::uint64_t seed) {
  Problem<T> q(c, seed);
  moss::selective_scan<moss::SequentialScan>(moss::Host{}, q.args);
  return {q.output(), q.final_state};
}

/// Bound on the difference between the segment decomposition and the oracle: the decay of a
/// segment is one exp(A·Σ Δ) instead of a product of per-step exps (a few float32 ulp on the
/// carried states), and an output may round to the neighbouring value of T.
template <class T>
constexpr double decomposition_tolerance() {
  return std::is_same_v<T, float> ? 2e-6 : output_tolerance<T>();
}

/// Bytes of `floats` floats rounded up to the workspace alignment (one piece of a layout).
std::size_t piece(index_t floats) {
  const std::size_t a = moss::kWorkspaceAlignment;
  return (static_cast<std::size_t>(floats) * sizeof(float) + a - 1) / a * a;
}

/// The first kWorkspaceAlignment-aligned float of `v` (which has room for it).
float* aligned(std::vector<float>& v) {
  const auto p = reinterpret_cast<std::uintptr_t>(v.data());
  const std::uintptr_t a = moss::kWorkspaceAlignment;
  return reinterpret_cast<float*>((p + a - 1) / a * a);
}

/// The chunk decomposition's scratch for K segments laid out in `buffer` (poisoned with NaN),
/// and the bytes it measures.
template <class T>
std::pair<moss::detail::scan::SegmentScratch, std::size_t> make_scratch(const moss::SelectiveScanArgs<T>& a, index_t K,
                                                                        std::vector<float>& buffer) {
  moss::WorkspaceLayout measure;
  moss::detail::scan::segment_scratch(measure, a, K);
  buffer.assign(measure.bytes() / sizeof(float) + moss::kWorkspaceAlignment, std::numeric_limits<float>::quiet_NaN());
  moss::WorkspaceLayout layout(aligned(buffer));
  return {moss::detail::scan::segment_scratch(layout, a, K), measure.bytes()};
}

/// The configurations of the decomposition checks: segment lengths from 1 step to beyond L,
/// ragged and exact multiples, L = 1, with and without initial / final state, both layouts,
/// groups and constant B / C.
struct SegmentCase {
  Config cfg;
  index_t segment_len;
};

std::vector<SegmentCase> segment_cases() {
  std::vector<SegmentCase> v;
  std::uint64_t k = 0;
  for (index_t L : {1, 2, 7, 16, 33, 64, 101})
    for (index_t seg : {1, 3, 8, 16, 32}) {
      Config c;
      c.L = L;
      c.batch = 1 + static_cast<index_t>(k % 3);
      c.dim = (k % 4 == 0) ? 1 : 6;
      c.N = (k % 3 == 0) ? 1 : (k % 3 == 1 ? 4 : 16);
      c.groups_b = c.dim == 6 ? (k % 2 ? 3 : 2) : 1;
      c.groups_c = c.dim == 6 ? (k % 3 == 1 ? 6 : 1) : 1;
      c.const_b = (k % 7 == 3);
      c.const_c = (k % 5 == 4);
      c.has_d = k % 2 == 0;
      c.has_z = k % 3 != 2;
      c.has_bias = k % 4 != 1;
      c.softplus = k % 5 != 3;
      c.has_init = k % 2 == 1;
      c.has_final = k % 6 != 5;
      c.channel_last = k % 2 == 0;
      v.push_back({c, seg});
      ++k;
    }
  return v;
}

template <class T>
void check_decomposition() {
  std::uint64_t seed = 2000;
  int segmented = 0;
  for (const SegmentCase& sc : segment_cases()) {
    const Config& c = sc.cfg;
    INFO("segment " << sc.segment_len << " batch " << c.batch << " dim " << c.dim << " L " << c.L << " N " << c.N
                    << " groups " << c.groups_b << "/" << c.groups_c << " const " << c.const_b << c.const_c << " D "
                    << c.has_d << " z " << c.has_z << " bias " << c.has_bias << " softplus " << c.softplus << " init "
                    << c.has_init << " final " << c.has_final << " channel_last " << c.channel_last);
    seed += 10;
    Problem<T> p(c, seed);
    const index_t K = (c.L + sc.segment_len - 1) / sc.segment_len;
    CHECK(moss::detail::scan::segment_count(c.L, sc.segment_len) == K);
    std::vector<float> buffer;
    const auto [scratch, bytes] = make_scratch(p.args, K, buffer);
    const index_t rows = (K - 1) * c.batch * c.dim;
    CHECK(bytes == (K < 2 ? 0 : piece(rows * c.N) + piece(rows)));
    segmented += K >= 2;
    moss::detail::scan::segmented_scan(p.args, sc.segment_len, scratch);
    const auto [want_out, want_final] = oracle_outputs<T>(c, seed);
    CHECK(moss::test::rel_l2(p.output(), want_out) <= decomposition_tolerance<T>());
    if (c.has_final) CHECK(moss::test::rel_l2(p.final_state, want_final) <= 2e-6);
    // And against the independent float64 loop.
    const Reference r = reference(p);
    CHECK(moss::test::rel_l2(p.output(), r.out) <= output_tolerance<T>());
    if (c.has_final) CHECK(moss::test::rel_l2(p.final_state, r.final_state) <= 1e-5);
  }
  CHECK(segmented > 20);  // most cases really split L
}

}  // namespace

TEST_CASE("selective_scan: the pair of a segment composes as the recurrence", "[host]") {
  namespace s = moss::detail::scan;
  // Three steps h ← a_t·h + b_t from h0 = 1.5, stepwise and through pairs in either grouping.
  const s::ScanPair p1{0.5f, 2.0f}, p2{0.25f, -1.0f}, p3{0.8f, 0.125f};
  const float h0 = 1.5f;
  const float stepwise = 0.8f * (0.25f * (0.5f * h0 + 2.0f) - 1.0f) + 0.125f;
  CHECK_THAT(s::apply(s::combine(s::combine(p1, p2), p3), h0), WithinRel(stepwise, 1e-6f));
  CHECK_THAT(s::apply(s::combine(p1, s::combine(p2, p3)), h0), WithinRel(stepwise, 1e-6f));
  CHECK(s::combine(p1, p2).a == 0.125f);
  CHECK(s::apply(s::ScanPair{}, h0) == h0);  // the identity segment
  // A segment's decay from Σ Δ equals the product of its steps' decays.
  const float a = -1.7f, deltas[] = {0.3f, 0.05f, 1.2f, 0.7f};
  double product = 1.0;
  float sum = 0.0f;
  for (float dt : deltas) {
    product *= std::exp(static_cast<double>(dt) * a);
    sum += dt;
  }
  CHECK_THAT(s::segment_decay(s::a_log2e(a), sum), WithinRel(static_cast<float>(product), 1e-6f));
}

TEST_CASE("selective_scan: f32 chunk decomposition equals the sequential oracle", "[host]") {
  check_decomposition<float>();
}
TEST_CASE("selective_scan: f16 chunk decomposition equals the sequential oracle", "[host]") {
  check_decomposition<moss::f16>();
}
TEST_CASE("selective_scan: bf16 chunk decomposition equals the sequential oracle", "[host]") {
  check_decomposition<moss::bf16>();
}

TEST_CASE("selective_scan: the decomposition matches a closed form", "[host]") {
  // dim 1, N 1, A = -ln 2, Δ = 1 (no softplus): every decay is 1/2 and B = C = u = 1, so the
  // state after step t (from 0) is h_t = 2 - 2^-t = y_t; segments of 3 over L = 10.
  const index_t L = 10;
  std::vector<float> u(L, 1.0f), delta(L, 1.0f), B(L, 1.0f), C(L, 1.0f), A = {-std::log(2.0f)};
  std::vector<float> out(L, NAN), fin(1, NAN), buffer;
  moss::SelectiveScanArgs<float> a;
  a.u = ConstView<float, 3>(u.data(), {1, 1, L});
  a.delta = ConstView<float, 3>(delta.data(), {1, 1, L});
  a.A = ConstView<float, 2>(A.data(), {1, 1});
  a.B = ConstView<float, 4>(B.data(), {1, 1, 1, L});
  a.C = ConstView<float, 4>(C.data(), {1, 1, 1, L});
  a.out = TensorView<float, 3>(out.data(), {1, 1, L});
  a.final_state = TensorView<float, 3>(fin.data(), {1, 1, 1});
  const auto [scratch, bytes] = make_scratch(a, 4, buffer);
  REQUIRE(bytes == 2 * moss::kWorkspaceAlignment);  // K = 4: three end states and three Σ Δ, one piece each
  moss::detail::scan::segmented_scan(a, 3, scratch);
  for (index_t t = 0; t < L; ++t)
    CHECK_THAT(out[t], WithinRel(static_cast<float>(2.0 - std::ldexp(1.0, -static_cast<int>(t))), 1e-6f));
  CHECK_THAT(fin[0], WithinRel(static_cast<float>(2.0 - std::ldexp(1.0, -9)), 1e-6f));
}

TEST_CASE("selective_scan: every built-in strategy runs on the host and equals the oracle", "[host]") {
  Config c;
  c.batch = 2;
  c.dim = 3;
  c.N = 16;
  c.L = 600;  // three host segments of ChunkedScan::kHostSegment
  for (bool has_init : {true, false}) {
    c.has_init = has_init;
    const auto [want_out, want_final] = oracle_outputs<float>(c, 71);
    auto check = [&](auto strategy, const char* name) {
      INFO(name << " init " << has_init);
      using S = decltype(strategy);
      Problem<float> p(c, 71);
      moss::selective_scan<S>(moss::Host{}, p.args);
      CHECK(moss::test::rel_l2(p.output(), want_out) <= 2e-6);
      CHECK(moss::test::rel_l2(p.final_state, want_final) <= 2e-6);
    };
    check(moss::SequentialScan{}, "sequential");
    check(moss::ChunkedScan{}, "chunked");
    check(moss::AutoScan{}, "auto");
  }
  CHECK(moss::SequentialScan::name == "sequential");
  CHECK(moss::ChunkedScan::name == "chunked");
  CHECK(moss::AutoScan::name == "auto");
}

TEST_CASE("selective_scan: ChunkedScan takes its scratch from the workspace and refuses a short one", "[host]") {
  Config c;
  c.batch = 2;
  c.dim = 3;
  c.N = 5;
  c.L = 700;  // K = 3
  Problem<float> p(c, 13);
  const std::size_t bytes = moss::workspace_bytes<moss::ChunkedScan>(moss::Host{}, p.args);
  CHECK(bytes == piece(2 * 2 * 3 * 5) + piece(2 * 2 * 3));
  CHECK(moss::workspace_bytes<moss::SequentialScan>(moss::Host{}, p.args) == 0);
  CHECK(moss::workspace_bytes(moss::Host{}, p.args) == 0);  // AutoScan on the host: the oracle
  const auto [want_out, want_final] = oracle_outputs<float>(c, 13);

  std::vector<float> buffer(bytes / sizeof(float) + moss::kWorkspaceAlignment, NAN);
  p.args.workspace = moss::Workspace{aligned(buffer), bytes};
  moss::selective_scan<moss::ChunkedScan>(moss::Host{}, p.args);
  CHECK(moss::test::rel_l2(p.output(), want_out) <= 2e-6);
  CHECK(moss::test::rel_l2(p.final_state, want_final) <= 2e-6);
  std::size_t written = 0;  // the scratch was used: 2 end states of 2 × 3 × 5, Σ Δ of segment 1
  for (float x : buffer) written += !std::isnan(x);
  CHECK(written == 2 * 2 * 3 * 5 + 2 * 3);

  p.args.workspace.bytes = bytes - 4;
  REQUIRE_THROWS_AS(moss::selective_scan<moss::ChunkedScan>(moss::Host{}, p.args), moss::config_error);
  REQUIRE_THROWS_WITH(
      moss::selective_scan<moss::ChunkedScan>(moss::Host{}, p.args),
      ContainsSubstring("selective_scan (host, chunked): the workspace holds " + std::to_string(bytes - 4) +
                        " bytes but this call needs " + std::to_string(bytes)));
  p.args.workspace = moss::Workspace{aligned(buffer) + 1, bytes};
  REQUIRE_THROWS_WITH(moss::selective_scan<moss::ChunkedScan>(moss::Host{}, p.args),
                      ContainsSubstring("is not aligned to 256 bytes"));
  // One segment (L ≤ 256): no scratch, and none read.
  Config short_c = c;
  short_c.L = 256;
  Problem<float> q(short_c, 14);
  CHECK(moss::workspace_bytes<moss::ChunkedScan>(moss::Host{}, q.args) == 0);
  q.args.workspace = moss::Workspace{nullptr, 0};
  REQUIRE_NOTHROW(moss::selective_scan<moss::ChunkedScan>(moss::Host{}, q.args));
}

namespace {

/// A user's strategy: one struct in the user's file. It counts its calls and runs the oracle
/// backwards over the channels (any order of (batch, channel) rows gives the same result).
struct CountingScan {
  static constexpr std::string_view name = "counting";
  static inline int calls = 0;
  template <class T>
  static void run(const moss::Host&, const moss::SelectiveScanArgs<T>& a) {
    ++calls;
    for (index_t d = a.u.shape[1] - 1; d >= 0; --d) {
      auto one = [d](auto v) {
        v.data += d * v.stride[1];
        v.shape[1] = 1;
        return v;
      };
      moss::SelectiveScanArgs<T> g = a;
      g.u = one(a.u);
      g.delta = one(a.delta);
      g.z = present(a.z) ? one(a.z) : a.z;
      g.out = one(a.out);
      g.initial_state = present(a.initial_state) ? one(a.initial_state) : a.initial_state;
      g.final_state = present(a.final_state) ? one(a.final_state) : a.final_state;
      g.A = ConstView<float, 2>(&a.A(d, 0), {1, a.A.shape[1]}, {a.A.stride[0], a.A.stride[1]});
      if (present(a.D)) g.D = ConstView<float, 1>(&a.D(d), {1});
      if (present(a.delta_bias)) g.delta_bias = ConstView<float, 1>(&a.delta_bias(d), {1});
      // The group of channel d, as a one-group view.
      auto group = [&](ConstView<T, 4> v) {
        v.data += (d / (a.u.shape[1] / v.shape[1])) * v.stride[1];
        v.shape[1] = 1;
        return v;
      };
      g.B = group(a.B);
      g.C = group(a.C);
      moss::detail::scan::oracle_scan(g);
    }
  }
};

struct NotAStrategy {
  static void run(int) {}
};

}  // namespace

static_assert(moss::ScanStrategy<moss::SequentialScan, float>);
static_assert(moss::ScanStrategy<moss::ChunkedScan, moss::bf16>);
static_assert(moss::ScanStrategy<moss::AutoScan, moss::f16>);
static_assert(moss::ScanStrategy<CountingScan, float>);
static_assert(!moss::ScanStrategy<NotAStrategy, float>);
static_assert(!moss::ScanStrategy<int, float>);

TEST_CASE("selective_scan: a user's strategy is one struct, called once after validation", "[host]") {
  Config c;
  c.dim = 6;
  c.groups_b = 3;
  c.groups_c = 2;
  c.L = 19;
  const auto [want_out, want_final] = oracle_outputs<moss::bf16>(c, 88);
  Problem<moss::bf16> p(c, 88);
  CountingScan::calls = 0;
  moss::selective_scan<CountingScan>(moss::Host{}, p.args);
  CHECK(CountingScan::calls == 1);
  CHECK(moss::test::rel_l2(p.output(), want_out) == 0.0);
  CHECK(moss::test::rel_l2(p.final_state, want_final) == 0.0);
  CHECK(moss::workspace_bytes<CountingScan>(moss::Host{}, p.args) == 0);
  // Invalid arguments never reach the strategy.
  auto bad = p.args;
  bad.delta.shape[2] = 3;
  REQUIRE_THROWS_WITH(moss::selective_scan<CountingScan>(moss::Host{}, bad),
                      ContainsSubstring("selective_scan: delta is [2, 6, 3] (batch, dim, L)"));
  CHECK(CountingScan::calls == 1);
}
