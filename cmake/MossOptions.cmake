# Options of the moss build. Every one can be set on the command line or in a preset.
include_guard(GLOBAL)

set(_moss_top OFF)
if(CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
  set(_moss_top ON)
endif()

option(MOSS_ENABLE_CUDA "Build the CUDA backend (tests, benchmarks, examples) when nvcc is found" ON)
option(MOSS_BUILD_TESTS "Build the Catch2 tests" ${_moss_top})
option(MOSS_BUILD_BENCH "Build the Google Benchmark targets" ${_moss_top})
option(MOSS_BUILD_EXAMPLES "Build the examples and moss-run" ${_moss_top})
option(MOSS_SYNC_LAUNCHES "Synchronise after every kernel launch (names the failing kernel)" OFF)
option(MOSS_WARNINGS_AS_ERRORS "Treat compiler warnings as errors in moss's own targets" OFF)
