// The one stack assembly (src/stack) on real store files (O_DIRECT,
// io_uring): a new store is created, formatted, checked and gets its thread;
// a replica and the engine go on top; reopening finds them; a damaged store
// is refused as corruption and a foreign file as an invalid argument, both
// naming the file, neither changing it.
#include "ublkvol/stack/store_stack.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>

namespace ublkvol::stack {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1ULL << 20U;

class StoreStackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(fs::exists("/dev/shm") ? "/dev/shm" : ::testing::TempDir()) /
           ("ublkvol-stack-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "store").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A new 64 MiB store file with replica "v" of 8 MiB; closed again.
  void make_store_with_replica() {
    StoreOptions options;
    options.device.create_size = 64 * kMiB;
    options.format = true;
    auto store = open_store(path_, options);
    ASSERT_TRUE(store.ok()) << store.error().message();
    ASSERT_TRUE(create_replica(*store, "v", 8 * kMiB).ok());
  }

  static std::string contents(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(StoreStackTest, NewStoreCarriesAReplicaAndAVolume) {
  make_store_with_replica();
  auto store = open_store(path_, StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.error().message();
  ASSERT_TRUE(store->is_open());
  auto replica = open_replica(*store, "v");
  ASSERT_TRUE(replica.ok()) << replica.error().message();
  ASSERT_TRUE(store->thread().attach(**replica).ok());
  engine::ReplicatedVolumeOptions options;
  options.name = "v";
  options.queues = 1;
  options.queue_depth = 4;
  auto volume = open_volume(options, {{replica->get(), &store->thread()}});
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  const engine::VolumeStatus status = (*volume)->status();
  EXPECT_EQ(status.size_bytes, 8 * kMiB);
  EXPECT_EQ(status.in_sync, 1u);
  ASSERT_TRUE((*volume)->close().ok());
  volume->reset();
  ASSERT_TRUE(store->thread().detach(**replica).ok());
  ASSERT_TRUE(store
                  ->run([&](dbs::Store&) {
                    replica->reset();  // destroyed on the thread that owns the store
                    return ok_status();
                  })
                  .ok());
  store->close();
  EXPECT_FALSE(store->is_open());
}

TEST_F(StoreStackTest, MissingReplicaIsNotFoundNamingTheStore) {
  make_store_with_replica();
  auto store = open_store(path_, StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.error().message();
  auto replica = open_replica(*store, "nope");
  ASSERT_FALSE(replica.ok());
  EXPECT_EQ(replica.error().kind(), ErrorKind::kNotFound) << replica.error().message();
  EXPECT_NE(replica.error().message().find(path_), std::string::npos) << replica.error().message();
}

TEST_F(StoreStackTest, DamagedStoreIsRefusedAsCorruption) {
  make_store_with_replica();
  {
    std::fstream file(path_, std::ios::in | std::ios::out | std::ios::binary);
    for (const std::streamoff block : {0, 1}) {
      file.seekp(block * 4096 + 4000);
      file.put('\x5a');
    }
  }
  const std::string before = contents(path_);
  StoreOptions options;
  options.what = "store 'x' (" + path_ + ")";
  auto store = open_store(path_, options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind(), ErrorKind::kCorruption) << store.error().message();
  EXPECT_NE(store.error().message().find("store 'x' (" + path_ + ") is not a usable DBS store"),
            std::string::npos)
      << store.error().message();
  EXPECT_NE(store.error().message().find("checksum mismatch"), std::string::npos)
      << store.error().message();
  EXPECT_EQ(contents(path_), before);
}

TEST_F(StoreStackTest, ForeignFileIsAnInvalidArgument) {
  { std::ofstream(path_, std::ios::binary) << std::string(1 << 20, '\0'); }
  auto store = open_store(path_, StoreOptions{});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind(), ErrorKind::kInvalidArgument) << store.error().message();
  EXPECT_NE(store.error().message().find("not a DBS store"), std::string::npos)
      << store.error().message();
  EXPECT_EQ(contents(path_), std::string(1 << 20, '\0'));
}

}  // namespace
}  // namespace ublkvol::stack
