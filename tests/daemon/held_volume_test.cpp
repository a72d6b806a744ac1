// A volume whose newest replica is missing at start is held back, never
// opened on the stale ones (DESIGN.md guarantee 4, docs/engine.md "In-sync
// sets"): a real ublk-volumed process, stores in real files, data written
// and read through the daemon's own NBD export on a Unix socket.
//   replica 0 (store a) is failed, a write is acknowledged by replica 1
//   (store b) alone, the daemon stops, store b's file is renamed away, the
//   daemon starts: the volume is listed with the error naming store b and
//   the ways out, and serves nothing. Then either store b comes back (the
//   volume opens with the newest data) or the operator accepts the loss
//   (volume.open --accept-data-loss).
#include <libnbd.h>

#include <cstdio>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "daemon_fixture.h"

namespace ublkvol::daemon {
namespace {

using test_support::DaemonTest;
using test_support::kMiB;

constexpr uint64_t kVolumeBytes = 16 * kMiB;

struct NbdCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Nbd = std::unique_ptr<nbd_handle, NbdCloser>;

class HeldVolumeTest : public DaemonTest {
 protected:
  [[nodiscard]] std::string uri() const { return "nbd+unix:///v?socket=" + dir_ + "/v.nbd"; }

  // A connection to the volume's export; nullptr (with the reason in
  // `why`) if nothing serves it.
  Nbd connect(std::string* why = nullptr) {
    Nbd h(nbd_create());
    if (h && nbd_connect_uri(h.get(), uri().c_str()) == 0) {
      return h;
    }
    if (why != nullptr) {
      *why = nbd_get_error() != nullptr ? nbd_get_error() : "nbd_create failed";
    }
    return nullptr;
  }

  void write_block0(char fill) {
    Nbd h = connect();
    ASSERT_TRUE(h) << log_text();
    const std::vector<char> data(4096, fill);
    ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 0, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_flush(h.get(), 0), 0) << nbd_get_error();
  }

  // Block 0's first byte as the volume serves it.
  char read_block0() {
    Nbd h = connect();
    EXPECT_TRUE(h) << log_text();
    if (!h) {
      return 0;
    }
    std::vector<char> data(4096);
    EXPECT_EQ(nbd_pread(h.get(), data.data(), data.size(), 0, 0), 0) << nbd_get_error();
    EXPECT_EQ(std::vector<char>(4096, data[0]), data) << "block 0 is not uniform";
    return data[0];
  }

  // Volume v on stores a and b, exported; 'O' written while both are in
  // sync, replica 0 (a) failed, then 'N' acknowledged by b alone; the
  // daemon stops and store b's file goes away.
  void newest_write_only_on_b_then_b_missing() {
    start();
    add_stores({"a", "b"});
    ok("volume.create", {{"name", "v"}, {"size", kVolumeBytes}, {"stores", {"a", "b"}}});
    ok("volume.export", {{"name", "v"}, {"listen", "unix:" + dir_ + "/v.nbd"}});
    write_block0('O');
    ok("replica.fail", {{"volume", "v"}, {"index", 0}, {"reason", "test"}});
    write_block0('N');
    ASSERT_EQ(stop(), 0);
    ASSERT_EQ(std::rename((dir_ + "/store-b").c_str(), (dir_ + "/store-b.away").c_str()), 0);
    start();
  }

  // The volume is listed, closed, with the error that names store b and the
  // ways out; nothing serves it.
  void expect_held_back() {
    const Json v = ok("volume.show", {{"name", "v"}});
    EXPECT_EQ(v["online"], false) << v.dump();
    ASSERT_TRUE(v["error"].is_string()) << v.dump();
    const std::string error = v["error"];
    for (const char* part : {"1 of the 2 replicas in sync", "missing", "the replica on store 'b'",
                             "ublk-volume volume open v", "--accept-data-loss"}) {
      EXPECT_NE(error.find(part), std::string::npos) << "'" << part << "' not in: " << error;
    }
    const Json list = ok("volume.list");
    ASSERT_EQ(list["volumes"].size(), 1U) << list.dump();
    EXPECT_EQ(list["volumes"][0]["error"], v["error"]) << list.dump();
    std::string why;
    EXPECT_FALSE(connect(&why)) << "the held-back volume is served";
  }
};

TEST_F(HeldVolumeTest, HeldBackWhileTheNewestReplicaIsMissingOpensWhenItIsBack) {
  newest_write_only_on_b_then_b_missing();
  expect_held_back();
  // Store b is still gone: volume.open refuses the same way.
  refused("volume.open", {{"name", "v"}}, "unavailable", "the replica on store 'b'");

  ASSERT_EQ(stop(), 0);
  ASSERT_EQ(std::rename((dir_ + "/store-b.away").c_str(), (dir_ + "/store-b").c_str()), 0);
  start();
  const Json v =
      wait_for("volume.show", {{"name", "v"}}, [](const Json& j) { return j["in_sync"] == 2; });
  EXPECT_TRUE(v["error"].is_null()) << v.dump();
  EXPECT_EQ(v["online"], true) << v.dump();
  EXPECT_EQ(v["in_sync"], 2) << v.dump();
  EXPECT_EQ(read_block0(), 'N') << "the acknowledged write was rolled back";
  EXPECT_EQ(stop(), 0);
}

TEST_F(HeldVolumeTest, AcceptDataLossOpensWithoutTheMissingReplica) {
  newest_write_only_on_b_then_b_missing();
  expect_held_back();
  const Json v = ok("volume.open", {{"name", "v"}, {"accept_data_loss", true}});
  EXPECT_EQ(v["online"], true) << v.dump();
  EXPECT_TRUE(v["error"].is_null()) << v.dump();
  EXPECT_TRUE(v["missing_stores"].empty()) << v.dump();
  EXPECT_EQ(read_block0(), 'O');  // the loss the operator accepted
  // Store b's replica left the volume: back at the next start it is an
  // orphan, and the volume opens on store a alone.
  ASSERT_EQ(stop(), 0);
  ASSERT_EQ(std::rename((dir_ + "/store-b.away").c_str(), (dir_ + "/store-b").c_str()), 0);
  start();
  const Json after = ok("volume.show", {{"name", "v"}});
  EXPECT_EQ(after["online"], true) << after.dump();
  EXPECT_EQ(after["replicas"].size(), 1U) << after.dump();
  EXPECT_EQ(read_block0(), 'O');
  EXPECT_EQ(stop(), 0);
}

}  // namespace
}  // namespace ublkvol::daemon
