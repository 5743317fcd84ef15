// tests/ops/cross_entropy_test.cpp: `cross_entropy` (the LM loss fused with the head) on the
// host: the loss against a float64 loop, dH and dW against float64 central differences of the
// op's own loss in double, chunk sizes that do not divide the rows (bitwise the same result for
// every chunk size), ignored rows, the float and bf16 instantiations against the double one,
// accumulation, determinism, bad targets and every validation error.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/cross_entropy.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// `check_gradient`, also printing the measured error when MOSS_PRINT_GRAD_ERRORS is set.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  if (std::getenv("MOSS_PRINT_GRAD_ERRORS")) {
    const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
    std::printf("grad-error cross_entropy %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

/// max |a − b| / max |b| (b the reference; 1e-30 floor).
template <class A>
double max_err(const std::vector<A>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0, scale = 1e-30;
  for (std::size_t i = 0; i < b.size(); ++i) {
    scale = std::max(scale, std::abs(b[i]));
    worst = std::max(worst, std::abs(moss::test::as_double(a[i]) - b[i]));
  }
  return worst / scale;
}

/// Whether two vectors hold the same bits.
template <class A>
bool same_bits(const std::vector<A>& a, const std::vector<A>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(A)) == 0);
}

/// Inputs of one case in double: H (tokens, d) with row stride `ld`, W (vocab, d), targets with
/// about one row in `ignore_every` set to ignore_index (none when 0).
struct Case {
  index_t tokens, d, vocab, ld;
  std::vector<double> h, w;
  std::vector<std::int64_t> targets;
  std::int64_t ignore_index = -100;
  Case(index_t tokens_, index_t d_, index_t vocab_, std::uint64_t seed, index_t ignore_every = 0, index_t pad = 0)
      : tokens(tokens_),
        d(d_),
        vocab(vocab_),
        ld(d_ + pad),
        h(moss::test::randn_f64(tokens_ * (d_ + pad), seed)),
        w(moss::test::randn_f64(vocab_ * d_, seed + 1, 0.7)),
        targets(static_cast<std::size_t>(tokens_)) {
    const auto u = moss::test::uniform(static_cast<std::size_t>(tokens_), seed + 2, 0.0f, 1.0f);
    for (index_t r = 0; r < tokens; ++r) {
      targets[r] = std::min<std::int64_t>(vocab - 1, std::int64_t(u[r] * float(vocab)));
      if (ignore_every > 0 && r % ignore_every == ignore_every - 1) targets[r] = ignore_index;
    }
  }
  /// Rounds H and W to T (in place, so the double reference sees the same values).
  template <class T>
  void round_to() {
    for (auto* v : {&h, &w})
      for (double& e : *v) e = moss::to_float(moss::from_float<T>(static_cast<float>(e)));
  }
};

/// The mean loss and count in a float64 loop written here, independent of the op.
std::pair<double, index_t> reference_loss(const Case& c) {
  double sum = 0;
  index_t count = 0;
  std::vector<double> logits(static_cast<std::size_t>(c.vocab));
  for (index_t r = 0; r < c.tokens; ++r) {
    const std::int64_t t = c.targets[r];
    if (t == c.ignore_index) continue;
    double m = -INFINITY;
    for (index_t v = 0; v < c.vocab; ++v) {
      double s = 0;
      for (index_t k = 0; k < c.d; ++k) s += c.h[r * c.ld + k] * c.w[v * c.d + k];
      logits[v] = s;
      m = std::max(m, s);
    }
    double z = 0;
    for (index_t v = 0; v < c.vocab; ++v) z += std::exp(logits[v] - m);
    sum += m + std::log(z) - logits[t];
    ++count;
  }
  return {count ? sum / double(count) : 0.0, count};
}

/// One call's outputs.
template <class T>
struct Out {
  moss::CrossEntropyResult<moss::compute_t<T>> result;
  std::vector<T> dh;                   // (tokens, ld)
  std::vector<moss::compute_t<T>> dw;  // (vocab, d)
};

/// Options of one call.
struct Opts {
  index_t chunk_rows = 1024;
  double dloss = 1;
  bool accumulate = false;
  bool want_dh = true, want_dw = true;
};

