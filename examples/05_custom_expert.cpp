// 05_custom_expert: writing one's own expert kind. An expert kind is one struct (see
// moss/layers/experts.hpp): its Params, init, load and save, and one `apply` written against
// moss::Dispatch (gather → GEMMs over each expert's rows → combine), so it runs routed in a
// MoeFeedForward or dense in a FeedForward, on the CPU and on the GPU, with no edit to moss.
// This one is a squared-ReLU MLP, wo · relu(wi · x)² (So et al. 2021, "Primer").
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "moss/moss.hpp"

/// relu(x)², an activation policy: the same MOSS_HD function runs in host loops and CUDA kernels.
struct SquaredRelu {
  static constexpr std::string_view name = "squared_relu";
  MOSS_HD static float apply(float x) {
    const float r = x > 0.0f ? x : (x != x ? x : 0.0f);  // NaN propagates
    return r * r;
  }
};

/// The squared-ReLU MLP expert: wo_e · relu(wi_e · x)², hidden width F.
/// Checkpoint names under the stack's base: wi.weight (X, F, D), wo.weight (X, D, F); a dense
/// stack (FeedForward) stores them without the expert axis.
struct SquaredReluMlp {
  static constexpr std::string_view name = "squared_relu_mlp";  // "expert" in config.json

  template <moss::StorageType T>
  struct Params {
    moss::Tensor<T, 3> wi;  // (X, F, D)
    moss::Tensor<T, 3> wo;  // (X, D, F)
  };

  /// wi N(0, 0.02²), wo N(0, (0.02 · out_scale)²).
  template <moss::StorageType T, class Backend>
  static Params<T> init(const Backend& backend, moss::Rng& rng, const moss::ExpertShape& s, const std::string& base) {
    return {moss::normal_tensor<T>(backend, rng, moss::Extents<3>{s.experts, s.hidden, s.in}, 0.02, base + "wi.weight"),
            moss::normal_tensor<T>(backend, rng, moss::Extents<3>{s.experts, s.out, s.hidden}, 0.02 * s.out_scale,
                                   base + "wo.weight")};
  }
  template <moss::StorageType T, class Backend, class Source>
  static Params<T> load(const Backend& backend, const Source& src, const std::string& prefix, const std::string& base,
                        const moss::ExpertShape& s) {
    auto read = [&](const std::string& leaf, moss::index_t rows, moss::index_t cols) {
      return moss::Tensor<T, 3>(moss::load_param<T>(backend, src, prefix + base + leaf, stored(s, rows, cols)),
                                {s.experts, rows, cols}, base + leaf);
    };
    return {read("wi.weight", s.hidden, s.in), read("wo.weight", s.out, s.hidden)};
  }
  template <class Backend, moss::StorageType T>
  static void save(const Backend& backend, const Params<T>& p, const moss::ExpertShape& s, moss::SafetensorsWriter& w,
                   const std::string& prefix) {
    for (const moss::Tensor<T, 3>* t : {&p.wi, &p.wo})
      moss::save_param(backend, w, prefix + t->name(), t->buffer(), stored(s, t->size(1), t->size(2)));
  }

  /// out = Σ_slots (g ·) wo_e · relu(wi_e · x_t)².
  template <class Backend, moss::StorageType T>
  static void apply(const Backend& backend, const Params<T>& p, const moss::Dispatch<T>& d, moss::ConstView<T, 2> x,
                    moss::TensorView<T, 2> out, moss::ColumnWeighting weighting) {
    moss::Buffer<T> xs, hs, ys;
    const moss::ConstView<T, 2> rows = d.gather(backend, x, xs);  // (rows, D), sorted by expert
    const moss::index_t R = d.rows(), F = p.wi.size(1);
    hs = backend.template alloc<T>(R * F);
    const moss::TensorView<T, 2> h = hs.template view<2>({R, F}, "hidden");
    d.linear(backend, rows, p.wi, {}, h);  // (rows, F): each expert's GEMM over its segment
    const moss::TensorView<T, 2> kept(h.data, {d.kept_rows(backend), F}, "hidden");
    moss::activation<SquaredRelu>(backend, moss::ActivationArgs<T>{kept, {}, kept});
    const moss::TensorView<T, 2> y = d.output_rows(backend, out, ys);  // (rows, D)
    d.linear(backend, h, p.wo, {}, y);
    d.combine(backend, y, out, weighting);  // out[t] = Σ_s g[t, s] · y[row(t, s)]
  }

 private:
  static std::vector<moss::index_t> stored(const moss::ExpertShape& s, moss::index_t rows, moss::index_t cols) {
    return s.stacked ? std::vector<moss::index_t>{s.experts, rows, cols} : std::vector<moss::index_t>{rows, cols};
  }
};
static_assert(moss::ExpertKind<SquaredReluMlp, float> && moss::ExpertKind<SquaredReluMlp, moss::bf16>);

