// tests/train/trainer_test.cpp: `Trainer` on the host: a byte-level MambaLM learns a small text
// (the loss falls), a run stopped, saved and resumed continues with bitwise the losses of a run
// that never stopped, micro-batches accumulate, a bf16 model trains through float32 masters, and
// bad settings are named.
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "moss/io/checkpoint.hpp"
#include "moss/models/language_model.hpp"
#include "moss/train/data.hpp"
#include "moss/train/trainer.hpp"

namespace fs = std::filesystem;
using moss::ConstView;
using moss::Host;
using moss::index_t;

namespace {

/// A temporary folder removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("moss_trainer_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

/// A repetitive text file (learnable in a few dozen steps).
fs::path write_text(const fs::path& dir) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the cat sat on the mat. the dog sat on the log. ";
  const fs::path f = dir / "text.txt";
  std::ofstream(f) << text;
  return f;
}

moss::MambaConfig byte_config() {
  moss::MambaConfig c;
  c.d_model = 16;
  c.n_layers = 2;
  c.vocab_size = 256;
  c.d_state = 4;
  c.dt_rank = 2;
  return c;
}

moss::TrainerSettings settings() {
  moss::TrainerSettings s;
  s.schedule = {.lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 3, .total_steps = 40};
  s.weight_decay = 0.01;
  return s;
}

/// Runs `steps` steps, returning each step's loss.
template <class Model>
std::vector<double> run(moss::Trainer<Model>& trainer, moss::ByteCorpus& corpus, int steps, index_t batch,
                        index_t seq_len) {
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) {
    const auto ids = corpus.next_batch();
    losses.push_back(trainer.step({ConstView<std::int64_t, 2>(ids.data(), {batch, seq_len + 1}, "batch")}).loss);
  }
  return losses;
}

}  // namespace

TEST_CASE("Trainer: a byte-level MambaLM learns a text, and a resumed run continues bitwise",
          "[host][train][trainer]") {
  const TempDir tmp("resume");
  const fs::path file = write_text(tmp.path);
  const index_t batch = 4, seq_len = 32;
  const moss::ByteCorpusConfig data{
      .files = {file}, .val_fraction = 0.05, .batch = batch, .seq_len = seq_len, .seed = 9};

  // Run A: 30 steps without stopping.
  const moss::MambaLM<float> model(byte_config());
  auto params = model.init(Host{}, 1);
  moss::Trainer trainer(model, params, settings());
  moss::ByteCorpus corpus(data);
  const std::vector<double> a = run(trainer, corpus, 30, batch, seq_len);
  INFO("loss " << a.front() << " -> " << a.back());
  CHECK(a.back() < 0.6 * a.front());  // from ln 256 = 5.5 nats per byte
  CHECK(trainer.steps() == 30);

  // Run B: 6 steps, save, load into a new model and trainer, 24 more.
  const fs::path ckpt = tmp.path / "ckpt";
  {
    auto p = model.init(Host{}, 1);
    moss::Trainer t(model, p, settings());
    moss::ByteCorpus c(data);
    const auto first = run(t, c, 6, batch, seq_len);
    CHECK(std::memcmp(first.data(), a.data(), 6 * sizeof(double)) == 0);  // the same start, bitwise
    model.save(Host{}, p, ckpt);
    moss::io::Json extra = moss::io::Json::object();
    extra["data"] = c.state().to_json();
    t.save(ckpt, extra);
  }
  const moss::MambaLM<float> again(moss::load_mamba_config(ckpt));
  auto p2 = again.load(Host{}, moss::Checkpoint(ckpt));
  moss::Trainer t2(again, p2, settings());
  const moss::io::Json state = t2.load(ckpt);
  CHECK(t2.steps() == 6);
  moss::ByteCorpus c2(data);
  c2.restore(moss::ByteCorpusState::from_json(state.at("data")));
  const auto rest = run(t2, c2, 24, batch, seq_len);
  for (int i = 0; i < 24; ++i) {
    CAPTURE(i);
    CHECK(std::memcmp(&rest[static_cast<std::size_t>(i)], &a[static_cast<std::size_t>(6 + i)], sizeof(double)) == 0);
  }
}

