// Tests of moss/io/bytes.hpp: the byte tokenizer (text → one id per byte and back, ids that are
// not bytes decode to U+FFFD) and printable_text (well-formed UTF-8 kept, control bytes, C1
// controls and invalid UTF-8 escaped as \xNN, a backslash doubled).
#include <catch2/catch_test_macros.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moss/io/bytes.hpp"

using namespace moss;

namespace {

/// The bytes `printable_text` was given, read back from its output: "\\" is a backslash, "\xNN"
/// the byte NN, anything else itself; `ok` is set false when a backslash starts neither.
std::string unescape(const std::string& shown, bool& ok) {
  ok = true;
  std::string out;
  for (std::size_t i = 0; i < shown.size(); ++i) {
    if (shown[i] != '\\') {
      out.push_back(shown[i]);
    } else if (i + 1 < shown.size() && shown[i + 1] == '\\') {
      out.push_back('\\');
      i += 1;
    } else if (i + 3 < shown.size() && shown[i + 1] == 'x') {
      out.push_back(static_cast<char>(std::stoi(shown.substr(i + 2, 2), nullptr, 16)));
      i += 3;
    } else {
      ok = false;
      return out;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("encode_bytes: one id per UTF-8 byte, its value", "[host][io]") {
  CHECK(encode_bytes("").empty());
  CHECK(encode_bytes("hello") == std::vector<std::int64_t>{104, 101, 108, 108, 111});
  // é is C3 A9; the euro sign E2 82 AC; a NUL byte inside the view is a token too.
  CHECK(encode_bytes("\xC3\xA9\xE2\x82\xAC") == std::vector<std::int64_t>{0xC3, 0xA9, 0xE2, 0x82, 0xAC});
  CHECK(encode_bytes(std::string_view("a\0b", 3)) == std::vector<std::int64_t>{97, 0, 98});
  CHECK(encode_bytes("\xFF\x80") == std::vector<std::int64_t>{255, 128});  // not UTF-8: still its bytes
}

TEST_CASE("decode_bytes: the exact bytes back, ids outside 0 to 255 as U+FFFD", "[host][io]") {
  // Every byte value round-trips.
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<std::int64_t> ids = encode_bytes(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[b] == b);
  CHECK(decode_bytes(ids) == all);
  CHECK(decode_bytes(std::vector<std::int64_t>{}).empty());
  CHECK(decode_bytes(encode_bytes("Mamba \xC3\xA9t\xC3\xA9")) == "Mamba \xC3\xA9t\xC3\xA9");
  // Not a byte: U+FFFD (EF BF BD) each, the rest unchanged.
  CHECK(decode_bytes(std::vector<std::int64_t>{104, 256, 105, -1, 50279}) == "h\xEF\xBF\xBDi\xEF\xBF\xBD\xEF\xBF\xBD");
  // Half of a two-byte character stays half: decode_bytes does not repair UTF-8.
  CHECK(decode_bytes(std::vector<std::int64_t>{0xC3}) == "\xC3");
}

TEST_CASE("printable_text keeps UTF-8 text, newlines and tabs", "[host][io]") {
  CHECK(printable_text("").empty());
  CHECK(printable_text("hello, world") == "hello, world");
  CHECK(printable_text("line 1\n\tline 2\n") == "line 1\n\tline 2\n");
  // Two-, three- and four-byte characters, the largest code point U+10FFFF and U+00A0 (the first
  // after the C1 controls).
  const std::string utf8 = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x8D \xF4\x8F\xBF\xBF \xC2\xA0";
  CHECK(printable_text(utf8) == utf8);
  CHECK(printable_text("\xEF\xBF\xBD") == "\xEF\xBF\xBD");  // U+FFFD itself is text
}

TEST_CASE("printable_text escapes control bytes, C1 controls and a backslash", "[host][io]") {
  CHECK(printable_text(std::string_view("a\0b", 3)) == "a\\x00b");
  CHECK(printable_text("\r\x1B[2J\x7F") == "\\x0d\\x1b[2J\\x7f");
  CHECK(printable_text("\x01\x1F ") == "\\x01\\x1f ");
  // U+0085 (NEXT LINE) and U+009F are C1 controls: both bytes escaped.
  CHECK(printable_text("x\xC2\x85y\xC2\x9F") == "x\\xc2\\x85y\\xc2\\x9f");
  // A backslash is doubled, so an escape in the output is never text of the input.
  CHECK(printable_text("C:\\x41") == "C:\\\\x41");
  CHECK(printable_text("\\") == "\\\\");
}

TEST_CASE("printable_text escapes each byte outside well-formed UTF-8", "[host][io]") {
  // Lone continuation bytes and bytes that never occur in UTF-8.
  CHECK(printable_text("\x80") == "\\x80");
  CHECK(printable_text("\xBF\xC0\xC1\xF5\xFF") == "\\xbf\\xc0\\xc1\\xf5\\xff");
  // Overlong forms: C0 AF ('/' in two bytes), E0 80 AF, F0 80 80 AF.
  CHECK(printable_text("\xC0\xAF") == "\\xc0\\xaf");
  CHECK(printable_text("\xE0\x80\xAF") == "\\xe0\\x80\\xaf");
  CHECK(printable_text("\xF0\x80\x80\xAF") == "\\xf0\\x80\\x80\\xaf");
  // A surrogate (ED A0 80 = U+D800) and a code point above U+10FFFF (F4 90 80 80).
  CHECK(printable_text("\xED\xA0\x80") == "\\xed\\xa0\\x80");
  CHECK(printable_text("\xF4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");
  // Truncated sequences (at the end, or cut by an ASCII byte): the bytes one by one, then the
  // text continues as text.
  CHECK(printable_text("ab\xC3") == "ab\\xc3");
  CHECK(printable_text("\xE2\x82") == "\\xe2\\x82");
  CHECK(printable_text("\xF0\x9F\x90z\xC3\xA9") == "\\xf0\\x9f\\x90z\xC3\xA9");
  // The last valid three-byte character before the surrogates (ED 9F BF = U+D7FF) is text.
  CHECK(printable_text("\xED\x9F\xBF") == "\xED\x9F\xBF");
}

TEST_CASE("printable_text of decode_bytes never prints a raw control or invalid byte", "[host][io]") {
  // Every id sequence of two ids in [0, 256] (256: not a byte) comes out as printable UTF-8:
  // every byte of the result is a printable ASCII character, newline, tab, or part of a
  // well-formed multi-byte sequence (checked by printing the result again: it is unchanged
  // except that its backslashes double).
  for (std::int64_t a = 0; a <= 256; ++a) {
    for (std::int64_t b = 0; b <= 256; b += 3) {
      const std::string shown = printable_text(decode_bytes(std::vector<std::int64_t>{a, b}));
      std::string doubled;
      for (const char c : shown) doubled += c == '\\' ? std::string("\\\\") : std::string(1, c);
      if (printable_text(shown) != doubled) {
        INFO("ids " << a << ", " << b);
        CHECK(printable_text(shown) == doubled);
      }
    }
  }
}

TEST_CASE("printable_text is unambiguous: its output reads back to the exact bytes", "[host][io]") {
  // Random byte strings, biased towards the interesting bytes (backslash, x, hex digits, UTF-8
  // lead and continuation bytes, controls), each shown and read back.
  std::mt19937 rng(7);
  const std::string interesting =
      std::string("\\x0a9f\n\t\r\x7F\xC2\x85\xC3\xA9\xE2\x82\xAC\xED\xA0\xF0\x9F\xF4\x90\xFF");
  for (int round = 0; round < 2000; ++round) {
    std::string bytes(rng() % 24, '\0');
    for (char& c : bytes) c = rng() % 2 ? interesting[rng() % interesting.size()] : static_cast<char>(rng() % 256);
    const std::string shown = printable_text(bytes);
    bool ok = false;
    const std::string back = unescape(shown, ok);
    if (!ok || back != bytes) {
      INFO("round " << round << ": shown as " << shown);
      CHECK(ok);
      CHECK(back == bytes);
    }
  }
}
