// Config key `reactors` (docs/operations.md): the daemon starts N reactors,
// serves store i on reactor i mod N, exposes devices with their queues on
// the same set (queue loop external through the ReactorQueueHost), and
// defaults the queue count to N, each queue of a volume on a reactor that
// serves one of its replicas. In-process over memory stores.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/reactor/reactor.h"

#include "in_process.h"
#include "support/wait_until.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class ReactorsTest : public InProcessTest {
 protected:
  void SetUp() override {
    InProcessTest::SetUp();
    // Restart the registry with 2 reactors and no `queues` key given.
    registry_.reset();
    config_.reactors = 2;
    config_.queues = 0;
    start();
  }
};

TEST_F(ReactorsTest, StoresSpreadOverTheReactorsAndQueuesDefaultToOnePerReactor) {
  ASSERT_NE(registry_->reactors, nullptr);
  ASSERT_EQ(registry_->reactors->size(), 2U);
  EXPECT_EQ(registry_->config.queues, 2U);
  const char* names[] = {"a", "b", "c"};
  for (unsigned i = 0; i < 3; ++i) {
    StoreEntry* s = add_memory_store(names[i]);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->thread->home_reactor(), &registry_->reactors->at(i % 2)) << names[i];
    // Control work for the store runs on that reactor.
    reactor::Reactor* ran_on = nullptr;
    ASSERT_TRUE(s->thread
                    ->call([&] {
                      ran_on = reactor::Reactor::current();
                      return ok_status();
                    })
                    .ok());
    EXPECT_EQ(ran_on, &registry_->reactors->at(i % 2)) << names[i];
  }
  // daemon.status lists the reactors and the stores each serves.
  const Json status = ok("daemon.status");
  ASSERT_TRUE(status.contains("reactors")) << status.dump();
  ASSERT_EQ(status["reactors"].size(), 2U) << status.dump();
  EXPECT_EQ(status["reactors"][0]["stores"], Json::array({"a", "c"})) << status.dump();
  EXPECT_EQ(status["reactors"][1]["stores"], Json::array({"b"})) << status.dump();
  EXPECT_EQ(status["reactors"][1]["cpu"], registry_->reactors->at(1).cpu()) << status.dump();
  const ublk::DeviceOptions device = registry_->device_base_options(VolumeEntry{});
  EXPECT_EQ(device.queue_loop, ublk::QueueLoop::kExternal);
  EXPECT_EQ(device.queue_host, registry_->queue_host.get());
  // A volume with no local replica: the host's own choice (q mod N).
  EXPECT_TRUE(device.queue_places.empty());
}

// A queue on a reactor that serves none of the volume's replicas would send
// every request to another reactor and back: a device's queues go only to
// the reactors of its replicas, cycling over them in replica order.
TEST_F(ReactorsTest, QueuesRunOnlyOnTheReactorsOfTheVolumesReplicas) {
  ASSERT_NE(add_memory_store("a"), nullptr);  // reactor 0
  ASSERT_NE(add_memory_store("b"), nullptr);  // reactor 1
  ASSERT_NE(add_memory_store("c"), nullptr);  // reactor 0
  const struct {
    const char* name;
    std::vector<std::string> stores;
    std::vector<unsigned> places;
  } cases[] = {
      {"on-b", {"b"}, {1}},
      {"on-a-c", {"a", "c"}, {0}},
      {"on-c-b", {"c", "b"}, {0, 1}},
      {"on-b-a-c", {"b", "a", "c"}, {1, 0}},
  };
  for (const auto& c : cases) {
    ok("volume.create", {{"name", c.name}, {"size", 8 * kMiB}, {"stores", c.stores}});
    auto v = registry_->open_volume_named(c.name);
    ASSERT_TRUE(v.ok()) << v.error().message();
    const ublk::DeviceOptions device = registry_->device_base_options(**v);
    EXPECT_EQ(device.queue_places, c.places) << c.name;
  }
}

