// The one source of fastinfer's version: CMake and the package recipes read it.
#pragma once

#define FASTINFER_VERSION_MAJOR 0
#define FASTINFER_VERSION_MINOR 1
#define FASTINFER_VERSION_PATCH 0

#define FASTINFER_VERSION_STRING "0.1.0"

namespace fastinfer {
inline constexpr int kVersionMajor = FASTINFER_VERSION_MAJOR;
inline constexpr int kVersionMinor = FASTINFER_VERSION_MINOR;
inline constexpr int kVersionPatch = FASTINFER_VERSION_PATCH;
inline constexpr const char* kVersionString = FASTINFER_VERSION_STRING;
}  // namespace fastinfer
