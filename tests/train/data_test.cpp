// tests/train/data_test.cpp: the byte-level corpus (moss/train/data.hpp): per-file held-out
// split, seeded training order, fixed validation windows, save/restore, errors.
#include "moss/train/data.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;

namespace {

/// A fresh directory under the system's temporary directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moss_data_test_" + tag + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  /// Writes `n` seeded random bytes (every value 0..255 possible) to `name`; returns them.
  std::string write(const std::string& name, std::size_t n, std::uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xffu);
    std::ofstream(path / name, std::ios::binary).write(s.data(), static_cast<std::streamsize>(s.size()));
    return s;
  }
};

std::vector<std::int64_t> ids(const std::string& s, std::size_t start, std::size_t n) {
  std::vector<std::int64_t> r(n);
  for (std::size_t i = 0; i < n; ++i) r[i] = static_cast<unsigned char>(s[start + i]);
  return r;
}

}  // namespace

TEST_CASE("data: each file holds out its own tail, exactly floor(n * val_fraction) bytes", "[host][train]") {
  TempDir dir("split");
  const std::string a = dir.write("a.txt", 1000, 1), b = dir.write("b.txt", 333, 2);
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "a.txt", dir.path / "b.txt"};
  cfg.val_fraction = 0.1;
  cfg.batch = 3;
  cfg.seq_len = 16;
  const moss::ByteCorpus c(cfg);
  REQUIRE(c.num_files() == 2);
  CHECK(c.train_tokens(0) == 900);
  CHECK(c.val_tokens(0) == 100);
  CHECK(c.train_tokens(1) == 300);
  CHECK(c.val_tokens(1) == 33);  // floor(33.3)
  CHECK(c.train_tokens() == 1200);
  CHECK(c.file_bytes(1) == b);

  // Validation: file a's tail at 900 + 0, 16, ... (start + 17 <= 100: 6 windows), then file b's
  // tail at 300 + 0, 16 (start + 17 <= 33: 2 windows), in order.
  std::vector<std::vector<std::int64_t>> want;
  for (std::size_t s = 0; s + 17 <= 100; s += 16) want.push_back(ids(a, 900 + s, 17));
  for (std::size_t s = 0; s + 17 <= 33; s += 16) want.push_back(ids(b, 300 + s, 17));
  REQUIRE(want.size() == 8);
  CHECK(c.val_windows() == 8);
  CHECK(c.num_val_batches() == 3);
  std::vector<std::vector<std::int64_t>> got;
  for (moss::index_t i = 0; i < c.num_val_batches(); ++i) {
    const std::vector<std::int64_t> batch = c.val_batch(i);
    CHECK(batch.size() == (i < 2 ? 3u : 2u) * 17u);
    for (std::size_t r = 0; r * 17 < batch.size(); ++r)
      got.emplace_back(batch.begin() + static_cast<std::ptrdiff_t>(r * 17),
                       batch.begin() + static_cast<std::ptrdiff_t>((r + 1) * 17));
  }
  CHECK(got == want);
  CHECK_THROWS_AS(c.val_batch(3), moss::config_error);

  // val_fraction 0: everything trains, nothing is held out.
  cfg.val_fraction = 0.0;
  const moss::ByteCorpus all(cfg);
  CHECK(all.train_tokens(0) == 1000);
  CHECK(all.val_tokens(1) == 0);
  CHECK(all.val_windows() == 0);
  CHECK(all.num_val_batches() == 0);
}

