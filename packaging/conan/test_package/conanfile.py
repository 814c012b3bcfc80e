# SPDX-License-Identifier: Apache-2.0
# Builds and runs tests/package/consumer (the program the CMake consumer tests
# build) against the Conan package, through CMakeDeps + CMakeToolchain.
import io
import os

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class FastinferTestPackage(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self):
        fastinfer = self.dependencies["fastinfer"]
        if not os.path.isfile(os.path.join(fastinfer.package_folder, "licenses", "LICENSE")):
            raise ConanException("the fastinfer package carries no licenses/LICENSE")
        if can_run(self):
            out = io.StringIO()
            self.run(os.path.join(self.build_folder, "consumer", "consumer"), stdout=out, env="conanrun")
            # The with_openmp option must reach the consumer's compile flags.
            want = "openmp on" if fastinfer.options.with_openmp else "openmp off"
            if want not in out.getvalue():
                raise ConanException(f"with_openmp={fastinfer.options.with_openmp}: the consumer printed "
                                     f"'{out.getvalue().strip()}', expected '{want}'")
            self.output.info(out.getvalue().strip())
