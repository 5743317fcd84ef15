// End-to-end tests of the moss-train command: a run on a small text lowers the loss, writes
// metrics.csv and saves a checkpoint that moss-run loads and prompts as text (Mamba, MoE-Mamba and
// RoM models); a run stopped with --stop-at and continued with --resume ends with bitwise the
// training losses of a run that never stopped (every metrics row but its timing); bad arguments
// give a message naming the flag and a non-zero exit.
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "run_program.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using moss::test::run_program;

namespace {

/// The number after `key` in `text` ("" when absent).
std::string number_after(const std::string& text, const std::string& key) {
  std::smatch m;
  const std::regex re(key + " ([-0-9.naife]+)");
  return std::regex_search(text, m, re) ? m[1].str() : "";
}

/// The rows of `dir`/metrics.csv without their last column (tokens per second: timing); the
/// header first.
std::vector<std::string> metric_rows(const fs::path& dir) {
  std::ifstream in(dir / "metrics.csv");
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(line.substr(0, line.rfind(',')));
  return rows;
}

/// Column `col` (0-based) of a metrics row.
std::string column(const std::string& row, int col) {
  std::stringstream ss(row);
  std::string cell;
  for (int i = 0; i <= col; ++i) std::getline(ss, cell, ',');
  return cell;
}

}  // namespace

