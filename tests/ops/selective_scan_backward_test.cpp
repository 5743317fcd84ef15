// Host tests of moss::selective_scan_backward (docs/math.md §4.1): the gradient of every input
// against float64 central differences of the library's own double forward (tests/grad_check.hpp)
// on small random shapes, both layouts, groups, constant B / C and every optional input on and
// off; the float (and f16 / bf16) instantiation against the double one; bitwise determinism and
// independence from the checkpoint interval; absent outputs, absent inputs (= zero),
// `accumulate`, L = 0 and batch = 0; every validation error. Also the forward's double
// instantiation (sequential, chunked, step) against its float one.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan_backward.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// One problem: sizes, the optional inputs and the layouts.
struct Config {
  index_t batch = 2, dim = 4, L = 5, N = 3, groups_b = 1, groups_c = 1;
  bool const_b = false, const_c = false;  // constant (dim, N) B / C (zero strides along batch and L)
  bool has_d = true, has_z = true, has_bias = true, softplus = true, has_init = true, has_dfinal = true;
  bool channel_last = true;       // u, delta, z, B, C: unit stride along dim / N, else along L
  bool grad_channel_last = true;  // dout and the activation gradients
};

/// The configuration in one line, for INFO.
std::string describe(const Config& c) {
  char s[256];
  std::snprintf(s, sizeof s,
                "batch %lld dim %lld L %lld N %lld groups %lld/%lld const %d%d D %d z %d bias %d softplus %d init %d "
                "dfinal %d channel_last %d/%d",
                static_cast<long long>(c.batch), static_cast<long long>(c.dim), static_cast<long long>(c.L),
                static_cast<long long>(c.N), static_cast<long long>(c.groups_b), static_cast<long long>(c.groups_c),
                c.const_b, c.const_c, c.has_d, c.has_z, c.has_bias, c.softplus, c.has_init, c.has_dfinal,
                c.channel_last, c.grad_channel_last);
  return s;
}

/// The values of every input and of the output gradients, in logical order: u, delta, z, dout
/// (batch, dim, L); A (dim, N); B / C (batch, groups, N, L), or (dim, N) when constant; D, bias
/// (dim); init, dfinal (batch, dim, N).
struct Inputs {
  std::vector<double> u, delta, z, A, B, C, D, bias, init, dout, dfinal;
};

/// Random inputs for `c`: Δ positive (softplus of values near −1, or small raw values), A < 0.
Inputs make_inputs(const Config& c, std::uint64_t seed) {
  const std::size_t act = c.batch * c.dim * c.L, st = c.batch * c.dim * c.N;
  auto uni = [](std::size_t n, std::uint64_t s, double lo, double hi) {
    std::mt19937_64 rng(s);
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<double> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
  };
  using moss::test::randn_f64;
  Inputs in;
  in.u = randn_f64(act, seed + 1);
  in.delta = c.softplus ? randn_f64(act, seed + 2, 0.7, -1.0) : uni(act, seed + 2, 0.01, 0.3);
  in.z = randn_f64(act, seed + 3);
  in.A = uni(c.dim * c.N, seed + 4, -2.5, -0.1);
  in.B = randn_f64(c.const_b ? c.dim * c.N : c.batch * c.groups_b * c.N * c.L, seed + 5);
  in.C = randn_f64(c.const_c ? c.dim * c.N : c.batch * c.groups_c * c.N * c.L, seed + 6);
  in.D = randn_f64(c.dim, seed + 7);
  in.bias = c.softplus ? uni(c.dim, seed + 8, -1.0, 0.5) : uni(c.dim, seed + 8, 0.0, 0.1);
  in.init = randn_f64(st, seed + 9);
  in.dout = randn_f64(act, seed + 10);
  in.dfinal = randn_f64(st, seed + 11);
  return in;
}

/// `in` with every value rounded to T (so that a T run and a double run see the same inputs).
template <class T>
Inputs rounded(Inputs in) {
  for (auto* v : {&in.u, &in.delta, &in.z, &in.B, &in.C, &in.dout})
    for (double& x : *v) x = moss::test::as_double(moss::from_float<T>(static_cast<float>(x)));
  for (auto* v : {&in.A, &in.D, &in.bias, &in.init, &in.dfinal})
    for (double& x : *v) x = static_cast<float>(x);
  return in;
}

/// A double stored as T (rounded once to f16 / bf16 through float).
template <class T>
T store(double x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return moss::from_float<T>(static_cast<float>(x));
}

/// Storage in the layouts of a Config (with padding between rows, poisoned) and views over it.
template <class T>
struct Storage {
  using R = moss::compute_t<T>;
  Config c;
  std::vector<std::vector<T>> acts;  // owned activation buffers
  std::vector<std::vector<R>> params;

  explicit Storage(const Config& cfg) : c(cfg) {}

