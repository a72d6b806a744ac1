// daemon.status and stats in-process over memory stores (in_process.h).
#include <sys/utsname.h>

#include "ublkvol/engine/dbs_replica_store.h"

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class StatusMethodsTest : public InProcessTest {};

TEST_F(StatusMethodsTest, DaemonStatusCounts) {
  StoreEntry* a = add_memory_store("a");
  ASSERT_NE(a, nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  ASSERT_TRUE(
      a->run([](dbs::Store& s) { return engine::create_dbs_replica(s, "lost", 4 * kMiB); }).ok());
  const Json status = ok("daemon.status");
  EXPECT_EQ(status["stores"], 1);
  EXPECT_EQ(status["volumes"], 1);
  EXPECT_EQ(status["exposed"], 0);
  EXPECT_EQ(status["pending_intents"], 0);
  EXPECT_EQ(status["state_dir"], config_.state_dir);
  EXPECT_EQ(status["pid"], ::getpid());
  ASSERT_EQ(status["orphans"].size(), 1U);
  EXPECT_EQ(status["orphans"][0]["volume"], "lost");
  EXPECT_TRUE(status["ublk"]["available"].is_boolean());
  // The kernel, read at start: its release as uname(2) says, nothing turned off.
  utsname uts{};
  ASSERT_EQ(::uname(&uts), 0);
  EXPECT_EQ(status["kernel"]["release"], uts.release);
  EXPECT_EQ(status["kernel"]["features_off"], "none");
  EXPECT_EQ(status["kernel"]["warning"], "");
  // Without ublk_drv (the host) the features are unknown, not "none".
  if (!status["ublk"]["available"].get<bool>()) {
    EXPECT_TRUE(status["kernel"]["ublk_features"].is_null());
  }
}

TEST_F(StatusMethodsTest, StatsOfVolumesNotExposed) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  ok("volume.create", {{"name", "w"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  const Json all = ok("stats");
  ASSERT_EQ(all["volumes"].size(), 2U);
  EXPECT_EQ(all["latency_bucket_upper_ns"].size(), ublk::kLatencyBuckets);
  EXPECT_GT(all["time_ns"].get<uint64_t>(), 0U);
  const Json one = ok("stats", {{"volume", "w"}});
  ASSERT_EQ(one["volumes"].size(), 1U);
  EXPECT_EQ(one["volumes"][0]["name"], "w");
  EXPECT_EQ(one["volumes"][0]["exposed"], false);
  EXPECT_EQ(one["volumes"][0]["writes"], 0);
  refused("stats", {{"volume", "x"}}, ENOENT, "volume 'x' does not exist");
}

}  // namespace
}  // namespace ublkvol::daemon
