#include "ublkvol/daemon/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace ublkvol::daemon {
namespace {

// A hint for the usual reasons a connect fails.
std::string connect_hint(int err) {
  switch (err) {
    case ENOENT:
    case ECONNREFUSED:
      return " (is ublk-volumed running?)";
    case EACCES:
    case EPERM:
      return " (run as root or as a member of the ublk-volume group)";
    default:
      return "";
  }
}

std::string seconds_text(std::chrono::milliseconds timeout) {
  const auto ms = timeout.count();
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + " s";
  }
  return std::to_string(ms) + " ms";
}

}  // namespace

Result<Client> Client::connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
  sockaddr_un address{};
  if (socket_path.empty() || socket_path.size() >= sizeof(address.sun_path)) {
    return Error(EINVAL, "socket path '" + socket_path + "' is empty or longer than " +
                             std::to_string(sizeof(address.sun_path) - 1) + " bytes");
  }
  // Non-blocking, so that a full listen backlog (EAGAIN) is retried until
  // the deadline instead of blocking forever; blocking again afterwards.
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    return errno_error("cannot create a Unix socket");
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, socket_path.data(), socket_path.size());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int err = errno;
    if (err == EINTR) {
      continue;
    }
    if (err == EAGAIN && (timeout.count() == 0 || std::chrono::steady_clock::now() < deadline)) {
      // Nothing to poll for: the backlog has no readiness event.
      ::poll(nullptr, 0, 20);
      continue;
    }
    if (err == EAGAIN) {
      return Error(ETIMEDOUT, "ublk-volumed at " + socket_path + " did not accept within " +
                                  seconds_text(timeout) +
                                  " (the daemon is stopped or overloaded; --timeout SECONDS)");
    }
    return Error(err, "cannot connect to " + socket_path + ": " +
                          std::error_code(err, std::generic_category()).message() +
                          connect_hint(err));
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return errno_error("cannot make the control socket blocking");
  }
  Client client(std::move(fd), socket_path);
  client.set_timeout(timeout);
  return client;
}

Status Client::send_raw(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int err = errno;
      return Error(err, "cannot send to ublk-volumed at " + path_ + ": " +
                            std::error_code(err, std::generic_category()).message());
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return ok_status();
}

Result<std::string> Client::read_line(size_t max_bytes) {
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  size_t scanned = 0;
  for (;;) {
    const size_t newline = buffer_.find('\n', scanned);
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    scanned = buffer_.size();
    if (buffer_.size() > max_bytes) {
      return Error(EMSGSIZE, "response from ublk-volumed at " + path_ + " exceeds " +
                                 std::to_string(max_bytes) + " bytes");
    }
    int wait_ms = -1;
    if (timeout_.count() > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return Error(ETIMEDOUT, "ublk-volumed at " + path_ + " did not answer within " +
                                    seconds_text(timeout_) +
                                    " (the daemon is stuck, stopped or busy; --timeout SECONDS)");
      }
      wait_ms = static_cast<int>(left.count());
    }
    pollfd pfd{fd_.get(), POLLIN, 0};
    const int ready = ::poll(&pfd, 1, wait_ms);
    if (ready < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error("poll on the ublk-volumed socket");
    }
    if (ready == 0) {
      continue;  // the deadline check above reports the timeout
    }
    char chunk[65536];
    const ssize_t n = ::recv(fd_.get(), chunk, sizeof(chunk), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      const int err = errno;
      return Error(err, "cannot read from ublk-volumed at " + path_ + ": " +
                            std::error_code(err, std::generic_category()).message());
    }
    if (n == 0) {
      return Error(ECONNRESET, "ublk-volumed at " + path_ + " closed the connection");
    }
    buffer_.append(chunk, static_cast<size_t>(n));
    deadline = std::chrono::steady_clock::now() + timeout_;  // it is answering
  }
}

Result<Response> Client::call(std::string_view method, Json params) {
  const uint64_t id = next_id_++;
  Status sent = send_raw(to_line(make_request(id, method, std::move(params))));
  if (!sent.ok()) {
    // The daemon may have answered the connection and closed it before our
    // request went out (permission_denied): that answer is the one to show.
    auto early = read_line();
    if (early.ok()) {
      auto response = parse_response(*early);
      if (response.ok() && !response->ok && response->id.is_null()) {
        return response;
      }
    }
    return sent.error();
  }
  UBLKVOL_ASSIGN_OR_RETURN(const std::string line, read_line());
  UBLKVOL_ASSIGN_OR_RETURN(Response response, parse_response(line));
  // An error without an id answers the connection, not a request (e.g.
  // permission_denied right after connecting): it is this call's answer too.
  const bool connection_error = !response.ok && response.id.is_null();
  if (!connection_error &&
      !(response.id.is_number_unsigned() && response.id.get<uint64_t>() == id)) {
    return Error(ErrorKind::kInternal, EBADMSG,
                 "ublk-volumed answered request " + std::to_string(id) +
                     " with the response for another id");
  }
  return response;
}

Result<Json> Client::call_result(std::string_view method, Json params) {
  UBLKVOL_ASSIGN_OR_RETURN(Response response, call(method, std::move(params)));
  if (!response.ok) {
    return error_for(response.code, std::move(response.message));
  }
  return std::move(response.result);
}

}  // namespace ublkvol::daemon
