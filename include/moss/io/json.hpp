// moss/io/json.hpp: JSON for config.json, safetensors headers and sharded-checkpoint indexes,
// through nlohmann-json (`moss::io::Json` is `nlohmann::ordered_json`, so documents keep their
// key order when read and written).
//
// What moss adds to nlohmann-json:
// - `parse_json` is strict (no comments, no trailing commas, no NaN or Infinity, no duplicate
//   keys in any object, at most `max_json_depth` levels of nesting) and raises `io_error`
//   "<name>: invalid JSON at line L, column C: <reason>".
// - `dump_json` writes every double in its shortest round-trip form (std::to_chars) and refuses
//   what JSON cannot hold (NaN, infinities, strings that are not UTF-8) with `config_error`.
// - `JsonRef` is a read-only view of one value that knows its path, so every accessor error is a
//   `config_error` naming it: "config.json: blocks[1].num_experts is a string, expected an integer".
//     const io::Json doc = io::parse_json(io::read_text_file(dir / "config.json"), "config.json");
//     const io::JsonRef cfg(doc, "config.json");
//     std::int64_t d_model = cfg.at("hidden_size").as_int();
#pragma once

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "moss/core/error.hpp"

namespace moss::io {

/// A JSON document or value; objects keep their members in insertion (document) order.
using Json = nlohmann::ordered_json;

/// Deepest nesting of arrays and objects `parse_json` accepts (a document this deep is no
/// config; the limit keeps recursive consumers such as `dump_json` off the stack's edge).
inline constexpr int max_json_depth = 256;

/// The kind of `j` as messages print it: "null", "a boolean", "a number", "a string",
/// "an array", "an object".
inline const char* kind_name(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return "a number";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    default:
      return "binary data";
  }
}

namespace detail {

/// An input iterator over a char range that records the last character the parser read, so a
/// check made inside nlohmann's parse callback (duplicate key, depth) knows where it is.
class TrackingIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackingIterator(const char* p, const char** last) : p_(p), last_(last) {}
  const char& operator*() const {
    *last_ = p_;
    return *p_;
  }
  TrackingIterator& operator++() {
    ++p_;
    return *this;
  }
  TrackingIterator operator++(int) {
    TrackingIterator old = *this;
    ++p_;
    return old;
  }
  friend bool operator==(const TrackingIterator& a, const TrackingIterator& b) { return a.p_ == b.p_; }

 private:
  const char* p_;
  const char** last_;
};

/// Appends member `key` to `object` (an object) without ordered_json's linear search for an
/// existing key: for builders whose keys are unique by construction (checked by the caller).
inline void append_member(Json& object, std::string key, Json value) {
  static_cast<Json::object_t::Container&>(object.get_ref<Json::object_t&>())
      .emplace_back(std::move(key), std::move(value));
}

