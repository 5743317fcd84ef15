// Host tests of causal_conv1d and causal_conv1d_step: hand-computed cases, an independent
// float64 loop over shapes, layouts and options, the step and split invariants, and every
// validation error.
#include "moss/ops/causal_conv1d.hpp"

#include <algorithm>
#include <array>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::Extents;
using moss::index_t;
using moss::TensorView;

/// A tensor in its own storage, laid out in `order` (logical axes from outermost to innermost in
/// memory); the innermost run is `pitch` times as long as its extent, as when the tensor is a
/// column slice of a wider buffer (the x half of an in_proj output has pitch 2). The storage
/// outside the view is padding the op must not touch.
template <class T, std::size_t R>
struct Stored {
  std::vector<T> storage;
  TensorView<T, R> view;

  Stored(const Extents<R>& shape, const std::array<int, R>& order, index_t pitch, const char* name) {
    Extents<R> stride{};
    index_t s = 1;
    for (std::size_t i = R; i-- > 0;) {
      stride[order[i]] = s;
      s *= shape[order[i]] * (i + 1 == R ? pitch : 1);
    }
    storage.resize(static_cast<std::size_t>(s));
    view = TensorView<T, R>(storage.data(), shape, stride, name);
  }
  Stored(const Stored&) = delete;
  Stored& operator=(const Stored&) = delete;

  /// Fills the whole storage (padding included) with N(0, stddev) values rounded to T.
  void randomize(std::uint64_t seed, float stddev = 1.0f) {
    const auto v = moss::test::randn(storage.size(), seed, stddev);
    for (std::size_t i = 0; i < v.size(); ++i) storage[i] = moss::from_float<T>(v[i]);
  }
  /// Fills the whole storage with NaN so that every element the op forgets to write fails.
  void poison() {
    for (auto& e : storage) e = moss::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  }
  ConstView<T, R> cview() const { return view; }
};

/// The elements of a view in row-major logical order, as double.
template <class T, std::size_t R>
std::vector<double> values(const TensorView<T, R>& v) {
  std::vector<double> r;
  Extents<R> idx{};
  for (index_t n = 0; n < v.numel(); ++n) {
    index_t off = 0;
    for (std::size_t i = 0; i < R; ++i) off += idx[i] * v.stride[i];
    r.push_back(moss::test::as_double(v.data[off]));
    for (std::size_t i = R; i-- > 0;) {
      if (++idx[i] < v.shape[i]) break;
      idx[i] = 0;
    }
  }
  return r;
}

/// Number of storage elements outside the view that are no longer NaN (written out of bounds).
template <class T, std::size_t R>
int padding_written(const Stored<T, R>& s) {
  std::vector<bool> inside(s.storage.size(), false);
  Extents<R> idx{};
  for (index_t n = 0; n < s.view.numel(); ++n) {
    index_t off = 0;
    for (std::size_t i = 0; i < R; ++i) off += idx[i] * s.view.stride[i];
    inside[static_cast<std::size_t>(off)] = true;
    for (std::size_t i = R; i-- > 0;) {
      if (++idx[i] < s.view.shape[i]) break;
      idx[i] = 0;
    }
  }
  int written = 0;
  for (std::size_t i = 0; i < s.storage.size(); ++i)
    if (!inside[i] && !std::isnan(moss::test::as_double(s.storage[i]))) ++written;
  return written;
}

template <class T>
bool all_nan(const std::vector<T>& v) {
  return std::all_of(v.begin(), v.end(), [](T e) { return std::isnan(moss::test::as_double(e)); });
}

/// Float64 reference of the full op, written from the formula (not from math.hpp).
struct Reference {
  std::vector<double> out;          // (batch, dim, L), row-major
  std::vector<double> final_state;  // (batch, dim, W-1), row-major
};

