// The export's thread: epoll over the listener, the connections, the volume
// queue's wake fd and a stop eventfd; NbdExport's public face.
#include "loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <system_error>

namespace ublkvol::nbd {

namespace {
// epoll data for the fds that are not connections (never a pointer value).
constexpr uint64_t kStopTag = 1;
constexpr uint64_t kListenTag = 2;
constexpr uint64_t kWakeTag = 3;
constexpr uint32_t kMaxPayloadCap = 32U << 20U;

Status epoll_add(int epoll, int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (::epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return errno_error("epoll_ctl");
  }
  return ok_status();
}
}  // namespace

NbdExport::Loop::Loop(engine::Volume& volume, ExportOptions options, Listener listener,
                      std::shared_ptr<TlsCredentials> tls)
    : volume_(volume),
      options_(std::move(options)),
      listener_(std::move(listener)),
      tls_(std::move(tls)) {}

NbdExport::Loop::~Loop() { stop(); }

uint32_t NbdExport::Loop::max_payload() const {
  return std::clamp(info().max_io_bytes, info().block_size, kMaxPayloadCap);
}

ExportStats NbdExport::Loop::stats() const {
  ExportStats s;
  s.connections = connected_.load(std::memory_order_relaxed);
  s.accepted = accepted_.load(std::memory_order_relaxed);
  s.refused = refused_.load(std::memory_order_relaxed);
  s.protocol_errors = protocol_errors_.load(std::memory_order_relaxed);
  s.requests = requests_.load(std::memory_order_relaxed);
  s.tls_failures = tls_failures_.load(std::memory_order_relaxed);
  return s;
}

Status NbdExport::Loop::start() {
  epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  stop_fd_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!epoll_ || !stop_fd_) {
    return errno_error("nbd export '" + options_.name + "': epoll/eventfd");
  }
  std::promise<Status> started;
  auto result = started.get_future();
  thread_ = std::thread([this, &started] { run(&started); });
  Status status = result.get();
  if (!status.ok()) {
    thread_.join();
    joined_ = true;
  }
  return status;
}

void NbdExport::Loop::stop() {
  if (joined_ || !thread_.joinable()) {
    return;
  }
  const uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof(one)) != sizeof(one)) {
    spdlog::error("nbd export '{}': cannot signal stop: {}", options_.name,
                  std::generic_category().message(errno));
  }
  thread_.join();
  joined_ = true;
}

void NbdExport::Loop::accept_clients() {
  while (listener_.fd) {
    UniqueFd fd(::accept4(listener_.fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("nbd export '{}': accept: {}", options_.name,
                     std::generic_category().message(errno));
      }
      return;
    }
    if (connections_.size() >= options_.max_connections) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("nbd export '{}': refused a client: {} connections is the limit", options_.name,
                   options_.max_connections);
      continue;  // closed by fd's destructor
    }
    if (listener_.tcp) {
      const int one = 1;
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    auto c = std::make_unique<Connection>(*this, std::move(fd), listener_.tcp);
    c->start();
    epoll_event ev{};
    ev.events = c->wanted_events();
    ev.data.ptr = c.get();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd(), &ev) != 0) {
      spdlog::warn("nbd export '{}': epoll_ctl: {}", options_.name,
                   std::generic_category().message(errno));
      continue;
    }
    c->registered_events = ev.events;
    connections_.push_back(std::move(c));
    accepted_.fetch_add(1, std::memory_order_relaxed);
    connected_.store(static_cast<unsigned>(connections_.size()), std::memory_order_relaxed);
  }
}

void NbdExport::Loop::update_interest(Connection& c) {
  const uint32_t want = c.wanted_events();
  if (want == c.registered_events) {
    return;
  }
  epoll_event ev{};
  ev.events = want;
  ev.data.ptr = &c;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd(), &ev);
  c.registered_events = want;
}

void NbdExport::Loop::drain_queue() {
  // Completions may submit more (chained TRIM / WRITE_ZEROES chunks).
  do {
    queue_->kick();
  } while (queue_->reap() > 0);
}

