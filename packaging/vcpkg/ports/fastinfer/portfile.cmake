# SPDX-License-Identifier: Apache-2.0
# Overlay port: builds the fastinfer checkout it lives in.
#   vcpkg install fastinfer --overlay-ports=<checkout>/packaging/vcpkg/ports
# A registry copy replaces the SOURCE_PATH line with
#   vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO fastinfer/fastinfer
#                     REF "v${VERSION}" SHA512 <archive hash> HEAD_REF main)
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)

if("cuda" IN_LIST FEATURES)
  message(FATAL_ERROR "fastinfer: feature cuda is refused: the CUDA backend (backend/cuda/) of version ${VERSION} is not packaged yet (the port neither builds nor tests it; it runs from the source tree, docs/backend-cuda.md)")
endif()

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
    FEATURES
        openmp FASTINFER_WITH_OPENMP
)

set(VCPKG_BUILD_TYPE release) # header-only port

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DFASTINFER_BUILD_TESTS=OFF
        -DFASTINFER_BUILD_BENCHMARKS=OFF
        -DFASTINFER_BUILD_EXAMPLES=OFF
        -DFASTINFER_WITH_CUDA=OFF  # the CUDA backend is not a port feature yet
        ${FEATURE_OPTIONS}
)

vcpkg_cmake_install()

vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/fastinfer)
vcpkg_fixup_pkgconfig()

# The license goes to share/fastinfer/copyright, where vcpkg looks for it.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/share/doc")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE" "${SOURCE_PATH}/NOTICE")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
