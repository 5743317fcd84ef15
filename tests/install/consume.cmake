# Builds and runs the packaging consumer one way (ctest runs it with cmake -P; see CMakeLists.txt).
#   MODE             add_subdirectory | find_package | plain_compiler
#   MOSS_SOURCE_DIR  the moss repository
#   CONSUMER_DIR     this folder (consumer.cpp and the two consumer projects)
#   WORK_DIR         scratch folder, emptied first
#   GENERATOR, MAKE_PROGRAM, CXX_COMPILER  the outer build's, so the consumer uses the same tools
#   MOSS_VERSION     project(moss VERSION ...): find_package must find exactly this version
#   NLOHMANN_JSON_DIR          the outer build's nlohmann_json_DIR (its CMake package), may be empty
#   NLOHMANN_JSON_INCLUDE_DIR  nlohmann-json's include folder, for the plain compiler
cmake_minimum_required(VERSION 3.26)

foreach(_var IN ITEMS MODE MOSS_SOURCE_DIR CONSUMER_DIR WORK_DIR GENERATOR CXX_COMPILER MOSS_VERSION
             NLOHMANN_JSON_INCLUDE_DIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "consume.cmake: -D${_var}=... is required")
  endif()
endforeach()

# Runs a command, echoing it; stops the test with its output when it fails.
function(moss_run)
  list(JOIN ARGN " " _shown)
  message(STATUS "run: ${_shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${MODE}: command failed (${_rc}): ${_shown}\n${_out}")
  endif()
  message(STATUS "${_out}")
endfunction()

# The configure options every consumer build shares: the outer build's generator and compiler.
set(_generator_args -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(MAKE_PROGRAM)
  list(APPEND _generator_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(NLOHMANN_JSON_DIR)
  list(APPEND _generator_args -Dnlohmann_json_DIR=${NLOHMANN_JSON_DIR})
endif()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

if(MODE STREQUAL "add_subdirectory")
  moss_run(${CMAKE_COMMAND} -S ${CONSUMER_DIR}/add_subdirectory -B ${WORK_DIR}/build ${_generator_args}
           -DMOSS_SOURCE_DIR=${MOSS_SOURCE_DIR} -DMOSS_ENABLE_CUDA=OFF)
  moss_run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
  moss_run(${WORK_DIR}/build/moss_consumer)

elseif(MODE STREQUAL "find_package")
  set(_prefix ${WORK_DIR}/prefix)
  moss_run(${CMAKE_COMMAND} -S ${MOSS_SOURCE_DIR} -B ${WORK_DIR}/moss-build ${_generator_args}
           -DCMAKE_INSTALL_PREFIX=${_prefix} -DMOSS_ENABLE_CUDA=OFF -DMOSS_BUILD_TESTS=OFF
           -DMOSS_BUILD_BENCH=OFF -DMOSS_BUILD_EXAMPLES=OFF)
  moss_run(${CMAKE_COMMAND} --build ${WORK_DIR}/moss-build)
  moss_run(${CMAKE_COMMAND} --install ${WORK_DIR}/moss-build)
  file(GLOB _configs ${_prefix}/lib*/cmake/moss/mossConfig.cmake)
  if(NOT _configs)
    message(FATAL_ERROR "find_package: no lib*/cmake/moss/mossConfig.cmake under ${_prefix}")
  endif()
  if(NOT EXISTS ${_prefix}/include/moss/core/tensor.hpp OR NOT EXISTS ${_prefix}/include/moss/io/json.hpp)
    message(FATAL_ERROR "find_package: headers were not installed under ${_prefix}/include/moss")
  endif()
  if(NOT EXISTS ${_prefix}/share/doc/moss/LICENSE)
    message(FATAL_ERROR "find_package: the LICENSE was not installed to ${_prefix}/share/doc/moss")
  endif()
  # The package registry could hand the consumer some other moss; only the scratch prefix may.
  moss_run(${CMAKE_COMMAND} -S ${CONSUMER_DIR}/find_package -B ${WORK_DIR}/build ${_generator_args}
           -DCMAKE_PREFIX_PATH=${_prefix} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DEXPECTED_PREFIX=${_prefix}
           -DEXPECTED_VERSION=${MOSS_VERSION})
  moss_run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
  moss_run(${WORK_DIR}/build/moss_consumer)

elseif(MODE STREQUAL "plain_compiler")
  # What a user without CMake types: moss's headers and nlohmann-json's (moss/io needs it);
  # warnings are errors because users' builds may use -Werror.
  moss_run(${CXX_COMPILER} -std=c++20 -Wall -Wextra -Werror -I ${MOSS_SOURCE_DIR}/include
           -I ${NLOHMANN_JSON_INCLUDE_DIR} ${CONSUMER_DIR}/consumer.cpp -o ${WORK_DIR}/moss_consumer)
  moss_run(${WORK_DIR}/moss_consumer)

else()
  message(FATAL_ERROR "consume.cmake: unknown MODE '${MODE}' (add_subdirectory, find_package, plain_compiler)")
endif()