template <class T>
Reference reference(const moss::CausalConv1dArgs<T>& a) {
  const index_t batch = a.x.shape[0], dim = a.x.shape[1], seqlen = a.x.shape[2], width = a.weight.shape[1];
  auto input = [&](index_t b, index_t d, index_t tau) -> double {
    if (tau >= 0) return moss::test::as_double(a.x(b, d, tau));
    if (moss::present(a.initial_state)) return moss::test::as_double(a.initial_state(b, d, width - 1 + tau));
    return 0.0;
  };
  Reference r;
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d)
      for (index_t t = 0; t < seqlen; ++t) {
        double acc = moss::present(a.bias) ? moss::test::as_double(a.bias(d)) : 0.0;
        for (index_t k = 0; k < width; ++k)
          acc += moss::test::as_double(a.weight(d, k)) * input(b, d, t - (width - 1) + k);
        r.out.push_back(a.silu ? acc / (1.0 + std::exp(-acc)) : acc);
      }
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d)
      for (index_t j = 0; j + 1 < width; ++j) r.final_state.push_back(input(b, d, seqlen - (width - 1) + j));
  return r;
}

constexpr std::array<int, 3> kChannelFirst{0, 1, 2};  // (batch, dim, L) storage
constexpr std::array<int, 3> kChannelLast{0, 2, 1};   // (batch, L, dim) storage
constexpr std::array<int, 2> kRowMajor2{0, 1};
constexpr std::array<int, 1> kVector{0};

}  // namespace

TEST_CASE("causal_conv1d: hand-computed W = 3, L = 4 with bias and initial state", "[host]") {
  // One channel: w = (1, 2, 3), bias 0.5, x = (1, 2, 3, 4), inputs before t = 0 are (10, 20).
  //   t0: 0.5 + 1·10 + 2·20 + 3·1 = 53.5     t1: 0.5 + 1·20 + 2·1 + 3·2 = 28.5
  //   t2: 0.5 + 1·1  + 2·2  + 3·3 = 14.5     t3: 0.5 + 1·2  + 2·3 + 3·4 = 20.5
  // final state: the last two inputs (3, 4).
  std::vector<float> x{1, 2, 3, 4}, w{1, 2, 3}, bias{0.5f}, init{10, 20}, out(4, -1), fin(2, -1);
  moss::CausalConv1dArgs<float> a;
  a.x = ConstView<float, 3>(x.data(), {1, 1, 4}, "x");
  a.weight = ConstView<float, 2>(w.data(), {1, 3}, "weight");
  a.bias = ConstView<float, 1>(bias.data(), {1}, "bias");
  a.initial_state = ConstView<float, 3>(init.data(), {1, 1, 2}, "initial_state");
  a.out = TensorView<float, 3>(out.data(), {1, 1, 4}, "out");
  a.final_state = TensorView<float, 3>(fin.data(), {1, 1, 2}, "final_state");
  moss::causal_conv1d(moss::Host{}, a);
  CHECK(out == std::vector<float>{53.5f, 28.5f, 14.5f, 20.5f});
  CHECK(fin == std::vector<float>{3, 4});

  SECTION("without an initial state the inputs before t = 0 are zero") {
    a.initial_state = {};
    moss::causal_conv1d(moss::Host{}, a);
    // t0: 0.5 + 3·1 = 3.5   t1: 0.5 + 2·1 + 3·2 = 8.5
    CHECK(out == std::vector<float>{3.5f, 8.5f, 14.5f, 20.5f});
    CHECK(fin == std::vector<float>{3, 4});
  }
}

