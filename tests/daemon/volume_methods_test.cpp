// volume.* in-process over memory stores (in_process.h). Exposing needs
// ublk_drv and is covered by the VM tests; here only its argument checks.
#include "ublkvol/engine/dbs_replica_store.h"

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class VolumeMethodsTest : public InProcessTest {
 protected:
  void SetUp() override {
    InProcessTest::SetUp();
    ASSERT_NE(add_memory_store("a"), nullptr);
    ASSERT_NE(add_memory_store("b"), nullptr);
  }
};

TEST_F(VolumeMethodsTest, CreateShowList) {
  const Json v = ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  EXPECT_EQ(v["name"], "v");
  EXPECT_EQ(v["size_bytes"], 8 * kMiB);
  EXPECT_EQ(v["in_sync"], 2);
  EXPECT_EQ(v["online"], true);
  EXPECT_EQ(v["min_replicas"], 1);  // the config's default, 1
  EXPECT_TRUE(v["device"].is_null());
  ASSERT_EQ(v["replicas"].size(), 2U);
  EXPECT_EQ(v["replicas"][1]["store"], "b");
  EXPECT_EQ(v["replicas"][1]["state"], "in_sync");
  const Json shown = ok("volume.show", {{"name", "v"}});
  EXPECT_EQ(shown["replicas"], v["replicas"]);
  EXPECT_EQ(ok("volume.list")["volumes"].size(), 1U);
  refused("volume.show", {{"name", "w"}}, ENOENT, "volume 'w' does not exist");
}

TEST_F(VolumeMethodsTest, CreateRefusals) {
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  refused("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"b"}}}, EEXIST,
          "volume 'v' already exists");
  refused("volume.create", {{"name", "w.engine-meta"}, {"size", 8 * kMiB}, {"stores", {"b"}}},
          EINVAL, "are reserved");
  refused("volume.create",
          {{"name", "w"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}, {"min_replicas", 3}}, EINVAL,
          "field 'min_replicas' 3 must be between 1 and the replica count 2");
  refused("volume.create", {{"name", "w"}, {"size", 8 * kMiB}, {"stores", {"c"}}}, ENOENT,
          "store 'c' does not exist");
  refused("volume.create", {{"name", "w"}, {"size", 4097}, {"stores", {"a"}}}, EINVAL,
          "not a multiple of 4096");
  // Nothing was left behind by the refusals.
  EXPECT_EQ(ok("store.gc", {{"name", "b"}, {"dry_run", true}})["orphans"], Json::array());
}

TEST_F(VolumeMethodsTest, DeleteRemovesTheReplicas) {
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  EXPECT_EQ(ok("volume.delete", {{"name", "v"}}), Json::object());
  EXPECT_EQ(registry_->find_volume("v"), nullptr);
  EXPECT_TRUE(registry_->find_store("a")
                  ->run([](dbs::Store& store) {
                    return store.find_volume("v").ok() ? Status(Error(EEXIST, "still there"))
                                                       : ok_status();
                  })
                  .ok());
  refused("volume.delete", {{"name", "v"}}, ENOENT, "volume 'v' does not exist");
}

TEST_F(VolumeMethodsTest, ImportAdoptsOrphans) {
  for (const char* store : {"a", "b"}) {
    ASSERT_TRUE(
        registry_->find_store(store)
            ->run([](dbs::Store& s) { return engine::create_dbs_replica(s, "o", 4 * kMiB); })
            .ok());
  }
  refused("volume.import", {{"name", "p"}, {"stores", {"a"}}}, ENOENT,
          "store 'a' holds no orphan replica 'p'");
  const Json v = ok("volume.import", {{"name", "o"}, {"stores", {"a", "b"}}});
  EXPECT_EQ(v["size_bytes"], 4 * kMiB);
  EXPECT_EQ(v["replicas"].size(), 2U);
  EXPECT_EQ(ok("store.gc", {{"name", "a"}, {"dry_run", true}})["orphans"], Json::array());
  refused("volume.import", {{"name", "o"}, {"stores", {"a"}}}, EEXIST, "volume 'o' already exists");
}

TEST_F(VolumeMethodsTest, ResizeGrowsOnly) {
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  refused("volume.resize", {{"name", "v"}, {"size", 4 * kMiB}}, EINVAL,
          "shrinking to 4194304 is not supported");
  EXPECT_EQ(ok("volume.resize", {{"name", "v"}, {"size", 8 * kMiB}})["size_bytes"], 8 * kMiB);
  const Json grown = ok("volume.resize", {{"name", "v"}, {"size", 16 * kMiB}});
  EXPECT_EQ(grown["size_bytes"], 16 * kMiB);
  EXPECT_EQ(grown["in_sync"], 2);
  EXPECT_EQ(registry_->find_volume("v")->engine->info().size_bytes, 16 * kMiB);
  EXPECT_EQ(registry_->snapshot_state().volumes[0].size_bytes, 16 * kMiB);
}

TEST_F(VolumeMethodsTest, ExposeArgumentsAndUnexposeOfAVolumeNotExposed) {
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  refused("volume.expose", {{"name", "v"}, {"queue_depth", 2}}, EINVAL,
          "field 'queue_depth' 2 is out of range 4..4096");
  refused("volume.expose", {{"name", "v"}, {"queues", 61}}, EINVAL, "field 'queues' 61");
  refused("volume.unexpose", {{"name", "v"}}, EINVAL, "volume 'v' is not exposed");
}

}  // namespace
}  // namespace ublkvol::daemon
