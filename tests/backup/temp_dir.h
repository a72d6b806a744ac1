// A scratch directory for backup tests, removed afterwards. On /var/tmp (a
// real disk file system, so fsync and rename are the real thing) unless
// UBLKVOL_TEST_TMPDIR names another place (tmpfs, an NFS mount).
#pragma once

#include <stdlib.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace ublkvol::backup::testing {

class TempDir {
 public:
  TempDir() {
    const char* base = ::getenv("UBLKVOL_TEST_TMPDIR");
    std::string pattern =
        std::string(base != nullptr ? base : "/var/tmp") + "/ublkvol-backup-XXXXXX";
    if (::mkdtemp(pattern.data()) != nullptr) {
      path_ = pattern;
    }
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Flips the bits of one byte of a file in place.
inline bool flip_byte(const std::string& file, size_t at) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  if (!f.get(c)) {
    return false;
  }
  f.seekp(static_cast<std::streamoff>(at));
  f.put(static_cast<char>(~c));
  return static_cast<bool>(f);
}

}  // namespace ublkvol::backup::testing