TEST_CASE("causal_conv1d: hand-computed SiLU, W = 3, no bias", "[host]") {
  // w = (0.5, -1, 0.25), x = (1, -2, 0.5, 2): pre-activations 0.25, -1.5, 2.625, -1; SiLU of
  // each (x / (1 + e^-x), evaluated in float64 by hand-run script).
  std::vector<float> x{1, -2, 0.5f, 2}, w{0.5f, -1, 0.25f}, out(4);
  moss::CausalConv1dArgs<float> a;
  a.x = ConstView<float, 3>(x.data(), {1, 1, 4}, "x");
  a.weight = ConstView<float, 2>(w.data(), {1, 3}, "weight");
  a.silu = true;
  a.out = TensorView<float, 3>(out.data(), {1, 1, 4}, "out");
  moss::causal_conv1d(moss::Host{}, a);
  const double expected[4] = {0.14054412522144952, -0.2736382857095345, 2.447689935758474, -0.2689414213699951};
  for (int t = 0; t < 4; ++t) CHECK(std::abs(out[t] - expected[t]) <= 1e-6 * std::abs(expected[t]));
}

TEST_CASE("causal_conv1d: L < W-1 keeps part of the initial state in the final state", "[host]") {
  // W = 4, L = 1: inputs are (a, b, c | d); the final state is (b, c, d); out = Σ w·(a, b, c, d).
  std::vector<float> x{7}, w{1, 10, 100, 1000}, init{1, 2, 3}, out(1), fin(3);
  moss::CausalConv1dArgs<float> a;
  a.x = ConstView<float, 3>(x.data(), {1, 1, 1}, "x");
  a.weight = ConstView<float, 2>(w.data(), {1, 4}, "weight");
  a.initial_state = ConstView<float, 3>(init.data(), {1, 1, 3}, "initial_state");
  a.out = TensorView<float, 3>(out.data(), {1, 1, 1}, "out");
  a.final_state = TensorView<float, 3>(fin.data(), {1, 1, 3}, "final_state");
  moss::causal_conv1d(moss::Host{}, a);
  CHECK(out[0] == 7321.0f);
  CHECK(fin == std::vector<float>{2, 3, 7});

  SECTION("L = 0 passes the initial state through") {
    a.x = ConstView<float, 3>(nullptr, {1, 1, 0}, "x");
    a.out = TensorView<float, 3>(nullptr, {1, 1, 0}, "out");
    moss::causal_conv1d(moss::Host{}, a);
    CHECK(fin == std::vector<float>{1, 2, 3});
  }
  SECTION("without an initial state the missing inputs are zero") {
    a.initial_state = {};
    moss::causal_conv1d(moss::Host{}, a);
    CHECK(out[0] == 7000.0f);
    CHECK(fin == std::vector<float>{0, 0, 7});
  }
  SECTION("an empty batch writes nothing") {
    fin = {-1, -1, -1};
    a.x = ConstView<float, 3>(nullptr, {0, 1, 1}, "x");
    a.initial_state = ConstView<float, 3>(nullptr, {0, 1, 3}, "initial_state");
    a.out = TensorView<float, 3>(nullptr, {0, 1, 1}, "out");
    a.final_state = TensorView<float, 3>(fin.data(), {0, 1, 3}, "final_state");
    moss::causal_conv1d(moss::Host{}, a);
    CHECK(fin == std::vector<float>{-1, -1, -1});
  }
}

