// Snapshots of a volume with a remote replica (issue 16 item 4): two REAL
// ublk-volumed processes on loopback with real TLS. Daemon B exports a DBS
// volume with a PSK; its peer control channel (port + 1, same key) takes
// snapshot.create / delete / list on that volume and refuses everything
// else, wrong keys and plain text. Daemon A's volume has a local replica
// and one on B's export: a snapshot lands on both at the same point (the
// same bytes, read back through clones on each side), a delete reaches
// both, revert / clone are refused, and with B killed the snapshot fails,
// naming the remote replica, and is rolled back on the local replica.
#include <libnbd.h>
#include <sys/socket.h>

#include <algorithm>
#include <arpa/inet.h>
#include <fstream>
#include <gtest/gtest.h>
#include <memory>
#include <netinet/in.h>
#include <random>
#include <string>
#include <vector>

#include "ublkvol/nbd/peer_control.h"

#include "daemon_fixture.h"

namespace ublkvol::daemon {
namespace {

using test_support::DaemonTest;
using test_support::kMiB;
using test_support::PeerDaemon;

constexpr uint64_t kVolumeBytes = 16 * kMiB;
// The raw replica layout on B's export: data from 1 MiB on.
constexpr uint64_t kRemoteDataOffset = kMiB;
constexpr const char* kKey = "0a1b2c3d4e5f60718293a4b5c6d7e8f95f2a9c0e7b1d3a4c6e8f0a1b2c3d4e5f";

struct NbdCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Nbd = std::unique_ptr<nbd_handle, NbdCloser>;

Nbd connect(const std::string& uri) {
  Nbd h(nbd_create());
  nbd_set_uri_allow_local_file(h.get(), true);
  if (nbd_connect_uri(h.get(), uri.c_str()) != 0) {
    ADD_FAILURE() << uri << ": " << nbd_get_error();
    return nullptr;
  }
  return h;
}

std::vector<char> read_range(nbd_handle* h, uint64_t offset, uint64_t length) {
  std::vector<char> out(length);
  for (uint64_t done = 0; done < length; done += kMiB) {  // the export's request limit
    const uint64_t n = std::min<uint64_t>(kMiB, length - done);
    if (nbd_pread(h, out.data() + done, n, offset + done, 0) != 0) {
      ADD_FAILURE() << "read at " << offset + done << ": " << nbd_get_error();
      return {};
    }
  }
  return out;
}

// A bound (then closed) loopback socket: a free port, or 0.
uint16_t bind_port(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  socklen_t len = sizeof(a);
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  return bound ? ntohs(a.sin_port) : 0;
}

// A free port P with P + 1 free too (the export and its control channel).
uint16_t free_port_pair() {
  for (int i = 0; i < 100; ++i) {
    const uint16_t p = bind_port(0);
    if (p != 0 && p < 65535 && bind_port(static_cast<uint16_t>(p + 1)) != 0) {
      return p;
    }
  }
  return 0;
}

class RemoteSnapshotTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    b_.SetUp();
    psk_ = dir_ + "/nbd.psk";
    std::ofstream(psk_) << "alice:" << kKey << "\n";
    port_ = free_port_pair();
    ASSERT_NE(port_, 0);
  }
  void TearDown() override {
    b_.TearDown();
    DaemonTest::TearDown();
  }