/// Line and column (both from 1) of byte `at` of `text` (`at` may be `text.size()`: the end).
inline std::pair<std::size_t, std::size_t> line_column(std::string_view text, std::size_t at) {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < at && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

/// nlohmann's reason without its "[json.exception.parse_error.101] parse error at line L,
/// column C: " prefix (moss prints its own position).
inline std::string nlohmann_reason(const char* what) {
  std::string_view s(what);
  if (s.starts_with("[json.exception.")) {
    const std::size_t close = s.find("] ");
    if (close != std::string_view::npos) s.remove_prefix(close + 2);
  }
  if (s.starts_with("parse error")) {
    const std::size_t colon = s.find(": ");
    if (colon != std::string_view::npos) s.remove_prefix(colon + 2);
  }
  return std::string(s);
}

inline bool is_identifier(std::string_view k) {
  if (k.empty()) return false;
  for (std::size_t i = 0; i < k.size(); ++i) {
    const char c = k[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!(alpha || (i > 0 && c >= '0' && c <= '9'))) return false;
  }
  return true;
}

/// A key as a path step: `.name` for identifiers, `["a.b"]` otherwise.
inline std::string member_step(std::string_view key) {
  if (is_identifier(key)) return "." + std::string(key);
  std::string quoted = "[\"";
  for (char c : key) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return quoted + "\"]";
}

/// Length of the valid UTF-8 sequence starting at `s[i]` (a byte >= 0x80), or 0 when it is
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

/// A key path as dump_json's messages print it ("(document)" for the root).
inline std::string shown_path(const std::string& path) { return path.empty() ? std::string("(document)") : path; }

/// Appends `s` as a JSON string literal, escaping as nlohmann does; `config_error` naming
/// `path` when `s` is not UTF-8.
inline void append_string(std::string& out, std::string_view s, const std::string& path) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = utf8_sequence_length(s, i);
      MOSS_EXPECTS(n != 0, config_error, "dump_json: ", shown_path(path), " holds a string that is not UTF-8 (byte ", i,
                   "); JSON text must be UTF-8");
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
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
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

/// The shortest text that reads back as `d` (std::to_chars), with ".0" added to an integral
/// value so it reads back as a floating number, as nlohmann writes it.
inline std::string double_text(double d) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

/// A number as messages print it (the exact integer, or the shortest double).
inline std::string number_text(const Json& j) {
  if (j.is_number_integer() && !j.is_number_unsigned()) return std::to_string(j.get<std::int64_t>());
  if (j.is_number_unsigned()) return std::to_string(j.get<std::uint64_t>());
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, j.get<double>());
  return std::string(buf, res.ptr);
}

inline void dump_value(std::string& out, const Json& j, int indent, int level, std::string& path) {
  const auto newline = [&](int at_level) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * static_cast<std::size_t>(at_level), ' ');
  };
  switch (j.type()) {
    case Json::value_t::null:
      out += "null";
      return;
    case Json::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      return;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      out += number_text(j);
      return;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      MOSS_EXPECTS(std::isfinite(d), config_error, "dump_json: ", shown_path(path), " is ", number_text(j),
                   ", which JSON cannot represent (only finite numbers)");
      out += double_text(d);
      return;
    }
    case Json::value_t::string:
      append_string(out, j.get_ref<const std::string&>(), path);
      return;
    case Json::value_t::array: {
      if (j.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      const std::size_t keep = path.size();
      std::size_t i = 0;
      for (const Json& e : j) {
        if (i) out += ',';
        newline(level + 1);
        path += "[" + std::to_string(i++) + "]";
        dump_value(out, e, indent, level + 1, path);
        path.resize(keep);
      }
      newline(level);
      out += ']';
      return;
    }
    case Json::value_t::object: {
      if (j.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      const std::size_t keep = path.size();
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += ',';
        first = false;
        newline(level + 1);
        const std::string step = member_step(it.key());
        path += path.empty() && step.front() == '.' ? step.substr(1) : step;
        append_string(out, it.key(), path);
        out += indent < 0 ? ":" : ": ";
        dump_value(out, it.value(), indent, level + 1, path);
        path.resize(keep);
      }
      newline(level);
      out += '}';
      return;
    }
    default:
      raise<config_error>("dump_json: ", shown_path(path), " is binary or discarded data, which JSON text cannot hold");
  }
}

/// nlohmann SAX handler that builds the document and checks what nlohmann does not: duplicate
/// keys and nesting depth. Members are appended without the linear key search of
/// `ordered_json::operator[]` (the duplicate check is a hash set), so a safetensors header or
/// index of 100k tensors parses in linear time.
class JsonBuilder {
 public:
  JsonBuilder(std::string_view text, const std::string& name, const char* const& last)
      : text_(text), name_(name), last_(last) {}

  Json take() { return std::move(root_); }