TEMPLATE_TEST_CASE("causal_conv1d matches a float64 loop over shapes, layouts and options", "[host]", float, moss::f16,
                   moss::bf16) {
  using T = TestType;
  const index_t batch = 2, dim = 3;
  // x / out layouts: channel-first, channel-last, and the x half of an in_proj output (pitch 2).
  const std::array<std::array<int, 3>, 3> orders{kChannelFirst, kChannelLast, kChannelLast};
  const std::array<index_t, 3> pitches{1, 1, 2};
  std::uint64_t seed = 1;
  int runs = 0;
  for (index_t width = 1; width <= 5; ++width) {
    for (index_t seqlen : {0, 1, 2, 3, 7, 50}) {
      for (int options = 0; options < 16; ++options) {
        for (int layout = 0; layout < 3; ++layout) {
          const bool has_bias = options & 1, silu = options & 2, has_init = options & 4, has_final = options & 8;
          const int out_layout = (layout + options) % 3;  // out's layout differs from x's in most runs
          CAPTURE(width, seqlen, has_bias, silu, has_init, has_final, layout, out_layout);
          Stored<T, 3> x({batch, dim, seqlen}, orders[layout], pitches[layout], "x");
          Stored<T, 2> w({dim, width}, kRowMajor2, 1, "weight");
          Stored<T, 1> bias({dim}, kVector, 1, "bias");
          // States alternate between (batch, dim, W-1) and (batch, W-1, dim) storage.
          Stored<T, 3> init({batch, dim, width - 1}, orders[options % 2], 1, "initial_state");
          Stored<T, 3> fin({batch, dim, width - 1}, orders[(options / 2) % 2], 1, "final_state");
          Stored<T, 3> out({batch, dim, seqlen}, orders[out_layout], pitches[out_layout], "out");
          x.randomize(++seed);
          w.randomize(++seed, 0.5f);
          bias.randomize(++seed);
          init.randomize(++seed);
          out.poison();
          fin.poison();
          moss::CausalConv1dArgs<T> a;
          a.x = x.cview();
          a.weight = w.cview();
          if (has_bias) a.bias = bias.cview();
          a.silu = silu;
          if (has_init) a.initial_state = init.cview();
          a.out = out.view;
          if (has_final) a.final_state = fin.view;
          moss::causal_conv1d(moss::Host{}, a);

          const Reference ref = reference(a);
          REQUIRE(moss::test::rel_l2(values(out.view), ref.out) <= moss::test::op_tolerance<T>());
          REQUIRE(padding_written(out) == 0);
          if (has_final) {
            REQUIRE(values(fin.view) == ref.final_state);  // raw inputs, copied bit for bit
            REQUIRE(padding_written(fin) == 0);
          } else {
            REQUIRE(all_nan(fin.storage));  // an absent final state is never written
          }
          ++runs;
        }
      }
    }
  }
  REQUIRE(runs == 5 * 6 * 16 * 3);
}

TEMPLATE_TEST_CASE("causal_conv1d_step token by token equals the full op", "[host]", float, moss::bf16) {
  using T = TestType;
  const index_t batch = 2, dim = 5, seqlen = 9;
  for (index_t width = 1; width <= 5; ++width) {
    for (int options = 0; options < 8; ++options) {
      const bool has_bias = options & 1, silu = options & 2, has_init = options & 4;
      CAPTURE(width, has_bias, silu, has_init);
      Stored<T, 3> x({batch, dim, seqlen}, kChannelLast, 2, "x");
      Stored<T, 2> w({dim, width}, kRowMajor2, 1, "weight");
      Stored<T, 1> bias({dim}, kVector, 1, "bias");
      Stored<T, 3> init({batch, dim, width - 1}, kChannelFirst, 1, "initial_state");
      Stored<T, 3> full_out({batch, dim, seqlen}, kChannelLast, 1, "out");
      Stored<T, 3> full_fin({batch, dim, width - 1}, kChannelFirst, 1, "final_state");
      x.randomize(100 + width * 8 + options);
      w.randomize(200 + width, 0.5f);
      bias.randomize(300 + width);
      init.randomize(400 + width);
      moss::CausalConv1dArgs<T> a;
      a.x = x.cview();
      a.weight = w.cview();
      if (has_bias) a.bias = bias.cview();
      a.silu = silu;
      if (has_init) a.initial_state = init.cview();
      a.out = full_out.view;
      a.final_state = full_fin.view;
      moss::causal_conv1d(moss::Host{}, a);

      // The decode state starts as the initial state (or zeros) and takes one token at a time.
      Stored<T, 3> state({batch, dim, width - 1}, kChannelFirst, 1, "state");
      for (std::size_t i = 0; i < state.storage.size(); ++i)
        state.storage[i] = has_init ? init.storage[i] : moss::from_float<T>(0.0f);
      Stored<T, 3> step_out({batch, dim, seqlen}, kChannelLast, 1, "out");
      step_out.poison();
      for (index_t t = 0; t < seqlen; ++t) {
        moss::CausalConv1dStepArgs<T> s;
        s.state = state.view;
        s.x = ConstView<T, 2>(x.view.data + t * x.view.stride[2], {batch, dim}, {x.view.stride[0], x.view.stride[1]},
                              "x");
        s.weight = a.weight;
        s.bias = a.bias;
        s.silu = silu;
        s.out = TensorView<T, 2>(step_out.view.data + t * step_out.view.stride[2], {batch, dim},
                                 {step_out.view.stride[0], step_out.view.stride[1]}, "out");
        moss::causal_conv1d_step(moss::Host{}, s);
      }
      // Same float32 operations in the same order: equal up to how the compiler contracts them.
      REQUIRE(moss::test::rel_l2(values(step_out.view), values(full_out.view)) <= 1e-6);
      REQUIRE(values(state.view) == values(full_fin.view));
    }
  }
}

