# Helpers that turn one test or benchmark source file into one executable.
#   *_test.cpp       host test, built with g++, label "host"
#   *_cuda_test.cu   CUDA-vs-host test, built with nvcc when CUDA is on, label "cuda"; it skips
#                    (exit code 4) when no GPU is visible unless MOSS_REQUIRE_GPU=1 is set.
include_guard(GLOBAL)

set(MOSS_TEST_DATA_DIR ${PROJECT_SOURCE_DIR}/tests/data)

function(moss_add_test source)
  get_filename_component(name ${source} NAME_WE)
  add_executable(${name} ${source})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE MOSS_TEST_DATA_DIR="${MOSS_TEST_DATA_DIR}")
  target_link_libraries(${name} PRIVATE Catch2::Catch2WithMain moss_dev_flags)
  if(source MATCHES "\\.cu$")
    target_link_libraries(${name} PRIVATE moss::cuda)
    set(label cuda)
  else()
    target_link_libraries(${name} PRIVATE moss::moss)
    set(label host)
  endif()
  add_test(NAME ${name} COMMAND ${name} --colour-mode none)
  set_tests_properties(${name} PROPERTIES LABELS ${label} SKIP_RETURN_CODE 4 TIMEOUT 900)
endfunction()
