// store.* in-process over memory stores (in_process.h): what each method
// answers, refuses and changes in the registry.
#include "ublkvol/engine/dbs_replica_store.h"

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class StoreMethodsTest : public InProcessTest {};

TEST_F(StoreMethodsTest, ListAndShowDescribeTheStore) {
  StoreEntry* a = add_memory_store("a", 64 * kMiB);
  ASSERT_NE(a, nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  const Json list = ok("store.list");
  ASSERT_EQ(list["stores"].size(), 1U);
  const Json s = ok("store.show", {{"name", "a"}});
  EXPECT_EQ(s, list["stores"][0]);
  EXPECT_EQ(s["name"], "a");
  EXPECT_EQ(s["path"], "memory:a");
  EXPECT_EQ(s["uuid"], a->uuid);
  EXPECT_EQ(s["state"], "online");
  EXPECT_TRUE(s["error"].is_null());
  EXPECT_EQ(s["size_bytes"], 64 * kMiB);
  EXPECT_GT(s["free_bytes"].get<uint64_t>(), 0U);
  EXPECT_EQ(s["replicas"], Json::parse(R"([{"volume":"v","replica":0}])"));
  EXPECT_EQ(s["orphans"], Json::array());
  refused("store.show", {{"name", "b"}}, ENOENT, "store 'b' does not exist");
}

TEST_F(StoreMethodsTest, RemoveIsRefusedWhileTheStoreHoldsReplicas) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  refused("store.remove", {{"name", "a"}}, EBUSY, "store 'a' holds replicas of volume(s) 'v'");
  ok("volume.delete", {{"name", "v"}});
  EXPECT_EQ(ok("store.remove", {{"name", "a"}}), Json::object());
  EXPECT_EQ(registry_->find_store("a"), nullptr);
  EXPECT_TRUE(registry_->snapshot_state().stores.empty());
  refused("store.remove", {{"name", "a"}}, ENOENT, "store 'a' does not exist");
}

TEST_F(StoreMethodsTest, CheckReportsAHealthyStore) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  EXPECT_EQ(ok("store.check", {{"name", "a"}}), Json::parse(R"({"ok":true,"problems":[]})"));
}

TEST_F(StoreMethodsTest, GcListsThenDeletesOrphans) {
  StoreEntry* a = add_memory_store("a");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->run([](dbs::Store& store) {
                 return engine::create_dbs_replica(store, "lost", 4 * kMiB);
               }).ok());
  const Json listed = ok("store.gc", {{"name", "a"}, {"dry_run", true}});
  EXPECT_EQ(listed["removed"], false);
  ASSERT_EQ(listed["orphans"].size(), 1U);
  EXPECT_EQ(listed["orphans"][0]["volume"], "lost");
  EXPECT_EQ(listed["orphans"][0]["complete"], true);
  EXPECT_EQ(ok("store.show", {{"name", "a"}})["orphans"], listed["orphans"]);
  const Json removed = ok("store.gc", {{"name", "a"}});
  EXPECT_EQ(removed["removed"], true);
  EXPECT_EQ(removed["orphans"], listed["orphans"]);
  EXPECT_EQ(ok("store.gc", {{"name", "a"}, {"dry_run", true}})["orphans"], Json::array());
}

TEST_F(StoreMethodsTest, AddRefusesBadArgumentsBeforeTouchingAnything) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  const std::string path = dir_ + "/s.img";
  refused("store.add", {{"name", "b"}, {"path", path}, {"size", 64 * kMiB}}, EINVAL,
          "field 'size' is only allowed with format=true");
  refused("store.add", {{"name", "b"}, {"path", path}, {"force", true}}, EINVAL,
          "field 'force' is only allowed with format=true");
  refused("store.add", {{"name", "b"}, {"path", path}, {"format", true}, {"extent_size", 12288}},
          EINVAL, "field 'extent_size' must be a power of two");
  refused("store.add", {{"name", "a"}, {"path", path}}, EEXIST, "store 'a' already exists");
  refused("store.add", {{"name", "b"}, {"path", path}, {"format", true}}, ENOENT,
          "does not exist (give 'size' to create a file)");
  EXPECT_EQ(registry_->stores.size(), 1U);
}

TEST_F(StoreMethodsTest, AddFormatsAFileStore) {
  const std::string path = dir_ + "/s.img";
  const Json s =
      ok("store.add", {{"name", "f"}, {"path", path}, {"format", true}, {"size", 64 * kMiB}});
  EXPECT_EQ(s["path"], path);
  EXPECT_EQ(s["state"], "online");
  EXPECT_EQ(s["size_bytes"], 64 * kMiB);
  refused("store.add", {{"name", "g"}, {"path", path}}, EEXIST, "is the same file as store 'f'");
}

}  // namespace
}  // namespace ublkvol::daemon