  void start_peer() {
    b_.start();
    b_.ok("store.add",
          {{"name", "b"}, {"path", b_.dir_ + "/store-b"}, {"format", true}, {"size", 96 * kMiB}});
    b_.ok("volume.create", {{"name", "vb"}, {"size", 24 * kMiB}, {"stores", {"b"}}});
    b_.ok("volume.export",
          {{"name", "vb"}, {"listen", "127.0.0.1:" + std::to_string(port_)}, {"tls_psk", psk_}});
  }
  [[nodiscard]] std::string remote_uri() const {
    return "nbds://alice@127.0.0.1:" + std::to_string(port_) + "/vb";
  }
  // The channel as A's remote replica reaches it.
  [[nodiscard]] nbd::PeerControlTarget target(const std::string& psk) const {
    auto t = nbd::peer_control_target(remote_uri() + "?tls-psk-file=" + psk);
    EXPECT_TRUE(t.ok()) << t.error().message();
    return t.ok() ? *t : nbd::PeerControlTarget{};
  }
  Result<Response> peer_call(const std::string& psk, const std::string& method, Json params) {
    std::string line = to_line(make_request(7, method, std::move(params)));
    line.pop_back();
    UBLKVOL_ASSIGN_OR_RETURN(
        const std::string answer,
        nbd::peer_control_exchange(target(psk), line, std::chrono::milliseconds(5000)));
    return parse_response(answer);
  }
  std::vector<std::string> snapshots(DaemonTest& d, const std::string& volume) {
    Json list;
    if (&d == this) {
      list = ok("snapshot.list", {{"volume", volume}});
    } else {
      list = b_.ok("snapshot.list", {{"volume", volume}});
    }
    std::vector<std::string> names;
    for (const auto& s : list["snapshots"]) {
      names.push_back(s["name"]);
    }
    return names;
  }
  void write_random(nbd_handle* h, std::mt19937& rng, std::vector<char>& model) {
    for (int i = 0; i < 64; ++i) {
      const uint64_t blocks = 1 + rng() % 16;
      const uint64_t offset = (rng() % ((kVolumeBytes / 4096) - blocks)) * 4096;
      for (uint64_t j = 0; j < blocks * 4096; ++j) {
        model[offset + j] = static_cast<char>(rng());
      }
      ASSERT_EQ(nbd_pwrite(h, model.data() + offset, blocks * 4096, offset, 0), 0)
          << nbd_get_error();
    }
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
};

TEST(PeerControlTarget, FromTheReplicaUri) {
  auto t = nbd::peer_control_target("nbds://bob@[::1]:10900/vol%2Dx?tls-psk-file=/k/psk");
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_EQ(t->host, "::1");
  EXPECT_EQ(t->port, 10901);
  EXPECT_EQ(t->address(), "[::1]:10901");
  EXPECT_EQ(t->export_name, "vol-x");
  EXPECT_EQ(t->username, "bob");
  EXPECT_EQ(t->psk_file, "/k/psk");
  auto default_port = nbd::peer_control_target("nbds://h/v?tls-psk-file=/p&tls-username=carol");
  ASSERT_TRUE(default_port.ok()) << default_port.error().message();
  EXPECT_EQ(default_port->port, 10810);
  EXPECT_EQ(default_port->username, "carol");
  for (const char* uri : {"nbd://h:1/v", "nbds+unix:///v?socket=/s&tls-psk-file=/p", "nbds://h:1/v",
                          "nbds://h:65535/v?tls-psk-file=/p"}) {
    auto refused = nbd::peer_control_target(uri);
    ASSERT_FALSE(refused.ok()) << uri;
    EXPECT_EQ(refused.error().errno_value(), ENOTSUP) << uri;
    EXPECT_NE(refused.error().message().find(uri), std::string::npos) << refused.error().message();
  }
  EXPECT_EQ(*nbd::peer_control_listen_address("127.0.0.1:10809"), "127.0.0.1:10810");
  EXPECT_EQ(*nbd::peer_control_listen_address("[::1]:5"), "[::1]:6");
  EXPECT_FALSE(nbd::peer_control_listen_address("unix:/x").ok());
}

TEST_F(RemoteSnapshotTest, PeerControlChannelServesSnapshotsOfTheExportOnly) {
  start_peer();
  b_.ok("volume.create", {{"name", "other"}, {"size", 8 * kMiB}, {"stores", {"b"}}});
  const Json shown = b_.ok("volume.show", {{"name", "vb"}});
  const std::string control = "127.0.0.1:" + std::to_string(port_ + 1);
  ASSERT_EQ(shown["export"]["control"]["address"], control) << shown.dump();

  // The export's key: snapshot.create / list / delete on vb.
  auto made = peer_call(psk_, "snapshot.create", {{"volume", "vb"}, {"name", "p1"}});
  ASSERT_TRUE(made.ok()) << made.error().message();
  EXPECT_TRUE(made->ok) << made->message;
  EXPECT_EQ(made->id, 7);
  auto listed = peer_call(psk_, "snapshot.list", {{"volume", "vb"}});
  ASSERT_TRUE(listed.ok()) << listed.error().message();
  ASSERT_TRUE(listed->ok) << listed->message;
  EXPECT_EQ(listed->result["snapshots"].size(), 1U) << listed->result.dump();
  EXPECT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"p1"});

  // Anything else, or another volume: permission_denied, nothing done.
  for (const auto& [method, params] : std::vector<std::pair<std::string, Json>>{
           {"volume.delete", {{"name", "vb"}}},
           {"volume.list", Json::object()},
           {"snapshot.revert", {{"volume", "vb"}, {"name", "p1"}}},
           {"snapshot.create", {{"volume", "other"}, {"name", "x"}}},
           {"snapshot.delete", {{"volume", "other"}, {"name", "x"}}}}) {
    auto r = peer_call(psk_, method, params);
    ASSERT_TRUE(r.ok()) << method << ": " << r.error().message();
    EXPECT_FALSE(r->ok) << method;
    EXPECT_EQ(r->code, ErrorCode::kPermissionDenied) << method << ": " << r->message;
    EXPECT_NE(r->message.find("only snapshot.create, snapshot.delete and snapshot.list"),
              std::string::npos)
        << r->message;
  }
  EXPECT_TRUE(snapshots(b_, "other").empty());
  EXPECT_EQ(b_.ok("volume.list")["volumes"].size(), 2U);

  // A wrong key, an unknown user: the handshake fails, nothing is served.
  const std::string wrong = dir_ + "/wrong.psk";
  std::ofstream(wrong) << "alice:" << std::string(64, 'b') << "\n";
  auto bad = peer_call(wrong, "snapshot.create", {{"volume", "vb"}, {"name", "bad"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("TLS handshake failed"), std::string::npos)
      << bad.error().message();
  EXPECT_NE(bad.error().message().find(control), std::string::npos) << bad.error().message();
  const std::string bob = dir_ + "/bob.psk";
  std::ofstream(bob) << "bob:" << kKey << "\n";
  auto t = target(bob);
  t.username = "bob";
  auto unknown = nbd::peer_control_exchange(
      t, R"({"v":1,"id":1,"method":"snapshot.list","params":{"volume":"vb"}})",
      std::chrono::milliseconds(5000));
  EXPECT_FALSE(unknown.ok());

  // Plain text: the request is never read as one; the connection closes
  // without an answer.
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port_ + 1));
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    const std::string line =
        R"({"v":1,"id":1,"method":"snapshot.create","params":{"volume":"vb","name":"plain"}})"
        "\n";
    ASSERT_EQ(::send(fd, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string got;
    char buffer[4096];
    for (ssize_t n = 0; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) {
      got.append(buffer, static_cast<size_t>(n));
    }
    ::close(fd);
    EXPECT_EQ(got.find('{'), std::string::npos) << "a plain-text client got: " << got;
  }
  EXPECT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"p1"});
  const Json after = b_.ok("volume.show", {{"name", "vb"}});
  EXPECT_GE(after["export"]["control"]["tls_failures"].get<uint64_t>(), 3U) << after.dump();
  EXPECT_EQ(after["export"]["control"]["denied"].get<uint64_t>(), 5U) << after.dump();
}

