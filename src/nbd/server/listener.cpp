// Parsing an export's listen address and binding it.
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <string>

#include "loop.h"

namespace ublkvol::nbd {
namespace {

std::string numeric_address(const sockaddr_storage& ss) {
  std::array<char, NI_MAXHOST> host{};
  std::array<char, NI_MAXSERV> port{};
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof(ss), host.data(), host.size(),
                    port.data(), port.size(), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  const std::string h = host.data();
  return (ss.ss_family == AF_INET6 ? "[" + h + "]" : h) + ":" + port.data();
}

Result<Listener> listen_unix(const std::string& spec, const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sun.sun_path)) {
    return Error(EINVAL, "listen address '" + spec + "': a unix socket path of 1.." +
                             std::to_string(sizeof(sun.sun_path) - 1) + " bytes is needed");
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    // A socket left by an earlier run is replaced; anything else is not ours.
    if (!S_ISSOCK(st.st_mode)) {
      return Error(EEXIST,
                   "listen address '" + spec + "': " + path + " exists and is not a socket");
    }
    ::unlink(path.c_str());
  }
  std::memcpy(sun.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    return errno_error("listen address '" + spec + "': socket");
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof(sun)) != 0 ||
      ::listen(fd.get(), 64) != 0) {
    return errno_error("listen address '" + spec + "': bind " + path);
  }
  Listener l;
  l.fd = std::move(fd);
  l.address = "unix:" + path;
  l.unix_path = path;
  return l;
}

}  // namespace

Result<Listener> listen_on(const std::string& spec) {
  if (spec.rfind("unix:", 0) == 0) {
    return listen_unix(spec, spec.substr(5));
  }
  // HOST:PORT or [V6]:PORT.
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) {
    return Error(EINVAL,
                 "listen address '" + spec + "': expected HOST:PORT, [IPV6]:PORT or unix:/path");
  }
  std::string host = spec.substr(0, colon);
  const std::string port = spec.substr(colon + 1);
  if (host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoul(port) > 65535) {
    return Error(EINVAL, "listen address '" + spec + "': port '" + port + "' is not 0..65535");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Error(EINVAL, "listen address '" + spec + "': " + ::gai_strerror(rc));
  }
  const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
  UniqueFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    return errno_error("listen address '" + spec + "': socket");
  }
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd.get(), 64) != 0) {
    return errno_error("listen address '" + spec + "': bind");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  Listener l;
  l.fd = std::move(fd);
  l.address = numeric_address(bound);
  l.tcp = true;
  return l;
}

}  // namespace ublkvol::nbd
