// moss/core/json.hpp: a small, strict JSON reader and writer (RFC 8259).
//
// moss reads `config.json`, safetensors headers and sharded-checkpoint indexes, and writes the
// same. The host target must need nothing but a C++20 compiler, so this is moss's own parser
// rather than a dependency. It is strict: anything RFC 8259 does not allow (comments, trailing
// commas, NaN, single quotes, lone surrogates, invalid UTF-8, control characters in strings),
// duplicate object keys and nesting deeper than `max_depth` raise `io_error` naming the file,
// the line, the column, the byte offset and the reason. Objects keep their insertion order.
//
// Every parsed value remembers where it came from ("config.json: layers[2].d_state"), so an
// accessor used on the wrong type or a missing key raises `config_error` naming that path:
//   auto cfg = moss::json::parse(moss::json::read_file("config.json"), "config.json");
//   int64_t d = cfg.at("hidden_size").as_int();   // "config.json: hidden_size is a string ..."
#pragma once

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "moss/core/error.hpp"

namespace moss::json {

/// The six JSON kinds.
enum class Kind : std::uint8_t { null, boolean, number, string, array, object };

/// Name of a kind as messages print it ("an integer" is reported by the accessors).
constexpr const char* kind_name(Kind k) {
  switch (k) {
    case Kind::null:
      return "null";
    case Kind::boolean:
      return "a boolean";
    case Kind::number:
      return "a number";
    case Kind::string:
      return "a string";
    case Kind::array:
      return "an array";
    case Kind::object:
      return "an object";
  }
  return "?";
}

/// Deepest nesting of arrays and objects `parse` accepts.
inline constexpr int max_depth = 256;

class Value;
class Parser;
inline void dump_to(std::string& out, const Value& v);
/// A JSON array.
using Array = std::vector<Value>;
/// A JSON object: members in insertion (document) order; keys are unique.
using Object = std::vector<std::pair<std::string, Value>>;

/// One JSON value. Numbers keep a double and, when the text was an integer that fits, the exact
/// int64 (so 2^63 − 1 and big token ids survive). Values built in code have no origin; values
/// returned by `parse` carry their file name and key path for error messages.
class Value {
 public:
  /// null.
  Value() = default;
  Value(std::nullptr_t) {}                           // NOLINT(google-explicit-constructor)
  Value(bool b) : kind_(Kind::boolean), bool_(b) {}  // NOLINT(google-explicit-constructor)
  /// A number from any integer type (not bool); exact when it fits int64.
  template <class I>
  requires(std::is_integral_v<I> && !std::is_same_v<I, bool>) Value(I i)
      : kind_(Kind::number), num_(static_cast<double>(i)) {  // NOLINT(google-explicit-constructor)
    if constexpr (std::is_signed_v<I> || sizeof(I) < sizeof(std::int64_t)) {
      has_int_ = true;
      int_ = static_cast<std::int64_t>(i);
    } else if (i <= static_cast<I>(std::numeric_limits<std::int64_t>::max())) {
      has_int_ = true;
      int_ = static_cast<std::int64_t>(i);
    }
  }
  /// A number from a floating value (non-finite values are refused by `dump`).
  Value(double d) : kind_(Kind::number), num_(d) {}                  // NOLINT(google-explicit-constructor)
  Value(float f) : kind_(Kind::number), num_(f) {}                   // NOLINT(google-explicit-constructor)
  Value(std::string s) : kind_(Kind::string), str_(std::move(s)) {}  // NOLINT(google-explicit-constructor)
  Value(std::string_view s) : kind_(Kind::string), str_(s) {}        // NOLINT(google-explicit-constructor)
  Value(const char* s) : kind_(Kind::string), str_(s) {}             // NOLINT(google-explicit-constructor)
  Value(Array a) : kind_(Kind::array), arr_(std::move(a)) {}         // NOLINT(google-explicit-constructor)
  Value(Object o) : kind_(Kind::object), obj_(std::move(o)) {}       // NOLINT(google-explicit-constructor)

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_number() const { return kind_ == Kind::number; }
  /// True for a number written as an integer that fits int64 (`3`, not `3.0` or `1e3`).
  bool is_integer() const { return kind_ == Kind::number && has_int_; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }

  /// Where the value came from, for messages: "config.json: layers[2].d_state".
  std::string where() const {
    const std::string file = origin_ ? *origin_ : std::string("json");
    return path_.empty() ? file + ": (document)" : file + ": " + path_;
  }
  /// The key path alone ("layers[2].d_state"; empty for the document or a value built in code).
  const std::string& path() const { return path_; }

  /// The boolean; `config_error` otherwise.
  bool as_bool() const {
    expect(Kind::boolean, "a boolean");
    return bool_;
  }
  /// The number as a double; `config_error` for a non-number.
  double as_double() const {
    expect(Kind::number, "a number");
    return num_;
  }
  /// The number as an exact int64: an integer in the text, or a double with an integral value
  /// that is exactly representable (|x| ≤ 2^53, so `64.0` is accepted); `config_error` for 2.5,
  /// 1e30 or a non-number.
  std::int64_t as_int() const {
    expect(Kind::number, "an integer");
    if (has_int_) return int_;
    constexpr double exact_limit = 9007199254740992.0;  // 2^53: every integer below is a double
    MOSS_EXPECTS(std::isfinite(num_) && num_ == std::trunc(num_) && std::fabs(num_) <= exact_limit, config_error,
                 where(), " is ", dump_number(),
                 " but expected an integer (exact, within ±2^53 unless written "
                 "as an integer literal within int64)");
    return static_cast<std::int64_t>(num_);
  }
  /// The string; `config_error` otherwise.
  const std::string& as_string() const {
    expect(Kind::string, "a string");
    return str_;
  }
  /// The elements; `config_error` for a non-array.
  const Array& as_array() const {
    expect(Kind::array, "an array");
    return arr_;
  }
  /// The members in document order; `config_error` for a non-object.
  const Object& as_object() const {
    expect(Kind::object, "an object");
    return obj_;
  }

  /// The member `key` or null when absent; `config_error` when this is not an object.
  const Value* find(std::string_view key) const {
    expect(Kind::object, "an object");
    for (const auto& [k, v] : obj_)
      if (k == key) return &v;
    return nullptr;
  }
  /// The member `key`; `config_error` naming the path when absent or when this is not an object.
  const Value& at(std::string_view key) const {
    const Value* v = find(key);
    MOSS_EXPECTS(v != nullptr, config_error, where(), " has no key \"", key, "\"");
    return *v;
  }
  /// Element `i` of an array; `config_error` when out of range or not an array.
  const Value& at(std::size_t i) const {
    const Array& a = as_array();
    MOSS_EXPECTS(i < a.size(), config_error, where(), " has ", a.size(), " elements; index ", i, " is out of range");
    return a[i];
  }
  /// Number of elements (array) or members (object); `config_error` for other kinds.
  std::size_t size() const {
    if (kind_ == Kind::array) return arr_.size();
    expect(Kind::object, "an array or an object");
    return obj_.size();
  }

  /// Sets member `key` (replacing an existing one, keeping its position); a null value becomes
  /// an empty object first. `config_error` for other kinds.
  void set(std::string key, Value v) {
    if (kind_ == Kind::null) kind_ = Kind::object;
    expect(Kind::object, "an object");
    for (auto& [k, old] : obj_)
      if (k == key) {
        old = std::move(v);
        return;
      }
    obj_.emplace_back(std::move(key), std::move(v));
  }
  /// Appends to an array; a null value becomes an empty array first.
  void push_back(Value v) {
    if (kind_ == Kind::null) kind_ = Kind::array;
    expect(Kind::array, "an array");
    arr_.push_back(std::move(v));
  }

  /// Structural equality (object member order matters; origins and paths do not). Numbers
  /// compare by value, and two integers also by their exact int64.
  friend bool operator==(const Value& a, const Value& b) {
    if (a.kind_ != b.kind_) return false;
    switch (a.kind_) {
      case Kind::null:
        return true;
      case Kind::boolean:
        return a.bool_ == b.bool_;
      case Kind::number:
        if (a.has_int_ && b.has_int_) return a.int_ == b.int_;
        return a.num_ == b.num_;
      case Kind::string:
        return a.str_ == b.str_;
      case Kind::array:
        return a.arr_ == b.arr_;
      case Kind::object:
        return a.obj_ == b.obj_;
    }
    return false;
  }