  /// A (batch, dim, L) view: channel-last with a row pitch of dim + 2, or channel-first with L + 1.
  TensorView<T, 3> act(bool channel_last, const std::vector<double>* values, double poison, const char* name) {
    const index_t B = c.batch, D = c.dim, L = c.L;
    const moss::Extents<3> st =
        channel_last ? moss::Extents<3>{L * (D + 2), 1, D + 2} : moss::Extents<3>{D * (L + 1), L + 1, 1};
    acts.emplace_back(static_cast<std::size_t>(B * (L + 1) * (D + 2) + 1), store<T>(poison));
    TensorView<T, 3> v(acts.back().data(), {B, D, L}, st, name);
    if (values)
      for (index_t b = 0; b < B; ++b)
        for (index_t d = 0; d < D; ++d)
          for (index_t t = 0; t < L; ++t) v(b, d, t) = store<T>((*values)[(b * D + d) * L + t]);
    return v;
  }
  /// B or C: (batch, groups, N, L) in the layout, or the zero-stride view of a (dim, N) matrix.
  TensorView<T, 4> bc(bool constant, index_t groups, bool channel_last, const std::vector<double>* values,
                      double poison, const char* name) {
    const index_t B = c.batch, N = c.N, L = c.L;
    if (constant) {
      acts.emplace_back(static_cast<std::size_t>(c.dim * N), store<T>(poison));
      if (values)
        for (index_t i = 0; i < c.dim * N; ++i) acts.back()[i] = store<T>((*values)[i]);
      return TensorView<T, 4>(acts.back().data(), {B, c.dim, N, L}, {0, N, 1, 0}, name);
    }
    const index_t W = groups * N + 1;
    const moss::Extents<4> st =
        channel_last ? moss::Extents<4>{L * W, N, 1, W} : moss::Extents<4>{groups * N * (L + 1), N * (L + 1), L + 1, 1};
    acts.emplace_back(static_cast<std::size_t>(B * W * (L + 1) + 1), store<T>(poison));
    TensorView<T, 4> v(acts.back().data(), {B, groups, N, L}, st, name);
    if (values)
      for (index_t b = 0; b < B; ++b)
        for (index_t g = 0; g < groups; ++g)
          for (index_t n = 0; n < N; ++n)
            for (index_t t = 0; t < L; ++t) v(b, g, n, t) = store<T>((*values)[((b * groups + g) * N + n) * L + t]);
    return v;
  }
  /// A contiguous compute-type tensor.
  template <std::size_t Rank>
  TensorView<R, Rank> param(const moss::Extents<Rank>& shape, const std::vector<double>* values, double poison,
                            const char* name) {
    index_t n = 1;
    for (index_t e : shape) n *= e;
    params.emplace_back(static_cast<std::size_t>(n), static_cast<R>(poison));
    if (values)
      for (index_t i = 0; i < n; ++i) params.back()[i] = static_cast<R>((*values)[i]);
    return TensorView<R, Rank>(params.back().data(), shape, name);
  }
};

/// Reads a view back in logical order as doubles.
template <class V>
std::vector<double> logical(const V& v) {
  std::vector<double> r;
  if constexpr (V::rank == 1) {
    for (index_t i = 0; i < v.shape[0]; ++i) r.push_back(moss::test::as_double(v(i)));
  } else if constexpr (V::rank == 2) {
    for (index_t i = 0; i < v.shape[0]; ++i)
      for (index_t j = 0; j < v.shape[1]; ++j) r.push_back(moss::test::as_double(v(i, j)));
  } else if constexpr (V::rank == 3) {
    for (index_t i = 0; i < v.shape[0]; ++i)
      for (index_t j = 0; j < v.shape[1]; ++j)
        for (index_t k = 0; k < v.shape[2]; ++k) r.push_back(moss::test::as_double(v(i, j, k)));
  } else {
    for (index_t i = 0; i < v.shape[0]; ++i)
      for (index_t j = 0; j < v.shape[1]; ++j)
        for (index_t k = 0; k < v.shape[2]; ++k)
          for (index_t l = 0; l < v.shape[3]; ++l) r.push_back(moss::test::as_double(v(i, j, k, l)));
  }
  return r;
}

