// TLS on the NBD export: PSK (nbdkit's key file format) and X.509 with client
// certificates; wrong keys, plain-text clients and unknown certificates are
// refused and nothing is served to them.
#include <libnbd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/engine/volume.h"
#include "ublkvol/nbd/server.h"
#include "ublkvol/nbd/server_protocol.h"

#include "nbd_test_util.h"

namespace ublkvol::nbd {
namespace {

using testing::closed_by_peer;
using testing::pattern_bytes;
using testing::recv_all;
using testing::run_command;
using testing::send_all;
using testing::TempDir;

constexpr uint64_t kSize = 16ULL << 20U;
constexpr const char* kKey = "0123456789abcdef0123456789abcdef";
constexpr const char* kWrongKey = "fedcba9876543210fedcba9876543210";

using testing::NbdHandle;

class NbdTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    volume_ = testing::make_test_volume(kSize);
    ASSERT_NE(volume_, nullptr);
    write_file("server.psk", std::string("alice:") + kKey + "\n");
    write_file("right.psk", std::string("alice:") + kKey + "\n");
    write_file("wrong.psk", std::string("alice:") + kWrongKey + "\n");
    write_file("mallory.psk", std::string("mallory:") + kKey + "\n");
  }

  void write_file(const std::string& name, const std::string& text) const {
    std::ofstream(dir_.path() + "/" + name) << text;
  }
  [[nodiscard]] std::string path(const std::string& name) const { return dir_.path() + "/" + name; }

  void start_psk() {
    ExportOptions o;
    o.name = "vol";
    o.listen = "127.0.0.1:0";
    o.tls.psk_file = path("server.psk");
    auto e = NbdExport::start(*volume_, o);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    export_ = std::move(*e);
  }

  // A libnbd client with TLS required and PSK from `psk` as `user`.
  NbdHandle psk_client(const std::string& psk, const std::string& user, int* rc) {
    NbdHandle h(nbd_create());
    EXPECT_EQ(nbd_set_tls(h.get(), LIBNBD_TLS_REQUIRE), 0);
    EXPECT_EQ(nbd_set_tls_psk_file(h.get(), path(psk).c_str()), 0);
    EXPECT_EQ(nbd_set_tls_username(h.get(), user.c_str()), 0);
    EXPECT_EQ(nbd_set_export_name(h.get(), "vol"), 0);
    const size_t colon = export_->address().rfind(':');
    *rc = nbd_connect_tcp(h.get(), export_->address().substr(0, colon).c_str(),
                          export_->address().substr(colon + 1).c_str());
    return h;
  }

  TempDir dir_;
  std::unique_ptr<engine::Volume> volume_;
  std::unique_ptr<NbdExport> export_;
};

TEST_F(NbdTlsTest, RightPskServesDataAndNbdinfoReadsIt) {
  start_psk();
  int rc = -1;
  NbdHandle h = psk_client("right.psk", "alice", &rc);
  ASSERT_EQ(rc, 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_tls_negotiated(h.get()), 1);
  const auto d = pattern_bytes(1U << 20U, 11);
  ASSERT_EQ(nbd_pwrite(h.get(), d.data(), d.size(), 2ULL << 20U, LIBNBD_CMD_FLAG_FUA), 0);
  std::vector<std::byte> r(d.size());
  ASSERT_EQ(nbd_pread(h.get(), r.data(), r.size(), 2ULL << 20U, 0), 0) << nbd_get_error();
  EXPECT_EQ(r, d);
  const auto info = run_command("nbdinfo --json 'nbds://alice@" + export_->address() +
                                "/vol?tls-psk-file=" + path("right.psk") + "'");
  ASSERT_EQ(info.status, 0) << info.output;
  EXPECT_NE(info.output.find("\"export-size\": 16777216"), std::string::npos) << info.output;
  EXPECT_EQ(export_->stats().tls_failures, 0U);
}

TEST_F(NbdTlsTest, WrongPskOrUnknownUserIsRefusedAndServedNothing) {
  start_psk();
  int rc = 0;
  NbdHandle wrong = psk_client("wrong.psk", "alice", &rc);
  EXPECT_EQ(rc, -1);
  NbdHandle unknown = psk_client("mallory.psk", "mallory", &rc);
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(export_->stats().requests, 0U);
  EXPECT_GE(export_->stats().tls_failures, 2U);
}

