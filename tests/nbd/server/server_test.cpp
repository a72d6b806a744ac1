// NbdExport against real NBD clients: libnbd, nbdinfo --json and nbdcopy,
// on a memory volume kept in a file (so the volume's bytes can be compared).
#include "ublkvol/nbd/server.h"

#include <libnbd.h>

#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/engine/volume.h"

#include "nbd_test_util.h"

namespace ublkvol::nbd {
namespace {

using testing::pattern_bytes;
using testing::run_command;
using testing::TempDir;

constexpr uint64_t kSize = 64ULL << 20U;

using testing::NbdHandle;

class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    volume_ = testing::make_test_volume(kSize, dir_.path() + "/volume.bin");
    ASSERT_NE(volume_, nullptr);
    socket_ = dir_.path() + "/nbd.sock";
  }

  void start(ExportOptions o = {}) {
    o.name = "vol";
    if (o.listen.empty()) {
      o.listen = "unix:" + socket_;
    }
    auto e = NbdExport::start(*volume_, o);
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    export_ = std::move(*e);
  }

  [[nodiscard]] std::string uri() const { return "nbd+unix:///vol?socket=" + socket_; }

  NbdHandle connect(bool meta = false) {
    NbdHandle h(nbd_create());
    EXPECT_NE(h, nullptr);
    if (meta) {
      EXPECT_EQ(nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION), 0);
    }
    EXPECT_EQ(nbd_connect_uri(h.get(), uri().c_str()), 0) << nbd_get_error();
    return h;
  }

  [[nodiscard]] std::vector<std::byte> volume_bytes(uint64_t offset, size_t len) const {
    std::vector<std::byte> v(len);
    std::ifstream f(dir_.path() + "/volume.bin", std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(len));
    return v;
  }

  TempDir dir_;
  std::string socket_;
  std::unique_ptr<engine::Volume> volume_;
  std::unique_ptr<NbdExport> export_;
};

