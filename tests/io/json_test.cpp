// Tests of moss/io/json.hpp: strict parsing with positioned errors and duplicate keys, dump in
// nlohmann's layout with shortest round-trip doubles, json_number, and every JsonRef accessor
// with its message.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "moss/io/json.hpp"

using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::Equals;
using Catch::Matchers::StartsWith;
namespace io = moss::io;
using io::Json;
using io::JsonRef;

namespace {

Json parse(std::string_view text) { return io::parse_json(text, "test.json"); }

/// `text` parsed and read with JsonRef::as_int.
std::int64_t int_of(std::string_view text) {
  const Json j = parse(text);
  return JsonRef(j, "n").as_int();
}

/// The message of the moss error `f` throws (empty when it throws none).
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const moss::error& e) {
    return e.what();
  }
  return {};
}

}  // namespace

TEST_CASE("io json: documents parse to the right values and keep key order", "[host][io]") {
  const Json v = parse(R"( {"z": null, "b": true, "c": false, "d": "text", "e": [1, [2, [3]]], "a": {}} )");
  REQUIRE(v.is_object());
  const JsonRef r(v, "test.json");
  CHECK(r.keys() == std::vector<std::string>{"z", "b", "c", "d", "e", "a"});
  CHECK(r.at("z").is_null());
  CHECK(r.at("b").as_bool());
  CHECK_FALSE(r.at("c").as_bool());
  CHECK(r.at("d").as_string() == "text");
  CHECK(r.at("e").at(std::size_t{1}).at(std::size_t{1}).at(std::size_t{0}).as_int() == 3);
  CHECK(r.at("a").size() == 0);

  // Escapes and unicode become UTF-8; raw UTF-8 passes through.
  CHECK(parse(R"("\"\\\/\b\f\n\r\t")") == "\"\\/\b\f\n\r\t");
  CHECK(parse(R"("\u0041\u00e9\u20AC")") == "A\xc3\xa9\xe2\x82\xac");
  CHECK(parse(R"("\ud83d\ude00")") == "\xf0\x9f\x98\x80");
  CHECK(parse("\"\xc3\xa9\xf0\x9f\x98\x80\"") == "\xc3\xa9\xf0\x9f\x98\x80");
  // Whitespace of all four kinds; scalars as documents; a UTF-8 byte-order mark is skipped.
  CHECK(parse(" \t\r\n[ 1 ,\n2 ]\r\n").size() == 2);
  CHECK(parse("null").is_null());
  CHECK(parse("\xef\xbb\xbf{}") == Json::object());
  // The same key in different objects is no duplicate.
  CHECK(parse(R"({"a": {"k": 1}, "b": {"k": 2}, "k": [{"k": 3}, {"k": 4}]})").size() == 3);
}

TEST_CASE("io json: numbers keep exact integers and the doubles the text means", "[host][io]") {
  CHECK(int_of("9223372036854775807") == std::numeric_limits<std::int64_t>::max());
  CHECK(int_of("-9223372036854775808") == std::numeric_limits<std::int64_t>::min());
  CHECK(int_of("9007199254740993") == 9007199254740993LL);  // 2^53 + 1, exact
  CHECK(parse("12345678901234567890").is_number_unsigned());
  CHECK(parse("123456789012345678901234").is_number_float());
  CHECK(parse("0.1").get<double>() == 0.1);
  CHECK(parse("-1.5e3").get<double>() == -1500.0);
  CHECK(parse("4.9406564584124654e-324").get<double>() == std::numeric_limits<double>::denorm_min());
  CHECK(parse("1.7976931348623157e308").get<double>() == std::numeric_limits<double>::max());
  CHECK(std::signbit(parse("-0.0").get<double>()));
  CHECK(parse("1e-400").get<double>() == 0.0);  // underflow rounds to zero
}

