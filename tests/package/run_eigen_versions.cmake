# cmake -P script: fake Eigen3 CMake packages of several versions, each with a
# SameMajorVersion Eigen3ConfigVersion.cmake like Eigen's own (3.4 and 5.x
# both ship one), and check which the fastinfer check accepts: 3.4 to 5.x.
include(CMakePackageConfigHelpers)
file(REMOVE_RECURSE ${WORK})
set(_cases 3.3.9 refuse 3.4.0 accept 5.0.1 accept 5.2.0 accept 6.0.0 refuse)
while(_cases)
  list(POP_FRONT _cases _version _want)
  set(_dir ${WORK}/eigen-${_version}/share/eigen3/cmake)
  file(WRITE ${_dir}/Eigen3Config.cmake
       "if(NOT TARGET Eigen3::Eigen)\n  add_library(Eigen3::Eigen INTERFACE IMPORTED)\nendif()\n")
  write_basic_package_version_file(${_dir}/Eigen3ConfigVersion.cmake VERSION ${_version}
    COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package/eigen_probe
                    -B ${WORK}/probe-${_version} -DEigen3_DIR=${_dir} -DFASTINFER_SOURCE_DIR=${SOURCE_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(_want STREQUAL "accept" AND NOT rc EQUAL 0)
    message(FATAL_ERROR "Eigen ${_version} was refused:\n${out}\n${err}")
  elseif(_want STREQUAL "refuse")
    if(rc EQUAL 0)
      message(FATAL_ERROR "Eigen ${_version} was accepted:\n${out}")
    elseif(NOT err MATCHES "fastinfer: needs Eigen 3.4 to 5.x, found Eigen ${_version}")
      message(FATAL_ERROR "Eigen ${_version} was refused without fastinfer's message:\n${err}")
    endif()
  endif()
  message(STATUS "Eigen ${_version}: ${_want}ed as expected")
endwhile()
