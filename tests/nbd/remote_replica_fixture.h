// Shared by the remote replica tests (remote_replica_test.cpp,
// remote_replica_network_test.cpp): two local (memory) replicas plus one
// RemoteReplica on a real nbdkit / qemu-nbd export over loopback TCP
// (optionally through TcpProxy), the engine's verify workload, and
// fail_and_return(): fail the remote side mid-workload, restore it, and
// check drop, backoff, reconnect, dirty-region resync, identical data.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/nbd/remote_replica.h"

#include "../dbs/device/temp_file.h"
#include "../engine/replicated/replica_test_util.h"
#include "../engine/replicated/workload.h"
#include "../support/wait_until.h"
#include "nbd_test_server.h"
#include "netns_link.h"
#include "tcp_proxy.h"

namespace ublkvol::nbd {
namespace testing_remote {

using engine::ReplicaState;
using engine::ReplicatedVolume;
using engine::ReplicatedVolumeOptions;
using testing::NbdTestServer;
using testing::NetnsLink;
using testing::TcpProxy;

inline constexpr uint64_t kSize = uint64_t{8} << 20;
inline constexpr uint64_t kRegion = uint64_t{64} << 10;
inline constexpr unsigned kRemote = 2;  // engine index of the remote replica
// The volumes' I/O deadline; the remote replica's device cuts its
// connections at half of it (RemoteReplicaOptions::io_deadline).
inline constexpr std::chrono::milliseconds kDeadline{1000};

// A sparse backing file for `nbdkit file`, removed at the end.
class BackingFile {
 public:
  explicit BackingFile(uint64_t size) : path_("/var/tmp", "remote-replica") {
    const int fd = ::open(path_.path().c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
    ::close(fd);
  }
  [[nodiscard]] const std::string& path() const { return path_.path(); }

  // `length` bytes at `offset`, read behind the server's back.
  [[nodiscard]] std::vector<std::byte> read(uint64_t offset, uint64_t length) const {
    std::vector<std::byte> bytes(length);
    const int fd = ::open(path_.path().c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, bytes.data(), length, static_cast<off_t>(offset)),
              static_cast<ssize_t>(length));
    ::close(fd);
    return bytes;
  }

 private:
  dbs::testing::TempPath path_;
};

enum class Server { kNbdkit, kQemuNbd };

inline std::vector<std::string> server_command(Server server, const std::string& path) {
  if (server == Server::kNbdkit) {
    return {"nbdkit", "-f", "file", "file=" + path};
  }
  // Persistent (-t): it stays up when its clients disconnect.
  return {"qemu-nbd", "-f", "raw", "-t", "-e", "8", "--cache=none", "--aio=threads", path};
}

struct RemoteFixture {
  // With `netns`, the server listens inside that namespace, across its veth.
  explicit RemoteFixture(Server kind = Server::kNbdkit, NetnsLink* netns = nullptr)
      : server(server_command(kind, file.path()), NbdTestServer::Transport::kTcp,
               netns != nullptr ? NbdTestServer::TcpListen{netns->ns_address(), netns->netns_path()}
                                : NbdTestServer::TcpListen{}),
        link(netns) {}

  engine::testing::Cluster cluster;  // the two local replicas
  BackingFile file{kSize + (uint64_t{2} << 20)};
  NbdTestServer server;
  // Between the client and the server when a test wants network faults.
  std::unique_ptr<TcpProxy> proxy;
  NetnsLink* link = nullptr;  // the server's namespace link, if any
  RemoteReplicaOptions options;

  [[nodiscard]] std::string uri() const { return proxy ? proxy->uri() : server.uri(); }
  uint64_t remote_data_offset = 0;

  std::unique_ptr<RemoteReplica> open_remote(bool format) {
    options.device.connections = 2;
    // Short, so the keeper's attempts against a dead server come quickly;
    // long enough for a server just forked on a loaded machine.
    options.device.connect_timeout_ms = 2000;
    options.thread.name = "remote";
    options.io_deadline = kDeadline;
    if (format) {
      engine::RawReplicaFormatOptions fo;
      fo.region_bytes = kRegion;
      fo.size_bytes = kSize;
      const Status formatted = format_remote_replica(uri(), fo, options.device);
      EXPECT_TRUE(formatted.ok()) << formatted.error().to_string();
    }
    auto remote = RemoteReplica::open(uri(), options);
    EXPECT_TRUE(remote.ok()) << remote.error().to_string();
    if (!remote.ok()) {
      return nullptr;
    }
    remote_data_offset = (*remote)->store().data_offset();
    return std::move(*remote);
  }

  std::unique_ptr<ReplicatedVolume> open_volume(RemoteReplica& remote,
                                                const ReplicatedVolumeOptions& o) {
    auto bindings = cluster.bindings();
    bindings.push_back(remote.binding());
    auto volume = ReplicatedVolume::open(o, bindings);
    EXPECT_TRUE(volume.ok()) << volume.error().to_string();
    return volume.ok() ? std::move(*volume) : nullptr;
  }