TEST_CASE("io json: malformed input raises io_error with the name, line, column and reason", "[host][io]") {
  struct Case {
    std::string text;
    std::string position;  // "line L, column C"
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"", "line 1, column 1", "unexpected end of input"},
      {"   ", "line 1, column 4", "unexpected end of input"},
      {"\n  ", "line 2, column 3", "unexpected end of input"},
      {"{", "line 1, column 2", "unexpected end of input"},
      {"[1, 2", "line 1, column 6", "unexpected end of input; expected ']'"},
      {"[1,]", "line 1, column 4", "unexpected ']'"},
      {"{\"a\": 1,}", "line 1, column 9", "unexpected '}'; expected string literal"},
      {"{'a': 1}", "line 1, column 2", "expected string literal"},
      {"{\"a\" 1}", "line 1, column 6", "expected ':'"},
      {"[1 2]", "line 1, column 4", "expected ']'"},
      {"01", "line 1, column 2", "expected end of input"},
      {"1.", "line 1, column 3", "expected digit after '.'"},
      {"-", "line 1, column 2", "expected digit after '-'"},
      {"NaN", "line 1, column 1", "invalid literal"},
      {"Infinity", "line 1, column 1", "invalid literal"},
      {"-Infinity", "line 1, column 2", "invalid number"},
      {"[1e400]", "line 1, column 2", "number 1e400 is out of the range of a double"},
      {"{\"x\":\n -1e309}", "line 2, column 2", "number -1e309 is out of the range of a double"},
      {"tru", "line 1, column 4", "invalid literal"},
      {"\"abc", "line 1, column 5", "missing closing quote"},
      {"\"\\x\"", "line 1, column 3", "invalid string"},
      {"\"\\ud800\"", "line 1, column 8", "surrogate"},
      {"\"\\udc00\"", "line 1, column 7", "surrogate"},
      {"\"a\tb\"", "line 1, column 3", "control character U+0009"},
      {"\"\xff\"", "line 1, column 2", "ill-formed UTF-8"},
      {"\"\xed\xa0\x80\"", "line 1, column 3", "ill-formed UTF-8"},  // a UTF-8-encoded surrogate
      {"1 2", "line 1, column 3", "expected end of input"},
      {"[1] // comment", "line 1, column 5", "invalid literal"},
      {"/* c */ 1", "line 1, column 1", "invalid literal"},
      {"{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}", "line 3, column 14", "unexpected ','"},
  };
  for (const auto& c : cases) {
    INFO("input: " << c.text);
    REQUIRE_THROWS_AS(parse(c.text), moss::io_error);
    const std::string msg = message_of([&] { (void)parse(c.text); });
    CHECK_THAT(msg,
               ContainsSubstring("test.json: invalid JSON at " + c.position + ": ") && ContainsSubstring(c.reason));
    CHECK_THAT(msg, !ContainsSubstring("[json.exception"));  // nlohmann's own prefix is replaced
  }
}