  bool null() { return put(Json(nullptr)); }
  bool boolean(bool b) { return put(Json(b)); }
  bool number_integer(Json::number_integer_t v) { return put(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) { return put(Json(v)); }
  bool number_float(Json::number_float_t v, const Json::string_t&) { return put(Json(v)); }
  bool string(Json::string_t& s) { return put(Json(std::move(s))); }
  bool binary(Json::binary_t&) { fail(last_at(), "binary values are not JSON"); }
  bool start_object(std::size_t) {
    open(Json::object());
    keys_.emplace_back();
    return true;
  }
  bool key(Json::string_t& k) {
    if (!keys_.back().insert(k).second) {
      // `last_` is the key's closing quote; its opening quote is the nearest earlier '"' not
      // escaped by an odd run of backslashes (UTF-8 continuation bytes are never '"').
      std::size_t open = last_at();
      for (;;) {
        open = text_.rfind('"', open - 1);
        std::size_t slashes = 0;
        while (slashes < open && text_[open - 1 - slashes] == '\\') ++slashes;
        if (slashes % 2 == 0) break;
      }
      const auto [line, column] = line_column(text_, open);
      raise<io_error>(name_, ": duplicate key ", quoted_key(k), " at line ", line, ", column ", column);
    }
    key_ = std::move(k);
    return true;
  }
  bool end_object() {
    keys_.pop_back();
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) {
    open(Json::array());
    return true;
  }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string& token, const Json::exception& e) {
    if (e.id == 406) {
      // nlohmann's only out_of_range while parsing: a number beyond a double. `position` is
      // the number's end here (the lexer gave back the character after it).
      const std::size_t start = position >= token.size() ? position - token.size() : 0;
      fail(start, cat("number ", token.substr(0, 40), " is out of the range of a double"));
    }
    // `position` counts the characters read, the offending one (or the end of input) included.
    fail(position == 0 ? 0 : position - 1, nlohmann_reason(e.what()));
  }

 private:
  [[noreturn]] void fail(std::size_t at, const std::string& reason) const {
    const auto [line, column] = line_column(text_, at);
    raise<io_error>(name_, ": invalid JSON at line ", line, ", column ", column, ": ", reason);
  }
  std::size_t last_at() const { return static_cast<std::size_t>(last_ - text_.data()); }

  static std::string quoted_key(std::string_view k) {
    std::string q = "\"";
    for (char c : k) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  }

  /// Places `v` as the document, the next element of the open array or the member of the open
  /// object under the last key; returns where it now lives.
  Json* place(Json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      auto& elements = parent.get_ref<Json::array_t&>();
      elements.push_back(std::move(v));
      return &elements.back();
    }
    append_member(parent, std::move(key_), std::move(v));
    return &parent.get_ref<Json::object_t&>().back().second;
  }
  bool put(Json&& v) {
    place(std::move(v));
    return true;
  }
  /// Opens an array or object. Pointers into parents stay valid: a parent grows only after its
  /// open child is closed.
  void open(Json&& empty) {
    if (stack_.size() >= static_cast<std::size_t>(max_json_depth))
      fail(last_at(), cat("nesting deeper than ", max_json_depth, " levels"));
    stack_.push_back(place(std::move(empty)));
  }

  std::string_view text_;
  const std::string& name_;
  const char* const& last_;
  Json root_;
  std::vector<Json*> stack_;                           // the open arrays and objects, outermost first
  std::vector<std::unordered_set<std::string>> keys_;  // the keys seen so far, per open object
  std::string key_;                                    // the key of the member being parsed
};

}  // namespace detail