TEST_CASE("moss-train: trains, saves a prompted checkpoint, and resumes bitwise", "[host][train][cli]") {
  const fs::path dir = fs::temp_directory_path() / ("moss_train_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream text(dir / "text.txt");
    for (int i = 0; i < 300; ++i) text << "In the beginning the cat sat on the mat, and the dog sat on the log.\n";
  }
  const std::string common = "--data " + (dir / "text.txt").string() +
                             " --d-model 24 --d-state 4 --seq-len 32 --batch 4 --steps 24 --warmup 4 --lr 1e-2 "
                             "--eval-batches 2 --eval-every 0";
  const auto whole = run_program(MOSS_TRAIN_EXE, common + " --out " + (dir / "whole").string());
  INFO(whole.output);
  REQUIRE(whole.status == 0);
  const std::string first = number_after(whole.out, "step +1  loss");
  const std::string last = number_after(whole.out, "last training loss");
  REQUIRE(!first.empty());
  REQUIRE(!last.empty());
  CHECK(std::stod(last) < 0.7 * std::stod(first));
  CHECK(fs::exists(dir / "whole" / "model.safetensors"));
  CHECK(fs::exists(dir / "whole" / "optimizer.safetensors"));
  // metrics.csv: the header and one row per step; validation only where evaluated (the end here).
  const std::vector<std::string> rows = metric_rows(dir / "whole");
  REQUIRE(rows.size() == 25);
  CHECK(rows[0] == "step,tokens,train_loss,val_loss,lr,grad_norm,aux_loss");
  CHECK(column(rows[1], 0) == "1");
  CHECK(column(rows[1], 1) == "128");
  CHECK(column(rows[1], 3).empty());
  CHECK(!column(rows[24], 3).empty());
  CHECK(std::abs(std::stod(column(rows[24], 2)) - std::stod(last)) < 1e-4);
  CHECK(std::stod(column(rows[24], 6)) == 0.0);  // a dense model has no auxiliary loss

  // Stopped at step 10 and resumed: the same last loss, printed to the digit.
  const auto part = run_program(MOSS_TRAIN_EXE, common + " --stop-at 10 --out " + (dir / "part").string());
  REQUIRE(part.status == 0);
  const auto resumed = run_program(MOSS_TRAIN_EXE, "--resume " + (dir / "part").string() + " --eval-batches 2");
  INFO(resumed.output);
  REQUIRE(resumed.status == 0);
  CHECK(number_after(resumed.out, "last training loss") == last);
  CHECK_THAT(resumed.out, ContainsSubstring("resuming"));
  // The resumed run's metrics: the first 10 rows kept, the rest bitwise the uninterrupted run's
  // (but for the validation loss at the stop, which only the stopped run evaluated).
  std::vector<std::string> resumed_rows = metric_rows(dir / "part");
  REQUIRE(resumed_rows.size() == rows.size());
  CHECK(column(resumed_rows[10], 3) != "");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CAPTURE(i);
    if (i == 10) continue;
    CHECK(resumed_rows[i] == rows[i]);
  }

  // The checkpoint is a byte-tokenizer model moss-run prompts.
  const auto prompted = run_program(
      MOSS_RUN_EXE, "--checkpoint " + (dir / "whole").string() + " --prompt 'the cat' --generate 8 --quiet");
  INFO(prompted.output);
  CHECK(prompted.status == 0);
  CHECK(!prompted.out.empty());

  // MoE-Mamba (Mamba and Switch-MoE layers alternating) trains and prompts too.
  const auto moe =
      run_program(MOSS_TRAIN_EXE, common + " --model moe-mamba --layers 2 --experts 4 --out " + (dir / "moe").string());
  INFO(moe.output);
  REQUIRE(moe.status == 0);
  CHECK_THAT(moe.out, ContainsSubstring("moe-mamba"));
  CHECK(std::stod(number_after(moe.out, "last training loss")) <
        0.8 * std::stod(number_after(moe.out, "step +1  loss")));
  const auto moe_prompt =
      run_program(MOSS_RUN_EXE, "--checkpoint " + (dir / "moe").string() + " --prompt 'the dog' --generate 4 --quiet");
  INFO(moe_prompt.output);
  CHECK(moe_prompt.status == 0);

  // RoM (Conv, Gate and Out routed by one decision) trains, reports its auxiliary loss and prompts.
  const auto rom = run_program(MOSS_TRAIN_EXE, common + " --model rom --experts 4 --out " + (dir / "rom").string());
  INFO(rom.output);
  REQUIRE(rom.status == 0);
  CHECK_THAT(rom.out, ContainsSubstring("training rom"));
  CHECK(std::stod(number_after(rom.out, "last training loss")) <
        0.8 * std::stod(number_after(rom.out, "step +1  loss")));
  CHECK(std::stod(column(metric_rows(dir / "rom").back(), 6)) > 0.0);
  const auto rom_prompt =
      run_program(MOSS_RUN_EXE, "--checkpoint " + (dir / "rom").string() + " --prompt 'the dog' --generate 4 --quiet");
  INFO(rom_prompt.output);
  CHECK(rom_prompt.status == 0);

  // Top-2 RoM and MoE-Mamba: they train, save a config that says top_k 2, and moss-run loads and
  // prompts them.
  for (const std::string model : {"rom", "moe-mamba"}) {
    const fs::path out = dir / (model + "2");
    const auto run = run_program(
        MOSS_TRAIN_EXE, common + " --model " + model + " --layers 2 --experts 4 --top-k 2 --out " + out.string());
    INFO(run.output);
    REQUIRE(run.status == 0);
    CHECK(std::stod(number_after(run.out, "last training loss")) <
          0.8 * std::stod(number_after(run.out, "step +1  loss")));
    std::ifstream cfg(out / "config.json");
    const std::string config((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
    CHECK_THAT(config, ContainsSubstring("\"top_k\": 2"));
    const auto prompt =
        run_program(MOSS_RUN_EXE, "--checkpoint " + out.string() + " --prompt 'the cat' --generate 4 --quiet");
    INFO(prompt.output);
    CHECK(prompt.status == 0);
  }

  // Errors: a non-zero exit and a message naming the flag.
  const auto refused = [](const std::string& args, const std::string& message) {
    const auto r = run_program(MOSS_TRAIN_EXE, args);
    INFO(args);
    CHECK(r.status != 0);
    CHECK_THAT(r.err, ContainsSubstring(message));
  };
  refused(common + " --model mamba2", "--model is \"mamba2\"");
  refused(common + " --model rom --top-k 3", "--top-k is 3: moss-train builds K = 1 (the papers' models) and 2");
  refused(common + " --model blackmamba --layers 2 --top-k 2", "Sinkhorn routing picks one expert per token");
  refused(common + " --model rom --top-k 2 --experts 1", "--top-k is 2 but --experts is 1");
  refused(common + " --dtype bf16 --device cpu", "on the CPU moss trains in float32");
  { std::ofstream empty(dir / "empty.txt"); }
  refused("--data " + (dir / "empty.txt").string(), "empty.txt: is empty");
  refused("--data " + (dir / "text.txt").string() + " --seq-len 100000", "expected at least seq_len + 1 = 100001");
  fs::copy_file(dir / "whole" / "config.json", dir / "rom" / "config.json", fs::copy_options::overwrite_existing);
  refused("--resume " + (dir / "rom").string(), "trains --model rom but its config.json holds a \"mamba\" model");
  refused("--resume " + (dir / "part").string() + " --batch 3", "--batch cannot change");
  refused("--data " + (dir / "missing.txt").string(), "does not exist");
  refused(common + " --stop-at 99", "--stop-at is 99");
  refused(common + " --model moe-mamba --layers 3", "expected an even number");
  fs::remove_all(dir);
}