TEST_CASE("Trainer: two micro-batches step like one batch of both, to rounding", "[host][train][trainer]") {
  const moss::MambaLM<float> model(byte_config());
  const index_t seq_len = 12;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(2 * (seq_len + 1)));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 37 + 11) % 256);
  auto p1 = model.init(Host{}, 3);
  auto p2 = model.init(Host{}, 3);
  moss::Trainer whole(model, p1, settings());
  moss::Trainer split(model, p2, settings());
  const auto r1 = whole.step({ConstView<std::int64_t, 2>(ids.data(), {2, seq_len + 1}, "batch")});
  const auto r2 = split.step({ConstView<std::int64_t, 2>(ids.data(), {1, seq_len + 1}, "first"),
                              ConstView<std::int64_t, 2>(ids.data() + seq_len + 1, {1, seq_len + 1}, "second")});
  CHECK(r2.count == r1.count);
  CHECK(std::abs(r2.loss - r1.loss) <= 1e-6 * r1.loss);
  CHECK(std::abs(r2.grad_norm - r1.grad_norm) <= 1e-5 * r1.grad_norm);
  double worst = 0;
  for (index_t k = 0; k < p1.norm_f.weight.numel(); ++k)
    worst = std::max(worst, std::abs(double(p1.norm_f.weight.data()[k]) - p2.norm_f.weight.data()[k]));
  CHECK(worst <= 1e-6);
}

TEST_CASE("Trainer: a bf16 model trains through float32 master weights", "[host][train][trainer]") {
  const TempDir tmp("bf16");
  const fs::path file = write_text(tmp.path);
  const moss::MambaLM<moss::bf16> model(byte_config());
  auto params = model.init(Host{}, 2);
  moss::Trainer trainer(model, params, settings());
  moss::ByteCorpus corpus({.files = {file}, .batch = 4, .seq_len = 32, .seed = 1});
  const auto losses = run(trainer, corpus, 30, 4, 32);
  INFO("loss " << losses.front() << " -> " << losses.back());
  CHECK(losses.back() < 0.6 * losses.front());
}

TEST_CASE("Trainer: bad settings and resume folders are named", "[host][train][trainer]") {
  const moss::MambaLM<float> model(byte_config());
  auto params = model.init(Host{}, 1);
  auto s = settings();
  s.beta2 = 1.0;
  REQUIRE_THROWS_WITH(moss::Trainer(model, params, s), Catch::Matchers::ContainsSubstring("beta2 is 1"));
  s = settings();
  s.schedule.warmup_steps = 100;
  REQUIRE_THROWS_AS(moss::Trainer(model, params, s), moss::config_error);
  moss::Trainer t(model, params, settings());
  REQUIRE_THROWS_WITH(t.step({}), Catch::Matchers::ContainsSubstring("no micro-batch"));
  const TempDir tmp("missing");
  REQUIRE_THROWS_AS(t.load(tmp.path), moss::io_error);
}

namespace {

/// Every parameter of `p` as bytes, in checkpoint order.
template <class Model>
std::vector<unsigned char> param_bytes(const Model& model, typename Model::Params& p) {
  std::vector<unsigned char> out;
  model.visit_params(p, [&](const std::string&, auto& t) {
    const auto* b = reinterpret_cast<const unsigned char*>(t.data());
    out.insert(out.end(), b, b + t.numel() * sizeof(*t.data()));
  });
  return out;
}

/// The fields of two step results, bitwise (aux_loss aside: a resident step does not measure it).
void check_same_step(const moss::TrainStepResult& a, const moss::TrainStepResult& b) {
  CHECK(std::memcmp(&a.loss, &b.loss, sizeof(double)) == 0);
  CHECK(std::memcmp(&a.grad_norm, &b.grad_norm, sizeof(double)) == 0);
  CHECK(std::memcmp(&a.lr, &b.lr, sizeof(double)) == 0);
  CHECK(a.count == b.count);
  CHECK(a.skipped == b.skipped);
  CHECK(a.step == b.step);
}

/// Token ids of `rows` sequences of seq_len + 1 bytes, a fixed pattern.
std::vector<std::int64_t> pattern_ids(index_t rows, index_t seq_len, int salt) {
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows * (seq_len + 1)));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 37 + 11 + salt * 101) % 256);
  return ids;
}

