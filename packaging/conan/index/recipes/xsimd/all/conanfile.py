# SPDX-License-Identifier: Apache-2.0
# Test-only wrapper: Debian's libxsimd-dev as Conan Center's "xsimd".
from conan import ConanFile


class XsimdDebianConan(ConanFile):
    name = "xsimd"
    license = "BSD-3-Clause"
    description = "Debian's xsimd headers under Conan Center's name (offline tests only)"
    python_requires = "debian_headers/1.0"
    python_requires_extend = "debian_headers.DebianHeaders"
    _debian_package = "libxsimd-dev"
    _header_dirs = {"/usr/include/xsimd": "include/xsimd"}
    _version_header = "/usr/include/xsimd/config/xsimd_config.hpp"
    _version_macros = ("XSIMD_VERSION_MAJOR", "XSIMD_VERSION_MINOR", "XSIMD_VERSION_PATCH")
    _cmake_file_name = "xsimd"
    _cmake_target_name = "xsimd"
    _pkg_config_name = "xsimd"
