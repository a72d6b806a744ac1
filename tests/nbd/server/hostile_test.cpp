// A hostile client on a raw socket: garbage, oversized and out-of-range
// requests get the spec's errors or a closed connection; the export stays up
// and a well-behaved client on another connection is not disturbed.
#include <libnbd.h>

#include <array>
#include <cstring>
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
using testing::connect_unix;
using testing::pattern_bytes;
using testing::recv_all;
using testing::send_all;
using testing::TempDir;

constexpr uint64_t kSize = 16ULL << 20U;

class NbdHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    volume_ = testing::make_test_volume(kSize);
    ASSERT_NE(volume_, nullptr);
    socket_ = dir_.path() + "/nbd.sock";
    ExportOptions o;
    o.name = "vol";
    o.listen = "unix:" + socket_;
    o.max_connections = 4;
    auto e = NbdExport::start(*volume_, o);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    export_ = std::move(*e);
    good_.reset(nbd_create());
    const std::string uri = "nbd+unix:///vol?socket=" + socket_;
    ASSERT_EQ(nbd_connect_uri(good_.get(), uri.c_str()), 0) << nbd_get_error();
  }

  // The good client still reads what it wrote.
  void expect_good_client_works(uint32_t seed) {
    const auto d = pattern_bytes(65536, seed);
    ASSERT_EQ(nbd_pwrite(good_.get(), d.data(), d.size(), 1ULL << 20U, 0), 0) << nbd_get_error();
    std::vector<std::byte> r(d.size());
    ASSERT_EQ(nbd_pread(good_.get(), r.data(), r.size(), 1ULL << 20U, 0), 0) << nbd_get_error();
    EXPECT_EQ(r, d);
  }

  // Greeting read, fixed newstyle + no zeroes sent.
  UniqueFd handshake_start() {
    UniqueFd fd = connect_unix(socket_);
    EXPECT_TRUE(fd.valid());
    std::array<std::byte, 18> g{};
    EXPECT_TRUE(recv_all(fd.get(), g.data(), g.size()));
    EXPECT_EQ(proto::get64(g.data()), proto::kNbdMagic);
    std::array<std::byte, 4> f{};
    proto::put32(f.data(), proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes);
    EXPECT_TRUE(send_all(fd.get(), f.data(), f.size()));
    return fd;
  }

  static bool send_option(int fd, uint32_t option, const std::vector<std::byte>& data,
                          uint32_t declared_len) {
    std::array<std::byte, 16> h{};
    proto::put64(h.data(), proto::kIHaveOpt);
    proto::put32(h.data() + 8, option);
    proto::put32(h.data() + 12, declared_len);
    return send_all(fd, h.data(), h.size()) && send_all(fd, data.data(), data.size());
  }

  // Reads one option reply; returns its type (0 on failure) and data.
  static uint32_t read_option_reply(int fd, std::vector<std::byte>* data = nullptr) {
    std::array<std::byte, 20> h{};
    if (!recv_all(fd, h.data(), h.size()) || proto::get64(h.data()) != proto::kOptReplyMagic) {
      return 0;
    }
    std::vector<std::byte> d(proto::get32(h.data() + 16));
    if (!recv_all(fd, d.data(), d.size())) {
      return 0;
    }
    if (data != nullptr) {
      *data = std::move(d);
    }
    return proto::get32(h.data() + 12);
  }

  // A connection in transmission (NBD_OPT_EXPORT_NAME "vol", simple replies).
  UniqueFd transmission() {
    UniqueFd fd = handshake_start();
    const std::string name = "vol";
    std::vector<std::byte> d(name.size());
    std::memcpy(d.data(), name.data(), name.size());
    EXPECT_TRUE(send_option(fd.get(), proto::kOptExportName, d, static_cast<uint32_t>(d.size())));
    std::array<std::byte, 10> r{};
    EXPECT_TRUE(recv_all(fd.get(), r.data(), r.size()));
    EXPECT_EQ(proto::get64(r.data()), kSize);
    return fd;
  }

  static bool send_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                           uint32_t length, uint32_t magic = proto::kRequestMagic) {
    std::array<std::byte, 28> q{};
    proto::put32(q.data(), magic);
    proto::put16(q.data() + 4, flags);
    proto::put16(q.data() + 6, type);
    proto::put64(q.data() + 8, cookie);
    proto::put64(q.data() + 16, offset);
    proto::put32(q.data() + 24, length);
    return send_all(fd, q.data(), q.size());
  }

  // A simple reply's error for `cookie` (-1 on failure).
  static int64_t simple_reply_error(int fd, uint64_t cookie) {
    std::array<std::byte, 16> r{};
    if (!recv_all(fd, r.data(), r.size()) || proto::get32(r.data()) != proto::kSimpleReplyMagic ||
        proto::get64(r.data() + 8) != cookie) {
      return -1;
    }
    return proto::get32(r.data() + 4);
  }

  TempDir dir_;
  std::string socket_;
  std::unique_ptr<engine::Volume> volume_;
  std::unique_ptr<NbdExport> export_;
  testing::NbdHandle good_;
};