TEST_F(RemoteSnapshotTest, SnapshotReachesTheRemoteReplicaOrNoReplica) {
  start_peer();
  start();
  add_stores({"a"});
  create_exported_volume();
  Nbd a = connect("nbd+unix:///va?socket=" + dir_ + "/va.nbd");
  ASSERT_TRUE(a);
  std::mt19937 rng(4);
  std::vector<char> model(kVolumeBytes, 0);
  write_random(a.get(), rng, model);
  const std::vector<char> at_s1 = model;

  // S1 on both replicas, at the same point; then more writes.
  ok("snapshot.create", {{"volume", "va"}, {"name", "s1"}});
  EXPECT_EQ(snapshots(*this, "va"), std::vector<std::string>{"s1"});
  EXPECT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"s1"});
  write_random(a.get(), rng, model);
  ok("snapshot.create", {{"volume", "va"}, {"name", "s2"}});
  EXPECT_EQ(snapshots(b_, "vb"), (std::vector<std::string>{"s1", "s2"}));
  ok("snapshot.delete", {{"volume", "va"}, {"name", "s2"}});
  EXPECT_EQ(snapshots(*this, "va"), std::vector<std::string>{"s1"});
  EXPECT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"s1"});

  // Revert and clone need every replica's store: refused up front.
  refused("snapshot.revert", {{"volume", "va"}, {"name", "s1"}}, "unavailable", "is remote");
  refused("snapshot.clone", {{"volume", "va"}, {"snapshot", "s1"}, {"clone", "c"}}, "unavailable",
          "is remote");

  // B's S1 holds what A had acknowledged at S1 (a clone on B, exported).
  b_.ok("snapshot.clone", {{"volume", "vb"}, {"snapshot", "s1"}, {"clone", "vbs1"}});
  b_.ok("volume.export", {{"name", "vbs1"}, {"listen", "unix:" + b_.dir_ + "/vbs1.nbd"}});
  {
    Nbd b = connect("nbd+unix:///vbs1?socket=" + b_.dir_ + "/vbs1.nbd");
    ASSERT_TRUE(b);
    EXPECT_TRUE(read_range(b.get(), kRemoteDataOffset, kVolumeBytes) == at_s1)
        << "the remote replica's snapshot differs from the volume at the snapshot";
  }

  // The peer refuses (it has an s3 of its own): undone on the local
  // replica, the peer's own s3 untouched.
  b_.ok("snapshot.create", {{"volume", "vb"}, {"name", "s3"}});
  refused("snapshot.create", {{"volume", "va"}, {"name", "s3"}}, "already_exists",
          "the peer refused");
  EXPECT_EQ(snapshots(*this, "va"), std::vector<std::string>{"s1"});
  EXPECT_EQ(snapshots(b_, "vb"), (std::vector<std::string>{"s1", "s3"}));
  b_.ok("snapshot.delete", {{"volume", "vb"}, {"name", "s3"}});

  // B is killed: the next snapshot fails naming the remote replica, and is
  // rolled back on the local replica (taken first, index 0).
  EXPECT_EQ(b_.stop(SIGKILL), 128 + SIGKILL);
  const Response failed = call("snapshot.create", {{"volume", "va"}, {"name", "s3"}});
  EXPECT_FALSE(failed.ok);
  EXPECT_NE(failed.message.find("snapshot create s3"), std::string::npos) << failed.message;
  EXPECT_NE(failed.message.find("127.0.0.1:" + std::to_string(port_)), std::string::npos)
      << failed.message;
  EXPECT_NE(failed.message.find("undone on the others"), std::string::npos) << failed.message;
  EXPECT_EQ(snapshots(*this, "va"), std::vector<std::string>{"s1"}) << log_text();

  // A's local replica alone: its S1 holds the same bytes (the remote
  // replica removed, then a clone of S1 on A).
  const Json v = ok("volume.show", {{"name", "va"}});
  for (const auto& r : v["replicas"]) {
    if (r.contains("remote") && r["remote"].is_object()) {
      ok("replica.remove", {{"volume", "va"}, {"index", r["index"]}});
    }
  }
  ok("snapshot.clone", {{"volume", "va"}, {"snapshot", "s1"}, {"clone", "vas1"}});
  ok("volume.export", {{"name", "vas1"}, {"listen", "unix:" + dir_ + "/vas1.nbd"}});
  Nbd c = connect("nbd+unix:///vas1?socket=" + dir_ + "/vas1.nbd");
  ASSERT_TRUE(c);
  EXPECT_TRUE(read_range(c.get(), 0, kVolumeBytes) == at_s1)
      << "the local replica's snapshot differs from the volume at the snapshot";
}