/// Runs cross_entropy<T> on the case's values converted to T; dh and dw start from `init`'s.
template <class T>
Out<T> run(const Case& c, const Opts& o = {}, Out<T> init = {}) {
  using C = moss::compute_t<T>;
  auto convert = [](const std::vector<double>& v) {
    std::vector<T> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      if constexpr (std::is_same_v<T, double>) {
        r[i] = v[i];
      } else {
        r[i] = moss::from_float<T>(static_cast<float>(v[i]));
      }
    }
    return r;
  };
  const std::vector<T> h = convert(c.h), w = convert(c.w);
  if (init.dh.empty()) init.dh.assign(h.size(), T{});
  if (init.dw.empty()) init.dw.assign(w.size(), C(0));
  moss::CrossEntropyArgs<T> a;
  a.hidden = ConstView<T, 2>(h.data(), {c.tokens, c.d}, {c.ld, 1}, "hidden");
  a.weight = ConstView<T, 2>(w.data(), {c.vocab, c.d}, "weight");
  a.targets = ConstView<std::int64_t, 1>(c.targets.data(), {c.tokens}, "targets");
  if (o.want_dh) a.dhidden = TensorView<T, 2>(init.dh.data(), {c.tokens, c.d}, {c.ld, 1}, "dhidden");
  if (o.want_dw) a.dweight = TensorView<C, 2>(init.dw.data(), {c.vocab, c.d}, "dweight");
  a.ignore_index = c.ignore_index;
  a.chunk_rows = o.chunk_rows;
  a.dloss = C(o.dloss);
  a.accumulate = o.accumulate;
  init.result = moss::cross_entropy(moss::Host{}, a);
  return init;
}

/// A tag "[tokens,d,vocab,...]" for messages (appended piecewise: GCC 12 warns with -Wrestrict on
/// "[" + std::string).
std::string tag_of(std::initializer_list<index_t> v) {
  std::string s = "[";
  for (index_t x : v) s += std::to_string(x) + ",";
  s += "]";
  return s;
}

}  // namespace

TEST_CASE("cross_entropy: the loss matches a float64 loop", "[host]") {
  struct Shape {
    index_t tokens, d, vocab, ignore_every;
  };
  const Shape shapes[] = {{1, 1, 1, 0}, {1, 3, 5, 0}, {7, 4, 6, 0}, {10, 9, 13, 3}, {40, 17, 50, 4}, {3, 5, 4, 1}};
  std::uint64_t seed = 300;
  for (const Shape& s : shapes) {
    INFO("shape " << tag_of({s.tokens, s.d, s.vocab, s.ignore_every}));
    Case c(s.tokens, s.d, s.vocab, seed += 10, s.ignore_every);
    const auto [ref, count] = reference_loss(c);
    const Out<double> f64 = run<double>(c, {.chunk_rows = 3});
    CHECK(f64.result.count == count);
    CHECK(std::abs(f64.result.loss - ref) <= 1e-13 * std::max(1.0, ref));
    c.round_to<float>();
    const auto [ref32, count32] = reference_loss(c);
    const Out<float> f32 = run<float>(c, {.chunk_rows = 3});
    CHECK(f32.result.count == count32);
    CHECK(std::abs(f32.result.loss - ref32) <= 1e-5 * std::max(1.0, ref32));
  }
  // Hand-checkable: vocab 2, equal logits (W rows equal): loss = log 2 per counted row.
  Case c(4, 3, 2, 1);
  for (index_t k = 0; k < 3; ++k) c.w[3 + k] = c.w[k];
  const Out<double> o = run<double>(c);
  CHECK(std::abs(o.result.loss - std::log(2.0)) < 1e-15);
  CHECK(o.result.count == 4);
}

TEST_CASE("cross_entropy: dH and dW match central differences in double", "[host]") {
  struct Shape {
    index_t tokens, d, vocab, chunk, ignore_every, pad;
    double dloss;
  };
  // 0 and 1 rows, vocab 1 (loss ≡ 0), chunk sizes that do not divide the rows, ignored rows,
  // more rows than one row block (16) per chunk, d across the 8-lane padding, strided H.
  const Shape shapes[] = {{0, 3, 4, 1024, 0, 0, 1},  {1, 1, 1, 1024, 0, 0, 1}, {1, 3, 5, 1024, 0, 0, 1},
                          {7, 4, 6, 3, 0, 0, 1},     {10, 9, 13, 4, 3, 2, 1},  {13, 6, 3, 5, 0, 0, 0.37},
                          {37, 11, 21, 20, 5, 1, 1}, {9, 2, 8, 2, 2, 0, 2.5}};
  std::uint64_t seed = 400;
  for (const Shape& s : shapes) {
    const std::string tag = tag_of({s.tokens, s.d, s.vocab, s.chunk, s.ignore_every, s.pad});
    INFO("shape " << tag << " dloss " << s.dloss);
    Case c(s.tokens, s.d, s.vocab, seed += 10, s.ignore_every, s.pad);
    const Out<double> g = run<double>(c, {.chunk_rows = s.chunk, .dloss = s.dloss});
    auto loss = [&] {
      return s.dloss * run<double>(c, {.chunk_rows = s.chunk, .want_dh = false, .want_dw = false}).result.loss;
    };
    check_grad("hidden" + tag, g.dh, loss, c.h);  // the padding of a strided H has gradient 0
    check_grad("weight" + tag, g.dw, loss, c.w);
  }
}