/// The forward inputs of `c` / `in` in storage `s`, as the fields shared by both Args.
template <class T, class Args>
void set_inputs(Args& a, Storage<T>& s, const Config& c, const Inputs& in) {
  a.u = s.act(c.channel_last, &in.u, 0, "u");
  a.delta = s.act(c.channel_last, &in.delta, 0, "delta");
  if (c.has_z) a.z = s.act(c.channel_last, &in.z, 0, "z");
  a.A = s.param(moss::Extents<2>{c.dim, c.N}, &in.A, 0, "A");
  a.B = s.bc(c.const_b, c.const_b ? c.dim : c.groups_b, c.channel_last, &in.B, 0, "B");
  a.C = s.bc(c.const_c, c.const_c ? c.dim : c.groups_c, c.channel_last, &in.C, 0, "C");
  if (c.has_d) a.D = s.param(moss::Extents<1>{c.dim}, &in.D, 0, "D");
  if (c.has_bias) a.delta_bias = s.param(moss::Extents<1>{c.dim}, &in.bias, 0, "delta_bias");
  a.delta_softplus = c.softplus;
  if (c.has_init) a.initial_state = s.param(moss::Extents<3>{c.batch, c.dim, c.N}, &in.init, 0, "initial_state");
}

/// The forward's results in logical order.
struct Forward {
  std::vector<double> out, final_state;
};

/// The forward (`selective_scan`, AutoScan) in T, out and final state in logical order.
template <class T>
Forward run_forward(const Config& c, const Inputs& in) {
  Storage<T> s(c);
  moss::SelectiveScanArgs<T> a;
  set_inputs(a, s, c, in);
  a.out = s.act(c.grad_channel_last, nullptr, kNaN, "out");
  a.final_state = s.param(moss::Extents<3>{c.batch, c.dim, c.N}, nullptr, kNaN, "final_state");
  moss::selective_scan(moss::Host{}, a);
  return {logical(a.out), logical(a.final_state)};
}

/// Which gradients a backward run asks for.
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

/// How a backward run is made.
struct Options {
  unsigned want = kAll;     // kDz is dropped when there is no z
  index_t checkpoint = 0;   // 0: the public entry point; else detail::scan::backward_host with it
  double poison = kNaN;     // initial value of every output element (and of the padding)
  bool accumulate = false;  // with `prior` as the initial dA, dD, ddelta_bias
  std::vector<double> prior_dA, prior_dD, prior_dbias;
};

/// The gradients in logical order (empty when not asked for). dB / dC are (dim, N) for a
/// constant B / C.
struct Grads {
  std::vector<double> du, ddelta, dA, dB, dC, dD, dz, dbias, dinit;
};

/// The backward in T on `in` (layouts of `c`), as `o` says, the gradients read back in logical order.
template <class T>
Grads run_backward(const Config& c, const Inputs& in, const Options& o = {}) {
  Storage<T> s(c);
  moss::SelectiveScanBackwardArgs<T> a;
  set_inputs(a, s, c, in);
  a.dout = s.act(c.grad_channel_last, &in.dout, 0, "dout");
  if (c.has_dfinal) a.dfinal_state = s.param(moss::Extents<3>{c.batch, c.dim, c.N}, &in.dfinal, 0, "dfinal_state");
  const bool gl = c.grad_channel_last;
  const double p = o.poison;
  if (o.want & kDu) a.du = s.act(gl, nullptr, p, "du");
  if (o.want & kDdelta) a.ddelta = s.act(gl, nullptr, p, "ddelta");
  if ((o.want & kDz) && c.has_z) a.dz = s.act(gl, nullptr, p, "dz");
  if (o.want & kDB) a.dB = s.bc(c.const_b, c.const_b ? c.dim : c.groups_b, gl, nullptr, p, "dB");
  if (o.want & kDC) a.dC = s.bc(c.const_c, c.const_c ? c.dim : c.groups_c, gl, nullptr, p, "dC");
  const bool acc = o.accumulate;
  if (o.want & kDA) a.dA = s.param(moss::Extents<2>{c.dim, c.N}, acc ? &o.prior_dA : nullptr, p, "dA");
  if (o.want & kDD) a.dD = s.param(moss::Extents<1>{c.dim}, acc ? &o.prior_dD : nullptr, p, "dD");
  if (o.want & kDbias) a.ddelta_bias = s.param(moss::Extents<1>{c.dim}, acc ? &o.prior_dbias : nullptr, p, "dbias");
  if (o.want & kDinit) a.dinitial_state = s.param(moss::Extents<3>{c.batch, c.dim, c.N}, nullptr, p, "dinit");
  a.accumulate = acc;
  if (o.checkpoint == 0) {
    moss::selective_scan_backward(moss::Host{}, a);
  } else {
    moss::validate(a, "test");
    moss::detail::scan::backward_host(a, o.checkpoint);
  }
  Grads g;
  auto read_bc = [&](const TensorView<T, 4>& v, bool constant) {
    if (!constant) return logical(v);
    return logical(TensorView<T, 2>(v.data, {c.dim, c.N}));
  };
  if (moss::present(a.du)) g.du = logical(a.du);
  if (moss::present(a.ddelta)) g.ddelta = logical(a.ddelta);
  if (moss::present(a.dz)) g.dz = logical(a.dz);
  if (moss::present(a.dB)) g.dB = read_bc(a.dB, c.const_b);
  if (moss::present(a.dC)) g.dC = read_bc(a.dC, c.const_c);
  if (moss::present(a.dA)) g.dA = logical(a.dA);
  if (moss::present(a.dD)) g.dD = logical(a.dD);
  if (moss::present(a.ddelta_bias)) g.dbias = logical(a.ddelta_bias);
  if (moss::present(a.dinitial_state)) g.dinit = logical(a.dinitial_state);
  return g;
}