TEST_CASE("data: training windows stay inside each file's training part and tile it", "[host][train]") {
  TempDir dir("windows");
  const std::vector<std::string> text = {dir.write("a", 1000, 3), dir.write("b", 200, 4)};
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "a", dir.path / "b"};
  cfg.val_fraction = 0.05;  // 50 and 10 bytes held out
  cfg.batch = 4;
  cfg.seq_len = 10;
  cfg.seed = 7;
  moss::ByteCorpus c(cfg);
  for (int epoch = 0; epoch < 3; ++epoch) {
    INFO("epoch " << epoch);
    REQUIRE(c.epoch() == epoch);
    const auto windows = c.epoch_windows();
    std::set<std::pair<std::size_t, moss::index_t>> distinct(windows.begin(), windows.end());
    CHECK(distinct.size() == windows.size());  // a permutation: no window twice
    CHECK_FALSE(std::is_sorted(windows.begin(), windows.end()));  // shuffled, not file by file
    for (std::size_t f = 0; f < 2; ++f) {
      std::vector<moss::index_t> starts;
      for (const auto& [file, s] : windows)
        if (file == f) starts.push_back(s);
      std::sort(starts.begin(), starts.end());
      REQUIRE(!starts.empty());
      CHECK(starts.front() < 10);                                   // the offset is below seq_len
      CHECK(starts.back() + 11 <= c.train_tokens(f));               // inside the training part
      CHECK(starts.back() + 10 + 11 > c.train_tokens(f));           // and no room for another
      for (std::size_t k = 1; k < starts.size(); ++k) CHECK(starts[k] - starts[k - 1] == 10);
    }
    // The batches serve the epoch's windows in order with the file's bytes.
    const moss::index_t n = c.windows_in_epoch();
    moss::index_t served = 0;
    while (served + 4 <= n) {
      const std::vector<std::int64_t> batch = c.next_batch();
      REQUIRE(batch.size() == 44u);
      for (int r = 0; r < 4; ++r) {
        const auto [f, s] = windows[static_cast<std::size_t>(served + r)];
        CHECK(std::vector<std::int64_t>(batch.begin() + r * 11, batch.begin() + (r + 1) * 11) ==
              ids(text[f], static_cast<std::size_t>(s), 11));
      }
      served += 4;
    }
    // Finish the epoch (the batch runs over into the next one).
    const std::vector<std::int64_t> straddle = c.next_batch();
    const moss::index_t left = n - served;
    for (moss::index_t r = 0; r < left; ++r) {
      const auto [f, s] = windows[static_cast<std::size_t>(served + r)];
      CHECK(std::vector<std::int64_t>(straddle.begin() + r * 11, straddle.begin() + (r + 1) * 11) ==
            ids(text[f], static_cast<std::size_t>(s), 11));
    }
    CHECK(c.epoch() == epoch + 1);
    CHECK(c.position() == 4 - left);
    for (moss::index_t r = left; r < 4; ++r) {
      const auto [f, s] = c.epoch_windows()[static_cast<std::size_t>(r - left)];
      CHECK(std::vector<std::int64_t>(straddle.begin() + r * 11, straddle.begin() + (r + 1) * 11) ==
            ids(text[f], static_cast<std::size_t>(s), 11));
    }
    // Start the next round of checks at the epoch's beginning.
    moss::ByteCorpusState st = c.state();
    st.position = 0;
    c.restore(st);
  }
}

TEST_CASE("data: the same seed gives the same batches, another seed others", "[host][train]") {
  TempDir dir("seed");
  dir.write("a", 3000, 5);
  dir.write("b", 777, 6);
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "a", dir.path / "b"};
  cfg.batch = 5;
  cfg.seq_len = 32;
  cfg.seed = 1234;
  moss::ByteCorpus x(cfg), y(cfg);
  cfg.seed = 1235;
  moss::ByteCorpus z(cfg);
  bool any_different = false;
  for (int i = 0; i < 40; ++i) {  // several epochs (about 110 windows each)
    const auto bx = x.next_batch(), by = y.next_batch(), bz = z.next_batch();
    CHECK(bx == by);
    any_different = any_different || bx != bz;
  }
  CHECK(x.epoch() >= 1);
  CHECK(any_different);
  // Consecutive epochs of one seed use different orders.
  moss::ByteCorpus e(cfg);
  const auto first = e.epoch_windows();
  moss::ByteCorpusState st = e.state();
  st.epoch = 1;
  e.restore(st);
  CHECK(e.epoch_windows() != first);
}

TEST_CASE("data: a restored state continues with the same batches", "[host][train]") {
  TempDir dir("restore");
  dir.write("a", 2000, 8);
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "a"};
  cfg.batch = 7;
  cfg.seq_len = 24;
  cfg.seed = 42;
  for (int taken : {0, 3, 11, 25}) {  // the last ones cross epoch boundaries (about 79 windows each)
    INFO("batches taken before saving: " << taken);
    moss::ByteCorpus a(cfg);
    for (int i = 0; i < taken; ++i) a.next_batch();
    const std::string saved = moss::io::dump_json(a.state().to_json());
    std::vector<std::vector<std::int64_t>> want;
    for (int i = 0; i < 15; ++i) want.push_back(a.next_batch());

    moss::ByteCorpus b(cfg);
    b.next_batch();  // state to be replaced
    const moss::ByteCorpusState st = moss::ByteCorpusState::from_json(moss::io::parse_json(saved, "state.json"));
    CHECK(st.seed == 42u);
    CHECK(st.train_tokens == 1900);
    b.restore(st);
    for (int i = 0; i < 15; ++i) CHECK(b.next_batch() == want[static_cast<std::size_t>(i)]);
    CHECK(b.state() == a.state());
  }
}