TEST_F(NbdHostileTest, GarbageInsteadOfAHandshakeClosesThatConnectionOnly) {
  UniqueFd fd = connect_unix(socket_);
  std::array<std::byte, 18> g{};
  ASSERT_TRUE(recv_all(fd.get(), g.data(), g.size()));
  const auto junk = pattern_bytes(4096, 5);
  send_all(fd.get(), junk.data(), junk.size());
  EXPECT_TRUE(closed_by_peer(fd.get()));
  expect_good_client_works(1);
  EXPECT_GE(export_->stats().protocol_errors, 1U);
}

TEST_F(NbdHostileTest, BadOptionsGetErrorRepliesAndHugeOptionsClose) {
  UniqueFd fd = handshake_start();
  // Unknown option: NBD_REP_ERR_UNSUP, negotiation goes on.
  ASSERT_TRUE(send_option(fd.get(), 999, {}, 0));
  EXPECT_EQ(read_option_reply(fd.get()), proto::kRepErrUnsup);
  // GO whose name length runs past the data: NBD_REP_ERR_INVALID.
  std::vector<std::byte> bad(6);
  proto::put32(bad.data(), 1000);
  ASSERT_TRUE(send_option(fd.get(), proto::kOptGo, bad, 6));
  EXPECT_EQ(read_option_reply(fd.get()), proto::kRepErrInvalid);
  // GO of an unknown export: NBD_REP_ERR_UNKNOWN.
  std::vector<std::byte> other(4 + 5 + 2);
  proto::put32(other.data(), 5);
  std::memcpy(other.data() + 4, "other", 5);
  ASSERT_TRUE(send_option(fd.get(), proto::kOptGo, other, static_cast<uint32_t>(other.size())));
  EXPECT_EQ(read_option_reply(fd.get()), proto::kRepErrUnknown);
  // SET_META_CONTEXT before STRUCTURED_REPLY: invalid.
  ASSERT_TRUE(send_option(fd.get(), proto::kOptSetMetaContext, std::vector<std::byte>(8), 8));
  EXPECT_EQ(read_option_reply(fd.get()), proto::kRepErrInvalid);
  // LIST names the export.
  std::vector<std::byte> listed;
  ASSERT_TRUE(send_option(fd.get(), proto::kOptList, {}, 0));
  EXPECT_EQ(read_option_reply(fd.get(), &listed), proto::kRepServer);
  ASSERT_EQ(listed.size(), 7U);
  EXPECT_EQ(std::memcmp(listed.data() + 4, "vol", 3), 0);
  EXPECT_EQ(read_option_reply(fd.get()), proto::kRepAck);
  // A 1 GiB option: closed.
  ASSERT_TRUE(send_option(fd.get(), proto::kOptGo, {}, 1U << 30U));
  EXPECT_TRUE(closed_by_peer(fd.get()));
  expect_good_client_works(2);
}