/// Every gradient of `g` with its name (the empty ones included).
std::vector<std::pair<const char*, const std::vector<double>*>> named(const Grads& g) {
  return {{"du", &g.du}, {"ddelta", &g.ddelta}, {"dA", &g.dA},       {"dB", &g.dB},      {"dC", &g.dC},
          {"dD", &g.dD}, {"dz", &g.dz},         {"dbias", &g.dbias}, {"dinit", &g.dinit}};
}

/// Bitwise equality of two gradient sets (doubles widened exactly from T / compute_t<T>).
bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

/// The worst finite-difference error seen per input, printed at the end of the check.
std::map<std::string, double>& worst_errors() {
  static std::map<std::string, double> m;
  return m;
}

/// The configurations of the finite-difference checks: batch 1–2, dim 3–5, N 2–4, L 1, 2, 7,
/// both layouts (and gradients in the other layout), groups, constant B / C, every optional
/// input on and off.
std::vector<Config> fd_configs() {
  std::vector<Config> v;
  unsigned k = 0;
  for (bool channel_last : {true, false})
    for (index_t L : {1, 2, 7})
      for (int variant = 0; variant < 3; ++variant, ++k) {
        Config c;
        c.channel_last = channel_last;
        c.grad_channel_last = (k % 4 < 2) ? channel_last : !channel_last;
        c.L = L;
        c.batch = 1 + k % 2;
        c.dim = 3 + k % 3;
        c.N = 2 + (k / 2) % 3;
        if (c.dim == 4) {
          c.groups_b = k % 2 ? 2 : 4;
          c.groups_c = k % 4 < 2 ? 1 : 2;
        } else {
          c.groups_b = k % 2 ? c.dim : 1;
          c.groups_c = k % 3 == 1 ? c.dim : 1;
        }
        c.const_b = k % 7 == 3;
        c.const_c = k % 5 == 4;
        c.has_d = k % 2 == 0;
        c.has_z = k % 3 != 2;
        c.has_bias = k % 4 != 1;
        c.softplus = k % 5 != 3;
        c.has_init = k % 2 == 1;
        c.has_dfinal = k % 3 != 1;
        v.push_back(c);
      }
  Config all;  // every optional input, constant B and C, groups
  all.const_b = all.const_c = true;
  all.L = 7;
  v.push_back(all);
  Config none;  // none of them
  none.has_d = none.has_z = none.has_bias = none.softplus = none.has_init = none.has_dfinal = false;
  none.channel_last = false;
  none.L = 7;
  none.groups_b = 2;
  v.push_back(none);
  return v;
}

/// The finite-difference check of every gradient of `c`, the backward run with checkpoints every
/// `checkpoint` steps (0: the public entry point, every 64 steps).
void check_fd(const Config& c, std::uint64_t seed, index_t checkpoint) {
  INFO(describe(c) << " checkpoint every " << checkpoint);
  Inputs in = make_inputs(c, seed);
  Options o;
  o.checkpoint = checkpoint;
  const Grads g = run_backward<double>(c, in, o);
  auto loss = [&] {
    const Forward f = run_forward<double>(c, in);
    double l = moss::test::dot(f.out, in.dout);
    if (c.has_dfinal) l += moss::test::dot(f.final_state, in.dfinal);
    return l;
  };
  auto check = [&](const char* name, const std::vector<double>& analytic, std::vector<double>& x) {
    const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
    double& w = worst_errors()[name];
    w = std::max(w, err);
    moss::test::check_gradient(name, analytic, loss, x);
  };
  check("u", g.du, in.u);
  check("delta", g.ddelta, in.delta);
  check("A", g.dA, in.A);
  check("B", g.dB, in.B);
  check("C", g.dC, in.C);
  if (c.has_d) check("D", g.dD, in.D);
  if (c.has_z) check("z", g.dz, in.z);
  if (c.has_bias) check("delta_bias", g.dbias, in.bias);
  if (c.has_init) check("initial_state", g.dinit, in.init);
}