 private:
  friend class Parser;
  friend void dump_to(std::string& out, const Value& v);

  void expect(Kind k, const char* expected) const {
    if (kind_ == k) return;
    std::string shown;
    if (kind_ == Kind::string) {
      shown = " (\"" + (str_.size() > 40 ? str_.substr(0, 40) + "..." : str_) + "\")";
    } else if (kind_ == Kind::number) {
      shown = " (" + dump_number() + ")";
    } else if (kind_ == Kind::boolean) {
      shown = bool_ ? " (true)" : " (false)";
    }
    raise<config_error>(where(), " is ", kind_name(kind_), shown, " but expected ", expected);
  }

  /// The number as JSON text: the exact integer, or the shortest double that reads back exactly.
  std::string dump_number() const {
    char buf[32];
    const auto res = has_int_ ? std::to_chars(buf, buf + sizeof buf, int_) : std::to_chars(buf, buf + sizeof buf, num_);
    return std::string(buf, res.ptr);
  }

  Kind kind_ = Kind::null;
  bool bool_ = false;
  bool has_int_ = false;
  std::int64_t int_ = 0;
  double num_ = 0.0;
  std::string str_;
  Array arr_;
  Object obj_;
  std::string path_;                           // key path from the document root, for messages
  std::shared_ptr<const std::string> origin_;  // the file (or "what") the document was parsed from
};

namespace detail {

inline bool is_identifier(std::string_view k) {
  if (k.empty()) return false;
  for (std::size_t i = 0; i < k.size(); ++i) {
    const char c = k[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!(alpha || (i > 0 && c >= '0' && c <= '9'))) return false;
  }
  return true;
}

/// Appends `cp` (a Unicode scalar value) to `out` as UTF-8.
inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

/// Length of the valid UTF-8 sequence starting at `s[i]` (a byte ≥ 0x80), or 0 when it is
/// invalid (overlong forms, surrogates, code points above U+10FFFF, truncation).
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1fu;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0fu;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07u;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0u) != 0x80u) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3fu);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

}  // namespace detail

/// The recursive-descent parser behind `parse` (one per document).
class Parser {
 public:
  Parser(std::string_view text, const std::string& what)
      : text_(text), origin_(std::make_shared<const std::string>(what)) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(std::string(), 0);
    skip_ws();
    if (pos_ != text_.size()) fail("unexpected trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(std::string_view reason) const { fail_at(pos_, reason); }
  [[noreturn]] void fail_at(std::size_t at, std::string_view reason) const {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    raise<io_error>(*origin_, ": invalid JSON at line ", line, ", column ", col, " (byte ", at, "): ", reason);
  }
  std::string describe_here() const {
    if (pos_ >= text_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(text_[pos_]);
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    return cat("byte 0x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
  }

  void skip_ws() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  Value make(Kind k, const std::string& path) const {
    Value v;
    v.kind_ = k;
    v.path_ = path;
    v.origin_ = origin_;
    return v;
  }

  Value parse_value(const std::string& path, int depth) {
    if (pos_ >= text_.size()) fail("unexpected end of input, expected a value");
    switch (text_[pos_]) {
      case '{':
        return parse_object(path, depth + 1);
      case '[':
        return parse_array(path, depth + 1);
      case '"': {
        Value v = make(Kind::string, path);
        v.str_ = parse_string();
        return v;
      }
      case 't':
        return parse_literal("true", make_bool(path, true));
      case 'f':
        return parse_literal("false", make_bool(path, false));
      case 'n':
        return parse_literal("null", make(Kind::null, path));
      default:
        break;
    }
    const char c = text_[pos_];
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(path);
    fail(
        cat("unexpected ", describe_here(), ", expected a value (object, array, string, number, true, false or null)"));
  }

  Value make_bool(const std::string& path, bool b) const {
    Value v = make(Kind::boolean, path);
    v.bool_ = b;
    return v;
  }

  Value parse_literal(std::string_view word, Value v) {
    if (text_.substr(pos_, word.size()) != word) fail(cat("invalid literal, expected '", word, "'"));
    pos_ += word.size();
    return v;
  }

  static std::string member_path(const std::string& parent, std::string_view key) {
    if (detail::is_identifier(key)) return parent.empty() ? std::string(key) : parent + "." + std::string(key);
    std::string quoted = "[\"";
    for (char c : key) {
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    return parent + quoted + "\"]";
  }

  Value parse_object(const std::string& path, int depth) {
    if (depth > max_depth) fail(cat("nesting deeper than ", max_depth, " levels"));
    Value obj = make(Kind::object, path);
    ++pos_;  // '{'
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return obj;
    }
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_ws();
      if (pos_ >= text_.size() || text_[pos_] != '"')
        fail(cat("unexpected ", describe_here(), ", expected a string key in double quotes"));
      const std::size_t key_at = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) fail_at(key_at, cat("duplicate key \"", key, "\" in object"));
      skip_ws();
      if (pos_ >= text_.size() || text_[pos_] != ':') fail(cat("unexpected ", describe_here(), ", expected ':'"));
      ++pos_;
      skip_ws();
      Value member = parse_value(member_path(path, key), depth);
      obj.obj_.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return obj;
      }
      fail(cat("unexpected ", describe_here(), ", expected ',' or '}' in object"));
    }
  }

