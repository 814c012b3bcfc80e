# SPDX-License-Identifier: Apache-2.0
# Conan 2 recipe of fastinfer, a header-only library. From the repository root:
#   conan create packaging/conan -o "fastinfer/*:with_openmp=True"
# The version is read from include/fastinfer/version.hpp, the one place it lives.
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy, load
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"

# The source tree, seen from this recipe's folder (packaging/conan/).
_ROOT = os.path.join("..", "..")


class FastinferConan(ConanFile):
    name = "fastinfer"
    description = ("Header-only C++17 library of LLM inference optimizations: paged and quantized "
                   "KV caches, radix prefix cache, continuous batching, speculative decoding")
    license = "Apache-2.0"
    url = "https://github.com/fastinfer/fastinfer"
    homepage = "https://github.com/fastinfer/fastinfer"
    topics = ("llm", "inference", "kv-cache", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    options = {"with_openmp": [True, False], "with_cuda": [True, False]}
    default_options = {"with_openmp": True, "with_cuda": False}
    no_copy_source = True

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, _ROOT, "include", "fastinfer", "version.hpp"))
        match = re.search(r'FASTINFER_VERSION_STRING "(\d+\.\d+\.\d+)"', text)
        if not match:
            raise ConanInvalidConfiguration("fastinfer: no FASTINFER_VERSION_STRING in include/fastinfer/version.hpp")
        self.version = match.group(1)

    def export_sources(self):
        root = os.path.join(self.recipe_folder, _ROOT)
        copy(self, "*.hpp", os.path.join(root, "include"), os.path.join(self.export_sources_folder, "include"))
        copy(self, "LICENSE", root, self.export_sources_folder)
        copy(self, "NOTICE", root, self.export_sources_folder)

    def layout(self):
        basic_layout(self, src_folder=".")

    def requirements(self):
        # Ranges a Conan Center user resolves (xsimd 13-14, nlohmann_json 3.x)
        # and Debian 12's versions the offline test uses. No Eigen: the CPU
        # backend's prefill GEMM is its own (backend/cpu/gemm_packed.hpp).
        self.requires("xsimd/[>=8.1 <15]")
        self.requires("nlohmann_json/[>=3 <4]")

    def package_id(self):
        # The headers do not depend on settings or options; the options only
        # change what package_info() asks of the consumer's build.
        self.info.clear()

    def validate(self):
        check_min_cppstd(self, 17)
        if self.options.with_cuda:
            # backend/cuda/ runs from the source tree (verified on an H200,
            # docs/backend-cuda.md), but this recipe neither builds nor tests
            # it: refuse rather than package it unchecked; build from source
            # with FASTINFER_WITH_CUDA to use it.
            raise ConanInvalidConfiguration("fastinfer: with_cuda=True is refused: the CUDA backend "
                                            "(backend/cuda/) is not packaged yet (build from source)")

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "NOTICE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "*.hpp", os.path.join(self.source_folder, "include"),
             os.path.join(self.package_folder, "include"))

    def package_info(self):
        # The same file and target names as fastinfer's own CMake package.
        self.cpp_info.set_property("cmake_file_name", "fastinfer")
        self.cpp_info.set_property("cmake_target_name", "fastinfer::fastinfer")
        self.cpp_info.set_property("pkg_config_name", "fastinfer")
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.requires = ["xsimd::xsimd", "nlohmann_json::nlohmann_json"]
        if self.options.with_openmp:
            # What OpenMP::OpenMP_CXX carries for GCC and Clang (libgomp / libomp).
            self.cpp_info.cxxflags = ["-fopenmp"]
            self.cpp_info.sharedlinkflags = ["-fopenmp"]
            self.cpp_info.exelinkflags = ["-fopenmp"]