/// The largest relative L2 difference between the gradients of T and of double on the same
/// (T-rounded) inputs, over every gradient; each is also CHECKed against `tol`.
template <class T>
double compare_with_double(const Config& c, std::uint64_t seed, double tol) {
  INFO(describe(c));
  const Inputs in = rounded<T>(make_inputs(c, seed));
  const Grads lo = run_backward<T>(c, in), hi = run_backward<double>(c, in);
  const auto l = named(lo), h = named(hi);
  double worst = 0;
  for (std::size_t i = 0; i < l.size(); ++i) {
    INFO(l[i].first);
    REQUIRE(l[i].second->size() == h[i].second->size());
    if (h[i].second->empty()) continue;
    const double e = moss::test::rel_l2(*l[i].second, *h[i].second);
    CHECK(e <= tol);
    worst = std::max(worst, e);
  }
  return worst;
}

/// Configurations for the precision and determinism checks: longer L so that the checkpoints
/// (every 64 steps) split the sequence, N 16, groups.
std::vector<Config> long_configs() {
  std::vector<Config> v;
  Config a;
  a.batch = 2;
  a.dim = 6;
  a.N = 16;
  a.L = 150;
  a.groups_b = 2;
  a.groups_c = 3;
  v.push_back(a);
  Config b = a;
  b.channel_last = false;
  b.grad_channel_last = true;
  b.has_z = false;
  b.softplus = false;
  b.has_init = false;
  b.const_b = true;
  b.L = 64;
  v.push_back(b);
  Config c = a;
  c.L = 129;
  c.N = 5;
  c.has_d = c.has_bias = false;
  c.const_c = true;
  c.groups_b = 6;
  v.push_back(c);
  return v;
}

}  // namespace

TEST_CASE("selective_scan forward in double: sequential, chunked and step agree with float", "[host]") {
  for (bool channel_last : {true, false}) {
    Config c;
    c.dim = 4;
    c.N = 5;
    c.L = 600;  // three host segments of the chunked scan: one carry
    c.groups_b = 2;
    c.channel_last = channel_last;
    const Inputs in = rounded<float>(make_inputs(c, 11));
    const Forward d = run_forward<double>(c, in), f = run_forward<float>(c, in);
    CHECK(moss::test::rel_l2(f.out, d.out) <= 1e-5);
    CHECK(moss::test::rel_l2(f.final_state, d.final_state) <= 1e-5);

    Storage<double> s(c);
    moss::SelectiveScanArgs<double> a;
    set_inputs(a, s, c, in);
    a.out = s.act(true, nullptr, kNaN, "out");
    a.final_state = s.param(moss::Extents<3>{c.batch, c.dim, c.N}, nullptr, kNaN, "final_state");
    moss::selective_scan<moss::ChunkedScan>(moss::Host{}, a);
    CHECK(moss::test::rel_l2(logical(a.out), d.out) <= 1e-13);
    CHECK(moss::test::rel_l2(logical(a.final_state), d.final_state) <= 1e-13);

    // Token by token with the double step.
    std::vector<double> state(in.init), stepped;
    std::vector<double> out_t(static_cast<std::size_t>(c.batch * c.dim));
    for (index_t t = 0; t < c.L; ++t) {
      moss::SelectiveScanStepArgs<double> st;
      st.state = TensorView<double, 3>(state.data(), {c.batch, c.dim, c.N});
      st.u = ConstView<double, 2>(&a.u(0, 0, t), {c.batch, c.dim}, {a.u.stride[0], a.u.stride[1]});
      st.delta = ConstView<double, 2>(&a.delta(0, 0, t), {c.batch, c.dim}, {a.delta.stride[0], a.delta.stride[1]});
      st.z = ConstView<double, 2>(&a.z(0, 0, t), {c.batch, c.dim}, {a.z.stride[0], a.z.stride[1]});
      st.A = a.A;
      st.B = ConstView<double, 3>(&a.B(0, 0, 0, t), {c.batch, c.groups_b, c.N},
                                  {a.B.stride[0], a.B.stride[1], a.B.stride[2]});
      st.C = ConstView<double, 3>(&a.C(0, 0, 0, t), {c.batch, c.groups_c, c.N},
                                  {a.C.stride[0], a.C.stride[1], a.C.stride[2]});
      st.D = a.D;
      st.delta_bias = a.delta_bias;
      st.delta_softplus = a.delta_softplus;
      st.out = TensorView<double, 2>(out_t.data(), {c.batch, c.dim});
      moss::selective_scan_step(moss::Host{}, st);
      for (double y : out_t) stepped.push_back(y);
    }
    // stepped is (L, batch, dim); the scan's output is (batch, dim, L).
    double worst = 0;
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t dd = 0; dd < c.dim; ++dd)
        for (index_t t = 0; t < c.L; ++t)
          worst =
              std::max(worst, std::abs(stepped[(t * c.batch + b) * c.dim + dd] - d.out[(b * c.dim + dd) * c.L + t]));
    CHECK(worst <= 1e-14);  // the step and the scan share their loop body
    CHECK(moss::test::rel_l2(state, d.final_state) <= 1e-14);
  }
}