// The owed delete of a snapshot whose peer could not be reached survives a
// restart of A: kept in state.json, retried once the peer answers again
// (issue 16 gap 1; before, A forgot it and the snapshot stayed on B).
TEST_F(RemoteSnapshotTest, OwedSnapshotDeleteSurvivesARestart) {
  start_peer();
  start();
  add_stores({"a"});
  create_exported_volume();
  ok("snapshot.create", {{"volume", "va"}, {"name", "s1"}});
  ASSERT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"s1"});

  // B is away while s1 is deleted: gone on A, owed by the remote replica.
  EXPECT_EQ(b_.stop(SIGKILL), 128 + SIGKILL);
  const Response deleted = call("snapshot.delete", {{"volume", "va"}, {"name", "s1"}});
  EXPECT_FALSE(deleted.ok);
  EXPECT_NE(deleted.message.find("recorded, retried"), std::string::npos) << deleted.message;
  EXPECT_TRUE(snapshots(*this, "va").empty());
  auto remote_of = [](const Json& shown) {
    for (const auto& r : shown["replicas"]) {
      if (r.contains("remote") && r["remote"].is_object()) {
        return r["remote"];
      }
    }
    return Json();
  };
  EXPECT_EQ(remote_of(ok("volume.show", {{"name", "va"}}))["owed_snapshot_deletes"],
            Json::array({"s1"}));
  const Json state = Json::parse(test_support::read_text(dir_ + "/state/state.json"));
  EXPECT_EQ(state["volumes"][0]["remote_replicas"][0]["owed_snapshot_deletes"], Json::array({"s1"}))
      << state.dump();
  {
    // Writes without B: the remote replica drops out, so A restarts with
    // its local replica alone in sync (not held back for the remote one).
    Nbd a = connect("nbd+unix:///va?socket=" + dir_ + "/va.nbd");
    ASSERT_TRUE(a);
    std::mt19937 rng(9);
    std::vector<char> model(kVolumeBytes, 0);
    write_random(a.get(), rng, model);
    ASSERT_EQ(nbd_flush(a.get(), 0), 0) << nbd_get_error();
  }

  // A restarts while B is still away, then B comes back on the same port.
  EXPECT_EQ(stop(), 0);
  start();
  const Json pending = ok("volume.show", {{"name", "va"}});
  ASSERT_EQ(pending["pending_remotes"].size(), 1U) << pending.dump();
  b_.start();
  ASSERT_EQ(snapshots(b_, "vb"), std::vector<std::string>{"s1"});
  // The daemon retries the peer with a backoff from 1 s: bounded polling.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!snapshots(b_, "vb").empty() && std::chrono::steady_clock::now() < deadline) {
    ::usleep(50'000);
  }
  EXPECT_TRUE(snapshots(b_, "vb").empty()) << "the owed delete was forgotten:\n" << log_text();
  const Json joined = wait_for("volume.show", {{"name", "va"}}, [&](const Json& v) {
    return v["pending_remotes"].empty() && remote_of(v).is_object() &&
           remote_of(v)["owed_snapshot_deletes"].empty() &&
           !Json::parse(test_support::read_text(
               dir_ + "/state/state.json"))["volumes"][0]["remote_replicas"][0]
                .contains("owed_snapshot_deletes");
  });
  EXPECT_TRUE(joined["pending_remotes"].empty()) << joined.dump();
  EXPECT_TRUE(snapshots(*this, "va").empty());
}

