# Compiles one compile-fail group for ctest (see CMakeLists.txt here): SOURCE with the C++
# compiler CXX (COMPILER_ID), the C++20 flag STD and the include folders INCLUDES, syntax only,
# and writes the compiler's output to LOG for the snippets' tests to read. Passes when the
# compile fails, as it must; fails when it compiles.
file(REMOVE ${LOG})
set(flags ${STD} -fsyntax-only -fdiagnostics-color=never)
if(COMPILER_ID MATCHES "Clang")
  # Clang stops after 20 errors by default; a group has more asserts than that to report.
  list(APPEND flags -ferror-limit=0)
endif()
foreach(dir IN LISTS INCLUDES)
  list(APPEND flags -I${dir})
endforeach()
execute_process(COMMAND ${CXX} ${flags} ${SOURCE} OUTPUT_VARIABLE out ERROR_VARIABLE out RESULT_VARIABLE rc)
file(WRITE ${LOG} "${out}")
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but each snippet it includes must fail to compile")
endif()
message(STATUS "compile failed (${rc}), as it must; the compiler's output is in ${LOG}")
