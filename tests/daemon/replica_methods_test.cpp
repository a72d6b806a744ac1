// replica.* in-process over memory stores (in_process.h). A rebuild or a
// verify runs in the engine's background: the tests wait for its state in
// volume.show, bounded.
#include <chrono>
#include <functional>
#include <thread>

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class ReplicaMethodsTest : public InProcessTest {
 protected:
  void SetUp() override {
    InProcessTest::SetUp();
    for (const char* s : {"a", "b", "c"}) {
      ASSERT_NE(add_memory_store(s), nullptr);
    }
    ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  }

  // volume.show of v once `done` holds for it; fails the test after 30 s.
  Json wait_for(const std::function<bool(const Json&)>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    Json v = ok("volume.show", {{"name", "v"}});
    while (!done(v) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polls a background job
      v = ok("volume.show", {{"name", "v"}});
    }
    EXPECT_TRUE(done(v)) << v.dump();
    return v;
  }

  static std::string state_of(const Json& v, unsigned index) {
    for (const auto& r : v["replicas"]) {
      if (r["index"] == index) {
        return r["state"];
      }
    }
    return "gone";
  }
};

TEST_F(ReplicaMethodsTest, ListAddRemove) {
  const Json list = ok("replica.list", {{"volume", "v"}});
  ASSERT_EQ(list["replicas"].size(), 2U);
  EXPECT_EQ(list["replicas"], ok("volume.show", {{"name", "v"}})["replicas"]);
  refused("replica.add", {{"volume", "v"}, {"store", "a"}}, EINVAL,
          "store 'a' already holds a replica of volume 'v'");
  EXPECT_EQ(ok("replica.add", {{"volume", "v"}, {"store", "c"}}), Json::parse(R"({"index":2})"));
  wait_for([](const Json& v) { return state_of(v, 2) == "in_sync"; });
  EXPECT_EQ(registry_->snapshot_state().volumes[0].stores,
            (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ok("replica.remove", {{"volume", "v"}, {"index", 0}}), Json::object());
  EXPECT_EQ(state_of(ok("volume.show", {{"name", "v"}}), 0), "gone");
  EXPECT_EQ(registry_->snapshot_state().volumes[0].stores, (std::vector<std::string>{"b", "c"}));
  EXPECT_TRUE(registry_->replicas_on(*registry_->find_store("a")).empty());
  refused("replica.remove", {{"volume", "v"}, {"index", 0}}, ENOENT, "volume 'v' has no replica 0");
  refused("replica.remove", {{"volume", "v"}, {"index", 9}}, ENOENT, "volume 'v' has no replica 9");
}

TEST_F(ReplicaMethodsTest, FailAndRebuild) {
  refused("replica.fail", {{"volume", "v"}, {"index", 1}, {"reason", std::string(1025, 'x')}},
          EINVAL, "field 'reason' is longer than 1024 bytes");
  EXPECT_EQ(ok("replica.fail", {{"volume", "v"}, {"index", 1}, {"reason", "disk swap"}}),
            Json::object());
  Json v = ok("volume.show", {{"name", "v"}});
  EXPECT_EQ(state_of(v, 1), "failed");
  EXPECT_EQ(v["in_sync"], 1);
  EXPECT_EQ(ok("replica.rebuild", {{"volume", "v"}, {"index", 1}}), Json::object());
  v = wait_for([](const Json& shown) { return state_of(shown, 1) == "in_sync"; });
  EXPECT_EQ(v["in_sync"], 2);
}

TEST_F(ReplicaMethodsTest, VerifyFindsReplicasEqual) {
  refused("replica.verify", {{"volume", "v"}, {"rate", (uint64_t{1} << 30) + 1}}, EINVAL,
          "field 'rate' is above");
  const Json started = ok("replica.verify", {{"volume", "v"}, {"rate", 0}});
  ASSERT_TRUE(started.contains("verify"));
  const Json v = wait_for([](const Json& shown) {
    return !shown["verify"]["active"].get<bool>() && shown["verify"]["runs"].get<uint64_t>() >= 1;
  });
  EXPECT_EQ(v["verify"]["last"]["mismatched_bytes"], 0);
  EXPECT_EQ(v["verify"]["last"]["error"], "");
}

}  // namespace
}  // namespace ublkvol::daemon