TEST_CASE("selective_scan_backward: every gradient equals float64 central differences", "[host]") {
  // A third of the configurations through the public entry point, the others with checkpoints
  // every 1 or 2 steps, so that the reverse pass crosses chunk boundaries at L = 2 and 7.
  std::uint64_t seed = 1000;
  index_t i = 0;
  for (const Config& c : fd_configs()) check_fd(c, seed += 100, i++ % 3);
  for (const auto& [name, err] : worst_errors())
    std::printf("selective_scan_backward FD: worst relative error of d/d%s: %.3g\n", name.c_str(), err);
}

TEST_CASE("selective_scan_backward: the FD configurations cover every option both ways", "[host]") {
  // Guards the configuration list itself: each option of the FD checks is exercised on and off.
  const auto v = fd_configs();
  auto both = [&](auto field) {
    bool on = false, off = false;
    for (const Config& c : v) (c.*field ? on : off) = true;
    return on && off;
  };
  CHECK(both(&Config::const_b));
  CHECK(both(&Config::const_c));
  CHECK(both(&Config::has_d));
  CHECK(both(&Config::has_z));
  CHECK(both(&Config::has_bias));
  CHECK(both(&Config::softplus));
  CHECK(both(&Config::has_init));
  CHECK(both(&Config::has_dfinal));
  CHECK(both(&Config::channel_last));
  CHECK(both(&Config::grad_channel_last));
  bool grouped_b = false, grouped_c = false, mixed_layout = false;
  for (const Config& c : v) {
    grouped_b = grouped_b || (!c.const_b && c.groups_b > 1 && c.groups_b < c.dim);
    grouped_c = grouped_c || (!c.const_c && c.groups_c > 1 && c.groups_c < c.dim);
    mixed_layout = mixed_layout || c.channel_last != c.grad_channel_last;
  }
  CHECK(grouped_b);
  CHECK(grouped_c);
  CHECK(mixed_layout);
}

TEST_CASE("selective_scan_backward: float agrees with double to float precision", "[host]") {
  double worst = 0;
  std::uint64_t seed = 5000;
  for (const Config& c : fd_configs()) worst = std::max(worst, compare_with_double<float>(c, seed += 10, 1e-5));
  for (const Config& c : long_configs()) worst = std::max(worst, compare_with_double<float>(c, seed += 10, 1e-5));
  std::printf("selective_scan_backward: float vs double, worst relative L2 %.3g\n", worst);
}

TEST_CASE("selective_scan_backward: f16 and bf16 agree with double within one rounding", "[host]") {
  std::uint64_t seed = 6000;
  double w16 = 0, wb16 = 0;
  for (const Config& c : long_configs()) {
    w16 = std::max(w16, compare_with_double<moss::f16>(c, seed += 10, 0x1p-11));
    wb16 = std::max(wb16, compare_with_double<moss::bf16>(c, seed += 10, 0x1p-8));
  }
  std::printf("selective_scan_backward: f16 vs double %.3g, bf16 vs double %.3g (relative L2)\n", w16, wb16);
}

TEST_CASE("selective_scan_backward: bitwise repeatable and independent of the checkpoint interval", "[host]") {
  std::uint64_t seed = 7000;
  for (const Config& c : long_configs()) {
    INFO(describe(c));
    const Inputs in = rounded<float>(make_inputs(c, seed += 10));
    Options first;  // outputs start as NaN
    Options second;
    second.poison = 7.0;  // a different start: an element left unwritten would differ
    const Grads a = run_backward<float>(c, in, first), b = run_backward<float>(c, in, second);
    for (std::size_t i = 0; i < named(a).size(); ++i) {
      INFO(named(a)[i].first);
      CHECK(same_bits(*named(a)[i].second, *named(b)[i].second));
    }
    for (index_t k : {1, 2, 3, 7, 64, 1000}) {
      Options o;
      o.checkpoint = k;
      const Grads g = run_backward<float>(c, in, o);
      INFO("checkpoint every " << k);
      for (std::size_t i = 0; i < named(a).size(); ++i) {
        INFO(named(a)[i].first);
        CHECK(same_bits(*named(g)[i].second, *named(a)[i].second));
      }
    }
  }
}

TEST_CASE("selective_scan_backward: each gradient asked for alone equals the full run", "[host]") {
  Config c = long_configs()[0];
  c.L = 20;
  const Inputs in = rounded<float>(make_inputs(c, 8000));
  const Grads all = run_backward<float>(c, in);
  for (unsigned w = 1; w < kAll; w <<= 1) {
    Options o;
    o.want = w;
    const Grads g = run_backward<float>(c, in, o);
    const auto gn = named(g), an = named(all);
    for (std::size_t i = 0; i < gn.size(); ++i) {
      INFO("want " << w << " " << gn[i].first);
      if ((1u << i) == w) {
        CHECK(!gn[i].second->empty());
        CHECK(same_bits(*gn[i].second, *an[i].second));
      } else {
        CHECK(gn[i].second->empty());
      }
    }
  }
  Options none;
  none.want = 0;
  REQUIRE_NOTHROW(run_backward<float>(c, in, none));
}