TEST_CASE("cross_entropy: every row ignored gives loss 0, count 0 and zero gradients", "[host]") {
  for (index_t tokens : {0, 1, 5}) {
    INFO("tokens " << tokens);
    Case c(tokens, 4, 6, 7, 1);  // ignore_every 1: every row
    Out<float> stale;
    stale.dh.assign(c.h.size(), NAN);
    stale.dw.assign(c.w.size(), NAN);
    const Out<float> o = run<float>(c, {}, stale);
    CHECK(o.result.loss == 0.0f);
    CHECK(o.result.count == 0);
    CHECK(o.dh == std::vector<float>(c.h.size(), 0.0f));
    CHECK(o.dw == std::vector<float>(c.w.size(), 0.0f));
    Out<float> old;
    old.dw = moss::test::randn(c.w.size(), 8);
    const Out<float> kept = run<float>(c, {.accumulate = true}, old);
    CHECK(kept.dw == old.dw);
    CHECK(kept.result.count == 0);
  }
}

TEST_CASE("cross_entropy: bitwise the same for every chunk size and every repeat", "[host]") {
  Case c(50, 13, 37, 9, 6);
  c.round_to<float>();
  const Out<float> whole = run<float>(c);
  for (index_t chunk : {1, 3, 7, 16, 17, 49, 50, 51}) {
    INFO("chunk_rows " << chunk);
    const Out<float> o = run<float>(c, {.chunk_rows = chunk});
    CHECK(std::memcmp(&o.result.loss, &whole.result.loss, sizeof(float)) == 0);
    CHECK(o.result.count == whole.result.count);
    CHECK(same_bits(o.dh, whole.dh));
    CHECK(same_bits(o.dw, whole.dw));
  }
  const Out<float> again = run<float>(c);
  CHECK(std::memcmp(&again.result.loss, &whole.result.loss, sizeof(float)) == 0);
  CHECK(same_bits(again.dh, whole.dh));
  CHECK(same_bits(again.dw, whole.dw));
}

TEST_CASE("cross_entropy: the float and bf16 instantiations agree with the double one", "[host]") {
  Case c(45, 19, 31, 11, 5, 2);
  c.round_to<float>();
  const Out<double> ref = run<double>(c, {.chunk_rows = 8});
  const Out<float> f = run<float>(c, {.chunk_rows = 8});
  CHECK(std::abs(f.result.loss - ref.result.loss) <= 1e-5 * ref.result.loss);
  CHECK(f.result.count == ref.result.count);
  CHECK(max_err(f.dh, ref.dh) < 1e-5);
  CHECK(max_err(f.dw, ref.dw) < 1e-5);
  // bf16 H and W (float arithmetic, dH rounded once to bf16, dW float).
  c.round_to<bf16>();
  const Out<double> ref16 = run<double>(c, {.chunk_rows = 8});
  const Out<bf16> b = run<bf16>(c, {.chunk_rows = 8});
  CHECK(std::abs(b.result.loss - ref16.result.loss) <= 1e-5 * ref16.result.loss);
  CHECK(max_err(b.dh, ref16.dh) < 8e-3);
  CHECK(max_err(b.dw, ref16.dw) < 1e-5);
}

