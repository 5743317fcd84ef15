# Helpers that turn one test or benchmark source file into one executable.
#   *_test.cpp       host test, built with g++, label "host"
#   *_cuda_test.cu   CUDA-vs-host test, built with nvcc when CUDA is on, label "cuda"; it skips
#                    (exit code 4) when no GPU is visible unless MOSS_REQUIRE_GPU=1 is set.
# Every Catch2 test case is its own ctest entry, "<executable>: <test case>", so a failure names
# the case, cases run in parallel under ctest -j, and `ctest -R` picks single cases. A case
# tagged [slow] (over ~10 s in a Release build on a 2-core machine) also gets the label "slow",
# so `ctest -LE slow` is the quick run.
include_guard(GLOBAL)
include(Catch) # Catch2 3's catch_discover_tests (its config puts Catch.cmake on CMAKE_MODULE_PATH)

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
    target_link_libraries(${name} PRIVATE moss::moss moss_sanitize_flags)
    set(label host)
  endif()
  # PRE_TEST: the cases are listed (`--list-tests`, which runs no test and touches no GPU) when
  # ctest first runs after a build, not as a build step, so a build on a machine that cannot run
  # the binaries (no GPU, cross compiling) never executes them. The list is cached until the
  # binary changes. catch_discover_tests adds SKIP_RETURN_CODE 4: a case that SKIPs for want of
  # a GPU is reported skipped (and fails under MOSS_REQUIRE_GPU=1, see tests/moss_test.hpp).
  # Two listings split the cases by the [slow] tag because catch_discover_tests cannot pass a
  # list-valued property (LABELS "host;slow") through to the generated tests.
  set(common TEST_PREFIX "${name}: " EXTRA_ARGS --colour-mode none DISCOVERY_MODE PRE_TEST)
  catch_discover_tests(${name} TEST_SPEC "~[slow]" TEST_LIST ${name}_quick ${common} PROPERTIES LABELS ${label}
                       TIMEOUT 900)
  catch_discover_tests(${name} TEST_SPEC "[slow]" TEST_LIST ${name}_slow ${common} PROPERTIES LABELS ${label}
                       TIMEOUT 900)
  # Runs after the two listings (TEST_INCLUDE_FILES are read in order): labels the slow cases,
  # and keeps a binary that was not built visible under its label (catch_discover_tests then
  # adds `<name>_NOT_BUILT`, which fails) instead of silently dropping out of `ctest -L host`.
  set(labels_file ${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake)
  file(WRITE ${labels_file}
       "foreach(t IN LISTS ${name}_slow)\n"
       "  set_tests_properties(\"\${t}\" PROPERTIES LABELS \"${label};slow\")\n"
       "endforeach()\n"
       "if(NOT DEFINED ${name}_quick)\n"
       "  set_tests_properties(${name}_NOT_BUILT PROPERTIES LABELS ${label})\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${labels_file})
endfunction()
