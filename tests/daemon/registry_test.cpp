// The registry (src/daemon/registry.h) in-process over memory stores:
// lookup by name, the state it persists, the stores it refuses.
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;
using test_support::kMiB;

class RegistryTest : public InProcessTest {};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(RegistryTest, LookupByName) {
  StoreEntry* a = add_memory_store("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(registry_->find_store("a"), a);
  EXPECT_EQ(registry_->find_store("b"), nullptr);
  auto missing = registry_->store_named("b");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_EQ(missing.error().message(), "store 'b' does not exist");
  auto online = registry_->online_store_named("a");
  ASSERT_TRUE(online.ok()) << online.error().message();
  EXPECT_EQ(*online, a);
  auto no_volume = registry_->volume_named("v");
  ASSERT_FALSE(no_volume.ok());
  EXPECT_EQ(no_volume.error().message(), "volume 'v' does not exist");
  EXPECT_TRUE(registry_->check_new_volume_name("v").ok());
  EXPECT_EQ(registry_->check_new_volume_name("v.engine-meta").error().errno_value(), EINVAL);
}

TEST_F(RegistryTest, EveryChangeIsSaved) {
  StoreEntry* a = add_memory_store("a");
  ASSERT_NE(a, nullptr);
  const std::string state_path = config_.state_dir + "/state.json";
  std::string state = read_file(state_path);
  EXPECT_NE(state.find("\"memory:a\""), std::string::npos) << state;
  EXPECT_NE(state.find(a->uuid), std::string::npos) << state;
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  state = read_file(state_path);
  EXPECT_NE(state.find("\"v\""), std::string::npos) << state;
  const DaemonState snapshot = registry_->snapshot_state();
  ASSERT_EQ(snapshot.volumes.size(), 1U);
  EXPECT_EQ(snapshot.volumes[0].stores, std::vector<std::string>{"a"});
  EXPECT_EQ(snapshot.volumes[0].size_bytes, 8 * kMiB);
}

// Zero copy (docs/zero-copy.md): only a store on a FileDevice takes the
// queue's window addresses; the engine is told so through the binding.
TEST_F(RegistryTest, ReplicasOnFileStoresAreBoundForFixedBufferIo) {
  StoreEntry* memory = add_memory_store("m");
  ASSERT_NE(memory, nullptr);
  EXPECT_FALSE(memory->binding(nullptr).fixed_buffer_io);
  char path[] = "/dev/shm/ublkvol-registry-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ::unlink(path);  // store.add creates it
  ok("store.add", {{"name", "f"}, {"path", path}, {"format", true}, {"size", 64 * kMiB}});
  StoreEntry* file = registry_->find_store("f");
  ASSERT_NE(file, nullptr);
  const engine::ReplicaBinding b = file->binding(nullptr);
  EXPECT_TRUE(b.fixed_buffer_io);
  EXPECT_EQ(b.thread, file->thread.get());
  ::unlink(path);
}

TEST_F(RegistryTest, ACopyOfAStoreIsRefused) {
  StoreEntry* a = add_memory_store("a");
  ASSERT_NE(a, nullptr);
  // The image of store a, taken on its thread (the thread owns the device).
  std::vector<std::byte> image;
  ASSERT_TRUE(a->thread
                  ->call([&] {
                    image = static_cast<dbs::MemoryDevice&>(*a->device).snapshot();
                    return ok_status();
                  })
                  .ok());
  auto copy = registry_->add_open_store("b", "memory:b",
                                        std::make_unique<dbs::MemoryDevice>(std::move(image)));
  ASSERT_FALSE(copy.ok());
  EXPECT_EQ(copy.error().errno_value(), EEXIST);
  EXPECT_NE(copy.error().message().find("a copy of that store's image"), std::string::npos)
      << copy.error().message();
  EXPECT_EQ(registry_->find_store("b"), nullptr);
}

TEST_F(RegistryTest, VolumesAreBuiltAndClosed) {
  ASSERT_NE(add_memory_store("a"), nullptr);
  ASSERT_NE(add_memory_store("b"), nullptr);
  ok("volume.create", {{"name", "v"}, {"size", 8 * kMiB}, {"stores", {"a", "b"}}});
  auto v = registry_->open_volume_named("v");
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ((*v)->replica_stores(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ((*v)->engine->info().size_bytes, 8 * kMiB);
  EXPECT_EQ(registry_->replicas_on(*registry_->find_store("b")), std::set<std::string>{"v"});
  Registry::close_volume(**v);
  EXPECT_EQ((*v)->engine, nullptr);
  auto closed = registry_->open_volume_named("v");
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().errno_value(), EIO);
  ASSERT_TRUE(registry_->reopen_volume(**v).ok());
  EXPECT_TRUE(registry_->open_volume_named("v").ok());
}

}  // namespace
}  // namespace ublkvol::daemon