TEMPLATE_TEST_CASE("causal_conv1d over two chunks equals one pass", "[host]", float, moss::f16) {
  using T = TestType;
  const index_t batch = 2, dim = 4, seqlen = 13;
  for (index_t width = 1; width <= 5; ++width) {
    for (index_t split : {0, 1, 2, 3, 5, 12, 13}) {
      for (int options = 0; options < 4; ++options) {
        const bool silu = options & 1, has_init = options & 2;
        CAPTURE(width, split, silu, has_init);
        Stored<T, 3> x({batch, dim, seqlen}, kChannelFirst, 1, "x");
        Stored<T, 2> w({dim, width}, kRowMajor2, 1, "weight");
        Stored<T, 1> bias({dim}, kVector, 1, "bias");
        Stored<T, 3> init({batch, dim, width - 1}, kChannelLast, 1, "initial_state");
        x.randomize(500 + width * 16 + split);
        w.randomize(600 + width, 0.5f);
        bias.randomize(700 + width);
        init.randomize(800 + width);
        auto args = [&](index_t t0, index_t len, ConstView<T, 3> initial, TensorView<T, 3> out,
                        TensorView<T, 3> final_state) {
          moss::CausalConv1dArgs<T> a;
          a.x = ConstView<T, 3>(x.view.data + t0 * x.view.stride[2], {batch, dim, len}, x.view.stride, "x");
          a.weight = w.cview();
          a.bias = bias.cview();
          a.silu = silu;
          a.initial_state = initial;
          a.out = TensorView<T, 3>(out.data + t0 * out.stride[2], {batch, dim, len}, out.stride, "out");
          a.final_state = final_state;
          return a;
        };
        const ConstView<T, 3> initial = has_init ? init.cview() : ConstView<T, 3>{};
        Stored<T, 3> whole_out({batch, dim, seqlen}, kChannelFirst, 1, "out");
        Stored<T, 3> whole_fin({batch, dim, width - 1}, kChannelFirst, 1, "final_state");
        moss::causal_conv1d(moss::Host{}, args(0, seqlen, initial, whole_out.view, whole_fin.view));

        Stored<T, 3> parts_out({batch, dim, seqlen}, kChannelFirst, 1, "out");
        Stored<T, 3> mid({batch, dim, width - 1}, kChannelLast, 1, "mid_state");
        Stored<T, 3> parts_fin({batch, dim, width - 1}, kChannelFirst, 1, "final_state");
        parts_out.poison();
        moss::causal_conv1d(moss::Host{}, args(0, split, initial, parts_out.view, mid.view));
        moss::causal_conv1d(moss::Host{}, args(split, seqlen - split, mid.cview(), parts_out.view, parts_fin.view));
        REQUIRE(moss::test::rel_l2(values(parts_out.view), values(whole_out.view)) <= 1e-6);
        REQUIRE(values(parts_fin.view) == values(whole_fin.view));
      }
    }
  }
}

