// Remote replicas through the daemon (issue 16 item 1): two REAL
// ublk-volumed processes on loopback. Daemon B holds a DBS volume and
// exports it over NBD with TLS (PSK); daemon A creates a 2-replica volume -
// one local store, one remote replica on B's export - and is written
// through A's own NBD export (a Unix socket; the host-side I/O path that
// needs no /dev/ublk). B is SIGKILLed mid-writes: A stays online, B comes
// back on the same port, A's keeper reconnects and resyncs the dirty
// regions only, and the bytes on B equal what A acknowledged.
#include <libnbd.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <atomic>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <memory>
#include <netinet/in.h>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"

namespace ublkvol::daemon {
namespace {

using test_support::DaemonTest;
using test_support::kMiB;
using test_support::PeerDaemon;
using test_support::read_text;

constexpr uint64_t kVolumeBytes = 64 * kMiB;
// The raw replica layout on B's export: headers + dirty bitmap, then the
// data from 1 MiB on (raw_replica_store.h).
constexpr uint64_t kRemoteDataOffset = kMiB;
constexpr const char* kKey = "5f2a9c0e7b1d3a4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901";

struct NbdCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Nbd = std::unique_ptr<nbd_handle, NbdCloser>;

Nbd connect(const std::string& uri) {
  Nbd h(nbd_create());
  if (!h) {
    return nullptr;
  }
  nbd_set_uri_allow_local_file(h.get(), true);  // tls-psk-file
  if (nbd_connect_uri(h.get(), uri.c_str()) != 0) {
    ADD_FAILURE() << uri << ": " << nbd_get_error();
    return nullptr;
  }
  return h;
}

std::vector<char> read_range(nbd_handle* h, uint64_t offset, uint64_t length) {
  std::vector<char> out(length);
  for (uint64_t done = 0; done < length; done += kMiB) {
    const uint64_t n = std::min<uint64_t>(kMiB, length - done);
    if (nbd_pread(h, out.data() + done, n, offset + done, 0) != 0) {
      ADD_FAILURE() << "read at " << offset + done << ": " << nbd_get_error();
      return {};
    }
  }
  return out;
}

// A free loopback TCP port (B's export must come back on the same one).
uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

class RemoteReplicaDaemonTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    b_.SetUp();
    psk_ = dir_ + "/nbd.psk";
    std::ofstream(psk_) << "alice:" << kKey << "\n";
    port_ = free_port();
    ASSERT_NE(port_, 0);
    model_.assign(kVolumeBytes, 0);
  }
  void TearDown() override {
    b_.TearDown();
    DaemonTest::TearDown();
  }

  // B: a store and a DBS volume "vb", exported with TLS PSK on loopback.
  void start_peer() {
    b_.start();
    b_.ok("store.add",
          {{"name", "b"}, {"path", b_.dir_ + "/store-b"}, {"format", true}, {"size", 96 * kMiB}});
    b_.ok("volume.create", {{"name", "vb"}, {"size", 72 * kMiB}, {"stores", {"b"}}});
    b_.ok("volume.export",
          {{"name", "vb"}, {"listen", "127.0.0.1:" + std::to_string(port_)}, {"tls_psk", psk_}});
  }
  [[nodiscard]] std::string remote_uri() const {
    return "nbds://alice@127.0.0.1:" + std::to_string(port_) + "/vb";
  }
  [[nodiscard]] std::string a_uri() const { return "nbd+unix:///va?socket=" + dir_ + "/va.nbd"; }

  Json remote_of(const Json& volume) {
    for (const auto& r : volume["replicas"]) {
      if (r.contains("remote") && r["remote"].is_object()) {
        return r;
      }
    }
    return Json();
  }

