# Finds what moss needs. Nothing is downloaded: missing packages are reported with the command
# that installs them (scripts/test runs it for you on Debian).
include_guard(GLOBAL)

set(MOSS_HAS_CUDA OFF)
if(MOSS_ENABLE_CUDA)
  # The CUDA toolkit's usual home is often not on PATH (fresh shells, CI); CMake alone would then
  # miss nvcc and quietly build host-only. CUDACXX is what check_language's probe honours.
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(MOSS_NVCC_EXECUTABLE nvcc PATHS /usr/local/cuda/bin NO_CACHE)
    if(MOSS_NVCC_EXECUTABLE)
      set(ENV{CUDACXX} ${MOSS_NVCC_EXECUTABLE})
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # CUDA 13 keeps CUB/Thrust/libcu++ under include/cccl; g++ translation units need CCCL's config.
    find_package(CCCL CONFIG QUIET HINTS ${CUDAToolkit_LIBRARY_DIR}/cmake ${CUDAToolkit_LIBRARY_ROOT}/lib64/cmake)
    set(MOSS_HAS_CUDA ON)
    message(STATUS "moss: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(MOSS_REQUIRE_CUDA)
    message(FATAL_ERROR "moss: MOSS_REQUIRE_CUDA is ON (the cuda preset) but no working CUDA compiler was found. "
                        "Put nvcc on PATH (e.g. export PATH=/usr/local/cuda/bin:$PATH), set CUDACXX, "
                        "or use the host or default preset.")
  else()
    message(STATUS "moss: no CUDA compiler found; building the host backend only")
  endif()
else()
  if(MOSS_REQUIRE_CUDA)
    message(FATAL_ERROR "moss: MOSS_REQUIRE_CUDA=ON contradicts MOSS_ENABLE_CUDA=OFF")
  endif()
  message(STATUS "moss: CUDA backend switched off (MOSS_ENABLE_CUDA=OFF)")
endif()

# moss/io reads and writes JSON (config.json, safetensors headers, sharded indexes) with
# nlohmann-json; every consumer of moss::moss needs its headers. A parent project that already
# made the target (FetchContent, its own find_package) is used as it is.
if(NOT TARGET nlohmann_json::nlohmann_json)
  find_package(nlohmann_json 3.11 CONFIG QUIET)
  if(NOT nlohmann_json_FOUND)
    message(FATAL_ERROR "moss: nlohmann-json >= 3.11 not found (moss/io reads and writes JSON with it). Install it "
                        "(Debian/Ubuntu: apt-get install nlohmann-json3-dev), run scripts/test (it does this for you), "
                        "or point CMAKE_PREFIX_PATH or nlohmann_json_DIR at an installed nlohmann_json.")
  endif()
  message(STATUS "moss: nlohmann_json ${nlohmann_json_VERSION} (${nlohmann_json_DIR})")
endif()

if(MOSS_BUILD_TESTS)
  find_package(Catch2 3 QUIET CONFIG)
  if(NOT Catch2_FOUND)
    message(FATAL_ERROR "moss: Catch2 v3 not found. Install it (Debian 12: apt-get install -t bookworm-backports libcatch2-dev), "
                        "run scripts/test (it does this for you), or configure with -DMOSS_BUILD_TESTS=OFF.")
  endif()
endif()
if(MOSS_BUILD_BENCH)
  find_package(benchmark QUIET CONFIG)
  if(NOT benchmark_FOUND)
    message(FATAL_ERROR "moss: Google Benchmark not found. Install it (Debian: apt-get install libbenchmark-dev), "
                        "run scripts/test (it does this for you), or configure with -DMOSS_BUILD_BENCH=OFF.")
  endif()
endif()
