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
  c.replica_error = "deadline";
  // It waits for the stopped server's answers before reconnecting, so no
  // write of the dropped connection can land after the resync.
  c.keeper_error = "waiting for the server to answer";
  fail_and_return(c);
}

}  // namespace
}  // namespace ublkvol::nbd