  Value parse_array(const std::string& path, int depth) {
    if (depth > max_depth) fail(cat("nesting deeper than ", max_depth, " levels"));
    Value arr = make(Kind::array, path);
    ++pos_;  // '['
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return arr;
    }
    for (;;) {
      skip_ws();
      arr.arr_.push_back(parse_value(path + "[" + std::to_string(arr.arr_.size()) + "]", depth));
      skip_ws();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return arr;
      }
      fail(cat("unexpected ", describe_here(), ", expected ',' or ']' in array"));
    }
  }

  std::uint32_t parse_hex4() {
    if (pos_ + 4 > text_.size()) fail("truncated \\u escape, expected 4 hex digits");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text_[pos_];
      std::uint32_t d;
      if (c >= '0' && c <= '9')
        d = static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = static_cast<std::uint32_t>(c - 'A' + 10);
      else
        fail(cat("invalid hex digit ", describe_here(), " in \\u escape"));
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail(cat("unescaped control character ", describe_here(), " in string (write it as \\u00XX)"));
      if (c >= 0x80) {
        const std::size_t n = detail::utf8_sequence_length(text_, pos_);
        if (n == 0) fail("invalid UTF-8 in string");
        out.append(text_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      const std::size_t escape_at = pos_;
      ++pos_;
      if (pos_ >= text_.size()) fail("unterminated escape sequence");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) fail_at(escape_at, "lone low surrogate in \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (text_.substr(pos_, 2) != "\\u")
              fail_at(escape_at, "high surrogate not followed by a \\u low surrogate");
            pos_ += 2;
            const std::uint32_t lo = parse_hex4();
            if (lo < 0xdc00 || lo > 0xdfff) fail_at(escape_at, "high surrogate followed by a non-low-surrogate escape");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          detail::append_utf8(out, cp);
          break;
        }
        default:
          fail_at(escape_at, cat("invalid escape '\\", std::string(1, e), "'"));
      }
    }
  }

  Value parse_number(const std::string& path) {
    const std::size_t start = pos_;
    const auto digit = [&](std::size_t i) { return i < text_.size() && text_[i] >= '0' && text_[i] <= '9'; };
    bool integral = true;
    bool negative = false;
    if (text_[pos_] == '-') {
      negative = true;
      ++pos_;
    }
    if (!digit(pos_)) fail("expected a digit in number");
    // Decimal exponent of the leading significant digit, to tell underflow from overflow.
    long long magnitude = 0;
    bool seen_significant = false;
    if (text_[pos_] == '0') {
      ++pos_;
      if (digit(pos_)) fail("leading zeros are not allowed in numbers");
    } else {
      while (digit(pos_)) {
        if (seen_significant) ++magnitude;
        seen_significant = true;
        ++pos_;
      }
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (!digit(pos_)) fail("expected a digit after the decimal point");
      long long k = 0;
      while (digit(pos_)) {
        --k;
        if (!seen_significant && text_[pos_] != '0') {
          seen_significant = true;
          magnitude = k;
        }
        ++pos_;
      }
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      bool exp_negative = false;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) exp_negative = text_[pos_++] == '-';
      if (!digit(pos_)) fail("expected a digit in the exponent");
      long long e = 0;
      while (digit(pos_)) {
        if (e < 1000000000LL) e = e * 10 + (text_[pos_] - '0');
        ++pos_;
      }
      magnitude += exp_negative ? -e : e;
    }
    const std::string_view token = text_.substr(start, pos_ - start);
    Value v = make(Kind::number, path);
    if (integral) {
      std::int64_t i = 0;
      const auto r = std::from_chars(token.data(), token.data() + token.size(), i);
      if (r.ec == std::errc() && r.ptr == token.data() + token.size()) {
        v.has_int_ = true;
        v.int_ = i;
      }
    }
    double d = 0.0;
    const auto r = std::from_chars(token.data(), token.data() + token.size(), d);
    if (r.ec == std::errc::result_out_of_range) {
      // Tiny magnitudes round to zero; huge ones have no double (JSON has no infinity).
      if (!seen_significant || magnitude < 0) {
        d = negative ? -0.0 : 0.0;
      } else {
        fail_at(start, cat("number ", token.substr(0, 40), " is out of the range of a double"));
      }
    } else if (r.ec != std::errc() || r.ptr != token.data() + token.size()) {
      fail_at(start, cat("malformed number ", token.substr(0, 40)));
    }
    v.num_ = d;
    return v;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  std::shared_ptr<const std::string> origin_;
};