/// Parses `text` (one JSON document, RFC 8259; a leading UTF-8 byte-order mark is skipped as
/// nlohmann does). `name` (a file name) starts every message. Throws `io_error`
/// "<name>: invalid JSON at line L, column C: <reason>" on malformed input, NaN or Infinity
/// literals, comments, trailing commas, numbers beyond a double and nesting deeper than
/// `max_json_depth`, and "<name>: duplicate key \"k\" at line L, column C" (the key's opening
/// quote) on a key repeated in one object.
inline Json parse_json(std::string_view text, const std::string& name) {
  // Empty input gets moss's own message: nlohmann's wording for it differs between 3.11.2 and
  // 3.11.3, and the position is simply the end of the text.
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    std::size_t line = 1, column = 1;
    for (char ch : text) {
      if (ch == '\n')
        ++line, column = 1;
      else
        ++column;
    }
    raise<io_error>(name, ": invalid JSON at line ", line, ", column ", column,
                    ": unexpected end of input (the text is empty or only white space)");
  }
  const char* last = text.data();  // the character the parser read last
  detail::JsonBuilder builder(text, name, last);
  Json::sax_parse(detail::TrackingIterator(text.data(), &last),
                  detail::TrackingIterator(text.data() + text.size(), &last), &builder, Json::input_format_t::json,
                  /*strict=*/true, /*ignore_comments=*/false);
  return builder.take();
}

/// The whole content of the file at `path`. `io_error` naming the path: "no such file",
/// "is a directory", "cannot open file (reason)", "short read (n of m bytes)".
inline std::string read_text_file(const std::filesystem::path& path) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) raise<io_error>(path.string(), ": no such file");
  if (std::filesystem::is_directory(st)) raise<io_error>(path.string(), ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) raise<io_error>(path.string(), ": cannot open file (", std::strerror(errno), ")");
  in.seekg(0, std::ios::end);
  const std::streamoff n = in.tellg();
  if (n < 0) raise<io_error>(path.string(), ": cannot determine the file size");
  std::string s(static_cast<std::size_t>(n), '\0');
  in.seekg(0, std::ios::beg);
  in.read(s.data(), n);
  if (in.gcount() != n) raise<io_error>(path.string(), ": short read (", in.gcount(), " of ", n, " bytes)");
  return s;
}

/// JSON text of `j`: compact when `indent` is negative, else one member or element per line,
/// indented by `indent` spaces per level (nlohmann's layout). Doubles are written in their
/// shortest round-trip form (0.1 as 0.1; integral values as 2.0). `config_error` naming the
/// value's path for NaN, infinities, strings that are not UTF-8 and binary values.
inline std::string dump_json(const Json& j, int indent = 2) {
  std::string out, path;
  detail::dump_value(out, j, indent, 0, path);
  return out;
}

/// The double whose shortest decimal form is the float's shortest form, for writing float
/// settings into configs: json_number(1e-05f) is 1e-05, not 9.999999747378752e-06. Non-finite
/// values are returned as they are (and `dump_json` refuses them).
inline double json_number(float x) {
  if (!std::isfinite(x)) return static_cast<double>(x);
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  double d = 0.0;
  std::from_chars(buf, res.ptr, d);
  return d;
}

/// A read-only view of one value of a parsed document that knows its path, so every accessor
/// error is a `config_error` naming it ("config.json: blocks[1].num_experts is a string,
/// expected an integer"). It refers to the value: the document must outlive the view.
class JsonRef {
 public:
  /// A view of `value`, the root of a document named `path` (a file name, "config.json").
  JsonRef(const Json& value, std::string path) : value_(&value), where_(std::move(path)) {}
  /// A view of a temporary would dangle.
  JsonRef(const Json&& value, std::string path) = delete;
  /// A view of `value` that sits at `where` inside some document ("config.json: blocks[1]"), for
  /// a value kept apart from its document: members continue the path ("...blocks[1].num_experts").
  static JsonRef at_path(const Json& value, std::string where) { return JsonRef(value, std::move(where), Child{}); }

  /// The value itself.
  const Json& json() const { return *value_; }
  /// Where the value is, for messages: "config.json" for the root, "config.json: blocks[1].router" below it.
  const std::string& where() const { return where_; }
  /// The value's kind as messages print it: "null", "a boolean", "a number", "a string", "an array", "an object".
  const char* kind() const { return kind_name(*value_); }
  /// Whether the value is of that kind (a number: an integer or a floating value).
  bool is_null() const { return value_->is_null(); }
  bool is_bool() const { return value_->is_boolean(); }
  bool is_number() const { return value_->is_number(); }
  bool is_string() const { return value_->is_string(); }
  bool is_array() const { return value_->is_array(); }
  bool is_object() const { return value_->is_object(); }