TEST_CASE("data: state JSON round trip and its errors", "[host][train]") {
  moss::ByteCorpusState s{0xfedcba9876543210ull, 3, 17, 12345};
  const moss::io::Json j = moss::io::parse_json(moss::io::dump_json(s.to_json()), "state.json");
  CHECK(moss::ByteCorpusState::from_json(j) == s);
  moss::io::Json bad = s.to_json();
  bad["extra"] = 1;
  CHECK_THROWS_WITH(moss::ByteCorpusState::from_json(bad, "state.json"), ContainsSubstring("unknown key \"extra\""));
  bad = s.to_json();
  bad.erase("position");
  CHECK_THROWS_WITH(moss::ByteCorpusState::from_json(bad, "state.json"), ContainsSubstring("no key \"position\""));
  bad = s.to_json();
  bad["epoch"] = -1;
  CHECK_THROWS_WITH(moss::ByteCorpusState::from_json(bad, "state.json"), ContainsSubstring("epoch is -1"));
}

TEST_CASE("data: errors name the file or the setting", "[host][train]") {
  TempDir dir("errors");
  dir.write("ok", 500, 9);
  dir.write("empty", 0, 10);
  dir.write("short", 20, 11);
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "ok"};
  cfg.seq_len = 16;
  cfg.batch = 2;
  REQUIRE_NOTHROW(moss::ByteCorpus(cfg));

  auto bad = cfg;
  bad.files = {dir.path / "ok", dir.path / "missing.txt"};
  CHECK_THROWS_AS(moss::ByteCorpus(bad), moss::io_error);
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("missing.txt") && ContainsSubstring("no such file"));
  bad.files = {dir.path / "empty"};
  CHECK_THROWS_AS(moss::ByteCorpus(bad), moss::io_error);
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("empty") && ContainsSubstring("is empty"));
  // 20 bytes, 1 held out (floor(20 · 0.05)): 19 training bytes < seq_len + 1 = 21.
  bad = cfg;
  bad.seq_len = 20;
  bad.files = {dir.path / "short"};
  CHECK_THROWS_AS(moss::ByteCorpus(bad), moss::config_error);
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("short") && ContainsSubstring("training part is 19"));
  bad.seq_len = 18;  // 19 >= 19: fits exactly, one window
  CHECK(moss::ByteCorpus(bad).windows_in_epoch() == 1);
  bad = cfg;
  bad.val_fraction = 1.0;
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("val_fraction is 1"));
  bad.val_fraction = -0.1;
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("val_fraction is -0.1"));
  bad = cfg;
  bad.seq_len = 0;
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("seq_len is 0"));
  bad = cfg;
  bad.batch = 0;
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("batch is 0"));
  bad = cfg;
  bad.files.clear();
  CHECK_THROWS_WITH(moss::ByteCorpus(bad), ContainsSubstring("files is empty"));

  // Restoring a state from another seed or other data.
  moss::ByteCorpus c(cfg);
  moss::ByteCorpusState st = c.state();
  st.seed = 99;
  CHECK_THROWS_WITH(c.restore(st), ContainsSubstring("seed is 99"));
  st = c.state();
  st.train_tokens += 1;
  CHECK_THROWS_WITH(c.restore(st), ContainsSubstring("training bytes"));
  st = c.state();
  st.position = c.windows_in_epoch() + 1;
  CHECK_THROWS_WITH(c.restore(st), ContainsSubstring("position is"));
}

TEST_CASE("data: epoch offsets cover 0 .. seq_len - 1 and nothing else", "[host][train]") {
  TempDir dir("offsets");
  dir.write("a", 100, 12);
  moss::ByteCorpusConfig cfg;
  cfg.files = {dir.path / "a"};
  cfg.val_fraction = 0.0;
  cfg.seq_len = 4;
  cfg.seed = 3;
  moss::ByteCorpus c(cfg);
  std::set<moss::index_t> offsets;
  for (std::int64_t e = 0; e < 200; ++e) {
    moss::ByteCorpusState st = c.state();
    st.epoch = e;
    st.position = 0;
    c.restore(st);
    moss::index_t first = c.train_tokens();
    for (const auto& w : c.epoch_windows()) first = std::min(first, w.second);
    offsets.insert(first);
    // Every offset leaves room for the windows up to the end: 100 bytes, stride 4, window 5.
    CHECK(c.windows_in_epoch() == (100 - 5 - first) / 4 + 1);
  }
  CHECK(offsets == std::set<moss::index_t>{0, 1, 2, 3});
}