TEST_F(NbdServerTest, LibnbdWritesReadsFlushesTrimsAndZeroes) {
  start();
  NbdHandle h = connect();
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kSize));
  EXPECT_EQ(nbd_can_flush(h.get()), 1);
  EXPECT_EQ(nbd_can_fua(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 1);
  EXPECT_EQ(nbd_can_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_multi_conn(h.get()), 1);
  EXPECT_EQ(nbd_is_read_only(h.get()), 0);
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h.get()), 1);

  const auto a = pattern_bytes(1U << 20U, 1);
  const auto b = pattern_bytes(4096, 2);
  ASSERT_EQ(nbd_pwrite(h.get(), a.data(), a.size(), 8ULL << 20U, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_pwrite(h.get(), b.data(), b.size(), kSize - 4096, LIBNBD_CMD_FLAG_FUA), 0);
  ASSERT_EQ(nbd_flush(h.get(), 0), 0);
  std::vector<std::byte> r(a.size());
  ASSERT_EQ(nbd_pread(h.get(), r.data(), r.size(), 8ULL << 20U, 0), 0);
  EXPECT_EQ(r, a);
  EXPECT_EQ(volume_bytes(8ULL << 20U, a.size()), a);
  EXPECT_EQ(volume_bytes(kSize - 4096, 4096), b);

  // TRIM and WRITE_ZEROES of more than one volume I/O (chunked), NO_HOLE too.
  ASSERT_EQ(nbd_pwrite(h.get(), a.data(), a.size(), 16ULL << 20U, 0), 0);
  ASSERT_EQ(nbd_pwrite(h.get(), a.data(), a.size(), 17ULL << 20U, 0), 0);
  ASSERT_EQ(nbd_zero(h.get(), 3ULL << 19U, 16ULL << 20U, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_zero(h.get(), 1ULL << 19U, (16ULL << 20U) + (3ULL << 19U), LIBNBD_CMD_FLAG_NO_HOLE),
            0);
  const std::vector<std::byte> zeros(2U << 20U);
  EXPECT_EQ(volume_bytes(16ULL << 20U, zeros.size()), zeros);
  ASSERT_EQ(nbd_trim(h.get(), 2ULL << 20U, 8ULL << 20U, LIBNBD_CMD_FLAG_FUA), 0);
  // The memory volume's discard zeroes; reads of at most one buffer (1 MiB).
  std::vector<std::byte> t(1U << 20U);
  for (uint64_t off = 8ULL << 20U; off < 10ULL << 20U; off += t.size()) {
    ASSERT_EQ(nbd_pread(h.get(), t.data(), t.size(), off, 0), 0) << nbd_get_error();
    EXPECT_EQ(t, std::vector<std::byte>(t.size()));
  }
  // A read larger than the advertised maximum is refused by libnbd itself.
  std::vector<std::byte> big(2U << 20U);
  EXPECT_EQ(nbd_pread(h.get(), big.data(), big.size(), 0, 0), -1);
  EXPECT_GE(export_->stats().requests, 8U);
}

TEST_F(NbdServerTest, ManyRequestsInFlightOnSeveralConnections) {
  start();
  std::vector<NbdHandle> hs;
  hs.reserve(3);
  for (int i = 0; i < 3; ++i) {
    hs.push_back(connect());
  }
  // 64 async 64 KiB writes per connection (more than its 32 buffers), then
  // read back through another connection.
  const auto data = pattern_bytes(size_t{64} * 64 * 1024 * 3, 7);
  for (size_t c = 0; c < hs.size(); ++c) {
    for (size_t i = 0; i < 64; ++i) {
      const size_t off = (c * 64 + i) * 65536;
      ASSERT_NE(nbd_aio_pwrite(hs[c].get(), data.data() + off, 65536, off, NBD_NULL_COMPLETION, 0),
                -1)
          << nbd_get_error();
    }
  }
  for (auto& h : hs) {
    while (nbd_aio_in_flight(h.get()) > 0) {
      ASSERT_NE(nbd_poll(h.get(), 10000), -1) << nbd_get_error();
    }
    ASSERT_EQ(nbd_flush(h.get(), 0), 0);
  }
  std::vector<std::byte> r(data.size());
  ASSERT_EQ(nbd_pread(hs[0].get(), r.data(), r.size() / 12, 0, 0), 0);
  EXPECT_EQ(std::memcmp(r.data(), data.data(), r.size() / 12), 0);
  EXPECT_EQ(volume_bytes(0, data.size()), data);
  EXPECT_EQ(export_->stats().connections, 3U);
}

int collect_extents(void* user, const char* /*context*/, uint64_t /*offset*/, uint32_t* entries,
                    size_t count, int* /*error*/) {
  auto* out = static_cast<std::vector<uint32_t>*>(user);
  out->insert(out->end(), entries, entries + count);
  return 0;
}

TEST_F(NbdServerTest, BlockStatusReportsTheVolumesMappedRanges) {
  ExportOptions o;
  o.allocation = [](uint64_t, uint64_t) -> Result<MappedRanges> {
    return MappedRanges{{1ULL << 20U, 2ULL << 20U}, {8ULL << 20U, 4096}};
  };
  start(o);
  NbdHandle h = connect(true);
  ASSERT_EQ(nbd_can_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  std::vector<uint32_t> ext;
  nbd_extent_callback cb{};
  cb.callback = collect_extents;
  cb.user_data = &ext;
  ASSERT_EQ(nbd_block_status(h.get(), 16ULL << 20U, 0, cb, 0), 0) << nbd_get_error();
  const uint32_t hole = LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO;
  const std::vector<uint32_t> want = {1U << 20U, hole, 2U << 20U,          0,   5U << 20U, hole,
                                      4096,      0,    (8U << 20U) - 4096, hole};
  EXPECT_EQ(ext, want);
  ext.clear();
  ASSERT_EQ(nbd_block_status(h.get(), 16ULL << 20U, 0, cb, LIBNBD_CMD_FLAG_REQ_ONE), 0);
  EXPECT_EQ(ext, (std::vector<uint32_t>{1U << 20U, hole}));
}

TEST_F(NbdServerTest, NbdinfoJsonDescribesTheExport) {
  start();
  const auto r = run_command("nbdinfo --json '" + uri() + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("\"export-size\": 67108864"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"can_multi_conn\": true"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"can_fua\": true"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("base:allocation"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"block_size_minimum\": 4096"), std::string::npos) << r.output;
}

TEST_F(NbdServerTest, NbdcopyRoundTripMatchesTheVolumesBytes) {
  start();
  const std::string in = dir_.path() + "/in.bin";
  const std::string out = dir_.path() + "/out.bin";
  {
    const auto data = pattern_bytes(kSize, 3);
    std::ofstream f(in, std::ios::binary);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  auto r = run_command("nbdcopy --connections=4 '" + in + "' '" + uri() + "'");
  ASSERT_EQ(r.status, 0);
  r = run_command("nbdcopy --connections=4 '" + uri() + "' '" + out + "'");
  ASSERT_EQ(r.status, 0);
  r = run_command("cmp '" + in + "' '" + out + "' && cmp '" + in + "' '" + dir_.path() +
                  "/volume.bin'");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(NbdServerTest, PlainTcpOnlyWhenAskedFor) {
  ExportOptions o;
  o.name = "vol";
  o.listen = "127.0.0.1:0";
  auto refused = NbdExport::start(*volume_, o);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("TLS is required"), std::string::npos);

  o.insecure_plain = true;
  start(o);
  NbdHandle h(nbd_create());
  const std::string u = "nbd://" + export_->address() + "/vol";
  ASSERT_EQ(nbd_connect_uri(h.get(), u.c_str()), 0) << nbd_get_error() << " " << u;
  const auto d = pattern_bytes(4096, 9);
  ASSERT_EQ(nbd_pwrite(h.get(), d.data(), d.size(), 4096, 0), 0);
  EXPECT_EQ(volume_bytes(4096, 4096), d);
}

TEST_F(NbdServerTest, StopRefusesNewClients) {
  start();
  NbdHandle h = connect();
  export_->stop();
  NbdHandle h2(nbd_create());
  EXPECT_EQ(nbd_connect_uri(h2.get(), uri().c_str()), -1);
  std::vector<std::byte> r(4096);
  EXPECT_EQ(nbd_pread(h.get(), r.data(), r.size(), 0, 0), -1);
}

}  // namespace
}  // namespace ublkvol::nbd
