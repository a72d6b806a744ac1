// The peer control channel: TLS-PSK line exchange, client and listener
// (include/ublkvol/nbd/peer_control.h, docs/nbd.md).
#include "ublkvol/nbd/peer_control.h"

#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <fstream>
#include <gnutls/gnutls.h>
#include <list>
#include <memory>
#include <mutex>
#include <spdlog/spdlog.h>
#include <system_error>
#include <thread>
#include <vector>

#include "ublkvol/common/hex.h"
#include "ublkvol/common/unique_fd.h"

namespace ublkvol::nbd {
namespace {

using Clock = std::chrono::steady_clock;

// The NBD export's priority (tls_session.cpp): PSK key exchanges only work
// when named.
constexpr const char* kPskPriority = "NORMAL:-VERS-SSL3.0:+ECDHE-PSK:+DHE-PSK:+PSK";
constexpr size_t kMaxLineBytes = size_t{1} << 20U;

std::string gnutls_text(int rc) { return gnutls_strerror(rc); }

// "user:hexkey" lines of a PSK file: the key of `user` (hex), or every
// user's when `user` is empty (a check that the file is usable).
Result<std::string> psk_key(const std::string& path, const std::string& user) {
  std::ifstream in(path);
  if (!in) {
    return Error(errno != 0 ? errno : ENOENT, "TLS PSK file " + path + ": cannot open it");
  }
  std::string line;
  bool any = false;
  for (unsigned number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const size_t colon = line.find(':');
    const std::string hex = colon == std::string::npos ? "" : line.substr(colon + 1);
    bool valid = colon != 0 && colon != std::string::npos && hex.size() >= 32 &&
                 hex.size() <= 256 && hex.size() % 2 == 0;
    for (const char c : hex) {
      valid = valid && hex_digit_value(c) >= 0;
    }
    if (!valid) {
      return Error(EINVAL, "TLS PSK file " + path + " line " + std::to_string(number) +
                               ": expected username:hexkey (32..256 hex digits)");
    }
    any = true;
    if (!user.empty() && line.substr(0, colon) == user) {
      return hex;
    }
  }
  if (user.empty() && any) {
    return std::string();
  }
  return Error(ENOENT,
               "TLS PSK file " + path +
                   (user.empty() ? ": no username:hexkey line" : ": no key of user " + user));
}

// Waits until `fd` is ready (or `stop_fd` readable: ECANCELED) before `deadline`.
Status wait_ready(int fd, bool write, Clock::time_point deadline, int stop_fd,
                  const std::string& what) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      return Error(ETIMEDOUT, what + ": timed out");
    }
    std::array<pollfd, 2> fds{};
    fds[0] = {fd, static_cast<short>(write ? POLLOUT : POLLIN), 0};
    fds[1] = {stop_fd, POLLIN, 0};
    const int n = ::poll(fds.data(), stop_fd >= 0 ? 2 : 1, static_cast<int>(left));
    if (n < 0 && errno != EINTR) {
      return errno_error(what + ": poll");
    }
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      return Error(ECANCELED, what + ": stopping");
    }
    if (n > 0 && fds[0].revents != 0) {
      return ok_status();
    }
  }
}

// A TLS session on a non-blocking socket, every step bounded by a deadline.
class TlsLine {
 public:
  TlsLine(int fd, std::string what, int stop_fd)
      : fd_(fd), what_(std::move(what)), stop_(stop_fd) {}
  ~TlsLine() {
    if (session_ != nullptr) {
      gnutls_deinit(session_);
    }
  }
  TlsLine(const TlsLine&) = delete;
  TlsLine& operator=(const TlsLine&) = delete;