TEST_CASE("io json: a key repeated in one object is refused at its opening quote", "[host][io]") {
  REQUIRE_THROWS_AS(parse(R"({"a": 1, "a": 2})"), moss::io_error);
  CHECK_THAT(message_of([] { (void)io::parse_json("{\"k\": 1,\n \"k\": 2}", "dir/config.json"); }),
             Equals("dir/config.json: duplicate key \"k\" at line 2, column 2"));
  // Nested objects, objects inside arrays, and keys with escaped quotes or backslashes.
  CHECK_THAT(message_of([] { (void)parse("{\"m\": {\"x\": 1, \"y\": [{\"z\": 1, \"z\": 2}]}}"); }),
             Equals("test.json: duplicate key \"z\" at line 1, column 31"));
  CHECK_THAT(message_of([] { (void)parse(R"({"q\"": 1, "q\"": 2})"); }),
             Equals(R"(test.json: duplicate key "q\"" at line 1, column 12)"));
  CHECK_THAT(message_of([] { (void)parse(R"({"s\\": 1, "s\\": 2})"); }),
             Equals(R"(test.json: duplicate key "s\\" at line 1, column 12)"));
  // Escapes that spell the same key are the same key.
  CHECK_THAT(message_of([] { (void)parse(R"({"ab": 1, "\u0061b": 2})"); }), ContainsSubstring("duplicate key \"ab\""));
}

TEST_CASE("io json: nesting is limited to max_json_depth levels", "[host][io]") {
  const auto nested = [](int depth) {
    return std::string(static_cast<std::size_t>(depth), '[') + std::string(static_cast<std::size_t>(depth), ']');
  };
  REQUIRE_NOTHROW(parse(nested(io::max_json_depth)));
  CHECK_THAT(message_of([&] { (void)parse(nested(io::max_json_depth + 1)); }),
             ContainsSubstring("test.json: invalid JSON at line 1, column 257: nesting deeper than 256 levels"));
  std::string objects;
  for (int i = 0; i <= io::max_json_depth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(static_cast<std::size_t>(io::max_json_depth + 1), '}');
  REQUIRE_THROWS_AS(parse(objects), moss::io_error);
  REQUIRE_THROWS_WITH(parse(std::string(100000, '[')), ContainsSubstring("nesting deeper"));
}

TEST_CASE("io json: dump_json writes nlohmann's layout with shortest round-trip doubles", "[host][io]") {
  Json doc = Json::object();
  doc["name"] = "moss";
  doc["n"] = 3;
  doc["x"] = 0.1;
  doc["eps"] = 1e-5;
  doc["two"] = 2.0;
  doc["neg0"] = -0.0;
  doc["big"] = std::numeric_limits<std::int64_t>::max();
  doc["ubig"] = std::numeric_limits<std::uint64_t>::max();
  doc["huge"] = 1e300;
  doc["flags"] = {true, false, nullptr};
  doc["empty"] = {{"a", Json::array()}, {"o", Json::object()}};
  doc["esc"] = "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f \xc3\xa9";
  CHECK(io::dump_json(doc, -1) ==
        R"({"name":"moss","n":3,"x":0.1,"eps":1e-05,"two":2.0,"neg0":-0.0,"big":9223372036854775807,)"
        R"("ubig":18446744073709551615,"huge":1e+300,"flags":[true,false,null],"empty":{"a":[],"o":{}},)"
        "\"esc\":\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f \xc3\xa9\"}");
  CHECK(io::dump_json(Json{{"a", {1, 2}}, {"b", {{"c", "d"}}}, {"e", Json::array()}}) ==
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {\n    \"c\": \"d\"\n  },\n  \"e\": []\n}");
  CHECK(io::dump_json(Json{{"a", {1}}}, 4) == "{\n    \"a\": [\n        1\n    ]\n}");
  CHECK(io::dump_json(Json()) == "null");
  // Without doubles, the text is nlohmann's own, at every indent.
  Json plain = doc;
  for (const char* k : {"x", "eps", "two", "neg0", "huge"}) plain.erase(k);
  for (int indent : {-1, 0, 2, 3}) CHECK(io::dump_json(plain, indent) == plain.dump(indent));

  // Round trip: the same value back, and the same text again.
  const Json back = io::parse_json(io::dump_json(doc), "dump");
  CHECK(back == doc);
  CHECK(io::dump_json(back) == io::dump_json(doc));

  // Every finite double survives dump → parse bit-exactly, in the shortest form std::to_chars gives.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, 8);
    if (!std::isfinite(d)) continue;
    const std::string text = io::dump_json(Json(d));
    char buf[64];
    const std::string shortest(buf, std::to_chars(buf, buf + sizeof buf, d).ptr);
    INFO("bits " << bits << " text " << text);
    REQUIRE((text == shortest || text == shortest + ".0"));
    const double r = io::parse_json(text, "d").get<double>();
    REQUIRE(std::memcmp(&d, &r, sizeof d) == 0);
  }
}

TEST_CASE("io json: dump_json refuses what JSON text cannot hold, naming the path", "[host][io]") {
  Json doc = {{"layers", {{{"eps", 1.0}}, {{"eps", std::nan("")}}}}};
  REQUIRE_THROWS_AS(io::dump_json(doc), moss::config_error);
  CHECK_THAT(message_of([&] { (void)io::dump_json(doc); }),
             ContainsSubstring("dump_json: layers[1].eps is nan, which JSON cannot represent"));
  CHECK_THAT(message_of([] { (void)io::dump_json(Json(std::numeric_limits<double>::infinity())); }),
             ContainsSubstring("dump_json: (document) is inf"));
  CHECK_THAT(message_of([] {
               (void)io::dump_json(Json{{"a.b", {"ok", "\xc3\x28"}}});
             }),
             ContainsSubstring("dump_json: [\"a.b\"][1] holds a string that is not UTF-8 (byte 0)"));
  CHECK_THAT(message_of([] { (void)io::dump_json(Json{{"\xff", 1}}); }), ContainsSubstring("not UTF-8"));
  CHECK_THAT(message_of([] { (void)io::dump_json(Json::binary({1, 2})); }), ContainsSubstring("binary"));
}

TEST_CASE("io json: json_number writes a float setting as its shortest decimal", "[host][io]") {
  CHECK(io::json_number(1e-5f) == 1e-5);
  CHECK(io::dump_json(Json(io::json_number(1e-5f))) == "1e-05");
  CHECK(io::dump_json(Json(static_cast<double>(1e-5f))) == "9.999999747378752e-06");  // what it avoids
  CHECK(io::dump_json(Json(io::json_number(0.02f))) == "0.02");
  CHECK(io::dump_json(Json(io::json_number(3.0f))) == "3.0");
  CHECK(std::isinf(io::json_number(std::numeric_limits<float>::infinity())));
  std::mt19937 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const std::uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    if (!std::isfinite(f)) continue;
    const double d = io::json_number(f);
    char buf[32];
    const std::string shortest(buf, std::to_chars(buf, buf + sizeof buf, f).ptr);
    const std::string text = io::dump_json(Json(d));
    INFO("float bits " << bits);
    REQUIRE(static_cast<float>(d) == f);  // the float reads back
    REQUIRE((text == shortest || text == shortest + ".0"));
  }
}

TEST_CASE("io json: JsonRef knows its path and every value's kind", "[host][io]") {
  const Json doc = parse(R"({"blocks": [{"router": "top1", "num_experts": "8", "a.b": [true]}], "n": null,
                             "x": 1.5, "i": 3, "s": "str", "o": {}, "arr": []})");
  const JsonRef root(doc, "config.json");
  CHECK(root.where() == "config.json");
  CHECK(&root.json() == &doc);
  const JsonRef block = root.at("blocks").at(std::size_t{0});
  CHECK(block.where() == "config.json: blocks[0]");
  CHECK(block.at("router").where() == "config.json: blocks[0].router");
  CHECK(block.at("a.b").at(std::size_t{0}).where() == "config.json: blocks[0][\"a.b\"][0]");
  const Json arr = parse("[[1]]");
  CHECK(JsonRef(arr, "a.json").at(std::size_t{0}).at(std::size_t{0}).where() == "a.json: [0][0]");

  CHECK(std::string(root.at("n").kind()) == "null");
  CHECK(std::string(block.at("a.b").at(std::size_t{0}).kind()) == "a boolean");
  CHECK(std::string(root.at("x").kind()) == "a number");
  CHECK(std::string(root.at("i").kind()) == "a number");
  CHECK(std::string(root.at("s").kind()) == "a string");
  CHECK(std::string(root.at("arr").kind()) == "an array");
  CHECK(std::string(root.at("o").kind()) == "an object");
  CHECK(root.at("n").is_null());
  CHECK(block.at("a.b").at(std::size_t{0}).is_bool());
  CHECK(root.at("x").is_number());
  CHECK(root.at("s").is_string());
  CHECK(root.at("arr").is_array());
  CHECK(root.is_object());
  CHECK_FALSE(root.at("s").is_number());

  // find: absent is nullopt, a null member is returned, a non-object is an error.
  CHECK_FALSE(root.find("missing").has_value());
  REQUIRE(root.find("n").has_value());
  CHECK(root.find("n")->is_null());
  CHECK(root.find("i")->as_int() == 3);
  CHECK_THAT(message_of([&] { (void)root.at("arr").find("k"); }),
             Equals("config.json: arr is an array, expected an object"));
  CHECK_THAT(message_of([&] { (void)block.at("hidden_size"); }),
             Equals("config.json: blocks[0] has no key \"hidden_size\""));
  CHECK_THAT(message_of([&] { (void)root.at("blocks").at(std::size_t{5}); }),
             Equals("config.json: blocks has 1 elements; index 5 is out of range"));
  CHECK_THAT(message_of([&] { (void)root.at("s").at(std::size_t{0}); }),
             Equals("config.json: s is a string, expected an array (value \"str\")"));
  CHECK(root.size() == 7);
  CHECK(root.at("blocks").size() == 1);
  CHECK_THAT(message_of([&] { (void)root.at("x").size(); }),
             Equals("config.json: x is a number, expected an array or an object (value 1.5)"));
  CHECK(block.keys() == std::vector<std::string>{"router", "num_experts", "a.b"});
  CHECK_THAT(message_of([&] { (void)root.at("i").keys(); }),
             Equals("config.json: i is a number, expected an object (value 3)"));
  REQUIRE_THROWS_AS(root.at("i").keys(), moss::config_error);
}

TEST_CASE("io json: JsonRef accessors read exact values and name the path when they cannot", "[host][io]") {
  const Json doc = parse(R"({"blocks": [{}, {"num_experts": "8", "d": 2.5, "big": 1e30, "f": 3.0, "e": 1e3,
                             "u": 12345678901234567890, "h": 9007199254740994.0, "h53": 9007199254740992.0, "flag": 1, "names": ["a", 2],
                             "long": "0123456789012345678901234567890123456789xyz"}]})");
  const JsonRef b = JsonRef(doc, "config.json").at("blocks").at(std::size_t{1});
  CHECK_THAT(message_of([&] { (void)b.at("num_experts").as_int(); }),
             Equals("config.json: blocks[1].num_experts is a string, expected an integer (value \"8\")"));
  REQUIRE_THROWS_AS(b.at("num_experts").as_int(), moss::config_error);
  CHECK_THAT(message_of([&] { (void)b.at("d").as_int(); }),
             StartsWith("config.json: blocks[1].d is 2.5, expected an integer"));
  CHECK_THAT(message_of([&] { (void)b.at("big").as_int(); }),
             StartsWith("config.json: blocks[1].big is 1e+30, expected an integer"));
  CHECK_THAT(message_of([&] { (void)b.at("u").as_int(); }),
             Equals("config.json: blocks[1].u is 12345678901234567890, expected an integer within the int64 range"));
  CHECK_THAT(message_of([&] { (void)b.at("h").as_int(); }), ContainsSubstring("within ±2^53"));
  CHECK(b.at("h53").as_int() == 9007199254740992LL);  // 2^53 itself is still exact
  CHECK(b.at("f").as_int() == 3);
  CHECK(b.at("e").as_int() == 1000);
  CHECK(b.at("d").as_double() == 2.5);
  CHECK(b.at("f").as_double() == 3.0);
  CHECK(b.at("u").as_double() == 12345678901234567890.0);
  CHECK_THAT(message_of([&] { (void)b.at("num_experts").as_double(); }),
             Equals("config.json: blocks[1].num_experts is a string, expected a number (value \"8\")"));
  CHECK_THAT(message_of([&] { (void)b.at("flag").as_bool(); }),
             Equals("config.json: blocks[1].flag is a number, expected a boolean (value 1)"));
  CHECK_THAT(message_of([&] { (void)b.at("flag").as_string(); }),
             Equals("config.json: blocks[1].flag is a number, expected a string (value 1)"));
  CHECK_THAT(message_of([&] { (void)b.at("long").as_int(); }),
             ContainsSubstring("(value \"0123456789012345678901234567890123456789...\")"));
  CHECK(b.at("num_experts").as_string() == "8");
  CHECK_THAT(message_of([&] { (void)b.at("names").as_strings(); }),
             Equals("config.json: blocks[1].names[1] is a number, expected a string (value 2)"));
  CHECK_THAT(message_of([&] { (void)b.at("d").as_strings(); }),
             Equals("config.json: blocks[1].d is a number, expected an array of strings (value 2.5)"));
  const Json strings = parse(R"(["x", "y"])");
  CHECK(JsonRef(strings, "s.json").as_strings() == std::vector<std::string>{"x", "y"});
  // Values built in code may hold what JSON text cannot; as_double refuses it.
  const Json inf = std::numeric_limits<double>::infinity();
  CHECK_THAT(message_of([&] { (void)JsonRef(inf, "code").as_double(); }),
             Equals("code is inf, expected a finite number"));
}

