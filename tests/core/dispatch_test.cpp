// Tests of moss/core/dispatch.hpp: runtime → compile-time dispatch and dtype parsing, with
// their error messages.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <string>
#include <type_traits>

#include "moss/core/dispatch.hpp"

using Catch::Matchers::ContainsSubstring;
using moss::DType;

namespace {

/// The dtype tag of the type a dispatch selected, plus its size, to check both at once.
struct Picked {
  DType dtype;
  std::size_t size;
};

Picked pick(DType d) {
  return moss::dispatch_dtype(d, [](auto tag) {
    using T = typename decltype(tag)::type;
    static_assert(moss::StorageType<T>);
    return Picked{moss::dtype_of<T>, sizeof(T)};
  });
}

}  // namespace

TEST_CASE("dispatch: dispatch_dtype calls the functor with the storage type", "[host]") {
  CHECK(pick(DType::f32).dtype == DType::f32);
  CHECK(pick(DType::f32).size == 4);
  CHECK(pick(DType::f16).dtype == DType::f16);
  CHECK(pick(DType::f16).size == 2);
  CHECK(pick(DType::bf16).dtype == DType::bf16);
  CHECK(pick(DType::bf16).size == 2);

  // The functor's result is forwarded, references included.
  int target = 0;
  int& r = moss::dispatch_dtype(DType::f16, [&](auto) -> int& { return target; });
  CHECK(&r == &target);
}

TEST_CASE("dispatch: dispatch_dtype refuses non-storage dtypes and lists the supported ones", "[host]") {
  for (DType d : {DType::i32, DType::i64, DType::u8}) {
    INFO(moss::dtype_name(d));
    REQUIRE_THROWS_AS(pick(d), moss::unsupported_error);
    REQUIRE_THROWS_WITH(pick(d), "dispatch_dtype: dtype " + std::string(moss::dtype_name(d)) +
                                     " is not a storage dtype; supported: f32, f16, bf16");
  }
}

TEST_CASE("dispatch: dispatch_bool turns a flag into a compile-time constant", "[host]") {
  const auto f = [](auto flag) {
    if constexpr (decltype(flag)::value)
      return 1;
    else
      return 2;
  };
  CHECK(moss::dispatch_bool(true, f) == 1);
  CHECK(moss::dispatch_bool(false, f) == 2);
  static_assert(std::is_same_v<decltype(moss::dispatch_bool(true, f)), int>);
}

TEST_CASE("dispatch: parse_storage_dtype accepts the documented spellings only", "[host]") {
  CHECK(moss::parse_storage_dtype("f32", "cfg") == DType::f32);
  CHECK(moss::parse_storage_dtype("float32", "cfg") == DType::f32);
  CHECK(moss::parse_storage_dtype("float", "cfg") == DType::f32);
  CHECK(moss::parse_storage_dtype("f16", "cfg") == DType::f16);
  CHECK(moss::parse_storage_dtype("float16", "cfg") == DType::f16);
  CHECK(moss::parse_storage_dtype("half", "cfg") == DType::f16);
  CHECK(moss::parse_storage_dtype("bf16", "cfg") == DType::bf16);
  CHECK(moss::parse_storage_dtype("bfloat16", "cfg") == DType::bf16);

  for (const char* bad : {"", "F32", "fp32", "float64", "int8", "bf16 ", "torch.bfloat16"}) {
    INFO("input \"" << bad << "\"");
    REQUIRE_THROWS_AS(moss::parse_storage_dtype(bad, "moss-run --dtype"), moss::config_error);
    REQUIRE_THROWS_WITH(moss::parse_storage_dtype(bad, "moss-run --dtype"),
                        "moss-run --dtype: unknown dtype \"" + std::string(bad) +
                            "\"; supported: f32, f16, bf16 (or float32, float16, bfloat16)");
  }
}
