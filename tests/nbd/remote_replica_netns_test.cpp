// A partition over a real link: the remote replica's server (qemu-nbd on a
// file) listens inside its own network namespace, joined to the test's by
// a veth pair (netns_link.h; needs root, as on CI). Under the engine's
// verify workload the namespace's link is set down past the deadline: the
// replica goes out (its device cuts its connections at half the deadline),
// the volume stays online and loses no completed write; the keeper waits
// for the server to close the cut connections, which it can only do once
// the link is up again; then it reconnects and the replica resyncs only
// its dirty regions and is byte-identical to the local ones.
#include "remote_replica_fixture.h"

namespace ublkvol::nbd {
namespace {

using namespace testing_remote;  // NOLINT(google-build-using-namespace): the shared fixture

TEST(RemoteReplica, NamespaceLinkDownPastTheDeadlineDropsTheReplicaWhichResyncsWhenItIsUp) {
  FaultCase c;
  c.server = Server::kQemuNbd;  // nbdkit 1.32.5 may abort on a closed connection
  c.netns = true;
  c.fail = [](RemoteFixture& f) { f.link->set_down(); };
  c.restore = [](RemoteFixture& f) { f.link->set_up(); };
  c.replica_error = "Connection timed out";
  c.keeper_error = "waiting for the server to answer (or close) 2 cut connection(s)";
  fail_and_return(c);
}

}  // namespace
}  // namespace ublkvol::nbd
