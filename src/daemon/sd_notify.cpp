#include "ublkvol/daemon/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace ublkvol::daemon {

SystemdNotifier SystemdNotifier::from_environment() {
  SystemdNotifier notifier;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read at startup; the daemon never calls setenv
  if (const char* path = std::getenv("NOTIFY_SOCKET"); path != nullptr && *path != '\0') {
    notifier.socket_path_ = path;
    notifier.fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read at startup; the daemon never calls setenv
  const char* usec = std::getenv("WATCHDOG_USEC");
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read at startup; the daemon never calls setenv
  const char* pid = std::getenv("WATCHDOG_PID");
  const bool for_us = pid == nullptr || std::strtoll(pid, nullptr, 10) == ::getpid();
  if (usec != nullptr && for_us) {
    const long long value = std::strtoll(usec, nullptr, 10);
    if (value > 0) {
      notifier.watchdog_ = std::chrono::microseconds(value / 2);
    }
  }
  return notifier;
}

Status SystemdNotifier::notify(std::string_view message) const {
  if (!enabled()) {
    return ok_status();
  }
  if (!fd_) {
    return Error(EBADF, "no socket for NOTIFY_SOCKET " + socket_path_);
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path_.size() >= sizeof(address.sun_path)) {
    return Error(EINVAL, "NOTIFY_SOCKET " + socket_path_ + " is too long");
  }
  std::memcpy(address.sun_path, socket_path_.data(), socket_path_.size());
  socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path_.size());
  if (address.sun_path[0] == '@') {
    address.sun_path[0] = '\0';  // abstract namespace
  } else {
    length += 1;  // include the terminating NUL
  }
  const ssize_t sent = ::sendto(fd_.get(), message.data(), message.size(), MSG_NOSIGNAL,
                                reinterpret_cast<const sockaddr*>(&address), length);
  if (sent < 0) {
    return errno_error("sd_notify to " + socket_path_);
  }
  return ok_status();
}

}  // namespace ublkvol::daemon