  Status init(unsigned flags, gnutls_credentials_type_t type, void* credentials) {
    int rc = gnutls_init(&session_, flags | GNUTLS_NONBLOCK);
    if (rc >= 0) {
      rc = gnutls_priority_set_direct(session_, kPskPriority, nullptr);
    }
    if (rc >= 0) {
      rc = gnutls_credentials_set(session_, type, credentials);
    }
    if (rc < 0) {
      return Error(EIO, what_ + ": TLS session: " + gnutls_text(rc));
    }
    gnutls_transport_set_int(session_, fd_);
    return ok_status();
  }

  Status handshake(Clock::time_point deadline) {
    for (;;) {
      const int rc = gnutls_handshake(session_);
      if (rc >= 0) {
        return ok_status();
      }
      if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED) {
        return Error(EACCES, what_ + ": TLS handshake failed (" + gnutls_text(rc) +
                                 "): wrong key, unknown user, or not TLS-PSK");
      }
      UBLKVOL_TRY(wait(deadline));
    }
  }

  Status send_line(std::string_view line, Clock::time_point deadline) {
    std::string data(line);
    data.push_back('\n');
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = gnutls_record_send(session_, data.data() + sent, data.size() - sent);
      if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
        // GnuTLS wants the same call repeated (it kept the record).
        UBLKVOL_TRY(wait(deadline));
        continue;
      }
      if (n < 0) {
        return Error(EIO, what_ + ": TLS send: " + gnutls_text(static_cast<int>(n)));
      }
      sent += static_cast<size_t>(n);
    }
    return ok_status();
  }

  // One line without '\n'; "" with *eof set when the peer closed cleanly first.
  Result<std::string> read_line(Clock::time_point deadline, bool* eof = nullptr) {
    for (;;) {
      const size_t newline = in_.find('\n');
      if (newline != std::string::npos) {
        std::string line = in_.substr(0, newline);
        in_.erase(0, newline + 1);
        return line;
      }
      if (in_.size() > kMaxLineBytes) {
        return Error(EMSGSIZE, what_ + ": line over " + std::to_string(kMaxLineBytes) + " bytes");
      }
      std::array<char, 16384> chunk{};
      const ssize_t n = gnutls_record_recv(session_, chunk.data(), chunk.size());
      if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
        UBLKVOL_TRY(wait(deadline));
        continue;
      }
      if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION) {
        if (eof != nullptr && in_.empty()) {
          *eof = true;
          return std::string();
        }
        return Error(ECONNRESET, what_ + ": the peer closed the connection");
      }
      if (n < 0) {
        return Error(EIO, what_ + ": TLS receive: " + gnutls_text(static_cast<int>(n)));
      }
      in_.append(chunk.data(), static_cast<size_t>(n));
    }
  }

  [[nodiscard]] gnutls_session_t session() const { return session_; }

 private:
  Status wait(Clock::time_point deadline) {
    return wait_ready(fd_, gnutls_record_get_direction(session_) == 1, deadline, stop_, what_);
  }

  int fd_;
  std::string what_;
  int stop_;
  gnutls_session_t session_ = nullptr;
  std::string in_;
};

// HOST and PORT of "HOST:PORT" / "[V6]:PORT".
Result<std::pair<std::string, unsigned>> split_host_port(const std::string& spec) {
  const size_t colon = spec.rfind(':');
  if (spec.rfind("unix:", 0) == 0 || colon == std::string::npos || colon == 0 ||
      colon + 1 == spec.size()) {
    return Error(EINVAL, "address '" + spec + "': expected HOST:PORT or [IPV6]:PORT");
  }
  const std::string port = spec.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoul(port) > 65535) {
    return Error(EINVAL, "address '" + spec + "': port '" + port + "' is not 0..65535");
  }
  return std::pair{spec.substr(0, colon), static_cast<unsigned>(std::stoul(port))};
}

std::string unbracket(std::string host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return host.substr(1, host.size() - 2);
  }
  return host;
}