TEST_F(ReactorsTest, VolumesOnStoresOnReactorsAreBuiltClosedAndReopened) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  ASSERT_NE(add_memory_store("b"), nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  auto v = registry_->open_volume_named("v");
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ((*v)->engine->info().size_bytes, 8 * kMiB);
  ok("snapshot.create", {{"volume", "v"}, {"name", "s1"}});
  Registry::close_volume(**v);
  ASSERT_TRUE(registry_->reopen_volume(**v).ok());
  EXPECT_TRUE(registry_->open_volume_named("v").ok());
  EXPECT_EQ(registry_->find_store("b")->thread->home_reactor(), &registry_->reactors->at(1));
}

// daemon.status and stats show each reactor's load. Writes submitted from
// this thread (not a reactor) complete on the stores' reactors, which send
// each completion batch back as a message: messages_sent counts them, and
// the busy share of the last interval is a percentage.
TEST_F(ReactorsTest, StatusAndStatsShowEachReactorsLoad) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  ASSERT_NE(add_memory_store("b"), nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  auto v = registry_->open_volume_named("v");
  ASSERT_TRUE(v.ok()) << v.error().message();
  auto queue = (*v)->engine->open_queue(0);
  ASSERT_TRUE(queue.ok()) << queue.error().message();
  std::unique_ptr<std::byte, decltype(&std::free)> buffer(
      static_cast<std::byte*>(std::aligned_alloc(4096, 4096)), &std::free);
  std::memset(buffer.get(), 0x5a, 4096);
  struct Completions {
    int done = 0;
    int failed = 0;
  } completions;
  constexpr int kWrites = 20;
  for (int i = 0; i < kWrites; ++i) {
    engine::VolumeIo io;
    io.op = engine::VolumeOp::kWrite;
    io.offset = static_cast<uint64_t>(i) * 4096;
    io.length = 4096;
    io.buffer = buffer.get();
    io.user_data = &completions;
    io.on_complete = [](engine::VolumeIo& c, int result) {
      auto* counts = static_cast<Completions*>(c.user_data);
      ++counts->done;
      counts->failed += result != 0 ? 1 : 0;
    };
    (*queue)->submit(io);
    (*queue)->kick();
    ASSERT_TRUE(ublkvol::test_support::wait_until(
        [&] {
          (*queue)->reap();
          return completions.done > i;
        },
        std::chrono::seconds(10)))
        << "write " << i;
  }
  EXPECT_EQ(completions.done, kWrites);
  EXPECT_EQ(completions.failed, 0);
  registry_->sample_reactors();
  for (const char* method : {"daemon.status", "stats"}) {
    const Json result = ok(method);
    ASSERT_EQ(result["reactors"].size(), 2U) << method << ": " << result.dump();
    uint64_t messages = 0;
    for (const Json& r : result["reactors"]) {
      messages += r["messages_sent"].get<uint64_t>();
      const double busy = r["busy_percent"].get<double>();
      EXPECT_GE(busy, 0.0) << r.dump();
      EXPECT_LE(busy, 100.0) << r.dump();
      EXPECT_LE(r["busy_seconds"].get<double>(), r["uptime_seconds"].get<double>()) << r.dump();
    }
    // Both replicas completed every write on their reactor: at least one
    // batch each per write (one write in flight at a time).
    EXPECT_GE(messages, 2U * kWrites) << method << ": " << result.dump();
  }
}

TEST_F(ReactorsTest, WithReactorsNullStoresKeepAThreadEach) {
  registry_.reset();
  config_.reactors.reset();
  config_.queues = 1;
  start();
  EXPECT_EQ(registry_->reactors, nullptr);
  EXPECT_EQ(ok("daemon.status")["reactors"], Json::array());
  StoreEntry* s = add_memory_store("a");
  ASSERT_NE(s, nullptr);
  ASSERT_NE(s->thread->home_reactor(), nullptr);
  const ublk::DeviceOptions device = registry_->device_base_options(VolumeEntry{});
  EXPECT_EQ(device.queue_loop, ublk::QueueLoop::kThread);
  EXPECT_TRUE(device.queue_places.empty());
}

}  // namespace
}  // namespace ublkvol::daemon
