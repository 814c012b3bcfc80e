# cmake -P script: build and run the consumer one way (MODE):
#   find_package      install, then find_package(fastinfer) from the prefix
#   add_subdirectory  add_subdirectory(<source tree>)
#   fetch_content     FetchContent from a release-style archive of the tree
#   pkg_config        install, then compile with `pkg-config --cflags --libs fastinfer`
file(REMOVE_RECURSE ${WORK})
# The library needs no Eigen (its own packed GEMM replaced Eigen's): every
# CMake route configures with find_package(Eigen3) disabled, so a dependency
# that crept back in fails here by name.
set(no_eigen -DCMAKE_DISABLE_FIND_PACKAGE_Eigen3=ON)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${WORK}/prefix)
  run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK}/build -DCMAKE_PREFIX_PATH=${WORK}/prefix
      -DFASTINFER_CONSUMER_MODE=find_package ${no_eigen})
elseif(MODE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK}/build -DFASTINFER_CONSUMER_MODE=add_subdirectory
      -DFASTINFER_SOURCE_DIR=${SOURCE_DIR} ${no_eigen})
elseif(MODE STREQUAL "fetch_content")
  # What a release archive holds for a CMake build (tests, docs and models are
  # not needed by a consumer, and the tree may hold build directories).
  file(MAKE_DIRECTORY ${WORK})
  execute_process(COMMAND ${CMAKE_COMMAND} -E tar czf ${WORK}/fastinfer.tar.gz
                    CMakeLists.txt cmake include LICENSE NOTICE
                  WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "could not archive ${SOURCE_DIR}")
  endif()
  file(SHA256 ${WORK}/fastinfer.tar.gz sha)
  run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK}/build -DFASTINFER_CONSUMER_MODE=fetch_content
      -DFASTINFER_ARCHIVE=file://${WORK}/fastinfer.tar.gz -DFASTINFER_ARCHIVE_SHA256=${sha} ${no_eigen})
elseif(MODE STREQUAL "pkg_config")
  find_program(PKG_CONFIG_EXECUTABLE NAMES pkgconf pkg-config REQUIRED)
  run(${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${WORK}/prefix)
  set(ENV{PKG_CONFIG_PATH} ${WORK}/prefix/share/pkgconfig)
  run(${PKG_CONFIG_EXECUTABLE} --modversion fastinfer)
  string(STRIP "${run_output}" version)
  if(NOT version STREQUAL VERSION)
    message(FATAL_ERROR "fastinfer.pc says version '${version}', the project is ${VERSION}")
  endif()
  run(${PKG_CONFIG_EXECUTABLE} --cflags --libs fastinfer)
  if(run_output MATCHES "[Ee]igen")
    message(FATAL_ERROR "fastinfer.pc pulls in Eigen, which the library does not use: ${run_output}")
  endif()
  separate_arguments(flags UNIX_COMMAND "${run_output}")
  # The relocatable prefix must resolve to where the tree was installed.
  set(found OFF)
  foreach(flag IN LISTS flags)
    if(flag MATCHES "^-I(.+)")
      get_filename_component(dir "${CMAKE_MATCH_1}" REALPATH)
      if(dir STREQUAL "${WORK}/prefix/include")
        set(found ON)
      endif()
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "pkg-config flags lack an -I that resolves to ${WORK}/prefix/include: ${flags}")
  endif()
  file(MAKE_DIRECTORY ${WORK}/build)
  run(${CXX} -std=c++17 ${CONSUMER}/main.cpp -o ${WORK}/build/consumer ${flags})
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()
if(NOT MODE STREQUAL "pkg_config")
  run(${CMAKE_COMMAND} --build ${WORK}/build)
endif()
run(${WORK}/build/consumer)
if(DEFINED EXPECT_OPENMP AND NOT run_output MATCHES "openmp ${EXPECT_OPENMP}")
  message(FATAL_ERROR "expected 'openmp ${EXPECT_OPENMP}' from the consumer, got: ${run_output}")
endif()
if(MODE STREQUAL "find_package" OR MODE STREQUAL "pkg_config")
  # The installed tree carries the license.
  if(NOT EXISTS ${WORK}/prefix/share/doc/fastinfer/LICENSE)
    message(FATAL_ERROR "the install tree has no share/doc/fastinfer/LICENSE")
  endif()
endif()
