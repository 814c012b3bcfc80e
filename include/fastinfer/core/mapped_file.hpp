// A read-only memory map of a whole file, with bounds-checked access, so that
// loaders never read outside the file however corrupt it is.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

class MappedFile {
 public:
  // Throws FormatError naming the path when the file cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path) {
    return std::shared_ptr<const MappedFile>(new MappedFile(path));
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr && size_ > 0) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Pointer to [offset, offset + length) or a FormatError that says what
  // (`what`) would have been read out of bounds.
  const std::uint8_t* at(std::uint64_t offset, std::uint64_t length, const char* what) const {
    FASTINFER_CHECK(offset <= size_ && length <= size_ - offset, FormatError, path_, ": ", what,
                    " at offset ", offset, " with length ", length, " lies outside the file (",
                    size_, " bytes)");
    return data_ + offset;
  }

 private:
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    FASTINFER_CHECK(fd >= 0, FormatError, "cannot open ", path, ": ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw_error<FormatError>(path, " is not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw_error<FormatError>("cannot map ", path, ": ", std::strerror(err));
      }
      data_ = static_cast<const std::uint8_t*>(p);
#if defined(MADV_HUGEPAGE)
      // Weights are read in place from this map, all of them every decoded
      // token: ask for huge pages as core/aligned_buffer.hpp does for heap
      // weights (advice; where the kernel or file system refuses, pages stay small).
      (void)::madvise(p, size_, MADV_HUGEPAGE);
#endif
    }
    ::close(fd);
  }

  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace fastinfer