  // Writes `count` pseudo-random 4..64 KiB pieces into [from, from + span)
  // through A's export, keeping the model; every write must succeed.
  void write_some(nbd_handle* h, std::mt19937& rng, uint64_t from, uint64_t span, int count) {
    for (int i = 0; i < count; ++i) {
      const uint64_t blocks = 1 + rng() % 16;
      const uint64_t offset = from + (rng() % ((span / 4096) - blocks)) * 4096;
      for (uint64_t j = 0; j < blocks * 4096; ++j) {
        model_[offset + j] = static_cast<char>(rng());
      }
      ASSERT_EQ(nbd_pwrite(h, model_.data() + offset, blocks * 4096, offset, 0), 0)
          << "write " << i << " at " << offset << ": " << nbd_get_error() << "\n"
          << log_text();
      ++writes_;
    }
  }

  // B's replica data (read through B's own export, a second connection)
  // equals the model.
  void expect_peer_holds_model() {
    Nbd b = connect(remote_uri() + "?tls-psk-file=" + psk_);
    ASSERT_TRUE(b);
    const auto data = read_range(b.get(), kRemoteDataOffset, kVolumeBytes);
    ASSERT_EQ(data.size(), model_.size());
    EXPECT_TRUE(data == model_) << "B's replica differs from what A acknowledged";
  }

  void expect_volume_holds_model(nbd_handle* a) {
    const auto data = read_range(a, 0, kVolumeBytes);
    ASSERT_EQ(data.size(), model_.size());
    EXPECT_TRUE(data == model_) << "A's volume differs from what it acknowledged";
  }

  // Volume "va": a replica on local store a and one on B's export
  // (min_replicas 1), exported at dir_/va.nbd. Returns volume.create's answer.
  Json create_exported_volume() {
    Json created = ok("volume.create", {{"name", "va"},
                                        {"size", kVolumeBytes},
                                        {"stores", {"a"}},
                                        {"remote", remote_uri()},
                                        {"tls_psk", psk_},
                                        {"min_replicas", 1}});
    ok("volume.export", {{"name", "va"}, {"listen", "unix:" + dir_ + "/va.nbd"}});
    return created;
  }

  PeerDaemon b_;
  std::string psk_;
  uint16_t port_ = 0;
  std::vector<char> model_;
  int writes_ = 0;
};

