# SPDX-License-Identifier: Apache-2.0
# Test-only wrapper: Debian's nlohmann-json3-dev as Conan Center's "nlohmann_json".
from conan import ConanFile


class NlohmannJsonDebianConan(ConanFile):
    name = "nlohmann_json"
    license = "MIT"
    description = "Debian's nlohmann/json headers under Conan Center's name (offline tests only)"
    python_requires = "debian_headers/1.0"
    python_requires_extend = "debian_headers.DebianHeaders"
    _debian_package = "nlohmann-json3-dev"
    _header_dirs = {"/usr/include/nlohmann": "include/nlohmann"}
    _version_header = "/usr/include/nlohmann/detail/abi_macros.hpp"
    _version_macros = ("NLOHMANN_JSON_VERSION_MAJOR", "NLOHMANN_JSON_VERSION_MINOR", "NLOHMANN_JSON_VERSION_PATCH")
    _cmake_file_name = "nlohmann_json"
    _cmake_target_name = "nlohmann_json::nlohmann_json"
    _pkg_config_name = "nlohmann_json"
