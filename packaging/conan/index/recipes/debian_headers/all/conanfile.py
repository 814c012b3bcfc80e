# SPDX-License-Identifier: Apache-2.0
# Test-only base of the wrapper recipes in this index: a header-only package
# made of headers Debian installed, under Conan Center's names. A recipe sets
# the class attributes below and extends DebianHeaders (python_requires).
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.files import copy, load


class DebianHeaders:
    package_type = "header-library"
    no_copy_source = True
    _debian_package = ""      # what apt-get installs them
    _header_dirs = {}         # absolute source dir -> dir under the package
    _version_header = ""      # absolute path of the header with the version macros
    _version_macros = ()      # the three macros, major to patch
    _cmake_file_name = ""
    _cmake_target_name = ""
    _pkg_config_name = ""
    _includedirs = ("include",)

    def validate(self):
        if not os.path.isfile(self._version_header):
            raise ConanInvalidConfiguration(f"{self.name} wrapper: {self._version_header} not found "
                                            f"(apt-get install {self._debian_package})")
        text = load(self, self._version_header)
        found = ".".join(re.search(rf"#define {m} (\d+)", text).group(1) for m in self._version_macros)
        if found != str(self.version):
            raise ConanInvalidConfiguration(f"{self.name} wrapper: Debian has {found}, not {self.version}")

    def package_id(self):
        self.info.clear()

    def package(self):
        for src, dst in self._header_dirs.items():
            copy(self, "*", src, os.path.join(self.package_folder, dst))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", self._cmake_file_name)
        self.cpp_info.set_property("cmake_target_name", self._cmake_target_name)
        self.cpp_info.set_property("pkg_config_name", self._pkg_config_name)
        self.cpp_info.includedirs = list(self._includedirs)
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []


class DebianHeadersPythonRequire(ConanFile):
    name = "debian_headers"
    package_type = "python-require"
