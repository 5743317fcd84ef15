// Tests of moss/core/json.hpp: valid documents, every class of malformed input, accessors and
// their messages, and dump → parse round trips.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "moss/core/json.hpp"

using Catch::Matchers::ContainsSubstring;
namespace json = moss::json;

namespace {

json::Value parse(std::string_view text) { return json::parse(text, "test.json"); }

}  // namespace

TEST_CASE("json: literals, strings and nesting parse to the right values", "[host]") {
  const json::Value v = parse(R"( {"a": null, "b": true, "c": false, "d": "text", "e": [1, [2, [3]]], "f": {}} )");
  REQUIRE(v.is_object());
  REQUIRE(v.size() == 6);
  CHECK(v.at("a").is_null());
  CHECK(v.at("b").as_bool() == true);
  CHECK(v.at("c").as_bool() == false);
  CHECK(v.at("d").as_string() == "text");
  CHECK(v.at("e").at(std::size_t{1}).at(std::size_t{1}).at(std::size_t{0}).as_int() == 3);
  CHECK(v.at("f").is_object());
  CHECK(v.at("f").size() == 0);
  CHECK(v.find("missing") == nullptr);
  REQUIRE(v.find("d") != nullptr);
  CHECK(v.find("d")->as_string() == "text");

  // Insertion order is kept (not sorted).
  const json::Value o = parse(R"({"z": 1, "a": 2, "m": 3})");
  REQUIRE(o.as_object().size() == 3);
  CHECK(o.as_object()[0].first == "z");
  CHECK(o.as_object()[1].first == "a");
  CHECK(o.as_object()[2].first == "m");

  // Whitespace of all four kinds around tokens; scalars as documents.
  CHECK(parse(" \t\r\n[ 1 ,\n2 ]\r\n").size() == 2);
  CHECK(parse("\"x\"").as_string() == "x");
  CHECK(parse("null").is_null());
  CHECK(parse("[]").as_array().empty());
}