TEST_F(NbdTlsTest, PlainTextClientsAreRefusedAndServedNothing) {
  start_psk();
  // libnbd without TLS: every option answered with NBD_REP_ERR_TLS_REQD.
  NbdHandle h(nbd_create());
  ASSERT_EQ(nbd_set_tls(h.get(), LIBNBD_TLS_DISABLE), 0);
  const std::string uri = "nbd://" + export_->address() + "/vol";
  EXPECT_EQ(nbd_connect_uri(h.get(), uri.c_str()), -1);
  // A raw client: GO without STARTTLS -> TLS_REQD; EXPORT_NAME -> closed.
  const size_t colon = export_->address().rfind(':');
  const std::string port = export_->address().substr(colon + 1);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)), 0);
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::array<std::byte, 18> g{};
  ASSERT_TRUE(recv_all(fd.get(), g.data(), g.size()));
  std::array<std::byte, 4 + 16 + 11> m{};
  proto::put32(m.data(), proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes);
  proto::put64(m.data() + 4, proto::kIHaveOpt);
  proto::put32(m.data() + 12, proto::kOptGo);
  proto::put32(m.data() + 16, 11);
  proto::put32(m.data() + 20, 3);
  std::memcpy(m.data() + 24, "vol", 3);
  ASSERT_TRUE(send_all(fd.get(), m.data(), m.size()));
  std::array<std::byte, 20> rep{};
  ASSERT_TRUE(recv_all(fd.get(), rep.data(), rep.size()));
  EXPECT_EQ(proto::get32(rep.data() + 12), proto::kRepErrTlsReqd);
  std::vector<std::byte> msg(proto::get32(rep.data() + 16));
  ASSERT_TRUE(recv_all(fd.get(), msg.data(), msg.size()));
  std::array<std::byte, 16 + 3> en{};
  proto::put64(en.data(), proto::kIHaveOpt);
  proto::put32(en.data() + 8, proto::kOptExportName);
  proto::put32(en.data() + 12, 3);
  std::memcpy(en.data() + 16, "vol", 3);
  ASSERT_TRUE(send_all(fd.get(), en.data(), en.size()));
  EXPECT_TRUE(closed_by_peer(fd.get()));
  EXPECT_EQ(export_->stats().requests, 0U);
}

TEST_F(NbdTlsTest, TlsAndPlainOptionsAreCheckedAtStart) {
  ExportOptions o;
  o.name = "vol";
  o.listen = "127.0.0.1:0";
  o.tls.psk_file = path("server.psk");
  o.insecure_plain = true;
  EXPECT_FALSE(NbdExport::start(*volume_, o).ok());
  o.insecure_plain = false;
  write_file("bad.psk", "alice:nothex\n");
  o.tls.psk_file = path("bad.psk");
  auto bad = NbdExport::start(*volume_, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("bad.psk line 1"), std::string::npos)
      << bad.error().message();
  o.tls.psk_file.clear();
  o.tls.cert_file = path("missing.pem");
  EXPECT_FALSE(NbdExport::start(*volume_, o).ok());
}

// X.509: a CA, a server certificate for 127.0.0.1 and a client certificate,
// made with openssl; a client with a certificate from another CA is refused.
TEST_F(NbdTlsTest, X509ClientCertificatesFromTheCaOnly) {
  const std::string d = dir_.path();
  const std::string script =
      "set -e; cd '" + d +
      "'; mkdir -p good bad; "
      "mk_ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
      "-subj /CN=$1 -keyout $1-key.pem -out $1-cert.pem 2>/dev/null; }; "
      "mk_cert() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=$1 "
      "-addext subjectAltName=IP:127.0.0.1 -keyout $1-key.pem -out $1.csr 2>/dev/null; "
      "openssl x509 -req -in $1.csr -CA $2-cert.pem -CAkey $2-key.pem -CAcreateserial -days 2 "
      "-copy_extensions copy -out $1-cert.pem 2>/dev/null; }; "
      "mk_ca ca; mk_ca otherca; mk_cert server ca; mk_cert client ca; mk_cert intruder otherca; "
      "cp ca-cert.pem good/ca-cert.pem; cp client-cert.pem good/client-cert.pem; "
      "cp client-key.pem good/client-key.pem; cp ca-cert.pem bad/ca-cert.pem; "
      "cp intruder-cert.pem bad/client-cert.pem; cp intruder-key.pem bad/client-key.pem";
  const auto made = run_command(script);
  ASSERT_EQ(made.status, 0) << made.output;
  ExportOptions o;
  o.name = "vol";
  o.listen = "127.0.0.1:0";
  o.tls.cert_file = d + "/server-cert.pem";
  o.tls.key_file = d + "/server-key.pem";
  o.tls.ca_file = d + "/ca-cert.pem";
  auto e = NbdExport::start(*volume_, o);
  ASSERT_TRUE(e.ok()) << e.error().to_string();
  export_ = std::move(*e);
  const std::string uri = "nbds://" + export_->address() + "/vol";
  for (const char* who : {"good", "bad"}) {
    NbdHandle h(nbd_create());
    ASSERT_EQ(nbd_set_tls_certificates(h.get(), (d + "/" + who).c_str()), 0);
    const int rc = nbd_connect_uri(h.get(), uri.c_str());
    if (std::string(who) == "good") {
      ASSERT_EQ(rc, 0) << nbd_get_error();
      const auto data = pattern_bytes(65536, 12);
      ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 0, 0), 0);
      std::vector<std::byte> r(data.size());
      ASSERT_EQ(nbd_pread(h.get(), r.data(), r.size(), 0, 0), 0);
      EXPECT_EQ(r, data);
    } else {
      EXPECT_EQ(rc, -1);
    }
  }
  EXPECT_GE(export_->stats().tls_failures, 1U);
}

}  // namespace
}  // namespace ublkvol::nbd
