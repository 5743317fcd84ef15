// 04_custom_router: writing one's own router. A router is one struct whose `select` is MOSS_HD,
// so the CPU oracle and the CUDA router kernel run the same code. This one picks the top two
// experts but keeps the second only when its probability is at least half the first's (a
// "confident top-2"), renormalising the kept weights.
#include <cstdio>
#include <vector>

#include "moss/moss.hpp"

struct ConfidentTop2 {
  static constexpr int k = 2;                                 // slots per token (a dropped slot gets weight 0)
  static constexpr bool aux_loss = true;                      // the Switch load-balancing loss applies
  static constexpr std::string_view name = "confident_top2";  // its config.json name
  float ratio = 0.5f;

  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    moss::select_top_k<2>(scores, num_experts, experts);  // ties → lowest index, NaN last
    const float p0 = moss::softmax_at(logits, num_experts, experts[0]);
    const float p1 = moss::softmax_at(logits, num_experts, experts[1]);
    const bool keep = p1 >= ratio * p0;
    weights[0] = keep ? p0 / (p0 + p1) : 1.0f;
    weights[1] = keep ? p1 / (p0 + p1) : 0.0f;
  }
};
static_assert(moss::Router<ConfidentTop2>);

template <class Backend>
void demo(const Backend& backend, const char* where) {
  using Layer = moss::MoeFeedForward<ConfidentTop2, moss::Experts<4>, moss::GatedMlp<moss::Silu>, float>;
  const Layer layer(/*d_model=*/64, /*d_ff=*/128, /*num_experts=*/4);
  moss::Rng rng(11);
  const auto params = layer.init(backend, rng, /*n_layers=*/1);
  std::vector<float> x(3 * 10 * 64);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.normal());
  auto xd = moss::upload(backend, x.data(), static_cast<moss::index_t>(x.size()));
  auto y = backend.template alloc<float>(static_cast<moss::index_t>(x.size()));
  moss::RoutingReport report;
  layer.forward(backend, params, moss::ConstView<float, 3>(xd.data(), {3, 10, 64}, "x"),
                y.template view<3>({3, 10, 64}, "y"), nullptr, &report);
  const moss::RouterStats s = report.read().front();
  std::printf("%s: %s pairs per expert", where, std::string(ConfidentTop2::name).c_str());
  for (auto c : s.counts) std::printf(" %lld", static_cast<long long>(c));
  std::printf(", aux loss %.4f\n", s.aux_loss);
}

int main() {
  demo(moss::Host{}, "cpu");
#if defined(__CUDACC__)
  if (moss::cuda_device_count() > 0) demo(moss::Cuda{}, "cuda");
#endif
}