  /// Member `key`, or nullopt when absent (a member that is null is returned); `config_error`
  /// when this is not an object.
  std::optional<JsonRef> find(std::string_view key) const {
    expect(is_object(), "an object");
    const auto it = value_->find(std::string(key));
    if (it == value_->end()) return std::nullopt;
    return JsonRef(*it, member_where(key), Child{});
  }
  /// Member `key`; `config_error` "<where> has no key \"k\"" when absent.
  JsonRef at(std::string_view key) const {
    std::optional<JsonRef> m = find(key);
    MOSS_EXPECTS(m.has_value(), config_error, where_, " has no key \"", key, "\"");
    return *m;
  }
  /// Element `i` of an array (path "<where>[i]"); `config_error` when out of range or not an array.
  JsonRef at(std::size_t i) const {
    expect(is_array(), "an array");
    MOSS_EXPECTS(i < value_->size(), config_error, where_, " has ", value_->size(), " elements; index ", i,
                 " is out of range");
    return JsonRef((*value_)[i], where_ + (root() ? ": [" : "[") + std::to_string(i) + "]", Child{});
  }
  /// Number of elements of an array or members of an object; `config_error` for other kinds.
  std::size_t size() const {
    expect(is_array() || is_object(), "an array or an object");
    return value_->size();
  }
  /// An object's keys in document order; `config_error` when this is not an object.
  std::vector<std::string> keys() const {
    expect(is_object(), "an object");
    std::vector<std::string> r;
    r.reserve(value_->size());
    for (auto it = value_->begin(); it != value_->end(); ++it) r.push_back(it.key());
    return r;
  }

