// tests/layers/moe_reference.hpp: independent float64 references of the sparse layers
// (docs/math.md §2–3): the MoE feed-forward layer and the Routing Mamba (RoM) mixer, written
// from the formulas without any moss layer or expert op.
//
// Only one thing comes from the library: the float32 router logits, computed by `moss::route`
// (bit-exact on every backend, docs/math.md §2.1), so a reference and a layer rank the same
// numbers and a near-tie cannot make a test flaky. Selection, weights, capacity, the experts,
// the conv, the scan and every sum are recomputed here in double. Which projections a RoM layer
// routes, which router routes each and where g multiplies are read from the layer's policy
// types (moss/policy/rom.hpp), so a scope or placement of one's own is checked by the same
// reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "layers/mamba_reference.hpp"
#include "moss/layers/routed_mamba.hpp"
#include "moss/ops/router.hpp"
#include "moss/policy/router.hpp"
#include "moss_test.hpp"

namespace moss::test {

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// The float32 logits (tokens, X) of router weight `w` (X, D) for `x` (tokens, D), as the
/// layer computes them (moss::route on the host; the selection it also makes is ignored).
template <class T>
std::vector<float> layer_logits(const T* x, index_t tokens, index_t D, const std::vector<float>& w, index_t X) {
  std::vector<float> logits(static_cast<std::size_t>(tokens * X));
  std::vector<std::int32_t> expert(static_cast<std::size_t>(tokens));
  std::vector<float> gate(static_cast<std::size_t>(tokens));
  RouteArgs<T, TopK<1>> a;
  a.x = ConstView<T, 2>(x, {tokens, D}, "x");
  a.weight = ConstView<float, 2>(w.data(), {X, D}, "router.weight");
  a.logits = TensorView<float, 2>(logits.data(), {tokens, X}, "logits");
  a.expert = TensorView<std::int32_t, 2>(expert.data(), {tokens, 1}, "expert");
  a.gate = TensorView<float, 2>(gate.data(), {tokens, 1}, "gate");
  route(Host{}, a);
  return logits;
}

/// How the reference turns logits into a selection and combine weights (docs/math.md §2.2).
enum class RefRouter {
  top1_switch,   ///< argmax, g = softmax[e]
  top_k,         ///< K largest, g = softmax of each
  top_k_renorm,  ///< K largest, g = softmax renormalised over the K
  sinkhorn,      ///< argmax of the given scores (logits in inference mode), g = sigmoid(logit_e)
};

/// One (token, slot) pair of a routing decision.
struct RefSlot {
  int expert = -1;       ///< the chosen expert
  double g = 0.0;        ///< its combine weight
  bool dropped = false;  ///< over capacity: contributes nothing
};

/// A routing decision of T tokens and K slots: slots[t·K + s].
struct RefRouting {
  index_t tokens = 0, k = 1, experts = 0;
  std::vector<RefSlot> slots;
  std::vector<std::int64_t> counts, kept;  ///< (X) before / after capacity
  std::int64_t dropped = 0;
  /// The smallest gap, over tokens, between the K-th and the (K+1)-th ranked score (how close
  /// a selection came to a tie; +inf for K = X; rows of equal scores are left out).
  double margin = std::numeric_limits<double>::infinity();
  const RefSlot& at(index_t t, index_t s) const { return slots[static_cast<std::size_t>(t * k + s)]; }
};

/// The reference's ranking and weights for router type R (its runtime settings included).
template <Router R>
RefRouter ref_router_kind(const R& r) {
  if constexpr (std::is_same_v<R, Top1Switch>) {
    return RefRouter::top1_switch;
  } else if constexpr (std::is_same_v<R, SinkhornTop1>) {
    return RefRouter::sinkhorn;
  } else {
    static_assert(
        requires { r.renormalize; }, "moe_reference.hpp: a router the reference does not know");
    return r.renormalize ? RefRouter::top_k_renorm : RefRouter::top_k;
  }
}

/// The K best experts by `scores` (one token, X entries): descending, ties → lowest index.
inline std::vector<int> ref_top_k(const double* scores, index_t X, index_t K) {
  std::vector<int> chosen;
  for (index_t s = 0; s < K; ++s) {
    int best = -1;
    for (int i = 0; i < static_cast<int>(X); ++i) {
      if (std::find(chosen.begin(), chosen.end(), i) != chosen.end()) continue;
      if (best < 0 || scores[i] > scores[best]) best = i;
    }
    chosen.push_back(best);
  }
  return chosen;
}

/// Routes T tokens from their float32 `logits` (tokens, X); `scores` (same shape, optional)
/// replaces the logits for ranking (the Sinkhorn-balanced matrix in training mode).
inline RefRouting ref_route(const std::vector<float>& logits, index_t tokens, index_t X, index_t K, RefRouter kind,
                            const std::vector<double>* scores = nullptr) {
  RefRouting r;
  r.tokens = tokens;
  r.k = K;
  r.experts = X;
  r.slots.resize(static_cast<std::size_t>(tokens * K));
  r.counts.assign(static_cast<std::size_t>(X), 0);
  r.kept.assign(static_cast<std::size_t>(X), 0);
  std::vector<double> l(static_cast<std::size_t>(X)), rank(static_cast<std::size_t>(X));
  for (index_t t = 0; t < tokens; ++t) {
    double m = -std::numeric_limits<double>::infinity();
    for (index_t i = 0; i < X; ++i) {
      l[i] = logits[t * X + i];
      rank[i] = scores ? (*scores)[t * X + i] : l[i];
      m = std::max(m, l[i]);
    }
    double z = 0;
    for (index_t i = 0; i < X; ++i) z += std::exp(l[i] - m);
    const std::vector<int> e = ref_top_k(rank.data(), X, K);
    // A row of equal scores (e.g. the logits of an all-zero input) is an exact tie that every
    // implementation resolves the same way (lowest index); it does not count as a near-tie.
    const bool all_equal = std::all_of(rank.begin(), rank.end(), [&](double v) { return v == rank[0]; });
    if (K < X && !all_equal) {
      const std::vector<int> next = ref_top_k(rank.data(), X, K + 1);
      r.margin = std::min(r.margin, rank[e[K - 1]] - rank[next[K]]);
    }
    double total = 0;
    for (index_t s = 0; s < K; ++s) {
      RefSlot& slot = r.slots[t * K + s];
      slot.expert = e[s];
      slot.g = kind == RefRouter::sinkhorn ? 1.0 / (1.0 + std::exp(-l[e[s]])) : std::exp(l[e[s]] - m) / z;
      total += slot.g;
    }
    if (kind == RefRouter::top_k_renorm)
      for (index_t s = 0; s < K; ++s) r.slots[t * K + s].g /= total;
  }
  for (const RefSlot& s : r.slots) ++r.counts[s.expert];
  r.kept = r.counts;
  return r;
}

/// Applies capacity factor `cf` (> 0) to `r`: C = max(1, ceil(cf·T·K/X)), pairs in slot-major
/// priority (every token's slot 0 in token order, then slot 1, ...), the rest dropped.
inline void ref_apply_capacity(RefRouting& r, double cf) {
  if (cf <= 0) return;
  const double c =
      std::ceil(cf * static_cast<double>(r.tokens) * static_cast<double>(r.k) / static_cast<double>(r.experts));
  const std::int64_t C = std::max<std::int64_t>(1, static_cast<std::int64_t>(c));
  r.kept.assign(static_cast<std::size_t>(r.experts), 0);
  r.dropped = 0;
  for (index_t s = 0; s < r.k; ++s)
    for (index_t t = 0; t < r.tokens; ++t) {
      RefSlot& slot = r.slots[t * r.k + s];
      if (r.kept[slot.expert] < C) {
        ++r.kept[slot.expert];
        slot.dropped = false;
      } else {
        slot.dropped = true;
        ++r.dropped;
      }
    }
}

/// The statistics a layer reports (docs/math.md §2.4), in double.
struct RefStats {
  double aux = 0, z = 0;
  std::vector<double> prob_mean;
};

/// aux = α·X·Σ f_i P_i with f_i = counts_i / (T·K) (before capacity), P_i = mean_t p_t[i];
/// z = β · mean_t logsumexp(logits_t)².
inline RefStats ref_stats(const std::vector<float>& logits, const RefRouting& r, double alpha, double beta,
                          bool has_aux = true) {
  const index_t T = r.tokens, X = r.experts;
  RefStats s;
  s.prob_mean.assign(static_cast<std::size_t>(X), 0.0);
  for (index_t t = 0; t < T; ++t) {
    double m = -std::numeric_limits<double>::infinity();
    for (index_t i = 0; i < X; ++i) m = std::max(m, static_cast<double>(logits[t * X + i]));
    double z = 0;
    for (index_t i = 0; i < X; ++i) z += std::exp(logits[t * X + i] - m);
    for (index_t i = 0; i < X; ++i) s.prob_mean[i] += std::exp(logits[t * X + i] - m) / z / static_cast<double>(T);
    const double lse = m + std::log(z);
    s.z += lse * lse / static_cast<double>(T);
  }
  s.z *= beta;
  double dot = 0;
  for (index_t i = 0; i < X; ++i)
    dot += static_cast<double>(r.counts[i]) / static_cast<double>(T * r.k) * s.prob_mean[i];
  s.aux = has_aux ? alpha * static_cast<double>(X) * dot : 0.0;
  return s;
}

/// The Sinkhorn-Knopp balanced matrix of exp(logits) (tokens, X) in double, as docs/math.md §2.2
/// describes it: alternate row and column normalisation from d1 = 1 until no column factor
/// moves by 1e-4 or more, at most 100 rounds (the same ε = 1e-8 guard as Megatron's).
inline std::vector<double> ref_sinkhorn(const std::vector<float>& logits, index_t T, index_t X) {
  std::vector<double> c(static_cast<std::size_t>(T * X));
  for (index_t t = 0; t < T; ++t) {
    double m = -std::numeric_limits<double>::infinity();
    for (index_t i = 0; i < X; ++i) m = std::max(m, static_cast<double>(logits[t * X + i]));
    for (index_t i = 0; i < X; ++i) c[t * X + i] = std::exp(logits[t * X + i] - m);
  }
  std::vector<double> d0(static_cast<std::size_t>(T), 1.0), d1(static_cast<std::size_t>(X), 1.0);
  const double eps = 1e-8;
  for (int round = 0; round < 100; ++round) {
    for (index_t t = 0; t < T; ++t) {
      double s = 0;
      for (index_t i = 0; i < X; ++i) s += d1[i] * c[t * X + i];
      d0[t] = 1.0 / (static_cast<double>(T) * (s + eps));
    }
    double change = 0;
    for (index_t i = 0; i < X; ++i) {
      double s = 0;
      for (index_t t = 0; t < T; ++t) s += d0[t] * c[t * X + i];
      const double next = 1.0 / (static_cast<double>(X) * (s + eps));
      change = std::max(change, std::fabs(next - d1[i]));
      d1[i] = next;
    }
    if (change < 1e-4) break;
  }
  for (index_t t = 0; t < T; ++t)
    for (index_t i = 0; i < X; ++i) c[t * X + i] *= d0[t] * d1[i];
  return c;
}

// ---------------------------------------------------------------------------------------------
// MoE feed-forward
// ---------------------------------------------------------------------------------------------

enum class RefAct { relu, gelu, silu };

inline double ref_act(RefAct a, double x) {
  switch (a) {
    case RefAct::relu:
      return x > 0 ? x : 0.0;
    case RefAct::gelu:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case RefAct::silu:
      return x / (1.0 + std::exp(-x));
  }
  return 0;
}

/// X feed-forward experts in double: wi (X, F, D) (GatedMlp: the gate), up (X, F, D) when
/// gated, wo (X, D, F) (GatedMlp: down).
struct FfnRefWeights {
  index_t X = 0, D = 0, F = 0;
  bool gated = false;
  RefAct act = RefAct::relu;
  std::vector<double> wi, up, wo;
};

/// out (D) = expert e applied to x (D).
inline void ref_expert(const FfnRefWeights& w, int e, const double* x, double* out) {
  const index_t D = w.D, F = w.F;
  std::vector<double> h(static_cast<std::size_t>(F));
  for (index_t f = 0; f < F; ++f) {
    double a = 0, u = 0;
    for (index_t i = 0; i < D; ++i) {
      a += w.wi[(e * F + f) * D + i] * x[i];
      if (w.gated) u += w.up[(e * F + f) * D + i] * x[i];
    }
    h[f] = w.gated ? ref_act(w.act, a) * u : ref_act(w.act, a);
  }
  for (index_t o = 0; o < D; ++o) {
    double s = 0;
    for (index_t f = 0; f < F; ++f) s += w.wo[(e * D + o) * F + f] * h[f];
    out[o] = s;
  }
}

/// y_t = Σ_{kept slots s} g_s · Expert_{e_s}(x_t) for x (tokens, D).
inline std::vector<double> ref_moe_ffn(const FfnRefWeights& w, const std::vector<double>& x, const RefRouting& r) {
  const index_t D = w.D;
  std::vector<double> out(static_cast<std::size_t>(r.tokens * D), 0.0), y(static_cast<std::size_t>(D));
  for (index_t t = 0; t < r.tokens; ++t)
    for (index_t s = 0; s < r.k; ++s) {
      const RefSlot& slot = r.at(t, s);
      if (slot.dropped) continue;
      ref_expert(w, slot.expert, x.data() + t * D, y.data());
      for (index_t o = 0; o < D; ++o) out[t * D + o] += slot.g * y[o];
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Routing Mamba (docs/math.md §3)
// ---------------------------------------------------------------------------------------------

/// A RoM mixer's weights in double. A routed projection holds X matrices, a dense one holds 1:
/// conv_proj (X|1, ED, D), gate_proj (X|1, ED, D), out_proj (X|1, D, ED); the shared core as
/// in dense Mamba (conv_w (ED, W), conv_b (ED), x_proj (R+2N, ED), dt_proj (ED, R), dt_bias,
/// A_log (ED, N), Dskip (ED)).
struct RomRefWeights {
  index_t D = 0, ED = 0, N = 0, W = 0, R = 0, X = 0;
  bool conv_routed = true, gate_routed = true, out_routed = true;
  std::vector<double> conv_proj, gate_proj, out_proj;
  std::vector<double> conv_w, conv_b, x_proj, dt_proj, dt_bias, A_log, Dskip;
};

/// The policy types of a RoutedMamba type.
template <class Layer>
struct RomTypes;
template <Router R, RoutingScope S, ExpertCount E, StorageType T, class V, class Scan>
struct RomTypes<RoutedMamba<R, S, E, T, V, Scan>> {
  using router = R;
  using scope = S;
  using variant = V;
  using weight = typename V::weight;
  using value_type = T;
};

/// The RoM layer's parameters in double, following routed_mamba.hpp's layout: with Conv and
/// Gate routed by one decision, expert i's (2·ED, D) in_proj has the Conv rows first.
template <class Layer>
RomRefWeights rom_ref_weights(const Layer& layer, const typename Layer::Params& p) {
  using V = typename RomTypes<Layer>::variant;
  const MambaDims& d = layer.dims();
  RomRefWeights w;
  w.D = d.d_model;
  w.ED = d.d_inner;
  w.N = d.d_state;
  w.W = d.d_conv;
  w.R = d.dt_rank;
  w.X = layer.num_experts();
  w.conv_routed = V::template routes<Conv>;
  w.gate_routed = V::template routes<Gate>;
  w.out_routed = V::template routes<Out>;
  const index_t D = w.D, ED = w.ED, X = w.X;
  if constexpr (Layer::kFusedIn) {
    REQUIRE(p.in.weight.shape() == Extents<3>{X, 2 * ED, D});
    REQUIRE_FALSE(p.conv.weight.present());
    REQUIRE_FALSE(p.gate.weight.present());
    const std::vector<double> in = widen(p.in.weight);
    w.conv_proj.resize(static_cast<std::size_t>(X * ED * D));
    w.gate_proj.resize(static_cast<std::size_t>(X * ED * D));
    for (index_t e = 0; e < X; ++e) {
      std::copy_n(in.begin() + e * 2 * ED * D, ED * D, w.conv_proj.begin() + e * ED * D);
      std::copy_n(in.begin() + e * 2 * ED * D + ED * D, ED * D, w.gate_proj.begin() + e * ED * D);
    }
  } else {
    REQUIRE_FALSE(p.in.weight.present());
    REQUIRE(p.conv.weight.shape() == Extents<3>{w.conv_routed ? X : 1, ED, D});
    REQUIRE(p.gate.weight.shape() == Extents<3>{w.gate_routed ? X : 1, ED, D});
    w.conv_proj = widen(p.conv.weight);
    w.gate_proj = widen(p.gate.weight);
  }
  REQUIRE(p.out.weight.shape() == Extents<3>{w.out_routed ? X : 1, D, ED});
  w.out_proj = widen(p.out.weight);
  // RoM's projection experts have no biases (use_bias is refused).
  for (const auto* e : {&p.in, &p.conv, &p.gate, &p.out}) REQUIRE_FALSE(e->bias.present());
  w.conv_w = widen(p.core.conv_weight);
  w.conv_b = widen(p.core.conv_bias);
  w.x_proj = widen(p.core.x_proj);
  w.dt_proj = widen(p.core.dt_proj);
  w.dt_bias = widen(p.core.dt_bias);
  w.A_log = widen(p.core.A_log);
  w.Dskip = widen(p.core.D);
  return w;
}

/// Random weights with enough spread that routing is decisive and the conv and scan see O(1)
/// inputs (init's N(0, 0.02²) projections would leave the mixer almost linear).
template <class Layer>
typename Layer::Params rom_params(const Layer& layer, std::uint64_t seed) {
  const index_t D = layer.dims().d_model, ED = layer.dims().d_inner;
  Rng rng(seed);
  auto p = layer.init(Host{}, rng, 2);
  std::uint64_t s = seed;
  // Routers on the layer input (X, D) first, then a router on Out's input (X, ED).
  for (int i = 0; i < Layer::router_count(); ++i)
    if (p.routers[i].size(1) == D) fill_normal(p.routers[i], ++s, 0.6);
  for (int i = 0; i < Layer::router_count(); ++i)
    if (p.routers[i].size(1) == ED) fill_normal(p.routers[i], ++s, 2.0 / std::sqrt(static_cast<double>(ED)));
  for (auto* w : {&p.in.weight, &p.conv.weight, &p.gate.weight})
    if (w->present()) fill_normal(*w, ++s, 1.0 / std::sqrt(static_cast<double>(D)));
  fill_normal(p.out.weight, ++s, 1.0 / std::sqrt(static_cast<double>(ED)));
  return p;
}

/// Decode states in double: conv (batch, ED, W−1) oldest first, ssm (batch, ED, N).
struct RefStates {
  std::vector<double> conv, ssm;
};

/// The shared core of a Mamba mixer: m (tokens, ED) = y ⊙ silu(z) from the projections' u, z
/// (tokens, ED each), over `batch` sequences of length L; starts from `init` (zero when null)
/// and leaves the final states in `final_states` when given.
inline std::vector<double> ref_core(const RomRefWeights& w, const std::vector<double>& u, const std::vector<double>& z,
                                    index_t batch, index_t L, const RefStates* init = nullptr,
                                    RefStates* final_states = nullptr) {
  const index_t ED = w.ED, N = w.N, W = w.W, R = w.R;
  auto silu = [](double v) { return v / (1 + std::exp(-v)); };
  std::vector<double> m(static_cast<std::size_t>(batch * L * ED));
  if (final_states) {
    final_states->conv.assign(static_cast<std::size_t>(batch * ED * (W - 1)), 0.0);
    final_states->ssm.assign(static_cast<std::size_t>(batch * ED * N), 0.0);
  }
  for (index_t b = 0; b < batch; ++b) {
    std::vector<double> v(static_cast<std::size_t>(L * ED));
    for (index_t c = 0; c < ED; ++c) {
      auto hist = [&](index_t t) -> double {  // conv input at time t; t < 0 reads the initial state
        if (t >= 0) return u[(b * L + t) * ED + c];
        if (!init) return 0.0;
        return init->conv[(b * ED + c) * (W - 1) + (W - 1 + t)];
      };
      for (index_t t = 0; t < L; ++t) {
        double s = w.conv_b.empty() ? 0.0 : w.conv_b[c];
        for (index_t k = 0; k < W; ++k) s += w.conv_w[c * W + k] * hist(t - (W - 1) + k);
        v[t * ED + c] = silu(s);
      }
      if (final_states)
        for (index_t k = 0; k < W - 1; ++k) final_states->conv[(b * ED + c) * (W - 1) + k] = hist(L - (W - 1) + k);
    }
    std::vector<double> h(static_cast<std::size_t>(ED * N), 0.0);
    if (init) std::copy_n(init->ssm.begin() + b * ED * N, ED * N, h.begin());
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> xd(static_cast<std::size_t>(R + 2 * N), 0.0);
      for (index_t o = 0; o < R + 2 * N; ++o)
        for (index_t i = 0; i < ED; ++i) xd[o] += w.x_proj[o * ED + i] * v[t * ED + i];
      for (index_t c = 0; c < ED; ++c) {
        double dt = w.dt_bias[c];
        for (index_t r = 0; r < R; ++r) dt += w.dt_proj[c * R + r] * xd[r];
        dt = dt > 20 ? dt : std::log1p(std::exp(dt));
        double acc = 0;
        for (index_t n = 0; n < N; ++n) {
          const double A = -std::exp(w.A_log[c * N + n]);
          double& hs = h[c * N + n];
          hs = std::exp(dt * A) * hs + dt * xd[R + n] * v[t * ED + c];
          acc += xd[R + N + n] * hs;
        }
        acc += w.Dskip[c] * v[t * ED + c];
        m[(b * L + t) * ED + c] = acc * silu(z[(b * L + t) * ED + c]);
      }
    }
    if (final_states) std::copy(h.begin(), h.end(), final_states->ssm.begin() + b * ED * N);
  }
  return m;
}

/// out (tokens, rows) = Σ_{kept slots} (g ·) W_e x for a routed projection (`r` given), or
/// W x for a dense one (`r` null); W is (X|1, rows, cols), x (tokens, cols).
inline std::vector<double> ref_projection(const std::vector<double>& Wt, index_t rows, index_t cols,
                                          const std::vector<double>& x, index_t tokens, const RefRouting* r,
                                          bool weighted) {
  std::vector<double> out(static_cast<std::size_t>(tokens * rows), 0.0);
  auto apply = [&](index_t t, index_t e, double scale) {
    for (index_t o = 0; o < rows; ++o) {
      double s = 0;
      for (index_t i = 0; i < cols; ++i) s += Wt[(e * rows + o) * cols + i] * x[t * cols + i];
      out[t * rows + o] += scale * s;
    }
  };
  for (index_t t = 0; t < tokens; ++t) {
    if (!r) {
      apply(t, 0, 1.0);
      continue;
    }
    for (index_t s = 0; s < r->k; ++s) {
      const RefSlot& slot = r->at(t, s);
      if (!slot.dropped) apply(t, slot.expert, weighted ? slot.g : 1.0);
    }
  }
  return out;
}

/// Where the combine weight multiplies (docs/math.md §3's table): whether g multiplies each
/// projection's expert outputs (only routed projections are ever weighted).
struct RefPlacement {
  bool conv = false, gate = false, out = true;
  /// What scope S says for placement W (SharedRouting: the placement's table row; a scope
  /// with a router per projection weights each routed projection by its own router).
  template <class S, class W>
  static RefPlacement of() {
    return {S::template weighs<W, Conv>, S::template weighs<W, Gate>, S::template weighs<W, Out>};
  }
  bool operator==(const RefPlacement&) const = default;
};

/// The routing of a RoM call: the Conv and Gate decisions (the same object for shared routing)
/// and a function that routes Out Proj given m (tokens, ED) (shared routing returns the input
/// decision; per-projection routing runs the Out router on m).
struct RomRefRouting {
  const RefRouting* conv = nullptr;
  const RefRouting* gate = nullptr;
  std::function<RefRouting(const std::vector<double>& m)> out;
};

/// out (batch·L, D) of a RoM mixer on x (batch·L, D): u and z are the K routed outputs summed
/// before the conv (docs/math.md §3), the core runs once on that one stream, then Out Proj.
inline std::vector<double> ref_rom(const RomRefWeights& w, const std::vector<double>& x, index_t batch, index_t L,
                                   const RomRefRouting& routing, RefPlacement place, const RefStates* init = nullptr,
                                   RefStates* final_states = nullptr, RefRouting* out_routing = nullptr) {
  const index_t D = w.D, ED = w.ED, tokens = batch * L;
  const std::vector<double> u =
      ref_projection(w.conv_proj, ED, D, x, tokens, w.conv_routed ? routing.conv : nullptr, place.conv);
  const std::vector<double> z =
      ref_projection(w.gate_proj, ED, D, x, tokens, w.gate_routed ? routing.gate : nullptr, place.gate);
  const std::vector<double> m = ref_core(w, u, z, batch, L, init, final_states);
  if (!w.out_routed) return ref_projection(w.out_proj, D, ED, m, tokens, nullptr, false);
  const RefRouting ro = routing.out(m);
  if (out_routing) *out_routing = ro;
  return ref_projection(w.out_proj, D, ED, m, tokens, &ro, place.out);
}

/// The wrong design docs/math.md §3 rules out, for showing that a test tells them apart: every
/// slot's expert output gets a conv and scan of its own (K streams), and the K mixer outputs
/// are summed after Out Proj. Shared routing, every projection routed.
inline std::vector<double> ref_rom_conv_per_slot(const RomRefWeights& w, const std::vector<double>& x, index_t batch,
                                                 index_t L, const RefRouting& r, RefPlacement place) {
  const index_t D = w.D, ED = w.ED, tokens = batch * L;
  std::vector<double> out(static_cast<std::size_t>(tokens * D), 0.0);
  for (index_t s = 0; s < r.k; ++s) {
    RefRouting one = r;  // slot s alone
    one.k = 1;
    one.slots.clear();
    for (index_t t = 0; t < tokens; ++t) one.slots.push_back(r.at(t, s));
    const auto u = ref_projection(w.conv_proj, ED, D, x, tokens, &one, place.conv);
    const auto z = ref_projection(w.gate_proj, ED, D, x, tokens, &one, place.gate);
    const auto m = ref_core(w, u, z, batch, L);
    const auto o = ref_projection(w.out_proj, D, ED, m, tokens, &one, place.out);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += o[i];
  }
  return out;
}

/// What the float64 RoM mixer decided besides the output.
struct RomRefResult {
  std::vector<double> out;
  std::vector<RefRouting> routings;        ///< one per router, in the order the layer reports them
  std::vector<std::vector<float>> logits;  ///< the float32 logits of each routing
  std::vector<std::string> router_names;   ///< each routing's router ("router", "router_out", ...)
  RomRefWeights weights;
  RefPlacement placement;
};

/// The name a RoM layer's report gives router `name`: "mixer" for the one shared "router",
/// "mixer.{name}" otherwise.
inline std::string rom_report_name(const std::string& name) {
  return name == "router" ? std::string("mixer") : "mixer." + name;
}

/// The float64 RoM mixer for `layer` (a RoutedMamba of a built-in router) with params `p` on x
/// (batch, L, D). Routing follows the layer's scope type: each routed projection's router (by
/// name) decides once per call from the layer's own float32 logits (docs/math.md §2.1) of the
/// layer input, or, for an Out router on Out's own input, of m = y ⊙ silu(z) rounded to T;
/// the capacity factor is the layer's. Routers are listed in dataflow order (Conv, Gate, Out).
/// `other_placement` replaces the layer's placement (to show that a test tells placements
/// apart); the result is then not the layer's function, and a near-tie of an Out router on its
/// own input is not refused.
template <class Layer, class T>
RomRefResult rom_reference(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x, index_t batch,
                           index_t L, const RefStates* init = nullptr, RefStates* final_states = nullptr,
                           std::optional<RefPlacement> other_placement = std::nullopt) {
  using S = typename RomTypes<Layer>::scope;
  using V = typename RomTypes<Layer>::variant;
  using W = typename RomTypes<Layer>::weight;
  using R = typename RomTypes<Layer>::router;
  static_assert(std::is_same_v<T, typename Layer::value_type>);
  const index_t D = layer.dims().d_model, ED = layer.dims().d_inner, X = layer.num_experts(), K = R::k;
  const index_t tokens = batch * L;
  const double cf = layer.settings().capacity_factor;
  const RefRouter kind = ref_router_kind(layer.router());
  RomRefResult res;
  res.weights = rom_ref_weights(layer, p);
  res.placement = other_placement ? *other_placement : RefPlacement::of<S, W>();

  // The distinct routers of the routed projections, in dataflow order.
  const std::string conv_router(S::template router<Conv>), gate_router(S::template router<Gate>),
      out_router(S::template router<Out>);
  const bool out_on_own_input = V::template routes<Out> && !S::template on_layer_input<Out>;
  std::vector<std::string> order;
  auto add = [&](bool routed, const std::string& name) {
    if (routed && std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
  };
  add(V::template routes<Conv>, conv_router);
  add(V::template routes<Gate>, gate_router);
  add(V::template routes<Out>, out_router);
  REQUIRE(static_cast<int>(order.size()) == Layer::router_count());
  auto weight_of = [&](const std::string& name) -> const Tensor<float, 2>& {
    for (int i = 0; i < Layer::router_count(); ++i)
      if (Layer::router_name_at(i) == name) return p.routers[static_cast<std::size_t>(i)];
    FAIL("the layer has no router named " << name);
    return p.routers[0];
  };
  auto route = [&](const auto* in, index_t width, const std::string& name, std::vector<float>& logits) {
    const Tensor<float, 2>& w = weight_of(name);
    REQUIRE(w.shape() == Extents<2>{X, width});
    logits = layer_logits(in, tokens, width, host_copy(w), X);
    RefRouting r = ref_route(logits, tokens, X, K, kind);
    ref_apply_capacity(r, cf);
    return r;
  };
  std::map<std::string, RefRouting> decided;
  for (const std::string& name : order) {
    if (out_on_own_input && name == out_router) continue;
    std::vector<float> logits;
    decided[name] = route(x.data(), D, name, logits);
    res.routings.push_back(decided[name]);
    res.logits.push_back(std::move(logits));
    res.router_names.push_back(name);
  }
  RomRefRouting rr;
  rr.conv = V::template routes<Conv> ? &decided.at(conv_router) : nullptr;
  rr.gate = V::template routes<Gate> ? &decided.at(gate_router) : nullptr;
  std::vector<float> out_logits;
  rr.out = [&](const std::vector<double>& m) {
    if (!out_on_own_input) return decided.at(out_router);
    // The Out router reads m = y ⊙ silu(z), which the layer holds in T.
    std::vector<T> mt(m.size());
    for (std::size_t i = 0; i < m.size(); ++i) mt[i] = from_float<T>(static_cast<float>(m[i]));
    return route(mt.data(), ED, out_router, out_logits);
  };
  RefRouting out_routing;
  res.out = ref_rom(res.weights, to_double(x), batch, L, rr, res.placement, init, final_states, &out_routing);
  if (out_on_own_input) {
    // m here and in the layer differ by rounding: the Out router must not sit on a near-tie.
    INFO("smallest top-K margin of the Out router's logits: " << out_routing.margin);
    if (!other_placement) REQUIRE(out_routing.margin > 1e-4);
    res.routings.push_back(out_routing);
    res.logits.push_back(out_logits);
    res.router_names.push_back(out_router);
  }
  return res;
}

}  // namespace moss::test