template <class T>
void check_resident_equals_eager() {
  const moss::MambaLM<T> model(byte_config());
  const index_t seq_len = 10;
  auto pe = model.init(Host{}, 4);
  auto pr = model.init(Host{}, 4);
  auto s = settings();
  s.clip_norm = 0.5;  // small: the steps clip
  moss::Trainer eager(model, pe, s);
  moss::Trainer resident(model, pr, s);
  for (int i = 0; i < 5; ++i) {
    CAPTURE(i);
    const auto ids = pattern_ids(4, seq_len, i);
    const std::vector<ConstView<std::int64_t, 2>> mbs{
        ConstView<std::int64_t, 2>(ids.data(), {2, seq_len + 1}, "first"),
        ConstView<std::int64_t, 2>(ids.data() + 2 * (seq_len + 1), {2, seq_len + 1}, "second")};
    // Step 2 runs eagerly on both: the counters pass between the two forms.
    const auto e = eager.step(mbs);
    moss::TrainStepResult r;
    if (i == 2) {
      r = resident.step(mbs);
    } else {
      resident.step_resident(mbs);
      r = resident.read_step();
      CHECK(std::isnan(r.aux_loss));
    }
    check_same_step(e, r);
    CHECK(e.grad_norm > s.clip_norm);
  }
  CHECK(resident.steps() == 5);
  CHECK(param_bytes(model, pe) == param_bytes(model, pr));
}

}  // namespace

TEST_CASE("Trainer: a resident step gives the eager step's bits on the host", "[host][train][trainer]") {
  SECTION("float") { check_resident_equals_eager<float>(); }
  SECTION("bf16 through float32 masters") { check_resident_equals_eager<moss::bf16>(); }
}

TEST_CASE("Trainer: a resident step skips a non-finite step like the eager one", "[host][train][trainer]") {
  const moss::MambaLM<float> model(byte_config());
  const index_t seq_len = 8;
  auto pe = model.init(Host{}, 5);
  auto pr = model.init(Host{}, 5);
  pe.norm_f.weight.data()[0] = std::numeric_limits<float>::infinity();
  pr.norm_f.weight.data()[0] = std::numeric_limits<float>::infinity();
  moss::Trainer eager(model, pe, settings());
  moss::Trainer resident(model, pr, settings());
  const auto ids = pattern_ids(2, seq_len, 0);
  const std::vector<ConstView<std::int64_t, 2>> mbs{ConstView<std::int64_t, 2>(ids.data(), {2, seq_len + 1}, "b")};
  const auto before = param_bytes(model, pr);
  const auto e = eager.step(mbs);
  resident.step_resident(mbs);
  const auto r = resident.read_step();
  CHECK(e.skipped);
  CHECK(r.skipped);
  CHECK(r.step == 0);
  CHECK(resident.steps() == 1);  // a skipped step still counts
  CHECK(param_bytes(model, pr) == before);
}

TEST_CASE("Trainer: a resident step names a token outside the vocabulary", "[host][train][trainer]") {
  const moss::MambaLM<float> model(byte_config());
  const index_t seq_len = 6;
  auto p = model.init(Host{}, 6);
  moss::Trainer trainer(model, p, settings());
  auto ids = pattern_ids(2, seq_len, 1);
  // The last column of row 1 is only a target: flat position 1 · seq_len + (seq_len − 1).
  ids[static_cast<std::size_t>(2 * (seq_len + 1) - 1)] = 300;
  const std::vector<ConstView<std::int64_t, 2>> mbs{ConstView<std::int64_t, 2>(ids.data(), {2, seq_len + 1}, "b")};
  trainer.step_resident(mbs);
  REQUIRE_THROWS_WITH(trainer.read_step(),
                      Catch::Matchers::ContainsSubstring("target token id outside [0, vocab) at flat position 11"));
  CHECK(trainer.steps() == 1);
  // An input id outside the vocabulary: the host checks it at once.
  ids[3] = -4;
  REQUIRE_THROWS_WITH(trainer.step_resident(mbs), Catch::Matchers::ContainsSubstring("-4"));
  REQUIRE_THROWS_WITH(moss::Trainer(model, p, settings()).read_step(),
                      Catch::Matchers::ContainsSubstring("no resident step was queued"));
}
