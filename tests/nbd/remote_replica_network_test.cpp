// Remote replica under network faults, through a TCP proxy written for the
// test (tcp_proxy.h): every connection reset, a partition past the deadline
// (the replica misses writes and must be resynced, never trusted as in sync),
// and a delay past the deadline. Each time: no I/O error, replica dropped,
// reconnected, dirty-region resync, byte-identical afterwards.
#include "remote_replica_fixture.h"

namespace ublkvol::nbd {
namespace {

using namespace testing_remote;  // NOLINT(google-build-using-namespace): the shared fixture

// Every connection reset by the network (RST from a proxy): the replica is
// dropped at once (no deadline needed) and comes straight back.
TEST(RemoteReplica, ConnectionsResetByTheNetworkDropTheReplicaWhichReturnsAndResyncs) {
  FaultCase c;
  c.server = Server::kQemuNbd;  // nbdkit 1.32.5 may abort on a reset (see the SIGSTOP test)
  c.proxy = true;
  c.fail = [](RemoteFixture& f) { f.proxy->reset_all(); };
  c.restore = [](RemoteFixture&) {};
  fail_and_return(c);
}

// A partition (nothing crosses, connections stay up) past the deadline: the
// replica misses writes, so on return it is not trusted as in sync - it
// resyncs its dirty regions - and only after the server closed the cut connections of the old
// replica (it read their last complete command first).
TEST(RemoteReplica, PartitionedReplicaMissesWritesAndIsResyncedNotTrustedOnReturn) {
  FaultCase c;
  c.server = Server::kQemuNbd;  // nbdkit 1.32.5 may abort on a reset (see the SIGSTOP test)
  c.proxy = true;
  c.fail = [](RemoteFixture& f) { f.proxy->set_mode(TcpProxy::Mode::kPartition); };
  c.restore = [](RemoteFixture& f) { f.proxy->set_mode(TcpProxy::Mode::kPass); };
  c.replica_error = "Connection timed out";
  c.keeper_error = "waiting for the server to answer (or close) 2 cut connection(s)";
  fail_and_return(c);
}

// A network that delays every byte by more than the deadline.
TEST(RemoteReplica, NetworkDelayPastTheDeadlineDropsTheReplicaUntilItIsFastAgain) {
  FaultCase c;
  c.server = Server::kQemuNbd;  // nbdkit 1.32.5 may abort on a reset (see the SIGSTOP test)
  c.proxy = true;
  c.fail = [](RemoteFixture& f) {
    f.proxy->set_mode(TcpProxy::Mode::kDelay, std::chrono::milliseconds(1500));
  };
  c.restore = [](RemoteFixture& f) { f.proxy->set_mode(TcpProxy::Mode::kPass); };
  c.replica_error = "Connection timed out";
  fail_and_return(c);
}

}  // namespace
}  // namespace ublkvol::nbd
