// A replicated volume with a remote replica: two local replicas (memory
// devices, as the engine's fault tests) plus one RawReplicaStore on a real
// `nbdkit file` export over loopback TCP, under the engine's verify
// workload (overlapping writes, reads, flushes, discards, zeroes checked
// against a model). The remote replica's data is compared byte for byte
// with the local ones through the file nbdkit serves.
//
// Failures (DESIGN.md guarantee 4, as for local replicas): the server
// SIGKILLed mid-workload, SIGSTOPped past the I/O deadline, and a restart
// with an older generation on the export. Each time:
// no I/O error reaches the volume, the replica is dropped, the keeper
// reconnects with backoff once the server is back, the replica resyncs only
// its dirty regions (rebuild.full_from == size, total < size) and is
// byte-identical afterwards.
#include "remote_replica_fixture.h"

namespace ublkvol::nbd {
namespace {

using namespace testing_remote;  // NOLINT(google-build-using-namespace): the shared fixture

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

TEST(RemoteReplica, ServerKilledMidWorkloadIsDroppedThenReconnectsAndResyncsDirtyRegions) {
  FaultCase c;
  c.fail = [](RemoteFixture& f) { f.server.stop(SIGKILL); };
  c.restore = [](RemoteFixture& f) { f.server.restart(); };
  c.keeper_error = "no answer from the server";
  fail_and_return(c);
}

// On qemu-nbd: nbdkit 1.32.5 aborts (connections.c:402 assertion) when it
// resumes and finds the dropped connections' sockets closed under it.
TEST(RemoteReplica, ServerStoppedPastTheDeadlineIsDroppedThenResyncsWhenItResumes) {
  FaultCase c;
  c.server = Server::kQemuNbd;
  c.fail = [](RemoteFixture& f) { f.server.signal_and_wait_stopped(); };
  c.restore = [](RemoteFixture& f) { f.server.signal(SIGCONT); };
  // The device cuts its connections at half the deadline, before the
  // engine hands the requests' buffers back.
  c.replica_error = "Connection timed out";
  // It waits for the stopped server to close the cut connections before
  // reconnecting, so no write of the dropped connection lands after the
  // resync.
  c.keeper_error = "waiting for the server to answer (or close) 2 cut connection(s)";
  fail_and_return(c);
}

// The remote replica drops out (server killed) and misses writes; then the
// whole process goes down without a clean close and comes back with the
// server. Which replica is current is decided by the persisted generations:
// the remote one, with an older generation on its export, opens stale - never
// in sync - and is resynced from its dirty regions before it counts again.
TEST(RemoteReplica, OlderGenerationOnTheExportIsNotTrustedAfterARestart) {
  RemoteFixture f;
  f.cluster.create(2, kSize, kRegion);
  auto remote = f.open_remote(/*format=*/true);
  ASSERT_NE(remote, nullptr);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = kDeadline;
  o.auto_rebuild = false;
  auto volume = f.open_volume(*remote, o);
  ASSERT_NE(volume, nullptr);
  auto wo = small_workload();
  wo.trigger_after = 200;
  wo.trigger = [&] { f.server.stop(SIGKILL); };
  engine::testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  ASSERT_TRUE(wait_state(*volume, kRemote, ReplicaState::kFailed));
  const uint64_t current = volume->status().generation;

  // Crash: no close, no checkpoint. Then everything comes back.
  volume.reset();
  remote.reset();
  f.cluster.stop();
  f.cluster.start();
  f.server.restart();
  remote = f.open_remote(/*format=*/false);
  ASSERT_NE(remote, nullptr);
  EXPECT_NE(remote->store().meta().generation, current) << "the export missed the bump";
  volume = f.open_volume(*remote, o);
  ASSERT_NE(volume, nullptr);
  // After a crash the engine reads from one source chosen by generation
  // and resyncs the others before they are readable; the remote replica is
  // never that source and never in sync at open.
  engine::VolumeStatus st = volume->status();
  EXPECT_NE(st.replicas[kRemote].state, ReplicaState::kInSync);
  EXPECT_GE(st.in_sync, 1U);
  EXPECT_LE(st.in_sync, 2U);

  for (unsigned i = 0; i < 3; ++i) {
    if (volume->status().replicas[i].state == ReplicaState::kStale) {
      ASSERT_TRUE(volume->start_rebuild(i).ok());
    }
  }
  ASSERT_TRUE(test_support::wait_until(
      [&] {
        const auto now = volume->status();
        return !now.rebuild.active && now.in_sync == 3;
      },
      std::chrono::seconds(30)));
  st = volume->status();
  EXPECT_EQ(st.rebuild.full_from, kSize) << "expected a dirty-region resync";
  EXPECT_LE(st.rebuild.total_bytes, uint64_t{2} << 20);
  ASSERT_TRUE(volume->close().ok());
  volume.reset();
  engine::testing::expect_replicas_match_model(f.cluster, 0b11, kSize, w);
  f.expect_remote_matches_local();
}

}  // namespace
}  // namespace ublkvol::nbd
