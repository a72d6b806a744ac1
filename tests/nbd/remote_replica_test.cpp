// A replicated volume with a remote replica: two local replicas (memory
// devices, as the engine's fault tests) plus one RawReplicaStore on a real
// `nbdkit file` export over loopback TCP, under the engine's verify
// workload (overlapping writes, reads, flushes, discards, zeroes checked
// against a model). The remote replica's data is compared byte for byte
// with the local ones through the file nbdkit serves.
//
// Failures (DESIGN.md guarantee 4, as for local replicas): the server
// SIGKILLed mid-workload, and SIGSTOPped past the I/O deadline. Each time:
// no I/O error reaches the volume, the replica is dropped, the keeper
// reconnects with backoff once the server is back, the replica resyncs only
// its dirty regions (rebuild.full_from == size, total < size) and is
// byte-identical afterwards.
#include "ublkvol/nbd/remote_replica.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <thread>
#include <vector>

#include "../dbs/device/temp_file.h"
#include "../engine/replicated/replica_test_util.h"
#include "../engine/replicated/workload.h"
#include "../support/wait_until.h"
#include "nbd_test_server.h"

namespace ublkvol::nbd {
namespace {

using engine::ReplicaState;
using engine::ReplicatedVolume;
using engine::ReplicatedVolumeOptions;
using testing::NbdTestServer;

constexpr uint64_t kSize = uint64_t{8} << 20;
constexpr uint64_t kRegion = uint64_t{64} << 10;
constexpr unsigned kRemote = 2;  // engine index of the remote replica

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

std::vector<std::string> server_command(Server server, const std::string& path) {
  if (server == Server::kNbdkit) {
    return {"nbdkit", "-f", "file", "file=" + path};
  }
  // Persistent (-t): it stays up when its clients disconnect.
  return {"qemu-nbd", "-f", "raw", "-t", "-e", "8", "--cache=none", "--aio=threads", path};
}

struct RemoteFixture {
  explicit RemoteFixture(Server kind = Server::kNbdkit)
      : server(server_command(kind, file.path()), NbdTestServer::Transport::kTcp) {}

  engine::testing::Cluster cluster;  // the two local replicas
  BackingFile file{kSize + (uint64_t{2} << 20)};
  NbdTestServer server;
  RemoteReplicaOptions options;
  uint64_t remote_data_offset = 0;