  // The remote replica's data equals local replica 0's, block by block.
  void expect_remote_matches_local() const {
    const std::vector<std::byte> remote = file.read(remote_data_offset, kSize);
    unsigned mismatches = 0;
    for (uint64_t off = 0; off < kSize; off += 4096) {
      if (std::memcmp(remote.data() + off, cluster.data(0, off), 4096) != 0 && ++mismatches < 5) {
        ADD_FAILURE() << "remote replica differs at block " << off / 4096;
      }
    }
    EXPECT_EQ(mismatches, 0U);
  }
};

inline engine::testing::WorkloadOptions small_workload() {
  engine::testing::WorkloadOptions wo;
  wo.threads = 2;
  wo.ops_per_thread = 800;
  wo.hot_bytes = uint64_t{512} << 10;
  wo.limit_bytes = uint64_t{2} << 20;  // so a resync has less than everything to copy
  return wo;
}

inline bool wait_state(const ReplicatedVolume& volume, unsigned index, ReplicaState state) {
  return test_support::wait_until([&] { return volume.status().replicas[index].state == state; },
                                  std::chrono::seconds(20));
}

// Shared by the fault tests: a workload during which `fail` runs, then
// `restore`; the keeper brings the replica back with a dirty-region resync.
struct FaultCase {
  Server server = Server::kNbdkit;
  bool proxy = false;
  bool netns = false;  // the server in its own network namespace (netns_link.h)
  std::function<void(RemoteFixture&)> fail;
  std::function<void(RemoteFixture&)> restore;
  const char* replica_error = "";  // in the engine's last_error of the replica
  // Set if the server stays unreachable until restore(): the keeper then
  // retries with a growing delay, and says why in last_error().
  const char* keeper_error = nullptr;
};

inline void fail_and_return(const FaultCase& c) {
  std::unique_ptr<NetnsLink> netns;
  if (c.netns) {
    netns = std::make_unique<NetnsLink>();
  }
  RemoteFixture f(c.server, netns.get());
  if (c.proxy) {
    f.proxy = std::make_unique<TcpProxy>(f.server.port());
  }
  f.cluster.create(2, kSize, kRegion);
  auto remote = f.open_remote(/*format=*/true);
  ASSERT_NE(remote, nullptr);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = kDeadline;
  auto volume = f.open_volume(*remote, o);
  ASSERT_NE(volume, nullptr);
  ReconnectBackoff backoff;
  backoff.initial = std::chrono::milliseconds(50);
  backoff.max = std::chrono::milliseconds(400);
  RemoteReplicaKeeper keeper(*volume, kRemote, std::move(remote), f.options, backoff);
  // On an early return (a failed ASSERT) the volume must let go of the
  // keeper's replica before the keeper destroys it.
  struct CloseFirst {
    RemoteReplicaKeeper& keeper;
    std::unique_ptr<ReplicatedVolume>& volume;
    ~CloseFirst() {
      keeper.stop();
      if (volume) {
        (void)volume->close();
        volume.reset();
      }
    }
  } close_first{keeper, volume};

  auto wo = small_workload();
  wo.trigger_after = 200;
  wo.trigger = [&] { c.fail(f); };
  engine::testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U) << "the volume must stay online";
  // Dropped (it may already be back: the keeper runs during the workload).
  ASSERT_TRUE(test_support::wait_until(
      [&] {
        for (const auto& event : volume->status().events) {
          if (event.replica == static_cast<int>(kRemote) &&
              event.message.find("dropped from the write set") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(20)));
  engine::VolumeStatus st = volume->status();
  EXPECT_TRUE(st.online);
  EXPECT_NE(st.replicas[kRemote].last_error.find(c.replica_error), std::string::npos)
      << st.replicas[kRemote].last_error;
  if (c.keeper_error != nullptr) {
    EXPECT_EQ(keeper.reconnects(), 0U);
    // While the server is away the keeper retries with a growing delay.
    ASSERT_TRUE(
        test_support::wait_until([&] { return keeper.attempts() >= 2; }, std::chrono::seconds(20)));
    EXPECT_GT(keeper.delay(), backoff.initial);
    EXPECT_NE(keeper.last_error().find(c.keeper_error), std::string::npos) << keeper.last_error();
  }

  // The replica returns while I/O goes on (as under a ublk device, whose
  // queues keep reaping: the engine's fence on the old store needs that).
  std::atomic<bool> returned{false};
  std::atomic<uint64_t> io_errors{0};
  std::thread io([&] {
    while (!returned.load()) {
      engine::testing::Workload during(*volume, small_workload());
      during.run();
      io_errors += during.errors.load();
    }
  });
  c.restore(f);
  const bool reconnected =
      test_support::wait_until([&] { return keeper.reconnects() >= 1; }, std::chrono::seconds(20));
  // In sync again (on a loaded machine a deadline miss during the resync
  // may drop it once more; the keeper then brings it back again).
  const bool rebuilt = reconnected && test_support::wait_until(
                                          [&] {
                                            const auto now = volume->status();
                                            return !now.rebuild.active && now.in_sync == 3;
                                          },
                                          std::chrono::seconds(30));
  returned = true;
  io.join();
  ASSERT_TRUE(reconnected) << keeper.last_error();
  ASSERT_TRUE(rebuilt);
  EXPECT_EQ(io_errors.load(), 0U);
  st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_EQ(st.replicas[kRemote].state, ReplicaState::kInSync);
  std::string events;
  for (const auto& event : st.events) {
    events += "\n  " + event.message;
  }
  EXPECT_EQ(st.rebuild.full_from, kSize)
      << "expected a dirty-region resync; reconnects " << keeper.reconnects() << events
      << "\n  keeper: " << keeper.last_error();
  EXPECT_GT(st.rebuild.total_bytes, 0U);
  EXPECT_LE(st.rebuild.total_bytes, uint64_t{2} << 20);

  // More writes reach all three, then everything matches.
  engine::testing::Workload after(*volume, small_workload());
  after.run();
  EXPECT_EQ(after.errors.load(), 0U);
  keeper.stop();
  ASSERT_TRUE(volume->close().ok());
  volume.reset();
  engine::testing::expect_replicas_match_model(f.cluster, 0b11, kSize, after);
  f.expect_remote_matches_local();
}

}  // namespace testing_remote
}  // namespace ublkvol::nbd