TEST_CASE("selective_scan_backward: an absent D, delta_bias or initial state is zero", "[host]") {
  Config c;
  c.L = 9;
  c.N = 4;
  const Inputs base = rounded<float>(make_inputs(c, 8100));
  for (int which = 0; which < 3; ++which) {
    INFO("absent: " << (which == 0 ? "D" : which == 1 ? "delta_bias" : "initial_state"));
    Inputs zero = base;
    Config absent = c;
    if (which == 0) {
      std::fill(zero.D.begin(), zero.D.end(), 0.0);
      absent.has_d = false;
    } else if (which == 1) {
      std::fill(zero.bias.begin(), zero.bias.end(), 0.0);
      absent.has_bias = false;
    } else {
      std::fill(zero.init.begin(), zero.init.end(), 0.0);
      absent.has_init = false;
    }
    const Grads with_zero = run_backward<float>(c, zero), without = run_backward<float>(absent, base);
    const auto a = named(with_zero), b = named(without);
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].first);
      CHECK(!b[i].second->empty());
      CHECK(*a[i].second == *b[i].second);
    }
  }
}

TEST_CASE("selective_scan_backward: accumulate adds dA, dD and ddelta_bias into the outputs", "[host]") {
  Config c;
  c.L = 6;
  const Inputs in = rounded<float>(make_inputs(c, 8200));
  const Grads fresh = run_backward<float>(c, in);
  Options o;
  o.accumulate = true;
  o.prior_dA = moss::test::randn_f64(c.dim * c.N, 1);
  o.prior_dD = moss::test::randn_f64(c.dim, 2);
  o.prior_dbias = moss::test::randn_f64(c.dim, 3);
  for (auto* v : {&o.prior_dA, &o.prior_dD, &o.prior_dbias})
    for (double& x : *v) x = static_cast<float>(x);
  const Grads acc = run_backward<float>(c, in, o);
  auto sum = [](const std::vector<double>& p, const std::vector<double>& g) {
    std::vector<double> r;
    for (std::size_t i = 0; i < p.size(); ++i) r.push_back(static_cast<float>(p[i]) + static_cast<float>(g[i]));
    return r;
  };
  CHECK(acc.dA == sum(o.prior_dA, fresh.dA));
  CHECK(acc.dD == sum(o.prior_dD, fresh.dD));
  CHECK(acc.dbias == sum(o.prior_dbias, fresh.dbias));
  // The other outputs are written, not accumulated.
  CHECK(same_bits(acc.du, fresh.du));
  CHECK(same_bits(acc.dB, fresh.dB));
  CHECK(same_bits(acc.dinit, fresh.dinit));
}

TEST_CASE("selective_scan_backward: L = 0 and batch = 0", "[host]") {
  SECTION("L = 0: the initial state's gradient is the final state's, parameters get zero") {
    for (bool has_dfinal : {true, false}) {
      Config c;
      c.L = 0;
      c.has_dfinal = has_dfinal;
      const Inputs in = make_inputs(c, 8300);
      const Grads g = run_backward<double>(c, in);
      CHECK(g.dinit == (has_dfinal ? in.dfinal : std::vector<double>(in.dfinal.size(), 0.0)));
      CHECK(g.dA == std::vector<double>(c.dim * c.N, 0.0));
      CHECK(g.dD == std::vector<double>(c.dim, 0.0));
      CHECK(g.dbias == std::vector<double>(c.dim, 0.0));
      CHECK(g.du.empty());
    }
  }
  SECTION("batch = 0: parameters get zero") {
    Config c;
    c.batch = 0;
    const Inputs in = make_inputs(c, 8400);
    const Grads g = run_backward<float>(c, in);
    CHECK(g.dA == std::vector<double>(c.dim * c.N, 0.0));
    CHECK(g.dD == std::vector<double>(c.dim, 0.0));
    CHECK(g.dbias == std::vector<double>(c.dim, 0.0));
  }
}

