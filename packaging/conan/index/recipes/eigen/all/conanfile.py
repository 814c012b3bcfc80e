# SPDX-License-Identifier: Apache-2.0
# Test-only wrapper: Debian's libeigen3-dev as Conan Center's "eigen".
from conan import ConanFile


class EigenDebianConan(ConanFile):
    name = "eigen"
    license = "MPL-2.0"
    description = "Debian's Eigen headers under Conan Center's name (offline tests only)"
    python_requires = "debian_headers/1.0"
    python_requires_extend = "debian_headers.DebianHeaders"
    _debian_package = "libeigen3-dev"
    _header_dirs = {"/usr/include/eigen3": "include/eigen3"}
    _version_header = "/usr/include/eigen3/Eigen/src/Core/util/Macros.h"
    _version_macros = ("EIGEN_WORLD_VERSION", "EIGEN_MAJOR_VERSION", "EIGEN_MINOR_VERSION")
    _cmake_file_name = "Eigen3"
    _cmake_target_name = "Eigen3::Eigen"
    _pkg_config_name = "eigen3"
    _includedirs = ("include/eigen3",)