TEST_F(RemoteReplicaDaemonTest, TwoDaemonsRefusalsResyncAfterPeerKillAndRestart) {
  start_peer();
  start();
  add_stores({"a"});
  const Json create = {{"name", "va"}, {"size", kVolumeBytes}, {"stores", {"a"}}};
  auto with = [&](Json extra) {
    Json p = create;
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      p[it.key()] = it.value();
    }
    return p;
  };
  // Refusals, each naming the problem; none leaves anything behind.
  refused("volume.create", with({{"remote", "http://127.0.0.1/vb"}}), "invalid_argument",
          "is not an NBD URI");
  refused("volume.create", with({{"remote", "nbd://127.0.0.1:" + std::to_string(port_) + "/vb"}}),
          "invalid_argument", "plain nbd:// over TCP");
  refused("volume.create", with({{"remote", "nbd+unix:///vb?socket=/x"}, {"tls_psk", psk_}}),
          "invalid_argument", "a PSK file is for TLS");
  {
    const Response r =
        call("volume.create",
             with({{"remote", "nbds://alice@127.0.0.1:" + std::to_string(free_port()) + "/vb"},
                   {"tls_psk", psk_}}));
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.message.find("cannot be reached"), std::string::npos) << r.message;
    EXPECT_NE(r.message.find("is the export running"), std::string::npos) << r.message;
  }
  {
    const std::string wrong = dir_ + "/wrong.psk";
    std::ofstream(wrong) << "alice:" << std::string(64, 'a') << "\n";
    const Response r = call("volume.create", with({{"remote", remote_uri()}, {"tls_psk", wrong}}));
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.message.find("cannot be reached"), std::string::npos) << r.message;
  }
  {
    // 128 MiB does not fit B's 72 MiB export.
    Json big = with({{"remote", remote_uri()}, {"tls_psk", psk_}});
    big["size"] = 128 * kMiB;
    refused("volume.create", big, "invalid_argument", "is too small");
  }
  EXPECT_TRUE(ok("volume.list")["volumes"].empty());
  EXPECT_TRUE(ok("store.show", {{"name", "a"}})["orphans"].empty());

  // The volume: local store a + B's export, min_replicas 1.
  const Json created =
      ok("volume.create", with({{"remote", remote_uri()}, {"tls_psk", psk_}, {"min_replicas", 1}}));
  ASSERT_EQ(created["replicas"].size(), 2U) << created.dump();
  Json remote = remote_of(created);
  ASSERT_TRUE(remote.is_object()) << created.dump();
  EXPECT_EQ(remote["remote"]["uri"], remote_uri());
  EXPECT_EQ(remote["remote"]["tls"], "psk");
  EXPECT_EQ(remote["remote"]["state"], "in_sync");
  EXPECT_EQ(remote["state"], "in_sync");
  const unsigned remote_index = remote["index"].get<unsigned>();
  // The state file keeps the PSK file's path, never the key.
  const std::string state = read_text(dir_ + "/state/state.json");
  EXPECT_NE(state.find(psk_), std::string::npos) << state;
  EXPECT_EQ(state.find(kKey), std::string::npos) << state;
  EXPECT_NE(state.find(R"("version": 2)"), std::string::npos) << state;

  ok("volume.export", {{"name", "va"}, {"listen", "unix:" + dir_ + "/va.nbd"}});
  Nbd a = connect(a_uri());
  ASSERT_TRUE(a);
  std::mt19937 rng(16);
  write_some(a.get(), rng, 0, 16 * kMiB, 200);
  ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();
  expect_peer_holds_model();
  expect_volume_holds_model(a.get());

  // Mid-writes (only 24..40 MiB from now on), B is SIGKILLed.
  const Json before = ok("volume.show", {{"name", "va"}});
  const uint64_t rebuilds_before = before["rebuild"]["completed"].get<uint64_t>();
  write_some(a.get(), rng, 24 * kMiB, 16 * kMiB, 50);
  EXPECT_EQ(b_.stop(SIGKILL), 128 + SIGKILL);
  write_some(a.get(), rng, 24 * kMiB, 16 * kMiB, 150);
  ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();
  // A is online on its local replica; the remote one is out, never in sync.
  Json down = wait_for("volume.show", {{"name", "va"}},
                       [&](const Json& v) { return remote_of(v)["state"] != "in_sync"; });
  EXPECT_EQ(down["online"], true) << down.dump();
  EXPECT_EQ(down["in_sync"], 1) << down.dump();
  const Json out = remote_of(down)["remote"];
  EXPECT_TRUE(out["state"] == "out" || out["state"] == "connecting") << down.dump();

  // B comes back on the same port; A reconnects and resyncs. Until the
  // resync completed the remote replica is never shown in sync.
  b_.start();
  bool shown_stale_in_sync = false;
  const Json back = wait_for(
      "volume.show", {{"name", "va"}},
      [&](const Json& v) {
        const bool in_sync = remote_of(v)["state"] == "in_sync";
        const bool resynced = v["rebuild"]["completed"].get<uint64_t>() > rebuilds_before;
        shown_stale_in_sync = shown_stale_in_sync || (in_sync && !resynced);
        return in_sync && resynced && !v["rebuild"]["active"].get<bool>();
      },
      60);
  EXPECT_FALSE(shown_stale_in_sync);
  ASSERT_EQ(remote_of(back)["state"], "in_sync") << back.dump() << "\n" << log_text();
  EXPECT_EQ(back["in_sync"], 2);
  // Dirty regions only: no whole-range part (full_from at the end), and
  // less than the volume was copied (the regions around 24..40 MiB).
  EXPECT_EQ(back["rebuild"]["full_from"].get<uint64_t>(), kVolumeBytes) << back.dump();
  EXPECT_GT(back["rebuild"]["total_bytes"].get<uint64_t>(), 0U) << back.dump();
  EXPECT_LT(back["rebuild"]["total_bytes"].get<uint64_t>(), kVolumeBytes) << back.dump();
  EXPECT_NE(back.dump().find("started (dirty regions only)"), std::string::npos) << back.dump();
  EXPECT_GE(remote_of(back)["remote"]["reconnects"].get<uint64_t>(), 1U) << back.dump();
  EXPECT_GT(remote_of(back)["remote"]["connections"].get<unsigned>(), 0U) << back.dump();
  expect_peer_holds_model();
  expect_volume_holds_model(a.get());

  // A restarts: the remote replica is reopened from state.json, in sync.
  a.reset();
  EXPECT_EQ(stop(), 0);
  start();
  const Json reopened = ok("volume.show", {{"name", "va"}});
  EXPECT_EQ(reopened["in_sync"], 2) << reopened.dump() << log_text();
  EXPECT_EQ(remote_of(reopened)["remote"]["uri"], remote_uri()) << reopened.dump();
  a = connect(a_uri());
  ASSERT_TRUE(a);
  expect_volume_holds_model(a.get());

  // A's local replica alone holds the same bytes: take the remote one out.
  ok("replica.fail", {{"volume", "va"}, {"index", remote_index}, {"force", true}});
  expect_volume_holds_model(a.get());

  // Remove it; add it again by URI (a full rebuild), then it is in sync.
  ok("replica.remove", {{"volume", "va"}, {"index", remote_index}});
  EXPECT_EQ(read_text(dir_ + "/state/state.json").find("remote_replicas"), std::string::npos);
  refused("replica.add", {{"volume", "va"}, {"uri", remote_uri()}, {"store", "a"}},
          "invalid_argument", "either 'store'");
  const Json added =
      ok("replica.add", {{"volume", "va"}, {"uri", remote_uri()}, {"tls_psk", psk_}});
  refused("replica.add", {{"volume", "va"}, {"uri", remote_uri()}, {"tls_psk", psk_}},
          "already_exists", "already a replica of volume 'va'");
  const Json rebuilt = wait_for(
      "volume.show", {{"name", "va"}},
      [&](const Json& v) { return v["in_sync"] == 2 && !v["rebuild"]["active"].get<bool>(); }, 60);
  EXPECT_EQ(rebuilt["in_sync"], 2) << rebuilt.dump();
  EXPECT_EQ(remote_of(rebuilt)["index"], added["index"]);
  ASSERT_EQ(nbd_flush(a.get(), 0), 0);
  expect_peer_holds_model();

  // Replace it by another export ("host C": a second volume of B).
  const uint16_t port_c = free_port();
  b_.ok("volume.create", {{"name", "vc"}, {"size", 72 * kMiB}, {"stores", {"b"}}});
  b_.ok("volume.export",
        {{"name", "vc"}, {"listen", "127.0.0.1:" + std::to_string(port_c)}, {"tls_psk", psk_}});
  const std::string uri_c = "nbds://alice@127.0.0.1:" + std::to_string(port_c) + "/vc";
  refused("replica.replace", {{"volume", "va"}, {"index", 3}, {"uri", uri_c}, {"tls_psk", psk_}},
          "not_found", "has no replica 3");
  const Json replaced =
      ok("replica.replace",
         {{"volume", "va"}, {"index", added["index"]}, {"uri", uri_c}, {"tls_psk", psk_}});
  const Json on_c = wait_for(
      "volume.show", {{"name", "va"}},
      [&](const Json& v) { return v["in_sync"] == 2 && !v["rebuild"]["active"].get<bool>(); }, 60);
  EXPECT_EQ(remote_of(on_c)["remote"]["uri"], uri_c) << on_c.dump();
  EXPECT_EQ(remote_of(on_c)["index"], replaced["index"]);
  Nbd c = connect(uri_c + "?tls-psk-file=" + psk_);
  ASSERT_TRUE(c);
  EXPECT_TRUE(read_range(c.get(), kRemoteDataOffset, kVolumeBytes) == model_)
      << "the replacing replica differs from what A acknowledged";
}

