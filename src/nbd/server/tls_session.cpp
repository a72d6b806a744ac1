// GnuTLS credentials and sessions for the NBD export (tls_session.h).
#include "tls_session.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <map>
#include <string>

#include "ublkvol/common/hex.h"

namespace ublkvol::nbd {

namespace {
// nbdkit's default priority with the PSK key exchanges added.
constexpr const char* kPskPriority = "NORMAL:-VERS-SSL3.0:+ECDHE-PSK:+DHE-PSK:+PSK";
constexpr const char* kX509Priority = "NORMAL:-VERS-SSL3.0";

std::string gnutls_error(int rc) { return gnutls_strerror(rc); }
}  // namespace

class TlsCredentials::Impl {
 public:
  ~Impl() {
    if (psk_ != nullptr) {
      gnutls_psk_free_server_credentials(psk_);
    }
    if (cert_ != nullptr) {
      gnutls_certificate_free_credentials(cert_);
    }
  }
  // username -> key bytes.
  std::map<std::string, std::string> keys;
  gnutls_psk_server_credentials_t psk_ = nullptr;
  gnutls_certificate_credentials_t cert_ = nullptr;

  static int psk_lookup(gnutls_session_t session, const char* username, gnutls_datum_t* key) {
    const auto* self = static_cast<const Impl*>(gnutls_session_get_ptr(session));
    const auto it = self->keys.find(username);
    if (it == self->keys.end()) {
      return -1;  // unknown user: the handshake fails
    }
    key->data = static_cast<unsigned char*>(gnutls_malloc(it->second.size()));
    if (key->data == nullptr) {
      return -1;
    }
    std::copy(it->second.begin(), it->second.end(), key->data);
    key->size = static_cast<unsigned>(it->second.size());
    return 0;
  }
};

namespace {
Result<std::map<std::string, std::string>> read_psk_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return Error(errno != 0 ? errno : ENOENT, "TLS PSK file " + path + ": cannot open it");
  }
  std::map<std::string, std::string> keys;
  std::string line;
  for (unsigned number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const std::string where = "TLS PSK file " + path + " line " + std::to_string(number);
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string::npos) {
      return Error(EINVAL, where + ": expected username:hexkey");
    }
    const std::string hex = line.substr(colon + 1);
    if (hex.size() < 32 || hex.size() > 256 || hex.size() % 2 != 0) {
      return Error(EINVAL, where + ": the key must be an even number of 32..256 hex digits");
    }
    std::string key;
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hex_digit_value(hex[i]);
      const int lo = hex_digit_value(hex[i + 1]);
      if (hi < 0 || lo < 0) {
        return Error(EINVAL, where + ": the key is not hexadecimal");
      }
      key.push_back(static_cast<char>(hi * 16 + lo));
    }
    keys[line.substr(0, colon)] = key;
  }
  if (keys.empty()) {
    return Error(EINVAL, "TLS PSK file " + path + ": no username:hexkey line");
  }
  return keys;
}
}  // namespace

