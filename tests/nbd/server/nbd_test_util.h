// Helpers of the NBD export tests: a scratch directory, running a command,
// a raw blocking client socket with a bounded receive timeout.
#pragma once

#include <libnbd.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <netinet/in.h>
#include <string>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"

namespace ublkvol::nbd::testing {

// A libnbd handle, closed on scope exit.
struct NbdHandleCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdHandleCloser>;

// The exported test volume: RAM-backed, named "vol", of `size` bytes; in
// `backing_file` (if given) so a test can compare the bytes.
inline std::unique_ptr<engine::Volume> make_test_volume(uint64_t size,
                                                        const std::string& backing_file = {}) {
  engine::SimpleVolumeOptions vo;
  vo.name = "vol";
  vo.size_bytes = size;
  vo.backing_file = backing_file;
  auto v = engine::make_memory_volume(vo);
  return v.ok() ? std::move(*v) : nullptr;
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/ublkvol-nbd-XXXXXX";  // short: unix socket paths
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

struct CommandResult {
  int status = -1;  // exit status, -1 if it did not exit normally
  std::string output;
};

// Runs `command` through sh, capturing stdout (stderr goes to the test log).
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) {
    return r;
  }
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) {
    r.output.append(buf.data(), n);
  }
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

inline std::vector<std::byte> pattern_bytes(size_t len, uint32_t seed) {
  std::vector<std::byte> v(len);
  uint32_t x = seed * 2654435761U + 1;
  for (auto& b : v) {
    x ^= x << 13U;
    x ^= x >> 17U;
    x ^= x << 5U;
    b = static_cast<std::byte>(x);
  }
  return v;
}

// A blocking unix-socket client whose reads give up after 10 s (a bound, not
// a synchronisation: a correct server answers at once).
inline UniqueFd connect_unix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.data(), path.size());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof(sun)) != 0) {
    return {};
  }
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

inline bool send_all(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n <= 0) {
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Reads exactly len bytes; false on end of stream, error or timeout.
inline bool recv_all(int fd, void* data, size_t len) {
  auto* p = static_cast<char*>(data);
  while (len > 0) {
    const ssize_t n = ::recv(fd, p, len, 0);
    if (n <= 0) {
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// True once the server closed the connection (recv returns 0 or reset),
// false on timeout or if it sent data.
inline bool closed_by_peer(int fd) {
  char c = 0;
  const ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

}  // namespace ublkvol::nbd::testing
