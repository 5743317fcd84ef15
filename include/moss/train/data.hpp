// moss/train/data.hpp: byte-level training data (vocabulary 256: a token is a byte, 0..255).
//
// `ByteCorpus` reads one or more files (any bytes; UTF-8 text is the intended use) and splits
// EACH file on its own: of a file of n bytes the last n_val = floor(n · val_fraction) bytes are
// held out for validation and the first n − n_val bytes are its training part.
//
// Windows. A window is W = seq_len + 1 consecutive bytes of one file (inputs are its first
// seq_len, targets its last seq_len); windows never cross a file boundary. Windows step by
// seq_len, so consecutive windows share one byte and every byte after a window's first is a
// target once.
//
// Training order. Epoch e (0, 1, 2, ...) uses the generator `Rng(seed ^ (e · 0x9E3779B97F4A7C15))`
// (moss/core/random.hpp; the product wraps modulo 2^64), so epoch 0 uses Rng(seed). With it:
//   1. for each file f in order, an offset o_f = rng.next() % (max_f + 1), where
//      max_f = min(seq_len − 1, train_f − W) (train_f: the training part's length);
//   2. the epoch's windows are, file by file in order, the starts o_f + k · seq_len (k = 0, 1, ...)
//      with start + W ≤ train_f; then they are shuffled by Fisher–Yates:
//      for i = count − 1 down to 1: j = rng.next() % (i + 1), swap(i, j).
// `next_batch` takes the next `batch` windows of that permutation; when the epoch's windows run
// out the next epoch begins (new offsets, new permutation) and the batch continues from its start.
// The same files, settings and seed give bitwise the same batches; the state needed to continue
// is (epoch, position) since the generator is re-seeded from (seed, epoch) at each epoch.
//
// Validation. The validation windows are fixed: file by file in order, the starts 0, seq_len,
// 2·seq_len, ... with start + W ≤ n_val in the held-out part. A file whose held-out part is
// shorter than W contributes none. `val_batch(i)` returns windows i·batch ... (the last batch may
// be shorter).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "moss/core/error.hpp"
#include "moss/core/random.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"

namespace moss {

/// Settings of a `ByteCorpus`.
struct ByteCorpusConfig {
  std::vector<std::filesystem::path> files;  ///< one or more files, read whole
  double val_fraction = 0.05;                ///< in [0, 1): the held-out tail of each file
  index_t batch = 1;                         ///< windows per batch, ≥ 1
  index_t seq_len = 256;                     ///< tokens per input sequence, ≥ 1 (windows are seq_len + 1)
  std::uint64_t seed = 0;                    ///< the training order's seed
};

/// Where the training order stands: enough to continue a run with the same batches.
struct ByteCorpusState {
  std::uint64_t seed = 0;         ///< the corpus's seed (restore checks it)
  std::int64_t epoch = 0;         ///< the epoch the next batch starts in
  std::int64_t position = 0;      ///< windows of that epoch already served
  std::int64_t train_tokens = 0;  ///< the training bytes of all files (restore checks it: same data)