/// Parses one JSON document (RFC 8259, UTF-8, surrounding whitespace allowed). `what` names the
/// source (a file name) in messages. Throws `io_error` with the line, column, byte offset and
/// reason on malformed input.
inline Value parse(std::string_view text, const std::string& what) { return Parser(text, what).parse_document(); }

/// Appends `s` as a JSON string literal (escaping quotes, backslashes and control characters).
inline void dump_string(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += "0123456789abcdef"[c >> 4];
          out += "0123456789abcdef"[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

/// Appends the compact JSON text of `v` to `out`.
inline void dump_to(std::string& out, const Value& v) {
  switch (v.kind_) {
    case Kind::null:
      out += "null";
      return;
    case Kind::boolean:
      out += v.bool_ ? "true" : "false";
      return;
    case Kind::number:
      MOSS_EXPECTS(v.has_int_ || std::isfinite(v.num_), config_error, "json::dump: ", v.where(), " is ", v.num_,
                   ", which JSON cannot represent (only finite numbers)");
      out += v.dump_number();
      return;
    case Kind::string:
      dump_string(out, v.str_);
      return;
    case Kind::array: {
      out += '[';
      for (std::size_t i = 0; i < v.arr_.size(); ++i) {
        if (i) out += ',';
        dump_to(out, v.arr_[i]);
      }
      out += ']';
      return;
    }
    case Kind::object: {
      out += '{';
      for (std::size_t i = 0; i < v.obj_.size(); ++i) {
        if (i) out += ',';
        dump_string(out, v.obj_[i].first);
        out += ':';
        dump_to(out, v.obj_[i].second);
      }
      out += '}';
      return;
    }
  }
}

/// Compact JSON text of `v` (no whitespace); `parse(dump(v))` equals `v`. Strings are written
/// as given (they must be UTF-8); a non-finite number raises `config_error`.
inline std::string dump(const Value& v) {
  std::string out;
  dump_to(out, v);
  return out;
}

/// The whole content of the file at `path`; `io_error` naming the path when it cannot be read.
inline std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) raise<io_error>(path.string(), ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) raise<io_error>(path.string(), ": cannot open file (", std::strerror(errno), ")");
  std::string s;
  in.seekg(0, std::ios::end);
  const std::streamoff n = in.tellg();
  if (n < 0) raise<io_error>(path.string(), ": cannot determine the file size");
  s.resize(static_cast<std::size_t>(n));
  in.seekg(0, std::ios::beg);
  in.read(s.data(), n);
  if (in.gcount() != n) raise<io_error>(path.string(), ": short read (", in.gcount(), " of ", n, " bytes)");
  return s;
}

}  // namespace moss::json