// An operator's `replica fail` of a remote replica stands (issue 16 gap 2):
// before, its keeper reconnected it within ~100 ms. It comes back with
// `replica rebuild`, as a failed local replica does: a dirty-region resync.
TEST_F(RemoteReplicaDaemonTest, OperatorFailOfARemoteReplicaStandsUntilRebuild) {
  start_peer();
  start();
  add_stores({"a"});
  const Json created = create_exported_volume();
  const unsigned index = remote_of(created)["index"].get<unsigned>();
  Nbd a = connect(a_uri());
  ASSERT_TRUE(a);
  std::mt19937 rng(2);
  write_some(a.get(), rng, 0, 8 * kMiB, 40);
  ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();

  ok("replica.fail", {{"volume", "va"}, {"index", index}, {"reason", "maintenance on B"}});
  // The keeper checks every 100 ms: over 1.5 s (15 of its checks, writes
  // going on) the replica must stay failed, never reconnected.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < until) {
    write_some(a.get(), rng, 16 * kMiB, 8 * kMiB, 5);
    const Json v = ok("volume.show", {{"name", "va"}});
    const Json r = remote_of(v);
    ASSERT_EQ(r["state"], "failed") << v.dump();
    ASSERT_EQ(r["remote"]["state"], "failed") << v.dump();
    ASSERT_EQ(r["remote"]["operator_failed"], true) << v.dump();
    ASSERT_EQ(r["remote"]["reconnects"], 0) << v.dump();
    ASSERT_EQ(v["in_sync"], 1) << v.dump();
  }
  ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();

  // replica rebuild brings it back: reconnected, dirty regions resynced.
  ok("replica.rebuild", {{"volume", "va"}, {"index", index}});
  const Json back = wait_for(
      "volume.show", {{"name", "va"}},
      [&](const Json& v) {
        return v["in_sync"] == 2 && remote_of(v)["state"] == "in_sync" &&
               !v["rebuild"]["active"].get<bool>();
      },
      30);
  ASSERT_EQ(back["in_sync"], 2) << back.dump() << "\n" << log_text();
  EXPECT_EQ(remote_of(back)["remote"]["operator_failed"], false) << back.dump();
  EXPECT_EQ(remote_of(back)["remote"]["reconnects"], 1) << back.dump();
  EXPECT_EQ(back["rebuild"]["full_from"].get<uint64_t>(), kVolumeBytes) << back.dump();
  expect_peer_holds_model();
  expect_volume_holds_model(a.get());
}