TEST_F(NbdHostileTest, BadRequestsGetTheSpecsErrors) {
  UniqueFd fd = transmission();
  const int s = fd.get();
  // Read past the end, unaligned, zero-length, too large, unknown command,
  // unknown flag, write-zeroes past the end, BLOCK_STATUS without a context.
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 1, kSize, 4096));
  EXPECT_EQ(simple_reply_error(s, 1), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 2, ~0ULL - 100, 4096));
  EXPECT_EQ(simple_reply_error(s, 2), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 3, 512, 4096));
  EXPECT_EQ(simple_reply_error(s, 3), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 4, 0, 0));
  EXPECT_EQ(simple_reply_error(s, 4), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 5, 0, 8U << 20U));
  EXPECT_EQ(simple_reply_error(s, 5), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, 77, 6, 0, 4096));
  EXPECT_EQ(simple_reply_error(s, 6), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0x8000, proto::kCmdFlush, 7, 0, 0));
  EXPECT_EQ(simple_reply_error(s, 7), proto::kEinval);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdWriteZeroes, 8, kSize - 4096, 8192));
  EXPECT_EQ(simple_reply_error(s, 8), proto::kEnospc);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdBlockStatus, 9, 0, 4096));
  EXPECT_EQ(simple_reply_error(s, 9), proto::kEinval);
  // A refused WRITE (past the end): its payload is skipped, the stream stays
  // in step and the next request is served.
  ASSERT_TRUE(send_request(s, 0, proto::kCmdWrite, 10, kSize, 65536));
  const auto payload = pattern_bytes(65536, 6);
  ASSERT_TRUE(send_all(s, payload.data(), payload.size()));
  EXPECT_EQ(simple_reply_error(s, 10), proto::kEnospc);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdFlush, 11, 0, 0));
  EXPECT_EQ(simple_reply_error(s, 11), 0);
  ASSERT_TRUE(send_request(s, 0, proto::kCmdRead, 12, 0, 4096));
  EXPECT_EQ(simple_reply_error(s, 12), 0);
  std::vector<std::byte> data(4096);
  ASSERT_TRUE(recv_all(s, data.data(), data.size()));
  expect_good_client_works(3);
  // A 4 GiB WRITE cannot be skipped: closed. Then a bad magic on another.
  ASSERT_TRUE(send_request(s, 0, proto::kCmdWrite, 13, 0, 0xFFFFF000U));
  EXPECT_TRUE(closed_by_peer(s));
  UniqueFd fd2 = transmission();
  ASSERT_TRUE(send_request(fd2.get(), 0, proto::kCmdRead, 14, 0, 4096, 0xdeadbeef));
  EXPECT_TRUE(closed_by_peer(fd2.get()));
  expect_good_client_works(4);
}

TEST_F(NbdHostileTest, ConnectionsBeyondTheLimitAreClosed) {
  // The good client is one; three more fill the limit of 4.
  std::vector<UniqueFd> held;
  held.reserve(3);
  for (int i = 0; i < 3; ++i) {
    held.push_back(transmission());
  }
  UniqueFd extra = connect_unix(socket_);
  ASSERT_TRUE(extra.valid());
  EXPECT_TRUE(closed_by_peer(extra.get()));
  EXPECT_EQ(export_->stats().refused, 1U);
  expect_good_client_works(5);
  // A freed place is usable again.
  held.pop_back();
  UniqueFd again;
  for (int attempt = 0; attempt < 100 && !again.valid(); ++attempt) {
    // The server notices the close when it next runs its loop; the first
    // attempts may still be refused.
    UniqueFd fd = connect_unix(socket_);
    std::array<std::byte, 18> g{};
    if (recv_all(fd.get(), g.data(), g.size())) {
      again = std::move(fd);
    }
  }
  EXPECT_TRUE(again.valid());
}

TEST_F(NbdHostileTest, DisconnectMidRequestLeavesTheExportServing) {
  {
    UniqueFd fd = transmission();
    ASSERT_TRUE(send_request(fd.get(), 0, proto::kCmdWrite, 1, 0, 65536));
    const auto half = pattern_bytes(1000, 8);
    ASSERT_TRUE(send_all(fd.get(), half.data(), half.size()));
  }  // closed with the payload half sent
  expect_good_client_works(6);
}

}  // namespace
}  // namespace ublkvol::nbd