void NbdExport::Loop::run(std::promise<Status>* started) {
  auto queue = volume_.open_queue(options_.queue_index);
  if (!queue.ok()) {
    started->set_value(queue.error().with_context("nbd export '" + options_.name + "'"));
    return;
  }
  queue_ = std::move(*queue);
  Status reg = epoll_add(epoll_.get(), stop_fd_.get(), EPOLLIN, kStopTag);
  if (reg.ok()) {
    reg = epoll_add(epoll_.get(), listener_.fd.get(), EPOLLIN, kListenTag);
  }
  if (reg.ok() && queue_->wake_fd() >= 0) {
    reg = epoll_add(epoll_.get(), queue_->wake_fd(), EPOLLIN, kWakeTag);
  }
  if (!reg.ok()) {
    queue_.reset();
    started->set_value(reg.error().with_context("nbd export '" + options_.name + "'"));
    return;
  }
  started->set_value(ok_status());

  std::array<epoll_event, 64> events{};
  while (true) {
    // Backends without a wake fd complete in reap(): poll while they have
    // work. Input a TLS session already decrypted is invisible to epoll.
    const bool buffered = std::any_of(connections_.begin(), connections_.end(),
                                      [](const auto& c) { return c->has_buffered_input(); });
    const int timeout = buffered || (queue_->wake_fd() < 0 && queue_->in_flight() > 0) ? 0 : -1;
    const int n = ::epoll_wait(epoll_.get(), events.data(), events.size(), timeout);
    for (int i = 0; i < n; ++i) {
      const epoll_event& ev = events[static_cast<size_t>(i)];
      if (ev.data.u64 == kStopTag) {
        uint64_t v = 0;
        (void)!::read(stop_fd_.get(), &v, sizeof(v));
        stopping_ = true;
        // New clients are refused from here on (the socket is gone).
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.fd.get(), nullptr);
        listener_.fd.reset();
        if (!listener_.unix_path.empty()) {
          ::unlink(listener_.unix_path.c_str());
        }
        for (auto& c : connections_) {
          c->fail("export stopped");
        }
      } else if (ev.data.u64 == kListenTag) {
        accept_clients();
      } else if (ev.data.u64 == kWakeTag) {
        uint64_t v = 0;
        (void)!::read(queue_->wake_fd(), &v, sizeof(v));
      } else {
        auto* c = static_cast<Connection*>(ev.data.ptr);
        if ((ev.events & EPOLLIN) != 0) {
          c->on_readable();
        } else if ((ev.events & (EPOLLERR | EPOLLHUP)) != 0) {
          c->fail("connection reset");
        }
      }
    }
    drain_queue();
    // Serve input a TLS session holds decrypted (epoll cannot see it).
    for (auto& c : connections_) {
      while (c->has_buffered_input()) {
        c->on_readable();
      }
    }
    drain_queue();
    for (auto it = connections_.begin(); it != connections_.end();) {
      Connection& c = **it;
      if (!c.flush()) {
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.fd(), nullptr);
        it = connections_.erase(it);
        continue;
      }
      update_interest(c);
      ++it;
    }
    connected_.store(static_cast<unsigned>(connections_.size()), std::memory_order_relaxed);
    if (stopping_ && connections_.empty() && queue_->in_flight() == 0) {
      break;
    }
  }
  queue_.reset();
}

// ---- NbdExport ----------------------------------------------------------------

NbdExport::NbdExport(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

NbdExport::~NbdExport() { stop(); }

void NbdExport::stop() { loop_->stop(); }

const std::string& NbdExport::address() const { return loop_->address(); }

const ExportOptions& NbdExport::options() const { return loop_->options(); }

ExportStats NbdExport::stats() const { return loop_->stats(); }

Result<std::unique_ptr<NbdExport>> NbdExport::start(engine::Volume& volume, ExportOptions options) {
  const std::string what = "nbd export '" + options.name + "'";
  if (options.name.size() > proto::kMaxStringBytes) {
    return Error(EINVAL, what + ": the name is longer than " +
                             std::to_string(proto::kMaxStringBytes) + " bytes");
  }
  if (options.max_connections < 1 || options.max_connections > 1024) {
    return Error(EINVAL, what + ": max_connections " + std::to_string(options.max_connections) +
                             " is out of range 1..1024");
  }
  if (options.requests_per_connection < 1 || options.requests_per_connection > 1024) {
    return Error(EINVAL, what + ": requests_per_connection " +
                             std::to_string(options.requests_per_connection) +
                             " is out of range 1..1024");
  }
  const bool unix_socket = options.listen.rfind("unix:", 0) == 0;
  std::shared_ptr<TlsCredentials> tls;
  if (options.tls.enabled()) {
    if (options.insecure_plain) {
      return Error(EINVAL, what + ": TLS and insecure_plain exclude each other");
    }
    UBLKVOL_ASSIGN_OR_RETURN(tls, TlsCredentials::load(options.tls));
  } else if (!unix_socket && !options.insecure_plain) {
    return Error(EINVAL, what + ": listen address '" + options.listen +
                             "' is TCP and TLS is required on TCP; give a TLS configuration "
                             "or ask for plain TCP explicitly (insecure_plain)");
  }
  UBLKVOL_ASSIGN_OR_RETURN(Listener listener, listen_on(options.listen));
  if (listener.tcp && options.insecure_plain) {
    spdlog::warn("{}: serving plain TCP on {} - no authentication, no encryption (insecure_plain)",
                 what, listener.address);
  }
  auto loop =
      std::make_unique<Loop>(volume, std::move(options), std::move(listener), std::move(tls));
  UBLKVOL_TRY(loop->start());
  return std::unique_ptr<NbdExport>(new NbdExport(std::move(loop)));
}

}  // namespace ublkvol::nbd
