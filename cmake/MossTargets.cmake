# The interface targets and their installation:
#   moss::io    moss/io/: safetensors reader and writer, checkpoints, JSON (links nlohmann_json)
#   moss::moss  host backend, C++20, needs a C++ compiler and nlohmann-json (links moss::io)
#   moss::cuda  adds the CUDA backend: cudart, cuBLAS, cuBLASLt and CCCL
include_guard(GLOBAL)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

add_library(moss_io INTERFACE)
add_library(moss::io ALIAS moss_io)
set_target_properties(moss_io PROPERTIES EXPORT_NAME io)
target_include_directories(moss_io INTERFACE $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                                             $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(moss_io INTERFACE cxx_std_20)
target_link_libraries(moss_io INTERFACE nlohmann_json::nlohmann_json)

add_library(moss INTERFACE)
add_library(moss::moss ALIAS moss)
target_include_directories(moss INTERFACE $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                                          $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(moss INTERFACE cxx_std_20)
target_link_libraries(moss INTERFACE moss_io)

if(MOSS_HAS_CUDA)
  add_library(moss_cuda INTERFACE)
  add_library(moss::cuda ALIAS moss_cuda)
  set_target_properties(moss_cuda PROPERTIES EXPORT_NAME cuda)
  target_link_libraries(moss_cuda INTERFACE moss CUDA::cudart CUDA::cublas CUDA::cublasLt)
  if(TARGET CCCL::CCCL)
    target_link_libraries(moss_cuda INTERFACE CCCL::CCCL)
  endif()
  target_compile_features(moss_cuda INTERFACE cuda_std_20)
  target_compile_options(moss_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr --extended-lambda>)
endif()

# Flags for moss's own tests, benchmarks and examples (not exported to users).
add_library(moss_dev_flags INTERFACE)
target_compile_options(moss_dev_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra -lineinfo>)
if(MOSS_WARNINGS_AS_ERRORS)
  target_compile_options(moss_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(MOSS_SYNC_LAUNCHES)
  target_compile_definitions(moss_dev_flags INTERFACE MOSS_SYNC_LAUNCHES=1)
endif()

# ASan + UBSan for the host tests and CPU examples (MOSS_SANITIZE_HOST_TESTS), at -O0: the
# sanitizers cost 3.3x the compile time of a plain -O3 build at -O3 and 1.6x at -O1, and -O0 halves
# -O1's time again (measured on mamba_test: plain -O3 18 s; sanitized -O3 60 s, -O1 29 s, -O0 15 s).
# A test whose run time matters more than its compile time sets the target property
# MOSS_SANITIZE_OPT (e.g. -O1, about 3.5x faster to run than -O0 on long float64 loops).
# The flag comes after CMAKE_CXX_FLAGS_RELEASE's -O3 and wins.
add_library(moss_sanitize_flags INTERFACE)
if(MOSS_SANITIZE_HOST_TESTS)
  set(_moss_san -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  set(_moss_san_opt "$<IF:$<BOOL:$<TARGET_PROPERTY:MOSS_SANITIZE_OPT>>,$<TARGET_PROPERTY:MOSS_SANITIZE_OPT>,-O0>")
  target_compile_options(moss_sanitize_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_moss_san_opt} ${_moss_san}>)
  target_link_options(moss_sanitize_flags INTERFACE ${_moss_san})
endif()

install(DIRECTORY include/moss DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/moss)
set(_moss_targets moss_io moss)
if(MOSS_HAS_CUDA)
  list(APPEND _moss_targets moss_cuda)
endif()
install(TARGETS ${_moss_targets} EXPORT mossTargets)
install(EXPORT mossTargets NAMESPACE moss:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moss)
configure_package_config_file(cmake/mossConfig.cmake.in ${PROJECT_BINARY_DIR}/mossConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moss)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mossConfigVersion.cmake COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/mossConfig.cmake ${PROJECT_BINARY_DIR}/mossConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moss)