TEST_CASE("cross_entropy: ignored rows add nothing, whatever their hidden state", "[host]") {
  Case c(23, 7, 10, 21, 4);
  c.round_to<float>();
  // The same rows without the ignored ones.
  Case kept = c;
  kept.h.clear();
  kept.targets.clear();
  for (index_t r = 0; r < c.tokens; ++r) {
    if (c.targets[r] == c.ignore_index) continue;
    kept.targets.push_back(c.targets[r]);
    kept.h.insert(kept.h.end(), c.h.begin() + r * c.d, c.h.begin() + (r + 1) * c.d);
  }
  kept.tokens = static_cast<index_t>(kept.targets.size());
  REQUIRE(kept.tokens == 18);
  // Non-finite hidden states in the ignored rows.
  for (index_t r = 0; r < c.tokens; ++r) {
    if (c.targets[r] == c.ignore_index) c.h[r * c.d] = r % 2 ? NAN : INFINITY;
  }
  const Out<float> with = run<float>(c, {.chunk_rows = 5});
  const Out<float> without = run<float>(kept, {.chunk_rows = 5});
  CHECK(with.result.count == 18);
  CHECK(std::memcmp(&with.result.loss, &without.result.loss, sizeof(float)) == 0);
  CHECK(same_bits(with.dw, without.dw));
  index_t k = 0;
  for (index_t r = 0; r < c.tokens; ++r) {
    const float* row = with.dh.data() + r * c.d;
    if (c.targets[r] == c.ignore_index) {
      for (index_t i = 0; i < c.d; ++i) REQUIRE(row[i] == 0.0f);
    } else {
      REQUIRE(std::memcmp(row, without.dh.data() + k * c.d, c.d * sizeof(float)) == 0);
      ++k;
    }
  }
}

TEST_CASE("cross_entropy: ignore_index may be any id, also one inside the vocabulary", "[host]") {
  Case c(30, 5, 4, 31);
  c.ignore_index = 2;
  const auto [ref, count] = reference_loss(c);
  index_t twos = 0;
  for (std::int64_t t : c.targets) twos += t == 2;
  REQUIRE(twos > 0);
  const Out<double> o = run<double>(c);
  CHECK(o.result.count == 30 - twos);
  CHECK(count == 30 - twos);
  CHECK(std::abs(o.result.loss - ref) <= 1e-13 * ref);
}

TEST_CASE("cross_entropy: accumulate adds into dweight, dhidden is written", "[host]") {
  Case c(12, 6, 9, 41, 5);
  const Out<float> fresh = run<float>(c, {.chunk_rows = 5});
  Out<float> old;
  old.dh.assign(c.h.size(), 5.0f);
  old.dw = moss::test::randn(c.w.size(), 42);
  const Out<float> acc = run<float>(c, {.chunk_rows = 5, .accumulate = true}, old);
  for (std::size_t i = 0; i < old.dw.size(); ++i) REQUIRE(acc.dw[i] == old.dw[i] + fresh.dw[i]);
  CHECK(acc.dh == fresh.dh);
  CHECK(std::memcmp(&acc.result.loss, &fresh.result.loss, sizeof(float)) == 0);
  // Without accumulate, whatever dweight held is overwritten.
  Out<float> stale;
  stale.dw.assign(c.w.size(), NAN);
  CHECK(run<float>(c, {.chunk_rows = 5}, stale).dw == fresh.dw);
}

TEST_CASE("cross_entropy: a bad target names the first bad position and writes nothing", "[host]") {
  Case c(6, 3, 5, 51);
  c.targets = {0, 4, -100, 5, -1, 2};
  Out<float> stale;
  stale.dh.assign(c.h.size(), 9.0f);
  stale.dw.assign(c.w.size(), 9.0f);
  REQUIRE_THROWS_AS(run<float>(c, {}, stale), moss::shape_error);
  REQUIRE_THROWS_WITH(run<float>(c, {}, stale),
                      ContainsSubstring("cross_entropy: targets[3] = 5 is outside the vocabulary [0, 5) and is not "
                                        "ignore_index (-100)"));
  c.targets[3] = 1;
  REQUIRE_THROWS_WITH(run<float>(c, {}, stale), ContainsSubstring("targets[4] = -1 is outside the vocabulary"));
  // run() copies `stale`; check the op itself leaves its outputs alone.
  std::vector<float> h(c.h.begin(), c.h.end()), w(c.w.begin(), c.w.end()), dh(c.h.size(), 9.0f), dw(c.w.size(), 9.0f);
  moss::CrossEntropyArgs<float> a;
  a.hidden = ConstView<float, 2>(h.data(), {6, 3}, "hidden");
  a.weight = ConstView<float, 2>(w.data(), {5, 3}, "weight");
  a.targets = ConstView<std::int64_t, 1>(c.targets.data(), {6}, "targets");
  a.dhidden = TensorView<float, 2>(dh.data(), {6, 3}, "dhidden");
  a.dweight = TensorView<float, 2>(dw.data(), {5, 3}, "dweight");
  REQUIRE_THROWS_AS(moss::cross_entropy(moss::Host{}, a), moss::shape_error);
  CHECK(dh == std::vector<float>(c.h.size(), 9.0f));
  CHECK(dw == std::vector<float>(c.w.size(), 9.0f));
}

