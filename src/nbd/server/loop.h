// NbdExport::Loop: the export's thread - an epoll loop over the listening
// socket, the connections, the volume queue's wake fd and a stop eventfd.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/nbd/server.h"

#include "connection.h"
#include "tls_session.h"

namespace ublkvol::nbd {

// A bound, listening socket and what it is bound to (listener.cpp).
struct Listener {
  UniqueFd fd;
  std::string address;    // "HOST:PORT" with the real port, or "unix:/path"
  std::string unix_path;  // "" for TCP
  bool tcp = false;
};
Result<Listener> listen_on(const std::string& spec);

class NbdExport::Loop {
 public:
  Loop(engine::Volume& volume, ExportOptions options, Listener listener,
       std::shared_ptr<TlsCredentials> tls);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Starts the thread; returns once it opened the volume queue (or failed to).
  Status start();
  void stop();

  [[nodiscard]] const ExportOptions& options() const { return options_; }
  [[nodiscard]] const std::string& address() const { return listener_.address; }
  [[nodiscard]] const engine::VolumeInfo& info() const { return volume_.info(); }
  [[nodiscard]] engine::VolumeQueue& queue() { return *queue_; }
  [[nodiscard]] ExportStats stats() const;
  // Set when the export has TLS: then every client must use it.
  [[nodiscard]] const TlsCredentials* tls() const { return tls_.get(); }
  [[nodiscard]] bool tls_required() const { return tls_ != nullptr; }
  void count_tls_failure() { tls_failures_.fetch_add(1, std::memory_order_relaxed); }
  // Each request's buffer: the volume's max_io_bytes (>= 4 KiB).
  [[nodiscard]] uint32_t max_payload() const;
  void count_request() { requests_.fetch_add(1, std::memory_order_relaxed); }
  void count_protocol_error() { protocol_errors_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void run(std::promise<Status>* started);
  void accept_clients();
  void drain_queue();
  void service(Connection& c);
  void update_interest(Connection& c);

  engine::Volume& volume_;
  ExportOptions options_;
  Listener listener_;
  std::shared_ptr<TlsCredentials> tls_;
  UniqueFd epoll_;
  UniqueFd stop_fd_;
  std::unique_ptr<engine::VolumeQueue> queue_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::thread thread_;
  bool stopping_ = false;
  bool joined_ = false;
  std::atomic<unsigned> connected_{0};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> protocol_errors_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> tls_failures_{0};
};

}  // namespace ublkvol::nbd
