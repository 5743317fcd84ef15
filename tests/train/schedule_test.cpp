// tests/train/schedule_test.cpp: linear warmup then cosine decay (moss/train/schedule.hpp).
#include "moss/train/schedule.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <algorithm>
#include <cmath>
#include <numbers>

namespace {
bool near(double a, double b) { return std::fabs(a - b) <= 1e-14 * std::fabs(b); }
}  // namespace

TEST_CASE("schedule: warmup start and end, midpoint, end, beyond", "[host][train]") {
  const moss::CosineSchedule s{1e-3, 1e-4, 10, 110};
  CHECK(near(s.lr_at(0), 1e-4));     // lr · 1 / 10
  CHECK(near(s.lr_at(4), 5e-4));     // lr · 5 / 10
  CHECK(near(s.lr_at(9), 1e-3));     // last warmup step: the peak
  CHECK(near(s.lr_at(10), 1e-3));    // decay starts at the peak
  CHECK(near(s.lr_at(60), 5.5e-4));  // midpoint: (lr + min_lr) / 2
  CHECK(near(s.lr_at(35), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(std::numbers::pi * 0.25))));
  CHECK(s.lr_at(109) > 1e-4);
  CHECK(near(s.lr_at(109), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(std::numbers::pi * 0.99))));
  CHECK(s.lr_at(110) == 1e-4);
  CHECK(s.lr_at(1000000) == 1e-4);
}

TEST_CASE("schedule: decreasing during decay, increasing during warmup", "[host][train]") {
  const moss::CosineSchedule s{3e-4, 0.0, 7, 50};
  for (std::int64_t t = 1; t < 7; ++t) CHECK(s.lr_at(t) > s.lr_at(t - 1));
  for (std::int64_t t = 8; t <= 50; ++t) CHECK(s.lr_at(t) < s.lr_at(t - 1));
  CHECK(s.lr_at(50) == 0.0);
}

TEST_CASE("schedule: no warmup, and warmup over all steps", "[host][train]") {
  const moss::CosineSchedule none{2.0, 0.5, 0, 4};
  CHECK(none.lr_at(0) == 2.0);
  CHECK(near(none.lr_at(2), 1.25));
  CHECK(none.lr_at(4) == 0.5);
  const moss::CosineSchedule all{2.0, 0.5, 4, 4};
  CHECK(all.lr_at(0) == 0.5);
  CHECK(all.lr_at(3) == 2.0);
  CHECK(all.lr_at(4) == 0.5);
  const moss::CosineSchedule constant{1.0, 1.0, 0, 3};
  CHECK(constant.lr_at(1) == 1.0);
  CHECK(constant.lr_at(5) == 1.0);
}

TEST_CASE("schedule: invalid settings name the setting", "[host][train]") {
  using Catch::Matchers::ContainsSubstring;
  CHECK_THROWS_WITH((moss::CosineSchedule{1e-3, 0.0, 0, 0}.lr_at(0)), ContainsSubstring("total_steps is 0"));
  CHECK_THROWS_WITH((moss::CosineSchedule{1e-3, 0.0, 11, 10}.lr_at(0)), ContainsSubstring("warmup_steps is 11"));
  CHECK_THROWS_WITH((moss::CosineSchedule{1e-3, 0.0, -1, 10}.lr_at(0)), ContainsSubstring("warmup_steps is -1"));
  CHECK_THROWS_WITH((moss::CosineSchedule{-1.0, 0.0, 0, 10}.lr_at(0)), ContainsSubstring("lr is -1"));
  CHECK_THROWS_WITH((moss::CosineSchedule{1.0, -0.5, 0, 10}.lr_at(0)), ContainsSubstring("min_lr is -0.5"));
  CHECK_THROWS_WITH((moss::CosineSchedule{1.0, 2.0, 0, 10}.lr_at(0)), ContainsSubstring("expected <= lr"));
  CHECK_THROWS_AS((moss::CosineSchedule{NAN, 0.0, 0, 10}.validate()), moss::config_error);
  CHECK_THROWS_WITH((moss::CosineSchedule{1.0, 0.0, 0, 10}.lr_at(-1)), ContainsSubstring("step is -1"));
  CHECK_NOTHROW(moss::CosineSchedule{1.0, 0.0, 0, 1}.validate());
}