  std::unique_ptr<RemoteReplica> open_remote(bool format) {
    options.device.connections = 2;
    // Short, so the keeper's attempts against a dead server come quickly;
    // long enough for a server just forked on a loaded machine.
    options.device.connect_timeout_ms = 2000;
    options.thread.name = "remote";
    if (format) {
      engine::RawReplicaFormatOptions fo;
      fo.region_bytes = kRegion;
      fo.size_bytes = kSize;
      const Status formatted = format_remote_replica(server.uri(), fo, options.device);
      EXPECT_TRUE(formatted.ok()) << formatted.error().to_string();
    }
    auto remote = RemoteReplica::open(server.uri(), options);
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

engine::testing::WorkloadOptions small_workload() {
  engine::testing::WorkloadOptions wo;
  wo.threads = 2;
  wo.ops_per_thread = 800;
  wo.hot_bytes = uint64_t{512} << 10;
  wo.limit_bytes = uint64_t{2} << 20;  // so a resync has less than everything to copy
  return wo;
}

bool wait_state(const ReplicatedVolume& volume, unsigned index, ReplicaState state) {
  return test_support::wait_until([&] { return volume.status().replicas[index].state == state; },
                                  std::chrono::seconds(20));
}

TEST(RemoteReplica, JoinsAVolumeKeepsItsGenerationOnTheExportAndHoldsIdenticalData) {
  RemoteFixture f;
  f.cluster.create(2, kSize, kRegion);
  auto remote = f.open_remote(/*format=*/true);
  ASSERT_NE(remote, nullptr);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  auto volume = f.open_volume(*remote, o);
  ASSERT_NE(volume, nullptr);
  EXPECT_EQ(volume->status().in_sync, 3U);
  engine::testing::Workload w(*volume, small_workload());
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  auto stats = remote->stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->uri, f.server.uri());
  EXPECT_EQ(stats->connections, 2U);
  EXPECT_EQ(stats->live_connections, 2U);
  EXPECT_GT(stats->requests, 0U);
  EXPECT_GT(stats->latency_p50_us, 0U);
  EXPECT_GE(stats->latency_p99_us, stats->latency_p50_us);
  const uint64_t generation = volume->status().generation;
  ASSERT_TRUE(volume->close().ok());
  volume.reset();
  engine::testing::expect_replicas_match_model(f.cluster, 0b11, kSize, w);
  f.expect_remote_matches_local();

  // The generation is in-band on the export: a new connection reads it.
  remote.reset();
  auto again = f.open_remote(/*format=*/false);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->store().meta().generation, generation);
  EXPECT_EQ(again->store().meta().generation, f.cluster.replicas[0].store->meta().generation);
}

// Shared by the SIGKILL and SIGSTOP tests: a workload during which
// `fail_server` runs, then `restore_server`; the keeper brings the replica
// back with a dirty-region resync.
void fail_and_return(Server kind, const std::function<void(NbdTestServer&)>& fail_server,
                     const std::function<void(NbdTestServer&)>& restore_server,
                     const char* expected_error, const char* expected_keeper_error) {
  RemoteFixture f(kind);
  f.cluster.create(2, kSize, kRegion);
  auto remote = f.open_remote(/*format=*/true);
  ASSERT_NE(remote, nullptr);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = std::chrono::milliseconds(1000);
  auto volume = f.open_volume(*remote, o);
  ASSERT_NE(volume, nullptr);
  ReconnectBackoff backoff;
  backoff.initial = std::chrono::milliseconds(50);
  backoff.max = std::chrono::milliseconds(400);
  RemoteReplicaKeeper keeper(*volume, kRemote, std::move(remote), f.options, backoff);

  auto wo = small_workload();
  wo.trigger_after = 200;
  wo.trigger = [&] { fail_server(f.server); };
  engine::testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U) << "the volume must stay online";
  ASSERT_TRUE(wait_state(*volume, kRemote, ReplicaState::kFailed) ||
              volume->status().replicas[kRemote].state == ReplicaState::kRebuilding);
  engine::VolumeStatus st = volume->status();
  EXPECT_TRUE(st.online);
  EXPECT_NE(st.replicas[kRemote].last_error.find(expected_error), std::string::npos)
      << st.replicas[kRemote].last_error;
  EXPECT_EQ(keeper.reconnects(), 0U);
  // While the server is away the keeper retries with a growing delay.
  ASSERT_TRUE(
      test_support::wait_until([&] { return keeper.attempts() >= 2; }, std::chrono::seconds(20)));
  EXPECT_GT(keeper.delay(), backoff.initial);
  EXPECT_NE(keeper.last_error().find(expected_keeper_error), std::string::npos)
      << keeper.last_error();

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
  restore_server(f.server);
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

TEST(RemoteReplica, ServerKilledMidWorkloadIsDroppedThenReconnectsAndResyncsDirtyRegions) {
  fail_and_return(
      Server::kNbdkit, [](NbdTestServer& server) { server.stop(SIGKILL); },
      [](NbdTestServer& server) { server.restart(); }, "", "no answer from the server");
}

// On qemu-nbd: nbdkit 1.32.5 aborts (connections.c:402 assertion) when it
// resumes and finds the dropped connections' sockets closed under it.
TEST(RemoteReplica, ServerStoppedPastTheDeadlineIsDroppedThenResyncsWhenItResumes) {
  fail_and_return(
      Server::kQemuNbd, [](NbdTestServer& server) { server.signal_and_wait_stopped(); },
      [](NbdTestServer& server) { server.signal(SIGCONT); }, "deadline",
      // It waits for the stopped server's answers before reconnecting, so
      // no write of the dropped connection can land after the resync.
      "waiting for the server to answer");
}

}  // namespace
}  // namespace ublkvol::nbd