/// Top-2 routing (renormalised) over 4 squared-ReLU experts.
using SquaredReluMoe = moss::MoeFeedForward<moss::TopK<2>, moss::Experts<4>, SquaredReluMlp, float>;

/// The layer's output computed by a plain host loop over tokens (float64 experts).
std::vector<double> host_loop(const SquaredReluMoe& layer, const std::vector<float>& router,
                              const std::vector<float>& wi, const std::vector<float>& wo, const std::vector<float>& x,
                              moss::index_t D) {
  const moss::index_t X = layer.num_experts(), F = layer.d_ff(), tokens = static_cast<moss::index_t>(x.size()) / D;
  std::vector<double> out(x.size(), 0.0);
  for (moss::index_t t = 0; t < tokens; ++t) {
    std::vector<float> logits(static_cast<std::size_t>(X));
    for (moss::index_t e = 0; e < X; ++e) {
      double s = 0;
      for (moss::index_t d = 0; d < D; ++d) s += double(router[e * D + d]) * x[t * D + d];
      logits[e] = static_cast<float>(s);
    }
    int experts[2];
    float weights[2];
    layer.router().select(logits.data(), logits.data(), static_cast<int>(X), experts, weights);
    for (int slot = 0; slot < 2; ++slot) {
      const moss::index_t e = experts[slot];
      for (moss::index_t f = 0; f < F; ++f) {
        double h = 0;
        for (moss::index_t d = 0; d < D; ++d) h += double(wi[(e * F + f) * D + d]) * x[t * D + d];
        h = h > 0 ? h * h : 0.0;
        for (moss::index_t d = 0; d < D; ++d) out[t * D + d] += weights[slot] * double(wo[(e * D + d) * F + f]) * h;
      }
    }
  }
  return out;
}

template <class T, std::size_t Rank, class Backend>
std::vector<T> to_host(const Backend& backend, const moss::Tensor<T, Rank>& t) {
  std::vector<T> v(static_cast<std::size_t>(t.numel()));
  moss::download(backend, v.data(), t.data(), t.numel());
  return v;
}

/// Runs the layer on `backend`, saves and reloads its weights, and checks it against the loop.
template <class Backend>
bool demo(const Backend& backend, const char* where) {
  constexpr moss::index_t D = 32, F = 64, tokens = 2 * 8;
  const SquaredReluMoe layer(D, F, /*num_experts=*/4, moss::TopK<2>{/*renormalize=*/true});
  moss::Rng rng(5);
  auto params = layer.init(backend, rng, /*n_layers=*/1);
  std::vector<float> x(static_cast<std::size_t>(tokens * D));
  for (auto& v : x) v = static_cast<float>(rng.normal());
  for (auto* w : {&params.experts.wi, &params.experts.wo}) {  // larger weights than init's, so outputs matter
    std::vector<float> big(static_cast<std::size_t>(w->numel()));
    for (auto& v : big) v = static_cast<float>(0.3 * rng.normal());
    *w = moss::tensor_of<float>(backend, w->shape(), big, w->name());
  }

  // Save under a block prefix and load back: the names are the struct's.
  const auto file = std::filesystem::temp_directory_path() / "moss_custom_expert_example.safetensors";
  moss::SafetensorsWriter writer;
  layer.save(backend, params, writer, "backbone.layers.1.mixer.");
  writer.write(file);
  const auto loaded = layer.load(backend, moss::SafetensorsFile(file.string()), "backbone.layers.1.mixer.");

  auto xd = moss::upload(backend, x.data(), static_cast<moss::index_t>(x.size()));
  auto y = backend.template alloc<float>(static_cast<moss::index_t>(x.size()));
  layer.forward(backend, loaded, moss::ConstView<float, 3>(xd.data(), {2, 8, D}, "x"),
                y.template view<3>({2, 8, D}, "y"));
  std::vector<float> got(x.size());
  moss::download(backend, got.data(), y.data(), y.size());

  const std::vector<double> want =
      host_loop(layer, to_host(backend, params.router), to_host(backend, params.experts.wi),
                to_host(backend, params.experts.wo), x, D);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  const double err = std::sqrt(num / den);
  const bool ok = err <= 1e-4;
  std::printf("%s: %s experts, saved to %s and loaded back; relative L2 error vs a host loop %.2e (%s)\n", where,
              std::string(SquaredReluMlp::name).c_str(), file.string().c_str(), err, ok ? "ok" : "MISMATCH");
  std::filesystem::remove(file);
  return ok;
}

int main() {
  bool ok = demo(moss::Host{}, "cpu");
#if defined(__CUDACC__)
  if (moss::cuda_device_count() > 0) {
    moss::CudaStream stream;
    ok = demo(moss::Cuda{stream.get()}, "cuda") && ok;
  }
#endif
  return ok ? 0 : 1;
}