TEST_CASE("causal_conv1d validation names the op, the tensor and both shapes", "[host]") {
  const index_t batch = 2, dim = 3, width = 4, seqlen = 5;
  std::vector<float> x(batch * dim * seqlen, 1.0f), w(dim * width, 1.0f), bias(dim), init(batch * dim * (width - 1)),
      out(batch * dim * seqlen), fin(batch * dim * (width - 1));
  moss::CausalConv1dArgs<float> a;
  a.x = ConstView<float, 3>(x.data(), {batch, dim, seqlen}, "x");
  a.weight = ConstView<float, 2>(w.data(), {dim, width}, "weight");
  a.bias = ConstView<float, 1>(bias.data(), {dim}, "bias");
  a.initial_state = ConstView<float, 3>(init.data(), {batch, dim, width - 1}, "initial_state");
  a.out = TensorView<float, 3>(out.data(), {batch, dim, seqlen}, "out");
  a.final_state = TensorView<float, 3>(fin.data(), {batch, dim, width - 1}, "final_state");
  const moss::Host host;
  REQUIRE_NOTHROW(moss::causal_conv1d(host, a));
  auto b = a;

  SECTION("dim 0") {
    b.weight = ConstView<float, 2>(w.data(), {0, width}, "weight");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::config_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("causal_conv1d: weight is [0, 4] (dim, W) but dim must be at least 1"));
  }
  SECTION("W 0") {
    b.weight = ConstView<float, 2>(w.data(), {dim, 0}, "weight");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::config_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("filter width W must be at least 1"));
  }
  SECTION("x with another dim") {
    b.x = ConstView<float, 3>(x.data(), {batch, dim + 1, 2}, "x");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("causal_conv1d: x is [2, 4, 2] (batch, dim, L) but expected [*, 3, *]"));
  }
  SECTION("out with another length") {
    b.out = TensorView<float, 3>(out.data(), {batch, dim, seqlen - 1}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("out is [2, 3, 4] (batch, dim, L) but expected [2, 3, 5]"));
  }
  SECTION("bias of the wrong size") {
    b.bias = ConstView<float, 1>(bias.data(), {dim - 1}, "bias");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("bias is [2] (dim) but expected [3]"));
  }
  SECTION("initial state with W columns") {
    b.initial_state = ConstView<float, 3>(init.data(), {batch, dim, 2}, "initial_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("initial_state is [2, 3, 2] (batch, dim, W-1) but expected [2, 3, 3]"));
  }
  SECTION("final state of another batch") {
    b.final_state = TensorView<float, 3>(fin.data(), {1, dim, width - 1}, "final_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("final_state is [1, 3, 3] (batch, dim, W-1) but expected [2, 3, 3]"));
  }
  SECTION("negative stride") {
    b.x = ConstView<float, 3>(x.data() + x.size() - 1, {batch, dim, seqlen}, {-dim * seqlen, -seqlen, -1}, "x");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("x has negative stride"));
  }
  SECTION("null data") {
    b.out = TensorView<float, 3>(nullptr, {batch, dim, seqlen}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("out [2, 3, 5] has no data"));
  }
  SECTION("out aliases x") {
    b.out = TensorView<float, 3>(x.data(), {batch, dim, seqlen}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("out [2, 3, 5] overlaps x [2, 3, 5]"));
  }
  SECTION("out overlaps x partly (in place one step later)") {
    b.out = TensorView<float, 3>(x.data() + 1, {batch, dim, seqlen - 1}, {dim * seqlen, seqlen, 1}, "out");
    b.x = ConstView<float, 3>(x.data(), {batch, dim, seqlen - 1}, {dim * seqlen, seqlen, 1}, "x");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("out [2, 3, 4] overlaps x"));
  }
  SECTION("final state aliases the initial state") {
    b.final_state = TensorView<float, 3>(init.data(), {batch, dim, width - 1}, "final_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("final_state [2, 3, 3] overlaps initial_state"));
  }
  SECTION("final state inside out") {
    b.final_state = TensorView<float, 3>(out.data(), {batch, dim, width - 1}, "final_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("out [2, 3, 5] overlaps final_state"));
  }
  SECTION("out overlaps the weight") {
    b.weight = ConstView<float, 2>(out.data(), {dim, width}, "weight");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("out [2, 3, 5] overlaps weight [3, 4]"));
  }
  SECTION("out with a zero stride") {
    b.out = TensorView<float, 3>(out.data(), {batch, dim, seqlen}, {dim * seqlen, seqlen, 0}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(
        moss::causal_conv1d(host, b),
        ContainsSubstring("out [2, 3, 5] with strides [15, 5, 0] may reach some memory more than once"));
  }
  SECTION("final state rows that overlap each other") {
    b.final_state = TensorView<float, 3>(fin.data(), {batch, dim, width - 1}, {dim * (width - 1), 2, 1}, "final_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b),
                        ContainsSubstring("final_state [2, 3, 3] with strides [9, 2, 1]"));
  }
  SECTION("an in_proj-style slice is a valid output") {
    std::vector<float> wide(batch * seqlen * 2 * dim);
    b.out = TensorView<float, 3>(wide.data(), {batch, dim, seqlen}, {seqlen * 2 * dim, 1, 2 * dim}, "out");
    REQUIRE_NOTHROW(moss::causal_conv1d(host, b));
  }
  SECTION("unnamed views are called by their argument name") {
    b.out = TensorView<float, 3>(out.data(), {batch, dim, 1});
    REQUIRE_THROWS_WITH(moss::causal_conv1d(host, b), ContainsSubstring("causal_conv1d: out is [2, 3, 1]"));
  }
  SECTION("an error leaves the outputs unwritten") {
    std::fill(out.begin(), out.end(), -7.0f);
    b.final_state = TensorView<float, 3>(fin.data(), {batch, dim, 1}, "final_state");
    REQUIRE_THROWS_AS(moss::causal_conv1d(host, b), moss::shape_error);
    REQUIRE(std::all_of(out.begin(), out.end(), [](float v) { return v == -7.0f; }));
  }
}

TEST_CASE("causal_conv1d_step validation", "[host]") {
  const index_t batch = 2, dim = 3, width = 4;
  std::vector<float> state(batch * dim * (width - 1)), x(batch * dim), w(dim * width), bias(dim), out(batch * dim);
  moss::CausalConv1dStepArgs<float> a;
  a.state = TensorView<float, 3>(state.data(), {batch, dim, width - 1}, "state");
  a.x = ConstView<float, 2>(x.data(), {batch, dim}, "x");
  a.weight = ConstView<float, 2>(w.data(), {dim, width}, "weight");
  a.bias = ConstView<float, 1>(bias.data(), {dim}, "bias");
  a.out = TensorView<float, 2>(out.data(), {batch, dim}, "out");
  const moss::Host host;
  REQUIRE_NOTHROW(moss::causal_conv1d_step(host, a));
  auto b = a;

  SECTION("W 0") {
    b.weight = ConstView<float, 2>(w.data(), {dim, 0}, "weight");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::config_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b),
                        ContainsSubstring("causal_conv1d_step: weight is [3, 0] (dim, W) but the filter width W"));
  }
  SECTION("state with W columns") {
    b.state = TensorView<float, 3>(state.data(), {batch, dim, 2}, "state");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b),
                        ContainsSubstring("state is [2, 3, 2] (batch, dim, W-1) but expected [2, 3, 3]"));
  }
  SECTION("x with another dim") {
    b.x = ConstView<float, 2>(x.data(), {batch, 2}, "x");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b),
                        ContainsSubstring("x is [2, 2] (batch, dim) but expected [*, 3]"));
  }
  SECTION("out of another batch") {
    b.out = TensorView<float, 2>(out.data(), {1, dim}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b),
                        ContainsSubstring("out is [1, 3] (batch, dim) but expected [2, 3]"));
  }
  SECTION("bias of the wrong size") {
    b.bias = ConstView<float, 1>(bias.data(), {1}, "bias");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("bias is [1] (dim) but expected [3]"));
  }
  SECTION("null state") {
    b.state = TensorView<float, 3>(nullptr, {batch, dim, width - 1}, "state");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("state [2, 3, 3] has no data"));
  }
  SECTION("out aliases x") {
    b.out = TensorView<float, 2>(x.data(), {batch, dim}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("out [2, 3] overlaps x [2, 3]"));
  }
  SECTION("out overlaps the state") {
    b.out = TensorView<float, 2>(state.data() + 1, {batch, dim}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("out [2, 3] overlaps state"));
  }
  SECTION("a state whose columns overlap") {
    b.state = TensorView<float, 3>(state.data(), {batch, dim, width - 1}, {dim * (width - 1), width - 1, 0}, "state");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("state [2, 3, 3] with strides [9, 3, 0]"));
  }
  SECTION("out with a zero batch stride") {
    b.out = TensorView<float, 2>(out.data(), {batch, dim}, {0, 1}, "out");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("may reach some memory more than once"));
  }
  SECTION("the state overlaps x") {
    b.x = ConstView<float, 2>(state.data(), {batch, dim}, "x");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("state [2, 3, 3] overlaps x [2, 3]"));
  }
  SECTION("the state overlaps the weight") {
    b.weight = ConstView<float, 2>(state.data(), {dim, width}, "weight");
    REQUIRE_THROWS_AS(moss::causal_conv1d_step(host, b), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_step(host, b), ContainsSubstring("state [2, 3, 3] overlaps weight"));
  }
}