TEST_CASE("json: string escapes and unicode become UTF-8", "[host]") {
  CHECK(parse(R"("\"\\\/\b\f\n\r\t")").as_string() == "\"\\/\b\f\n\r\t");
  CHECK(parse(R"("\u0041\u00e9\u20AC")").as_string() == "A\xc3\xa9\xe2\x82\xac");  // A é €
  CHECK(parse(R"("\u0000")").as_string() == std::string(1, '\0'));
  // U+1F600 as a surrogate pair → 4-byte UTF-8.
  CHECK(parse(R"("\ud83d\ude00")").as_string() == "\xf0\x9f\x98\x80");
  CHECK(parse(R"("\uDBFF\uDFFF")").as_string() == "\xf4\x8f\xbf\xbf");  // U+10FFFF, the last code point
  // Raw UTF-8 passes through unchanged (2-, 3- and 4-byte sequences).
  CHECK(parse("\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"").as_string() == "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  // Keys are strings too.
  CHECK(parse(R"({"\u0061b": 1})").at("ab").as_int() == 1);
}

TEST_CASE("json: numbers per RFC 8259, exact integers when they fit int64", "[host]") {
  CHECK(parse("0").as_int() == 0);
  CHECK(parse("-0").as_double() == 0.0);
  CHECK(std::signbit(parse("-0").as_double()));
  CHECK(parse("-0.0").is_integer() == false);
  CHECK(parse("42").is_integer());
  CHECK(parse("1.5").as_double() == 1.5);
  CHECK(parse("-1.5e3").as_double() == -1500.0);
  CHECK(parse("1E+2").as_double() == 100.0);
  CHECK(parse("1e-2").as_double() == 0.01);
  CHECK(parse("2.5E-1").as_double() == 0.25);
  CHECK(parse("0.1").as_double() == 0.1);  // correctly rounded, as the C++ literal is
  CHECK(parse("1e2").is_integer() == false);
  CHECK(parse("1e2").as_int() == 100);  // integral double, exact: accepted by as_int
  CHECK(parse("64.0").as_int() == 64);

  // Extremes of int64 stay exact (a double cannot hold 2^63 − 1).
  CHECK(parse("9223372036854775807").as_int() == std::numeric_limits<std::int64_t>::max());
  CHECK(parse("-9223372036854775808").as_int() == std::numeric_limits<std::int64_t>::min());
  CHECK(parse("9007199254740993").as_int() == 9007199254740993LL);  // 2^53 + 1
  // Beyond int64: a double only, and as_int refuses it.
  const json::Value big = parse("12345678901234567890");
  CHECK_FALSE(big.is_integer());
  CHECK(big.as_double() == 12345678901234567890.0);
  REQUIRE_THROWS_AS(big.as_int(), moss::config_error);
  // Underflow rounds to zero; tiny but representable values survive.
  CHECK(parse("1e-400").as_double() == 0.0);
  CHECK(std::signbit(parse("-1e-400").as_double()));
  CHECK(parse("0.000000000000000000000000000000000000000000000000001e-300").as_double() == 0.0);
  CHECK(parse("4.9406564584124654e-324").as_double() == std::numeric_limits<double>::denorm_min());
  CHECK(parse("1.7976931348623157e308").as_double() == std::numeric_limits<double>::max());
  CHECK(parse("0e99999").as_double() == 0.0);
}

TEST_CASE("json: accessors raise config_error naming the key path", "[host]") {
  const json::Value v =
      json::parse(R"({"model": {"layers": [{"d_state": "16"}, {"d_state": 2.5}], "a.b": [true]}})", "config.json");
  const json::Value& layers = v.at("model").at("layers");
  REQUIRE_THROWS_AS(layers.at(std::size_t{0}).at("d_state").as_int(), moss::config_error);
  REQUIRE_THROWS_WITH(
      layers.at(std::size_t{0}).at("d_state").as_int(),
      ContainsSubstring("config.json: model.layers[0].d_state is a string (\"16\") but expected an integer"));
  REQUIRE_THROWS_WITH(
      layers.at(std::size_t{1}).at("d_state").as_int(),
      ContainsSubstring("config.json: model.layers[1].d_state is 2.5") && ContainsSubstring("expected an integer"));
  REQUIRE_THROWS_WITH(v.at("model").at("hidden_size"),
                      ContainsSubstring("config.json: model has no key \"hidden_size\""));
  REQUIRE_THROWS_AS(v.at("model").at("hidden_size"), moss::config_error);
  // Keys that are not identifiers are quoted in the path.
  REQUIRE_THROWS_WITH(v.at("model").at("a.b").at(std::size_t{0}).as_string(),
                      ContainsSubstring("config.json: model[\"a.b\"][0] is a boolean (true) but expected a string"));
  REQUIRE_THROWS_WITH(layers.at(std::size_t{5}),
                      ContainsSubstring("model.layers has 2 elements; index 5 is out of range"));
  REQUIRE_THROWS_WITH(layers.find("x"), ContainsSubstring("model.layers is an array but expected an object"));
  REQUIRE_THROWS_WITH(layers.as_object(), ContainsSubstring("config.json: model.layers is an array"));
  REQUIRE_THROWS_WITH(v.as_array(), ContainsSubstring("config.json: (document) is an object but expected an array"));
  REQUIRE_THROWS_WITH(v.at("model").as_bool(), ContainsSubstring("expected a boolean"));
  REQUIRE_THROWS_WITH(v.at("model").as_double(), ContainsSubstring("expected a number"));
  REQUIRE_THROWS_AS(json::Value(nullptr).size(), moss::config_error);
}

TEST_CASE("json: every class of malformed input raises io_error with file, position and reason", "[host]") {
  struct Case {
    std::string text;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"", "unexpected end of input"},
      {"   ", "unexpected end of input"},
      {"{", "expected a string key"},
      {"[1, 2", "expected ',' or ']'"},
      {"[1,]", "expected a value"},
      {"{\"a\": 1,}", "expected a string key"},
      {"{'a': 1}", "expected a string key"},
      {"{\"a\" 1}", "expected ':'"},
      {"{1: 2}", "expected a string key"},
      {"[1 2]", "expected ',' or ']'"},
      {"{\"a\": 1 \"b\": 2}", "expected ',' or '}'"},
      {"01", "leading zeros"},
      {"-01", "leading zeros"},
      {"1.", "digit after the decimal point"},
      {".5", "expected a value"},
      {"-", "expected a digit"},
      {"+1", "expected a value"},
      {"1e", "digit in the exponent"},
      {"1e+", "digit in the exponent"},
      {"NaN", "expected a value"},
      {"Infinity", "expected a value"},
      {"-Infinity", "expected a digit"},
      {"1e400", "out of the range of a double"},
      {"-1e309", "out of the range of a double"},
      {"tru", "expected 'true'"},
      {"nul", "expected 'null'"},
      {"True", "expected a value"},
      {"\"abc", "unterminated string"},
      {"\"\\", "unterminated escape"},
      {"\"\\x\"", "invalid escape '\\x'"},
      {"\"\\u12G4\"", "invalid hex digit"},
      {"\"\\u12\"  ", "invalid hex digit"},
      {"\"\\u12", "truncated \\u escape"},
      {"\"\\ud800\"", "high surrogate not followed"},
      {"\"\\ud800\\u0041\"", "non-low-surrogate"},
      {"\"\\udc00\"", "lone low surrogate"},
      {std::string("\"a\tb\""), "unescaped control character"},
      {std::string("\"a\nb\""), "unescaped control character"},
      {std::string("\"\xff\""), "invalid UTF-8"},
      {std::string("\"\xc0\x80\""), "invalid UTF-8"},          // overlong NUL
      {std::string("\"\xe0\x80\xaf\""), "invalid UTF-8"},      // overlong '/'
      {std::string("\"\xed\xa0\x80\""), "invalid UTF-8"},      // UTF-8-encoded surrogate
      {std::string("\"\xf4\x90\x80\x80\""), "invalid UTF-8"},  // above U+10FFFF
      {std::string("\"\xe2\x82\""), "invalid UTF-8"},          // truncated sequence
      {"1 2", "trailing characters"},
      {"{} x", "trailing characters"},
      {"[1] // comment", "trailing characters"},
      {"/* c */ 1", "expected a value"},
      {"{\"a\": 1, \"a\": 2}", "duplicate key \"a\""},
      {std::string("\xef\xbb\xbf{}"), "expected a value"},  // a byte-order mark is not JSON
  };
  for (const auto& c : cases) {
    INFO("input: " << c.text);
    REQUIRE_THROWS_AS(parse(c.text), moss::io_error);
    REQUIRE_THROWS_WITH(parse(c.text),
                        ContainsSubstring("test.json: invalid JSON at line 1, column ") && ContainsSubstring(c.reason));
  }
}

TEST_CASE("json: error positions count lines and columns", "[host]") {
  const std::string text = "{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}";
  REQUIRE_THROWS_WITH(json::parse(text, "dir/config.json"),
                      ContainsSubstring("dir/config.json: invalid JSON at line 3, column 14 (byte 25)") &&
                          ContainsSubstring("unexpected ','"));
  REQUIRE_THROWS_WITH(json::parse("{\"k\": 1,\n \"k\": 2}", "d.json"),
                      ContainsSubstring("line 2, column 2") && ContainsSubstring("duplicate key \"k\""));
}

TEST_CASE("json: nesting is limited to max_depth levels", "[host]") {
  const auto nested = [](int depth, char open, char close) {
    return std::string(static_cast<std::size_t>(depth), open) + std::string(static_cast<std::size_t>(depth), close);
  };
  REQUIRE_NOTHROW(parse(nested(json::max_depth, '[', ']')));
  REQUIRE_THROWS_WITH(parse(nested(json::max_depth + 1, '[', ']')), ContainsSubstring("nesting deeper than 256"));
  std::string objects;
  for (int i = 0; i < json::max_depth + 1; ++i) objects += "{\"a\":";
  objects += "1" + std::string(static_cast<std::size_t>(json::max_depth + 1), '}');
  REQUIRE_THROWS_AS(parse(objects), moss::io_error);
  // A deep attack (far past the limit) fails the same way instead of overflowing the stack.
  REQUIRE_THROWS_WITH(parse(std::string(100000, '[')), ContainsSubstring("nesting deeper"));
}

TEST_CASE("json: dump writes compact JSON that parses back to the same value", "[host]") {
  json::Value doc = json::Object{{"name", "moss"},
                                 {"n", 3},
                                 {"x", 0.1},
                                 {"neg", -2.5e-7},
                                 {"big", std::numeric_limits<std::int64_t>::max()},
                                 {"huge", 1e300},
                                 {"flags", json::Array{true, false, nullptr}},
                                 {"nested", json::Object{{"empty_a", json::Array{}}, {"empty_o", json::Object{}}}},
                                 {"esc", "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f \xc3\xa9"}};
  const std::string text = json::dump(doc);
  CHECK(std::count(text.begin(), text.end(), ' ') == 1);  // the only space is the one inside "esc"
  CHECK(text.find("\\u0001") != std::string::npos);
  CHECK(text.find("\"n\":3,") != std::string::npos);
  CHECK(text.find("\"x\":0.1,") != std::string::npos);  // shortest round-trip form
  CHECK(text.find("\"big\":9223372036854775807") != std::string::npos);
  const json::Value back = json::parse(text, "dump");
  CHECK(back == doc);
  CHECK(json::dump(back) == text);

  CHECK(json::dump(json::Value()) == "null");
  CHECK(json::dump(json::Value(json::Array{1, "a", json::Object{{"k", false}}})) == R"([1,"a",{"k":false}])");
  CHECK(json::dump(json::Value(std::uint64_t{18446744073709551615ull})) == "18446744073709551616");

  // Every double survives dump → parse bit-exactly (random bit patterns, finite ones only).
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, 8);
    if (!std::isfinite(d)) continue;
    const json::Value back_d = json::parse(json::dump(json::Value(d)), "d");
    const double r = back_d.as_double();
    INFO("bits " << bits);
    REQUIRE(std::memcmp(&d, &r, sizeof d) == 0);
  }

  // JSON has no NaN or infinity: dump refuses them.
  REQUIRE_THROWS_AS(json::dump(json::Value(std::nan(""))), moss::config_error);
  REQUIRE_THROWS_WITH(json::dump(json::Value(json::Array{1.0, std::numeric_limits<double>::infinity()})),
                      ContainsSubstring("only finite numbers"));
}