TEST_CASE("io json: JsonRef::read fills present members and range-checks them", "[host][io]") {
  const Json doc = parse(R"({"n": 8, "neg": -1, "big": 300, "x": 0.5, "huge": 1e39, "b": true, "s": "top1",
                             "v": ["conv", "gate"], "z": null, "str": "8"})");
  const JsonRef r(doc, "config.json");
  int n = 0;
  CHECK(r.read("n", n));
  CHECK(n == 8);
  std::int64_t i64 = 0;
  CHECK(r.read("neg", i64));
  CHECK(i64 == -1);
  std::uint8_t u8 = 7;
  CHECK_THAT(message_of([&] { (void)r.read("big", u8); }),
             Equals("config.json: big is 300, expected an integer in [0, 255]"));
  CHECK_THAT(message_of([&] { (void)r.read("neg", u8); }),
             Equals("config.json: neg is -1, expected an integer in [0, 255]"));
  std::uint64_t u64 = 0;
  CHECK_THAT(message_of([&] { (void)r.read("neg", u64); }),
             ContainsSubstring("config.json: neg is -1, expected an integer in [0, "));
  CHECK(r.read("n", u64));
  CHECK(u64 == 8);
  CHECK(u8 == 7);  // failed reads leave the target alone
  float f = 0;
  CHECK(r.read("x", f));
  CHECK(f == 0.5f);
  CHECK(r.read("n", f));
  CHECK(f == 8.0f);
  CHECK_THAT(message_of([&] { (void)r.read("huge", f); }),
             Equals("config.json: huge is 1e+39, outside the range of a float"));
  double d = 0;
  CHECK(r.read("huge", d));
  CHECK(d == 1e39);
  bool b = false;
  CHECK(r.read("b", b));
  CHECK(b);
  CHECK_THAT(message_of([&] { (void)r.read("n", b); }),
             Equals("config.json: n is a number, expected a boolean (value 8)"));
  std::string s;
  CHECK(r.read("s", s));
  CHECK(s == "top1");
  std::vector<std::string> v;
  CHECK(r.read("v", v));
  CHECK(v == std::vector<std::string>{"conv", "gate"});
  CHECK_THAT(message_of([&] { (void)r.read("str", n); }),
             Equals("config.json: str is a string, expected an integer (value \"8\")"));
  // Absent and null members are not read.
  n = 42;
  CHECK_FALSE(r.read("absent", n));
  CHECK_FALSE(r.read("z", n));
  CHECK(n == 42);
  const Json arr = parse("[1]");
  CHECK_THAT(message_of([&] { (void)JsonRef(arr, "a.json").read("n", n); }),
             Equals("a.json is an array, expected an object"));
}