TEST_CASE("selective_scan_backward: every shape, stride and size error is reported", "[host]") {
  using moss::config_error;
  using moss::shape_error;
  using moss::unsupported_error;
  // batch 2, dim 4, L 5, N 3, one group; channel-first.
  Config c;
  c.channel_last = c.grad_channel_last = false;
  const Inputs in = make_inputs(c, 9000);
  Storage<float> s(c);
  moss::SelectiveScanBackwardArgs<float> ok;
  set_inputs(ok, s, c, in);
  ok.dout = s.act(false, &in.dout, 0, "dout");
  ok.dfinal_state = s.param(moss::Extents<3>{2, 4, 3}, &in.dfinal, 0, "dfinal_state");
  ok.du = s.act(false, nullptr, 0, "du");
  ok.ddelta = s.act(false, nullptr, 0, "ddelta");
  ok.dz = s.act(false, nullptr, 0, "dz");
  ok.dB = s.bc(false, 1, false, nullptr, 0, "dB");
  ok.dC = s.bc(false, 1, false, nullptr, 0, "dC");
  ok.dA = s.param(moss::Extents<2>{4, 3}, nullptr, 0, "dA");
  ok.dD = s.param(moss::Extents<1>{4}, nullptr, 0, "dD");
  ok.ddelta_bias = s.param(moss::Extents<1>{4}, nullptr, 0, "ddelta_bias");
  ok.dinitial_state = s.param(moss::Extents<3>{2, 4, 3}, nullptr, 0, "dinitial_state");
  auto run = [](const moss::SelectiveScanBackwardArgs<float>& a) { moss::selective_scan_backward(moss::Host{}, a); };
  REQUIRE_NOTHROW(run(ok));

  auto a = ok;
  a.dout.shape[2] = 6;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(
      run(a), ContainsSubstring("selective_scan_backward: dout is [2, 4, 6] (batch, dim, L) but expected [2, 4, 5]"));
  a = ok;
  a.dout.shape[0] = 1;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dout is [1, 4, 5] (batch, dim, L) but expected [2, 4, 5]"));
  a = ok;
  a.dout.data = nullptr;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("selective_scan_backward: dout [2, 4, 5] has no data"));
  a = ok;
  a.dfinal_state.shape[2] = 4;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dfinal_state is [2, 4, 4] (batch, dim, N) but expected [2, 4, 3]"));
  a = ok;
  a.u.shape[2] = 4;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("delta is [2, 4, 5] (batch, dim, L) but expected [2, 4, 4]"));
  a = ok;
  a.A.shape[0] = 3;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("A is [3, 3] (dim, N) but expected [4, *]"));
  a = ok;
  a.A.shape[1] = 300;
  REQUIRE_THROWS_AS(run(a), unsupported_error);
  a = ok;
  a.B.shape[1] = 3;
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("B [2, 3, 3, 5] has 3 groups"));
  a = ok;
  a.C.shape[3] = 4;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("C is [2, 1, 3, 4] (batch, groups, N, L) but expected [2, *, 3, 5]"));
  a = ok;
  a.D.shape[0] = 5;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("D is [5] (dim) but expected [4]"));
  a = ok;
  a.initial_state.shape[1] = 3;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("initial_state is [2, 3, 3]"));

  a = ok;
  a.du.shape[1] = 3;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("du is [2, 3, 5] (batch, dim, L) but expected [2, 4, 5]"));
  a = ok;
  a.ddelta.stride[1] = 0;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output ddelta [2, 4, 5] has strides"));
  a = ok;
  a.dz.shape[2] = 1;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dz is [2, 4, 1] (batch, dim, L) but expected [2, 4, 5]"));
  a = ok;
  a.z = {};
  REQUIRE_THROWS_AS(run(a), config_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dz [2, 4, 5] is asked for but z is absent"));
  a = ok;
  a.dA.shape[1] = 2;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dA is [4, 2] (dim, N) but expected [4, 3]"));
  a = ok;
  a.dA.stride[0] = 0;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output dA [4, 3] has strides [0, 1]"));
  a = ok;
  a.dB.shape[1] = 2;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dB is [2, 2, 3, 5] (batch, groups, N, L) but expected [2, 1, 3, 5]"));
  a = ok;
  a.dB.stride[2] = 0;
  REQUIRE_THROWS_AS(run(a), shape_error);
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("output dB [2, 1, 3, 5] has strides [18, 18, 0, 1]; a gradient of B "
                                                "or C may have zero strides only along batch and L"));
  a = ok;
  a.dC.shape[2] = 4;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dC is [2, 1, 4, 5]"));
  a = ok;
  a.dD.shape[0] = 3;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dD is [3] (dim) but expected [4]"));
  a = ok;
  a.ddelta_bias.shape[0] = 1;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("ddelta_bias is [1] (dim) but expected [4]"));
  a = ok;
  a.dinitial_state.shape[0] = 3;
  REQUIRE_THROWS_WITH(run(a), ContainsSubstring("dinitial_state is [3, 4, 3] (batch, dim, N) but expected [2, 4, 3]"));
  a = ok;
  a.dinitial_state.data = nullptr;
  a.dinitial_state.shape = {0, 0, 0};
  REQUIRE_NOTHROW(run(a));  // absent
}
