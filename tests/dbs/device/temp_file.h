// Test helper: a uniquely named scratch path in a directory, removed on
// destruction.
#pragma once

#include <unistd.h>

#include <atomic>
#include <string>

namespace ublkvol::dbs::testing {

class TempPath {
 public:
  explicit TempPath(const std::string& directory, const std::string& stem = "dev") {
    static std::atomic<unsigned> counter{0};
    path_ = directory + "/ublkvol-test-" + stem + "-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++);
    ::unlink(path_.c_str());
  }
  ~TempPath() { ::unlink(path_.c_str()); }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace ublkvol::dbs::testing