TEST_CASE("io json: expect_only names every unknown key and the known ones", "[host][io]") {
  const Json doc = parse(R"({"blocks": [{"router": "top1", "experts": 8, "rooter": 1, "num_expert": 2}]})");
  const JsonRef root(doc, "config.json");
  REQUIRE_NOTHROW(root.expect_only({"blocks", "other"}));
  const JsonRef block = root.at("blocks").at(std::size_t{0});
  REQUIRE_NOTHROW(block.expect_only({"router", "experts", "rooter", "num_expert"}));
  REQUIRE_THROWS_AS(block.expect_only({"router", "experts", "rooter"}), moss::config_error);
  CHECK_THAT(message_of([&] {
               block.expect_only({"router", "experts", "rooter"});
             }),
             Equals("config.json: blocks[0]: unknown key \"num_expert\"; known: router, experts, rooter"));
  CHECK_THAT(message_of([&] {
               block.expect_only({"router", "experts"});
             }),
             Equals("config.json: blocks[0]: unknown keys \"rooter\", \"num_expert\"; known: router, experts"));
  CHECK_THAT(message_of([&] { root.expect_only({}); }), Equals("config.json: unknown key \"blocks\"; known: (none)"));
  CHECK_THAT(message_of([&] { root.at("blocks").expect_only({"x"}); }),
             Equals("config.json: blocks is an array, expected an object"));
}

