# SPDX-License-Identifier: Apache-2.0
# cmake -P packaging/headers_package.cmake -DNAME=xsimd -DVERSION=14.0.0
#   -DTARGET=xsimd -DINCLUDE_DIR=<headers> -DOUT=<dir>
# Writes a CMake package (<NAME>Config.cmake + a SameMajorVersion version file,
# as xsimd installs) for headers that came without one (the PyPI
# wheels scripts/test-packaging.sh unpacks), so find_package(<NAME>) sees them.
include(CMakePackageConfigHelpers)
foreach(_v IN ITEMS NAME VERSION TARGET INCLUDE_DIR OUT)
  if(NOT ${_v})
    message(FATAL_ERROR "headers_package.cmake: -D${_v}= is required")
  endif()
endforeach()
file(WRITE "${OUT}/${NAME}Config.cmake"
  "if(NOT TARGET ${TARGET})\n"
  "  add_library(${TARGET} INTERFACE IMPORTED)\n"
  "  set_target_properties(${TARGET} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES \"${INCLUDE_DIR}\")\n"
  "endif()\n")
write_basic_package_version_file("${OUT}/${NAME}ConfigVersion.cmake" VERSION ${VERSION}
  COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