// A volume held back because its remote replica (in sync at the newest
// generation) cannot be reached opens by itself once the peer answers
// again (issue 16 gap 3): before, only `volume open` or a restart did.
TEST_F(RemoteReplicaDaemonTest, HeldBackVolumeOpensWhenItsRemotePeerReturns) {
  start_peer();
  start();
  add_stores({"a"});
  create_exported_volume();
  {
    Nbd a = connect(a_uri());
    ASSERT_TRUE(a);
    std::mt19937 rng(3);
    write_some(a.get(), rng, 0, 8 * kMiB, 40);
    ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();
  }
  // Both replicas in sync; A stops, then B. A starts without B: held back.
  EXPECT_EQ(stop(), 0);
  EXPECT_EQ(b_.stop(), 0);
  start();
  const Json held = ok("volume.show", {{"name", "va"}});
  EXPECT_EQ(held["online"], false) << held.dump();
  EXPECT_NE(held["error"].get<std::string>().find("unavailable now: the remote replica"),
            std::string::npos)
      << held.dump();

  // B comes back: A's pending connection succeeds (backoff from 1 s) and the
  // volume opens, both replicas in sync, the export served again.
  b_.start();
  const Json opened = wait_for(
      "volume.show", {{"name", "va"}},
      [](const Json& v) { return v["online"] == true && v["in_sync"] == 2; }, 15);
  ASSERT_EQ(opened["online"], true) << opened.dump() << "\n" << log_text();
  EXPECT_EQ(opened["in_sync"], 2) << opened.dump();
  EXPECT_NE(log_text().find("opened by itself"), std::string::npos);
  Nbd a = connect(a_uri());
  ASSERT_TRUE(a);
  expect_volume_holds_model(a.get());
  expect_peer_holds_model();
}

}  // namespace
}  // namespace ublkvol::daemon