  /// {"seed": ..., "epoch": ..., "position": ..., "train_tokens": ...}.
  io::Json to_json() const {
    io::Json j = io::Json::object();
    j["seed"] = seed;
    j["epoch"] = epoch;
    j["position"] = position;
    j["train_tokens"] = train_tokens;
    return j;
  }
  /// Reads what `to_json` writes; `config_error` naming `where` and the key for a missing or
  /// unknown key, a value of the wrong kind or a negative count.
  static ByteCorpusState from_json(const io::Json& j, const std::string& where = "data state") {
    const io::JsonRef r(j, where);
    r.expect_only({"seed", "epoch", "position", "train_tokens"});
    ByteCorpusState s;
    const io::JsonRef seed = r.at("seed");
    if (seed.json().is_number_unsigned()) {
      s.seed = seed.json().get<std::uint64_t>();
    } else {
      const std::int64_t v = seed.as_int();
      MOSS_EXPECTS(v >= 0, config_error, seed.where(), " is ", v, ", expected an integer in [0, 2^64)");
      s.seed = static_cast<std::uint64_t>(v);
    }
    const auto count = [&](const char* key) {
      const io::JsonRef m = r.at(key);
      const std::int64_t v = m.as_int();
      MOSS_EXPECTS(v >= 0, config_error, m.where(), " is ", v, ", expected >= 0");
      return v;
    };
    s.epoch = count("epoch");
    s.position = count("position");
    s.train_tokens = count("train_tokens");
    return s;
  }
  friend bool operator==(const ByteCorpusState&, const ByteCorpusState&) = default;
};

/// Byte-level corpus: per-file train/validation split, seeded training batches, fixed validation
/// batches (the rules: this header's comment).
class ByteCorpus {
 public:
  /// Reads the files and prepares epoch 0. `config_error` for no files, batch or seq_len < 1,
  /// val_fraction outside [0, 1) (naming the setting), or a file whose training part is shorter
  /// than seq_len + 1 (naming the file, its sizes and seq_len); `io_error` naming the file for a
  /// missing, unreadable or empty file.
  explicit ByteCorpus(ByteCorpusConfig config) : config_(std::move(config)) {
    MOSS_EXPECTS(!config_.files.empty(), config_error, "ByteCorpus: files is empty, expected at least one file");
    MOSS_EXPECTS(config_.batch >= 1, config_error, "ByteCorpus: batch is ", config_.batch, ", expected >= 1");
    MOSS_EXPECTS(config_.seq_len >= 1, config_error, "ByteCorpus: seq_len is ", config_.seq_len, ", expected >= 1");
    MOSS_EXPECTS(config_.val_fraction >= 0 && config_.val_fraction < 1, config_error, "ByteCorpus: val_fraction is ",
                 config_.val_fraction, ", expected in [0, 1)");
    const index_t W = window();
    for (const auto& path : config_.files) {
      std::string bytes = io::read_text_file(path);
      MOSS_EXPECTS(!bytes.empty(), io_error, path.string(), ": is empty, expected at least ", W,
                   " bytes of training data (seq_len + 1)");
      const auto n = static_cast<index_t>(bytes.size());
      const auto n_val = static_cast<index_t>(std::floor(static_cast<double>(n) * config_.val_fraction));
      const index_t n_train = n - n_val;
      MOSS_EXPECTS(n_train >= W, config_error, path.string(), ": its training part is ", n_train, " of ", n,
                   " bytes (val_fraction ", config_.val_fraction, " holds out ", n_val,
                   "), expected at least seq_len + 1 = ", W);
      files_.push_back(File{std::move(bytes), n_train});
      train_tokens_ += n_train;
    }
    for (std::size_t f = 0; f < files_.size(); ++f)
      for (index_t s = 0; s + W <= val_tokens(f); s += config_.seq_len) val_windows_.push_back({f, n_train_of(f) + s});
    begin_epoch(0);
  }

  /// The settings.
  const ByteCorpusConfig& config() const { return config_; }
  /// Tokens per window: seq_len + 1.
  index_t window() const { return config_.seq_len + 1; }
  /// Number of files.
  std::size_t num_files() const { return files_.size(); }
  /// Length of file f's training part (its first bytes).
  index_t train_tokens(std::size_t f) const { return n_train_of(f); }
  /// Length of file f's held-out part (its last floor(n · val_fraction) bytes).
  index_t val_tokens(std::size_t f) const {
    return static_cast<index_t>(files_.at(f).bytes.size()) - files_.at(f).n_train;
  }
  /// The training bytes of all files.
  index_t train_tokens() const { return train_tokens_; }
  /// File f's bytes (training part then held-out part).
  const std::string& file_bytes(std::size_t f) const { return files_.at(f).bytes; }

  /// The epoch the next batch starts in.
  std::int64_t epoch() const { return epoch_; }
  /// Windows of the current epoch already served.
  std::int64_t position() const { return position_; }
  /// Windows in the current epoch.
  index_t windows_in_epoch() const { return static_cast<index_t>(order_.size()); }
  /// The current epoch's windows in serving order, as (file, start in the file).
  const std::vector<std::pair<std::size_t, index_t>>& epoch_windows() const { return order_; }

  /// The next training batch: (batch, seq_len + 1) token ids, row-major, row r being the window
  /// served r-th (this header's comment for the order).
  std::vector<std::int64_t> next_batch() {
    const index_t W = window();
    std::vector<std::int64_t> out(static_cast<std::size_t>(config_.batch * W));
    for (index_t r = 0; r < config_.batch; ++r) {
      if (position_ == windows_in_epoch()) begin_epoch(epoch_ + 1);
      const auto [f, start] = order_[static_cast<std::size_t>(position_++)];
      copy_window(f, start, out.data() + r * W);
    }
    return out;
  }

