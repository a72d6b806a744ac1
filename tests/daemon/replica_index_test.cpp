// Replica indexes after `replica remove` of a low index and a resize
// (issue 16, last note): an index-based command must act on the replica
// volume show lists at that index, in-process over memory stores.
#include <string>

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class ReplicaIndexTest : public InProcessTest {
 protected:
  void SetUp() override {
    InProcessTest::SetUp();
    for (const char* s : {"a", "b", "c"}) {
      ASSERT_NE(add_memory_store(s), nullptr);
    }
    ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b", "c"}}});
  }

  static Json on_store(const Json& v, const std::string& store) {
    for (const auto& r : v["replicas"]) {
      if (r["store"] == store) {
        return r;
      }
    }
    return Json();
  }
};

TEST_F(ReplicaIndexTest, RemoveLowIndexThenResizeKeepsIndexesOnTheirReplicas) {
  ok("replica.remove", {{"volume", "v"}, {"index", 0}});
  const Json grown = ok("volume.resize", {{"name", "v"}, {"size", 16 * kMiB}});
  EXPECT_EQ(grown["size_bytes"], 16 * kMiB);
  const Json before = ok("volume.show", {{"name", "v"}});
  const Json b = on_store(before, "b");
  ASSERT_TRUE(b.is_object()) << before.dump();
  ASSERT_EQ(on_store(before, "c")["state"], "in_sync") << before.dump();
  // Fail the replica listed on store b, by the index volume show gives it.
  ok("replica.fail", {{"volume", "v"}, {"index", b["index"]}});
  const Json after = ok("volume.show", {{"name", "v"}});
  EXPECT_EQ(on_store(after, "b")["state"], "failed") << after.dump();
  EXPECT_EQ(on_store(after, "c")["state"], "in_sync") << after.dump();
  EXPECT_EQ(after["in_sync"], 1) << after.dump();
}

}  // namespace
}  // namespace ublkvol::daemon
