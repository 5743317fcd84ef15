// tests/run_program.hpp: runs a program built with the project (an example CLI) and collects its
// exit status, stdout and stderr, for end-to-end tests.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace moss::test {

/// What a program run gave.
struct Outcome {
  int status;
  std::string output;  ///< stdout, then stderr
  std::string out;     ///< stdout alone
  std::string err;     ///< stderr alone
};

/// The whole file at `path` ("" when it cannot be read).
inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Runs `exe` with `args` (shell words) through the shell and collects its output.
inline Outcome run_program(const std::string& exe, const std::string& args) {
  const auto base = std::filesystem::temp_directory_path() / ("moss_program_" + std::to_string(::getpid()));
  const auto out_log = base.string() + ".out", err_log = base.string() + ".err";
  const std::string cmd = exe + " " + args + " > " + out_log + " 2> " + err_log;
  const int status = std::system(cmd.c_str());
  Outcome r{status, "", slurp(out_log), slurp(err_log)};
  r.output = r.out + r.err;
  std::filesystem::remove(out_log);
  std::filesystem::remove(err_log);
  return r;
}

}  // namespace moss::test