TEST_CASE("io json: read_text_file reads whole files and names what is wrong", "[host][io]") {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moss_io_json_test_" + std::to_string(std::random_device{}()) + "_" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "c.json";
  const std::string content("{\"hidden_size\": 64}\n\0tail", 25);
  {
    std::ofstream out(file, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  CHECK(io::read_text_file(file) == content);
  CHECK_THAT(message_of([&] { (void)io::read_text_file(dir / "absent.json"); }),
             Equals((dir / "absent.json").string() + ": no such file"));
  REQUIRE_THROWS_AS(io::read_text_file(dir / "absent.json"), moss::io_error);
  CHECK_THAT(message_of([&] { (void)io::read_text_file(dir); }),
             Equals(dir.string() + ": is a directory, expected a file"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("io json: corrupted documents raise io_error or parse, never anything else", "[host][io]") {
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
      const Json doc = parse(text);
      REQUIRE(io::parse_json(io::dump_json(doc), "again") == doc);  // what parses, round-trips
    } catch (const moss::io_error& e) {
      REQUIRE_THAT(e.what(), ContainsSubstring("test.json: ") &&
                                 (ContainsSubstring("invalid JSON at line ") || ContainsSubstring("duplicate key")));
      ++failures;
    }
  }
  CHECK(failures > 2000);
}
