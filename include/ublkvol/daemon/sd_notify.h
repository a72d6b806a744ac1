// SystemdNotifier: the sd_notify(3) protocol without libsystemd - one
// datagram per message to the socket named by $NOTIFY_SOCKET (a path, or an
// abstract socket when it starts with '@').
//
//   READY=1      start-up finished (Type=notify units wait for it)
//   STATUS=...   one line for `systemctl status`
//   STOPPING=1   shutdown began
//   WATCHDOG=1   keep-alive; expected every $WATCHDOG_USEC (we send at half)
//
// Without $NOTIFY_SOCKET every call is a no-op that succeeds.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"

namespace ublkvol::daemon {

class SystemdNotifier {
 public:
  // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the environment.
  static SystemdNotifier from_environment();

  [[nodiscard]] bool enabled() const { return !socket_path_.empty(); }
  // Sends `message` ("READY=1\nSTATUS=serving") as one datagram.
  Status notify(std::string_view message) const;

  // Interval at which WATCHDOG=1 must be sent (half of WATCHDOG_USEC), if the
  // watchdog is enabled for this process.
  [[nodiscard]] std::optional<std::chrono::microseconds> watchdog_interval() const {
    return watchdog_;
  }

 private:
  std::string socket_path_;
  std::optional<std::chrono::microseconds> watchdog_;
  UniqueFd fd_;
};

}  // namespace ublkvol::daemon
