# Options of the moss build. Every one can be set on the command line or in a preset.
include_guard(GLOBAL)

set(_moss_top OFF)
if(CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
  set(_moss_top ON)
endif()

option(MOSS_ENABLE_CUDA "Build the CUDA backend (tests, benchmarks, examples) when nvcc is found" ON)
option(MOSS_REQUIRE_CUDA "Fail the configure step when no CUDA compiler is found (the cuda preset sets it)" OFF)
option(MOSS_BUILD_TESTS "Build the Catch2 tests" ${_moss_top})
option(MOSS_BUILD_BENCH "Build the Google Benchmark targets" ${_moss_top})
option(MOSS_BUILD_EXAMPLES "Build the examples and moss-run" ${_moss_top})
option(MOSS_CUDA_EXAMPLES "Compile the examples, moss-run and moss-demo as CUDA when the CUDA backend is on (they then run on the GPU); OFF builds them for the CPU only" ON)
option(MOSS_SYNC_LAUNCHES "Synchronise after every kernel launch (names the failing kernel)" OFF)
option(MOSS_WARNINGS_AS_ERRORS "Treat compiler warnings as errors in moss's own targets" OFF)
option(MOSS_SANITIZE_HOST_TESTS "Build the host tests and the CPU examples with -O1 -fsanitize=address,undefined (every report fatal): the default preset's tests then run under ASan + UBSan" OFF)
option(MOSS_HEADER_CHECK "Compile every public header on its own (targets moss_header_check_*, ctest header_check)" ON)
option(MOSS_BUILD_FUZZ "Build the libFuzzer targets of tests/fuzz (clang++ only; the fuzz preset)" OFF)
option(MOSS_USE_CCACHE "Compile moss's own targets through ccache when it is installed" ${_moss_top})

# ccache cuts CI rebuilds (mostly nvcc time) to seconds. It is looked up here rather than in the
# presets so the presets work unchanged on machines without it (the GPU machine has none). A
# launcher the user chose (-DCMAKE_CXX_COMPILER_LAUNCHER=...) is kept.
if(MOSS_USE_CCACHE)
  find_program(MOSS_CCACHE_PROGRAM ccache)
  if(MOSS_CCACHE_PROGRAM)
    foreach(_moss_lang IN ITEMS CXX CUDA)
      if(NOT DEFINED CMAKE_${_moss_lang}_COMPILER_LAUNCHER AND NOT DEFINED ENV{CMAKE_${_moss_lang}_COMPILER_LAUNCHER})
        # The host tests share a precompiled header (tests/CMakeLists.txt): ccache caches its
        # users only with this sloppiness (the header's macros and __TIME__ are not in the key).
        set(CMAKE_${_moss_lang}_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env
                                                  CCACHE_SLOPPINESS=pch_defines,time_macros
                                                  ${MOSS_CCACHE_PROGRAM})
      endif()
    endforeach()
    message(STATUS "moss: compiling through ${MOSS_CCACHE_PROGRAM}")
  endif()
endif()