// %XX decoding of a URI part.
std::string percent_decode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex_digit_value(text[i + 1]) >= 0 &&
        hex_digit_value(text[i + 2]) >= 0) {
      out.push_back(
          static_cast<char>(hex_digit_value(text[i + 1]) * 16 + hex_digit_value(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string login_name() {
  std::vector<char> buffer(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(::geteuid(), &pw, buffer.data(), buffer.size(), &found) == 0 &&
      found != nullptr) {
    return pw.pw_name;
  }
  return "root";
}

}  // namespace

Result<std::string> peer_control_listen_address(const std::string& export_listen) {
  UBLKVOL_ASSIGN_OR_RETURN(const auto hp, split_host_port(export_listen));
  if (hp.second == 65535) {
    return Error(EINVAL, "address '" + export_listen +
                             "': port 65535 leaves no port + 1 for the peer control channel");
  }
  return hp.first + ":" + std::to_string(hp.second == 0 ? 0 : hp.second + 1);
}

std::string PeerControlTarget::address() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<PeerControlTarget> peer_control_target(const std::string& uri) {
  const auto refuse = [&](const std::string& why) {
    return Error(ENOTSUP, "remote replica " + uri + ": " + why +
                              "; snapshots need an nbds://USER@HOST:PORT/EXPORT URI with a PSK "
                              "file, served by a ublk-volumed export (its control channel is on "
                              "PORT + 1)");
  };
  constexpr std::string_view kScheme = "nbds://";
  if (uri.rfind(kScheme, 0) != 0) {
    return refuse("not an nbds:// (TLS over TCP) URI");
  }
  const size_t query_at = uri.find('?');
  const std::string rest =
      uri.substr(kScheme.size(),
                 query_at == std::string::npos ? std::string::npos : query_at - kScheme.size());
  const std::string query = query_at == std::string::npos ? "" : uri.substr(query_at + 1);
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  PeerControlTarget t;
  t.export_name = slash == std::string::npos ? "" : percent_decode(rest.substr(slash + 1));
  if (const size_t at = authority.rfind('@'); at != std::string::npos) {
    t.username = percent_decode(authority.substr(0, at));
    authority = authority.substr(at + 1);
  }
  unsigned port = 10809;  // the NBD port
  std::string host = authority;
  const size_t bracket = authority.rfind(']');
  const size_t colon = authority.rfind(':');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    auto hp = split_host_port(authority);
    if (!hp.ok()) {
      return refuse(hp.error().message());
    }
    host = hp->first;
    port = hp->second;
  }
  t.host = unbracket(host);
  if (t.host.empty() || port == 0 || port >= 65535) {
    return refuse("no host or no usable port");
  }
  t.port = static_cast<uint16_t>(port + 1);
  size_t begin = 0;
  while (begin <= query.size() && !query.empty()) {
    const size_t end = std::min(query.find('&', begin), query.size());
    const std::string item = query.substr(begin, end - begin);
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : percent_decode(item.substr(eq + 1));
    if (key == "tls-psk-file") {
      t.psk_file = value;
    } else if (key == "tls-username" && t.username.empty()) {
      t.username = value;
    }
    begin = end + 1;
  }
  if (t.psk_file.empty()) {
    return refuse("no tls-psk-file (X.509 has no peer control channel)");
  }
  if (t.username.empty()) {
    t.username = login_name();  // libnbd's default too
  }
  return t;
}

Result<std::string> peer_control_exchange(const PeerControlTarget& target, std::string_view line,
                                          std::chrono::milliseconds timeout) {
  const std::string what = "peer control " + target.address();
  const Clock::time_point deadline = Clock::now() + timeout;
  UBLKVOL_ASSIGN_OR_RETURN(const std::string key, psk_key(target.psk_file, target.username));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(target.port);
  if (const int rc = ::getaddrinfo(target.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Error(EHOSTUNREACH, what + ": " + ::gai_strerror(rc));
  }
  const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
  UniqueFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    return errno_error(what + ": socket");
  }
  if (::connect(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      return errno_error(what + ": connect");
    }
    UBLKVOL_TRY(wait_ready(fd.get(), true, deadline, -1, what + ": connect"));
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return Error(err,
                   what + ": connect: " + std::error_code(err, std::generic_category()).message());
    }
  }
  gnutls_psk_client_credentials_t credentials = nullptr;
  if (const int rc = gnutls_psk_allocate_client_credentials(&credentials); rc < 0) {
    return Error(ENOMEM, what + ": " + gnutls_text(rc));
  }
  const std::unique_ptr<gnutls_psk_client_credentials_st,
                        decltype(&gnutls_psk_free_client_credentials)>
      credentials_guard(credentials, &gnutls_psk_free_client_credentials);
  gnutls_datum_t key_datum{
      reinterpret_cast<unsigned char*>(const_cast<char*>(key.data())),  // NOLINT: GnuTLS copies it
      static_cast<unsigned>(key.size())};
  if (const int rc = gnutls_psk_set_client_credentials(credentials, target.username.c_str(),
                                                       &key_datum, GNUTLS_PSK_KEY_HEX);
      rc < 0) {
    return Error(EINVAL, what + ": PSK of user " + target.username + ": " + gnutls_text(rc));
  }
  TlsLine tls(fd.get(), what, -1);
  UBLKVOL_TRY(tls.init(GNUTLS_CLIENT, GNUTLS_CRD_PSK, credentials));
  UBLKVOL_TRY(tls.handshake(deadline));
  UBLKVOL_TRY(tls.send_line(line, deadline));
  auto answer = tls.read_line(deadline);
  (void)gnutls_bye(tls.session(), GNUTLS_SHUT_WR);  // best effort; we close anyway
  return answer;
}

struct PeerControlListener::Impl {
  PeerControlListenerOptions options;
  Handler handler;
  UniqueFd listener;
  UniqueFd stop_event;
  gnutls_psk_server_credentials_t credentials = nullptr;
  std::thread thread;
  mutable std::mutex mutex;
  PeerControlStats stats;

  ~Impl() {
    if (credentials != nullptr) {
      gnutls_psk_free_server_credentials(credentials);
    }
  }

  void bump(uint64_t PeerControlStats::*field) {
    const std::lock_guard lock(mutex);
    ++(stats.*field);
  }

  void serve(int fd) {
    TlsLine tls(fd, "peer control client", stop_event.get());
    if (!tls.init(GNUTLS_SERVER, GNUTLS_CRD_PSK, credentials).ok()) {
      return;
    }
    const Status shaken = tls.handshake(Clock::now() + options.handshake_timeout);
    if (!shaken.ok()) {
      if (shaken.error().errno_value() != ECANCELED) {
        bump(&PeerControlStats::tls_failures);
        spdlog::warn("peer control on {}: client refused: {}", options.listen,
                     shaken.error().message());
      }
      return;
    }
    const char* user = gnutls_psk_server_get_username(tls.session());
    const std::string who = user != nullptr ? user : "";
    for (;;) {
      bool eof = false;
      auto line = tls.read_line(Clock::now() + options.idle_timeout, &eof);
      if (!line.ok() || eof) {
        return;
      }
      bump(&PeerControlStats::requests);
      const std::string answer = handler(*line, who);
      if (!tls.send_line(answer, Clock::now() + options.idle_timeout).ok()) {
        return;
      }
    }
  }

  // One thread per connection, at most options.max_connections: a slow or
  // idle client (bounded by the handshake and idle timeouts) never holds up
  // another peer's call.
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  };
  std::list<Worker> workers;  // only the accepting thread touches the list

  void reap() {
    for (auto it = workers.begin(); it != workers.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = workers.erase(it);
      } else {
        ++it;
      }
    }
  }

  void join_workers() {
    for (auto& w : workers) {
      w.thread.join();  // each sees stop_event and returns
    }
    workers.clear();
  }

  void run() {
    run_accepting();
    join_workers();
  }

  void run_accepting() {
    for (;;) {
      std::array<pollfd, 2> fds{};
      fds[0] = {listener.get(), POLLIN, 0};
      fds[1] = {stop_event.get(), POLLIN, 0};
      if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) {
        return;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        return;
      }
      if ((fds[0].revents & POLLIN) == 0) {
        continue;
      }
      UniqueFd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) {
        continue;
      }
      reap();
      if (workers.size() >= options.max_connections) {
        bump(&PeerControlStats::refused);
        spdlog::warn("peer control on {}: connection refused: {} already open (the limit)",
                     options.listen, workers.size());
        continue;  // closes it
      }
      bump(&PeerControlStats::accepted);
      Worker& w = workers.emplace_back();
      w.thread = std::thread([this, conn = std::move(fd), done = w.done]() mutable {
        serve(conn.get());
        conn.reset();
        done->store(true);
      });
    }
  }
};

