// snapshot.* in-process over memory stores (in_process.h).
#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class SnapshotMethodsTest : public InProcessTest {
 protected:
  void SetUp() override {
    InProcessTest::SetUp();
    ASSERT_NE(add_memory_store("a"), nullptr);
    ASSERT_NE(add_memory_store("b"), nullptr);
    ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  }
};

TEST_F(SnapshotMethodsTest, CreateListDelete) {
  EXPECT_EQ(ok("snapshot.list", {{"volume", "v"}}), Json::parse(R"({"snapshots":[]})"));
  EXPECT_EQ(ok("snapshot.create", {{"volume", "v"}, {"name", "s1"}}), Json::object());
  refused("snapshot.create", {{"volume", "v"}, {"name", "s1"}}, EEXIST,
          "volume 'v' already has a snapshot 's1'");
  EXPECT_EQ(ok("snapshot.list", {{"volume", "v"}}),
            Json::parse(R"({"snapshots":[{"name":"s1"}]})"));
  EXPECT_EQ(ok("volume.show", {{"name", "v"}})["snapshots"], Json::array({"s1"}));
  // On every replica's store.
  for (const char* store : {"a", "b"}) {
    Status found = registry_->find_store(store)->run([](dbs::Store& s) -> Status {
      UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeId id, s.find_volume("v"));
      UBLKVOL_TRY(s.find_snapshot(id, "s1"));
      return ok_status();
    });
    EXPECT_TRUE(found.ok()) << store << ": " << found.error().message();
  }
  refused("snapshot.delete", {{"volume", "v"}, {"name", "s2"}}, ENOENT,
          "volume 'v' has no snapshot 's2'");
  EXPECT_EQ(ok("snapshot.delete", {{"volume", "v"}, {"name", "s1"}}), Json::object());
  EXPECT_EQ(ok("snapshot.list", {{"volume", "v"}}), Json::parse(R"({"snapshots":[]})"));
  refused("snapshot.list", {{"volume", "w"}}, ENOENT, "volume 'w' does not exist");
  // No intent is left pending.
  EXPECT_TRUE(registry_->intents.pending().empty());
}

TEST_F(SnapshotMethodsTest, Revert) {
  ok("snapshot.create", {{"volume", "v"}, {"name", "s1"}});
  refused("snapshot.revert", {{"volume", "v"}, {"name", "nope"}}, ENOENT,
          "volume 'v' has no snapshot 'nope'");
  EXPECT_EQ(ok("snapshot.revert", {{"volume", "v"}, {"name", "s1"}}), Json::object());
  const Json v = ok("volume.show", {{"name", "v"}});
  EXPECT_EQ(v["in_sync"], 2);
  EXPECT_EQ(v["snapshots"], Json::array({"s1"}));
}

TEST_F(SnapshotMethodsTest, CloneBecomesAVolume) {
  ok("snapshot.create", {{"volume", "v"}, {"name", "s1"}});
  const Json clone = ok("snapshot.clone", {{"volume", "v"}, {"snapshot", "s1"}, {"clone", "c"}});
  EXPECT_EQ(clone["name"], "c");
  EXPECT_EQ(clone["size_bytes"], 8 * kMiB);
  EXPECT_EQ(clone["replicas"].size(), 2U);
  EXPECT_EQ(clone["in_sync"], 2);
  EXPECT_NE(registry_->find_volume("c"), nullptr);
  ASSERT_EQ(registry_->snapshot_state().volumes.size(), 2U);
  refused("snapshot.clone", {{"volume", "v"}, {"snapshot", "s1"}, {"clone", "c"}}, EEXIST,
          "volume 'c' already exists");
  refused("snapshot.clone", {{"volume", "v"}, {"snapshot", "s9"}, {"clone", "d"}}, ENOENT,
          "volume 'v' has no snapshot 's9'");
  EXPECT_TRUE(registry_->intents.pending().empty());
}

}  // namespace
}  // namespace ublkvol::daemon
