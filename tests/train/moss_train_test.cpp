// End-to-end tests of the moss-train command: a run on a small text lowers the loss and saves a
// checkpoint that moss-run loads and prompts as text (a Mamba and a MoE-Mamba model); a run stopped with --stop-at and
// continued with --resume ends with bitwise the training loss of a run that never stopped; bad arguments give a message
// and a non-zero exit.
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

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

  // Stopped at step 10 and resumed: the same last loss, printed to the digit.
  const auto part = run_program(MOSS_TRAIN_EXE, common + " --stop-at 10 --out " + (dir / "part").string());
  REQUIRE(part.status == 0);
  const auto resumed = run_program(MOSS_TRAIN_EXE, "--resume " + (dir / "part").string() + " --eval-batches 2");
  INFO(resumed.output);
  REQUIRE(resumed.status == 0);
  CHECK(number_after(resumed.out, "last training loss") == last);
  CHECK_THAT(resumed.out, ContainsSubstring("resuming"));

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

  // Errors.
  const auto settings_fixed = run_program(MOSS_TRAIN_EXE, "--resume " + (dir / "part").string() + " --batch 3");
  CHECK(settings_fixed.status != 0);
  CHECK_THAT(settings_fixed.err, ContainsSubstring("--batch cannot change"));
  const auto no_data = run_program(MOSS_TRAIN_EXE, "--data " + (dir / "missing.txt").string());
  CHECK(no_data.status != 0);
  CHECK_THAT(no_data.err, ContainsSubstring("does not exist"));
  const auto bad_stop = run_program(MOSS_TRAIN_EXE, common + " --stop-at 99");
  CHECK(bad_stop.status != 0);
  CHECK_THAT(bad_stop.err, ContainsSubstring("--stop-at is 99"));
  const auto odd = run_program(MOSS_TRAIN_EXE, common + " --model moe-mamba --layers 3");
  CHECK(odd.status != 0);
  CHECK_THAT(odd.err, ContainsSubstring("expected an even number"));
  fs::remove_all(dir);
}