// The peer control channel serves several connections at once (issue 16
// gap 4): an idle client (here one that never starts its TLS handshake,
// which the channel waits 5 s for) does not hold up another peer's call.
TEST_F(RemoteSnapshotTest, IdleControlClientDoesNotBlockAnotherPeer) {
  start_peer();
  const int idle = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port_ + 1));
  ASSERT_EQ(::connect(idle, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  // The channel accepted it (and is waiting for its handshake).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (b_.ok("volume.show", {{"name", "vb"}})["export"]["control"]["accepted"] == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    ::usleep(10'000);
  }
  ASSERT_EQ(b_.ok("volume.show", {{"name", "vb"}})["export"]["control"]["accepted"], 1);
  const auto start = std::chrono::steady_clock::now();
  auto answer = nbd::peer_control_exchange(
      target(psk_), R"({"v":1,"id":1,"method":"snapshot.list","params":{"volume":"vb"}})",
      std::chrono::milliseconds(2000));
  ASSERT_TRUE(answer.ok()) << answer.error().message();
  auto response = parse_response(*answer);
  ASSERT_TRUE(response.ok()) << response.error().message();
  EXPECT_TRUE(response->ok) << response->message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2000));
  ::close(idle);
}

// An export on port 0 (issue 16 gap 5): volume show and daemon.status name
// the bound NBD port P and the peer control channel on P + 1, where a
// remote replica's URI (nbds://...:P/...) finds it.
TEST_F(RemoteSnapshotTest, PortZeroExportReportsItsBoundPorts) {
  b_.start();
  b_.ok("store.add",
        {{"name", "b"}, {"path", b_.dir_ + "/store-b"}, {"format", true}, {"size", 96 * kMiB}});
  b_.ok("volume.create", {{"name", "vb"}, {"size", 24 * kMiB}, {"stores", {"b"}}});
  b_.ok("volume.export", {{"name", "vb"}, {"listen", "127.0.0.1:0"}, {"tls_psk", psk_}});
  const Json shown = b_.ok("volume.show", {{"name", "vb"}})["export"];
  const std::string address = shown["address"];
  ASSERT_EQ(address.rfind("127.0.0.1:", 0), 0U) << shown.dump();
  const int port = std::stoi(address.substr(10));
  ASSERT_GT(port, 0) << shown.dump();
  const std::string control = "127.0.0.1:" + std::to_string(port + 1);
  const Json status = b_.ok("daemon.status");
  ASSERT_EQ(status["exports"].size(), 1U) << status.dump();
  EXPECT_EQ(status["exports"][0]["volume"], "vb");
  EXPECT_EQ(status["exports"][0]["listen"], "127.0.0.1:0");
  EXPECT_EQ(status["exports"][0]["address"], address);
  if (shown["control"]["address"].is_null()) {
    // P + 1 was taken by someone else: the export says so and runs alone.
    EXPECT_NE(shown["control"]["error"].get<std::string>().find(control), std::string::npos)
        << shown.dump();
    EXPECT_TRUE(status["exports"][0]["control_address"].is_null()) << status.dump();
    return;
  }
  EXPECT_EQ(shown["control"]["address"], control) << shown.dump();
  EXPECT_EQ(status["exports"][0]["control_address"], control) << status.dump();
  // The channel answers where a replica URI on port P looks for it.
  port_ = static_cast<uint16_t>(port);
  auto listed = peer_call(psk_, "snapshot.list", {{"volume", "vb"}});
  ASSERT_TRUE(listed.ok()) << listed.error().message();
  EXPECT_TRUE(listed->ok) << listed->message;
}

}  // namespace
}  // namespace ublkvol::daemon