TlsCredentials::TlsCredentials(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsCredentials::~TlsCredentials() = default;

Result<std::shared_ptr<TlsCredentials>> TlsCredentials::load(const TlsOptions& options) {
  auto impl = std::make_unique<Impl>();
  const bool x509 =
      !options.cert_file.empty() || !options.key_file.empty() || !options.ca_file.empty();
  if (!options.psk_file.empty() && x509) {
    return Error(EINVAL, "TLS: give either a PSK file or X.509 certificate, key and CA, not both");
  }
  if (!options.psk_file.empty()) {
    UBLKVOL_ASSIGN_OR_RETURN(impl->keys, read_psk_file(options.psk_file));
    if (const int rc = gnutls_psk_allocate_server_credentials(&impl->psk_); rc < 0) {
      return Error(ENOMEM, "TLS: " + gnutls_error(rc));
    }
    gnutls_psk_set_server_credentials_function(impl->psk_, &Impl::psk_lookup);
  } else {
    if (options.cert_file.empty() || options.key_file.empty() || options.ca_file.empty()) {
      return Error(EINVAL,
                   "TLS X.509: the certificate, its key and the CA of the clients are all needed");
    }
    if (const int rc = gnutls_certificate_allocate_credentials(&impl->cert_); rc < 0) {
      return Error(ENOMEM, "TLS: " + gnutls_error(rc));
    }
    if (const int rc = gnutls_certificate_set_x509_key_file(
            impl->cert_, options.cert_file.c_str(), options.key_file.c_str(), GNUTLS_X509_FMT_PEM);
        rc < 0) {
      return Error(EINVAL, "TLS certificate " + options.cert_file + " / key " + options.key_file +
                               ": " + gnutls_error(rc));
    }
    const int cas = gnutls_certificate_set_x509_trust_file(impl->cert_, options.ca_file.c_str(),
                                                           GNUTLS_X509_FMT_PEM);
    if (cas <= 0) {
      return Error(EINVAL,
                   "TLS CA file " + options.ca_file + ": " +
                       (cas == 0 ? std::string("no certificate in it") : gnutls_error(cas)));
    }
  }
  return std::shared_ptr<TlsCredentials>(new TlsCredentials(std::move(impl)));
}

struct TlsTransport::Session {
  gnutls_session_t s = nullptr;
  ~Session() {
    if (s != nullptr) {
      gnutls_deinit(s);
    }
  }
};

TlsTransport::TlsTransport(std::unique_ptr<Session> session) : session_(std::move(session)) {}

TlsTransport::~TlsTransport() = default;

Result<std::unique_ptr<TlsTransport>> TlsTransport::create(const TlsCredentials& credentials,
                                                           int fd) {
  auto session = std::make_unique<Session>();
  if (const int rc = gnutls_init(&session->s, GNUTLS_SERVER | GNUTLS_NONBLOCK); rc < 0) {
    return Error(ENOMEM, "TLS session: " + gnutls_error(rc));
  }
  const TlsCredentials::Impl& impl = *credentials.impl_;
  int rc = 0;
  if (impl.psk_ != nullptr) {
    rc = gnutls_priority_set_direct(session->s, kPskPriority, nullptr);
    if (rc >= 0) {
      rc = gnutls_credentials_set(session->s, GNUTLS_CRD_PSK, impl.psk_);
    }
  } else {
    rc = gnutls_priority_set_direct(session->s, kX509Priority, nullptr);
    if (rc >= 0) {
      rc = gnutls_credentials_set(session->s, GNUTLS_CRD_CERTIFICATE, impl.cert_);
    }
    gnutls_certificate_server_set_request(session->s, GNUTLS_CERT_REQUIRE);
  }
  if (rc < 0) {
    return Error(EINVAL, "TLS session: " + gnutls_error(rc));
  }
  // The PSK callback finds the keys through the session pointer.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): GnuTLS only hands it back
  gnutls_session_set_ptr(session->s, const_cast<TlsCredentials::Impl*>(&impl));
  gnutls_transport_set_int(session->s, fd);
  auto t = std::unique_ptr<TlsTransport>(new TlsTransport(std::move(session)));
  t->credentials_ = &credentials;
  return t;
}

TlsTransport::Step TlsTransport::handshake() {
  const int rc = gnutls_handshake(session_->s);
  if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
    return gnutls_record_get_direction(session_->s) == 0 ? Step::kWantRead : Step::kWantWrite;
  }
  if (rc < 0) {
    error_ = "TLS handshake failed: " + gnutls_error(rc);
    return Step::kFailed;
  }
  if (credentials_->impl_->psk_ != nullptr) {
    const char* user = gnutls_psk_server_get_username(session_->s);
    peer_ = user != nullptr ? std::string("psk user ") + user : "psk";
    return Step::kDone;
  }
  unsigned status = 0;
  const int vr = gnutls_certificate_verify_peers2(session_->s, &status);
  if (vr < 0 || status != 0) {
    gnutls_datum_t text{};
    std::string why = vr < 0 ? gnutls_error(vr) : "not verified";
    if (vr >= 0 &&
        gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) >= 0) {
      why = reinterpret_cast<const char*>(text.data);
      gnutls_free(text.data);
    }
    error_ = "TLS client certificate refused: " + why;
    return Step::kFailed;
  }
  peer_ = "x509 client";
  unsigned count = 0;
  const gnutls_datum_t* chain = gnutls_certificate_get_peers(session_->s, &count);
  gnutls_x509_crt_t crt = nullptr;
  if (chain != nullptr && count > 0 && gnutls_x509_crt_init(&crt) >= 0) {
    if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) >= 0) {
      gnutls_datum_t dn{};
      if (gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0) {
        peer_ = reinterpret_cast<const char*>(dn.data);
        gnutls_free(dn.data);
      }
    }
    gnutls_x509_crt_deinit(crt);
  }
  return Step::kDone;
}

ssize_t TlsTransport::recv(std::byte* buf, size_t len) {
  const ssize_t n = gnutls_record_recv(session_->s, buf, len);
  if (n >= 0) {
    return n;
  }
  if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
    return -EAGAIN;
  }
  if (n == GNUTLS_E_PREMATURE_TERMINATION) {
    return 0;
  }
  return -EIO;
}

ssize_t TlsTransport::sendv(const iovec* iov, int count) {
  // One record call per piece: after GNUTLS_E_AGAIN the caller repeats the
  // same piece (the one not yet accounted), as GnuTLS requires.
  ssize_t total = 0;
  for (int i = 0; i < count; ++i) {
    const ssize_t n = gnutls_record_send(session_->s, iov[i].iov_base, iov[i].iov_len);
    if (n < 0) {
      if (total > 0) {
        return total;
      }
      return n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED ? -EAGAIN : -EIO;
    }
    total += n;
    if (static_cast<size_t>(n) < iov[i].iov_len) {
      return total;
    }
  }
  return total;
}

bool TlsTransport::has_buffered_input() const {
  return gnutls_record_check_pending(session_->s) > 0;
}

}  // namespace ublkvol::nbd