TEST_CASE("cross_entropy: every validation error names the tensor", "[host]") {
  std::vector<float> h(4 * 3), w(5 * 3), dh(4 * 3), dw(5 * 3);
  const std::vector<std::int64_t> targets = {0, 1, 2, 3};
  auto args = [&] {
    moss::CrossEntropyArgs<float> a;
    a.hidden = ConstView<float, 2>(h.data(), {4, 3}, "hidden");
    a.weight = ConstView<float, 2>(w.data(), {5, 3}, "weight");
    a.targets = ConstView<std::int64_t, 1>(targets.data(), {4}, "targets");
    a.dhidden = TensorView<float, 2>(dh.data(), {4, 3}, "dhidden");
    a.dweight = TensorView<float, 2>(dw.data(), {5, 3}, "dweight");
    return a;
  };
  const moss::Host host;
  REQUIRE_NOTHROW(moss::cross_entropy(host, args()));
  auto expect = [&](moss::CrossEntropyArgs<float> a, const std::string& text, bool config = false) {
    if (config) {
      REQUIRE_THROWS_AS(moss::cross_entropy(host, a), moss::config_error);
    } else {
      REQUIRE_THROWS_AS(moss::cross_entropy(host, a), moss::shape_error);
    }
    REQUIRE_THROWS_WITH(moss::cross_entropy(host, a), ContainsSubstring(text));
  };
  {
    auto a = args();
    a.hidden.shape = {4, 0};
    expect(a, "cross_entropy: hidden is [4, 0] (tokens, d_model) but d_model must be at least 1", true);
  }
  {
    auto a = args();
    a.weight.shape = {0, 3};
    expect(a, "cross_entropy: weight is [0, 3] (vocab, d_model) but vocab must be at least 1", true);
  }
  {
    auto a = args();
    a.chunk_rows = 0;
    expect(a, "cross_entropy: chunk_rows is 0 but must be at least 1", true);
  }
  {
    auto a = args();
    a.weight = ConstView<float, 2>(w.data(), {5, 2}, "weight");
    expect(a, "cross_entropy: weight is [5, 2] (vocab, d_model) but expected [5, 3]");
  }
  {
    auto a = args();
    a.targets = ConstView<std::int64_t, 1>(targets.data(), {3}, "targets");
    expect(a, "cross_entropy: targets is [3] (tokens) but expected [4]");
  }
  {
    auto a = args();
    a.dhidden = TensorView<float, 2>(dh.data(), {3, 4}, "dhidden");
    expect(a, "cross_entropy: dhidden is [3, 4] (tokens, d_model) but expected [4, 3]");
  }
  {
    auto a = args();
    a.dweight = TensorView<float, 2>(dw.data(), {3, 5}, "dweight");
    expect(a, "cross_entropy: dweight is [3, 5] (vocab, d_model) but expected [5, 3]");
  }
  {
    auto a = args();
    a.hidden = ConstView<float, 2>(h.data(), {4, 3}, {3, 2}, "hidden");
    expect(a, "cross_entropy: hidden needs unit stride in its last dimension");
  }
  {
    auto a = args();
    a.hidden = ConstView<float, 2>(h.data(), {4, 3}, {2, 1}, "hidden");
    expect(a, "cross_entropy: hidden has row stride 2 but its rows are 3 wide");
  }
  {
    auto a = args();
    a.dhidden = TensorView<float, 2>(dh.data(), {4, 3}, {3, 2}, "dhidden");
    expect(a, "cross_entropy: dhidden needs unit stride in its last dimension");
  }
  {
    auto a = args();
    a.dhidden = TensorView<float, 2>(dh.data(), {4, 3}, {1, 1}, "dhidden");
    expect(a, "cross_entropy: dhidden has row stride 1 but its rows are 3 wide");
  }
  {
    auto a = args();
    a.weight = ConstView<float, 2>(w.data(), {5, 3}, {4, 1}, "weight");
    expect(a, "cross_entropy: weight [5, 3] must be contiguous");
  }
  {
    auto a = args();
    a.dweight = TensorView<float, 2>(dw.data(), {5, 3}, {4, 1}, "dweight");
    expect(a, "cross_entropy: dweight [5, 3] must be contiguous");
  }
  {
    auto a = args();
    a.hidden.data = nullptr;
    expect(a, "cross_entropy: hidden [4, 3] has no data");
  }
  {
    auto a = args();
    a.targets.stride = {-1};
    expect(a, "cross_entropy: targets has negative stride");
  }
}
