// examples/cli.hpp: the small command-line parser shared by moss-run and moss-demo.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "moss/core/error.hpp"

namespace moss::cli {

/// `--name value` and `--flag` arguments, checked against the known names.
class Args {
 public:
  Args(int argc, char** argv, const std::set<std::string>& with_value, const std::set<std::string>& flags) {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (flags.count(a)) {
        values_[a] = "1";
      } else if (with_value.count(a)) {
        MOSS_EXPECTS(i + 1 < argc, config_error, "option ", a, " needs a value");
        values_[a] = argv[++i];
      } else {
        raise<config_error>("unknown argument \"", a, "\" (see --help)");
      }
    }
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? fallback : it->second;
  }
  std::int64_t get_int(const std::string& k, std::int64_t fallback) const {
    if (!has(k)) return fallback;
    const std::string s = get(k);
    std::size_t used = 0;
    std::int64_t v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOSS_EXPECTS(used == s.size() && !s.empty(), config_error, "option ", k, " needs an integer, got \"", s, "\"");
    return v;
  }
  double get_double(const std::string& k, double fallback) const {
    if (!has(k)) return fallback;
    const std::string s = get(k);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOSS_EXPECTS(used == s.size() && !s.empty(), config_error, "option ", k, " needs a number, got \"", s, "\"");
    return v;
  }

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace moss::cli