TEST_CASE("causal_conv1d_step: hand-computed W = 3 over three tokens", "[host]") {
  // w = (1, 2, 3), bias 1, state starts (4, 5): token 6 → 1 + 4 + 10 + 18 = 33, state (5, 6);
  // token 7 → 1 + 5 + 12 + 21 = 39, state (6, 7); token -1 → 1 + 6 + 14 − 3 = 18, state (7, −1).
  std::vector<float> state{4, 5}, w{1, 2, 3}, bias{1}, x(1), out(1);
  moss::CausalConv1dStepArgs<float> a;
  a.state = TensorView<float, 3>(state.data(), {1, 1, 2}, "state");
  a.x = ConstView<float, 2>(x.data(), {1, 1}, "x");
  a.weight = ConstView<float, 2>(w.data(), {1, 3}, "weight");
  a.bias = ConstView<float, 1>(bias.data(), {1}, "bias");
  a.out = TensorView<float, 2>(out.data(), {1, 1}, "out");
  const float tokens[3] = {6, 7, -1}, outs[3] = {33, 39, 18};
  const std::vector<float> states[3] = {{5, 6}, {6, 7}, {7, -1}};
  for (int i = 0; i < 3; ++i) {
    x[0] = tokens[i];
    moss::causal_conv1d_step(moss::Host{}, a);
    CHECK(out[0] == outs[i]);
    CHECK(state == states[i]);
  }
}

TEST_CASE("causal_conv1d: the CUDA width list is checked in backend-neutral code", "[host]") {
  for (int w : moss::kCausalConv1dCudaWidths)
    REQUIRE_NOTHROW(moss::expect_causal_conv1d_cuda_width(w, "causal_conv1d"));
  REQUIRE_THROWS_AS(moss::expect_causal_conv1d_cuda_width(5, "causal_conv1d"), moss::unsupported_error);
  REQUIRE_THROWS_WITH(moss::expect_causal_conv1d_cuda_width(1, "causal_conv1d"),
                      ContainsSubstring("causal_conv1d: the CUDA kernels do not support filter width W = 1") &&
                          ContainsSubstring("supported on CUDA: W = 2, 3, 4"));
}