PeerControlListener::PeerControlListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PeerControlListener::~PeerControlListener() { stop(); }

Result<std::unique_ptr<PeerControlListener>> PeerControlListener::start(
    PeerControlListenerOptions options, Handler handler) {
  auto impl = std::make_unique<Impl>();
  const std::string what = "peer control channel on " + options.listen;
  if (options.psk_file.empty()) {
    return Error(EINVAL, what + ": a TLS PSK file is required");
  }
  if (auto checked = psk_key(options.psk_file, ""); !checked.ok()) {
    return checked.error().with_context(what);
  }
  if (const int rc = gnutls_psk_allocate_server_credentials(&impl->credentials); rc < 0) {
    return Error(ENOMEM, what + ": " + gnutls_text(rc));
  }
  // GnuTLS reads the file at each handshake (a changed key applies at once).
  if (const int rc =
          gnutls_psk_set_server_credentials_file(impl->credentials, options.psk_file.c_str());
      rc < 0) {
    return Error(EINVAL, what + ": PSK file " + options.psk_file + ": " + gnutls_text(rc));
  }
  UBLKVOL_ASSIGN_OR_RETURN(const auto hp, split_host_port(options.listen));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string host = unbracket(hp.first);
  const std::string port = std::to_string(hp.second);
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Error(EINVAL, what + ": " + ::gai_strerror(rc));
  }
  const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
  impl->listener.reset(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!impl->listener) {
    return errno_error(what + ": socket");
  }
  const int one = 1;
  ::setsockopt(impl->listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(impl->listener.get(), found->ai_addr, found->ai_addrlen) != 0 ||
      ::listen(impl->listener.get(), 16) != 0) {
    return errno_error(what + ": bind");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(impl->listener.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  std::array<char, NI_MAXHOST> h{};
  std::array<char, NI_MAXSERV> p{};
  ::getnameinfo(reinterpret_cast<const sockaddr*>(&bound), len, h.data(), h.size(), p.data(),
                p.size(), NI_NUMERICHOST | NI_NUMERICSERV);
  const std::string bound_host = h.data();
  std::string address =
      (bound.ss_family == AF_INET6 ? "[" + bound_host + "]" : bound_host) + ":" + p.data();
  impl->stop_event.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->stop_event) {
    return errno_error(what + ": eventfd");
  }
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  std::unique_ptr<PeerControlListener> listener(new PeerControlListener(std::move(impl)));
  listener->address_ = std::move(address);
  return listener;
}

void PeerControlListener::stop() {
  if (!impl_ || !impl_->thread.joinable()) {
    return;
  }
  const uint64_t one = 1;
  (void)::write(impl_->stop_event.get(), &one, sizeof(one));
  impl_->thread.join();
  impl_->listener.reset();
}

PeerControlStats PeerControlListener::stats() const {
  const std::lock_guard lock(impl_->mutex);
  return impl_->stats;
}

}  // namespace ublkvol::nbd