  /// Number of validation windows (all files).
  index_t val_windows() const { return static_cast<index_t>(val_windows_.size()); }
  /// Number of validation batches: ceil(val_windows / batch).
  index_t num_val_batches() const { return ceil_div(val_windows(), config_.batch); }
  /// Validation batch i: windows i·batch ... min((i+1)·batch, val_windows) − 1, each seq_len + 1
  /// ids, row-major (the last batch may have fewer rows). `config_error` for i out of range.
  std::vector<std::int64_t> val_batch(index_t i) const {
    MOSS_EXPECTS(i >= 0 && i < num_val_batches(), config_error, "ByteCorpus::val_batch: batch ", i,
                 " is out of range; there are ", num_val_batches(), " validation batches");
    const index_t first = i * config_.batch, last = std::min(first + config_.batch, val_windows());
    const index_t W = window();
    std::vector<std::int64_t> out(static_cast<std::size_t>((last - first) * W));
    for (index_t w = first; w < last; ++w) {
      const auto [f, start] = val_windows_[static_cast<std::size_t>(w)];
      copy_window(f, start, out.data() + (w - first) * W);
    }
    return out;
  }

  /// Where the training order stands (save it with a checkpoint).
  ByteCorpusState state() const { return {config_.seed, epoch_, position_, train_tokens_}; }
  /// Continues from `s`, so the next batch is the one that followed when `s` was taken.
  /// `config_error` when s was taken with another seed or other training data (train_tokens), or
  /// when its position is beyond the epoch's windows.
  void restore(const ByteCorpusState& s) {
    MOSS_EXPECTS(s.seed == config_.seed, config_error, "ByteCorpus::restore: the state's seed is ", s.seed,
                 " but this corpus's seed is ", config_.seed);
    MOSS_EXPECTS(s.train_tokens == train_tokens_, config_error, "ByteCorpus::restore: the state was taken over ",
                 s.train_tokens, " training bytes but these files hold ", train_tokens_,
                 " (other files or another val_fraction)");
    MOSS_EXPECTS(s.epoch >= 0, config_error, "ByteCorpus::restore: epoch is ", s.epoch, ", expected >= 0");
    begin_epoch(s.epoch);
    MOSS_EXPECTS(s.position >= 0 && s.position <= windows_in_epoch(), config_error, "ByteCorpus::restore: position is ",
                 s.position, ", expected in [0, ", windows_in_epoch(), "] (the windows of epoch ", s.epoch, ")");
    position_ = s.position;
  }

 private:
  struct File {
    std::string bytes;
    index_t n_train = 0;
  };

  index_t n_train_of(std::size_t f) const { return files_.at(f).n_train; }

  void copy_window(std::size_t f, index_t start, std::int64_t* out) const {
    const auto* p = reinterpret_cast<const unsigned char*>(files_[f].bytes.data()) + start;
    for (index_t t = 0; t < window(); ++t) out[t] = static_cast<std::int64_t>(p[t]);
  }

  void begin_epoch(std::int64_t e) {
    Rng rng(config_.seed ^ (static_cast<std::uint64_t>(e) * 0x9E3779B97F4A7C15ull));
    const index_t W = window(), L = config_.seq_len;
    order_.clear();
    for (std::size_t f = 0; f < files_.size(); ++f) {
      const index_t n_train = files_[f].n_train;
      const index_t max_off = std::min(L - 1, n_train - W);
      const auto offset = static_cast<index_t>(rng.next() % static_cast<std::uint64_t>(max_off + 1));
      for (index_t s = offset; s + W <= n_train; s += L) order_.emplace_back(f, s);
    }
    for (std::size_t i = order_.size(); i-- > 1;) {
      const auto j = static_cast<std::size_t>(rng.next() % static_cast<std::uint64_t>(i + 1));
      std::swap(order_[i], order_[j]);
    }
    epoch_ = e;
    position_ = 0;
  }

  ByteCorpusConfig config_;
  std::vector<File> files_;
  index_t train_tokens_ = 0;
  std::vector<std::pair<std::size_t, index_t>> val_windows_;  // (file, start in the file)
  std::vector<std::pair<std::size_t, index_t>> order_;        // the current epoch's windows
  std::int64_t epoch_ = 0;
  std::int64_t position_ = 0;
};

}  // namespace moss