  /// The number as an exact int64: an integer literal within int64, or a number written with a
  /// fraction or exponent whose value is a whole number within ±2^53 (so 3.0 and 1e3 are read,
  /// 3.5 and 1e30 are not, as no double above 2^53 says which integer the text meant).
  std::int64_t as_int() const {
    expect(is_number(), "an integer");
    if (value_->is_number_unsigned()) {
      const auto u = value_->get<std::uint64_t>();
      MOSS_EXPECTS(u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), config_error, where_,
                   " is ", u, ", expected an integer within the int64 range");
      return static_cast<std::int64_t>(u);
    }
    if (value_->is_number_integer()) return value_->get<std::int64_t>();
    const double d = value_->get<double>();
    constexpr double exact_limit = 9007199254740992.0;  // 2^53: every integer up to it is a double
    MOSS_EXPECTS(std::isfinite(d) && d == std::trunc(d) && std::fabs(d) <= exact_limit, config_error, where_, " is ",
                 detail::number_text(*value_),
                 ", expected an integer (a number with a fraction or exponent must be whole and within ±2^53)");
    return static_cast<std::int64_t>(d);
  }
  /// The number as a double; `config_error` for a non-number or a non-finite value.
  double as_double() const {
    expect(is_number(), "a number");
    const double d = value_->get<double>();
    MOSS_EXPECTS(std::isfinite(d), config_error, where_, " is ", detail::number_text(*value_),
                 ", expected a finite number");
    return d;
  }
  /// The boolean; `config_error` otherwise.
  bool as_bool() const {
    expect(is_bool(), "a boolean");
    return value_->get<bool>();
  }
  /// The string; `config_error` otherwise.
  std::string as_string() const {
    expect(is_string(), "a string");
    return value_->get<std::string>();
  }
  /// An array of strings; `config_error` naming the first element that is not a string.
  std::vector<std::string> as_strings() const {
    expect(is_array(), "an array of strings");
    std::vector<std::string> r;
    r.reserve(value_->size());
    for (std::size_t i = 0; i < value_->size(); ++i) r.push_back(at(i).as_string());
    return r;
  }

  /// Reads member `key` into `out` when it is present and not null; returns whether it did.
  /// `V` is an integral type (range-checked), a floating type, bool, std::string or
  /// std::vector<std::string>; a member of the wrong kind or range is a `config_error`.
  template <class V>
  bool read(std::string_view key, V& out) const {
    const std::optional<JsonRef> m = find(key);
    if (!m || m->is_null()) return false;
    if constexpr (std::is_same_v<V, bool>) {
      out = m->as_bool();
    } else if constexpr (std::is_integral_v<V>) {
      const std::int64_t v = m->as_int();
      const bool fits =
          std::is_signed_v<V>
              ? v >= static_cast<std::int64_t>(std::numeric_limits<V>::min()) &&
                    (sizeof(V) >= sizeof(std::int64_t) || v <= static_cast<std::int64_t>(std::numeric_limits<V>::max()))
              : v >= 0 && (sizeof(V) >= sizeof(std::int64_t) ||
                           static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<V>::max()));
      MOSS_EXPECTS(fits, config_error, m->where(), " is ", v, ", expected an integer in [",
                   +std::numeric_limits<V>::min(), ", ", +std::numeric_limits<V>::max(), "]");
      out = static_cast<V>(v);
    } else if constexpr (std::is_floating_point_v<V>) {
      const double d = m->as_double();
      MOSS_EXPECTS(std::fabs(d) <= static_cast<double>(std::numeric_limits<V>::max()), config_error, m->where(), " is ",
                   detail::number_text(m->json()), ", outside the range of a ",
                   sizeof(V) == sizeof(float) ? "float" : "floating type");
      out = static_cast<V>(d);
    } else if constexpr (std::is_same_v<V, std::string>) {
      out = m->as_string();
    } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
      out = m->as_strings();
    } else {
      static_assert(sizeof(V) == 0,
                    "JsonRef::read reads integral, floating, bool, std::string and std::vector<std::string> members");
    }
    return true;
  }

  /// `config_error` naming every member of this object whose key is not in `known`
  /// ("<where>: unknown key \"x\"; known: a, b"); `config_error` when this is not an object.
  void expect_only(std::initializer_list<std::string_view> known) const {
    expect(is_object(), "an object");
    std::vector<std::string> unknown;
    for (auto it = value_->begin(); it != value_->end(); ++it) {
      bool found = false;
      for (std::string_view n : known) found = found || n == it.key();
      if (!found) unknown.push_back(it.key());
    }
    if (unknown.empty()) return;
    std::string list, known_list;
    for (const auto& k : unknown) list += (list.empty() ? "\"" : ", \"") + k + "\"";
    for (std::string_view n : known) known_list += (known_list.empty() ? "" : ", ") + std::string(n);
    raise<config_error>(where_, ": unknown key", unknown.size() > 1 ? "s " : " ", list,
                        "; known: ", known.size() ? known_list : std::string("(none)"));
  }

 private:
  struct Child {};
  JsonRef(const Json& value, std::string where, Child) : value_(&value), where_(std::move(where)), root_(false) {}

  bool root() const { return root_; }
  std::string member_where(std::string_view key) const {
    const std::string step = detail::member_step(key);
    if (!root_) return where_ + step;
    return where_ + ": " + (step.front() == '.' ? step.substr(1) : step);
  }

  void expect(bool ok, const char* expected) const {
    if (ok) return;
    std::string shown;
    if (is_string()) {
      const std::string& s = value_->get_ref<const std::string&>();
      shown = " (value \"" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "\")";
    } else if (is_number()) {
      shown = " (value " + detail::number_text(*value_) + ")";
    } else if (is_bool()) {
      shown = value_->get<bool>() ? " (value true)" : " (value false)";
    }
    raise<config_error>(where_, " is ", kind(), ", expected ", expected, shown);
  }

  const Json* value_;
  std::string where_;
  bool root_ = true;
};

}  // namespace moss::io
