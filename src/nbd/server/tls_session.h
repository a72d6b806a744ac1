// TLS for the NBD export (GnuTLS): credentials loaded once per export (a PSK
// file in nbdkit's "username:hexkey" format, or X.509 certificate, key and
// the CA that client certificates must chain to), and the per-connection
// session that replaces the plain transport after NBD_OPT_STARTTLS.
#pragma once

#include <memory>
#include <string>

#include "ublkvol/common/result.h"
#include "ublkvol/nbd/server.h"

#include "connection.h"

namespace ublkvol::nbd {

class TlsCredentials {
 public:
  // Reads and checks the files of `options` (errors name the file and line).
  static Result<std::shared_ptr<TlsCredentials>> load(const TlsOptions& options);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  class Impl;

 private:
  explicit TlsCredentials(std::unique_ptr<Impl> impl);
  friend class TlsTransport;
  std::unique_ptr<Impl> impl_;
};

// A server session on a connected, non-blocking socket.
class TlsTransport final : public Transport {
 public:
  static Result<std::unique_ptr<TlsTransport>> create(const TlsCredentials& credentials, int fd);
  ~TlsTransport() override;
  TlsTransport(const TlsTransport&) = delete;
  TlsTransport& operator=(const TlsTransport&) = delete;

  enum class Step : uint8_t { kDone, kWantRead, kWantWrite, kFailed };
  // Drives the handshake (and, for X.509, the client certificate check);
  // on kFailed, error() says why.
  Step handshake();
  [[nodiscard]] const std::string& error() const { return error_; }
  // Who the client proved to be: the PSK username or the certificate's DN.
  [[nodiscard]] const std::string& peer() const { return peer_; }

  ssize_t recv(std::byte* buf, size_t len) override;
  ssize_t sendv(const iovec* iov, int count) override;
  [[nodiscard]] bool has_buffered_input() const override;

 private:
  struct Session;
  explicit TlsTransport(std::unique_ptr<Session> session);
  std::unique_ptr<Session> session_;
  const TlsCredentials* credentials_ = nullptr;
  std::string error_;
  std::string peer_;
};

}  // namespace ublkvol::nbd