TEST_CASE("json: building values with set and push_back", "[host]") {
  json::Value v;
  v.set("b", 1);
  v.set("a", "x");
  v.set("b", 2);  // replaces in place, keeps the position
  json::Value arr;
  arr.push_back(1.5);
  arr.push_back(json::Value());
  v.set("arr", arr);
  CHECK(json::dump(v) == R"({"b":2,"a":"x","arr":[1.5,null]})");
  REQUIRE_THROWS_AS(arr.set("k", 1), moss::config_error);
  json::Value s = "str";
  REQUIRE_THROWS_AS(s.push_back(1), moss::config_error);
  // Values built in code report "json" as their origin.
  REQUIRE_THROWS_WITH(s.as_int(), ContainsSubstring("json: (document) is a string"));
}

TEST_CASE("json: read_file reads whole files and names missing ones", "[host]") {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moss_json_test_" + std::to_string(std::random_device{}()) + "_" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "c.json";
  {
    std::ofstream out(file, std::ios::binary);
    out << "{\"hidden_size\": 64}\n";
  }
  CHECK(json::parse(json::read_file(file), file.string()).at("hidden_size").as_int() == 64);
  REQUIRE_THROWS_AS(json::read_file(dir / "absent.json"), moss::io_error);
  REQUIRE_THROWS_WITH(json::read_file(dir / "absent.json"),
                      ContainsSubstring((dir / "absent.json").string()) && ContainsSubstring("cannot open"));
  REQUIRE_THROWS_WITH(json::read_file(dir), ContainsSubstring("is a directory"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("json: corrupted documents raise io_error or parse, never anything else", "[host]") {
  const std::string good =
      R"({"a": [1, -2.5e3, true, null, {"b": "x\u00e9\ud83d\ude00\n"}], "c": {"d": [[], {}]}, "e": 12345678901234567890})";
  REQUIRE_NOTHROW(parse(good));
  std::mt19937 rng(17);
  int failures = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string text = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) {
      const std::size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0:
          text[at] = "0123456789[]{},:\"\\-.eEtfnu \x01\xc3\xff"[rng() % 27];
          break;
        case 1:
          text.erase(at, 1 + rng() % 3);
          break;
        default:
          text.insert(text.begin() + static_cast<std::ptrdiff_t>(at), "[]{},:\"\\"[rng() % 8]);
          break;
      }
      if (text.empty()) text.push_back('x');
    }
    try {
      (void)json::dump(parse(text));
    } catch (const moss::io_error& e) {
      REQUIRE_THAT(e.what(), ContainsSubstring("test.json: invalid JSON at line "));
      ++failures;
    }
  }
  CHECK(failures > 2000);
}
