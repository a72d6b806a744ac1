// Store identity against a real ublk-volumed process (issue 12 item 1): a
// store is one file, whatever path names it, and one DBS store (superblock
// uuid), whatever file holds it. Every alias of a live store's file - the same
// path, d/../d/x, //x, /./x, a symlink, a hard link - is refused by store.add,
// with and without format, and so is a byte copy of its image; after all of
// them the first store's volumes and snapshots survive restarts and its check
// is clean. --format refuses a file holding a store or a filesystem unless
// forced.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "daemon_fixture.h"

namespace ublkvol::daemon {
namespace {

using test_support::DaemonTest;
using test_support::kMiB;
namespace fs = std::filesystem;

// The uuid in the superblock (format.h: offset 32, 16 bytes), as text.
std::string superblock_uuid(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(32);
  unsigned char bytes[16] = {};
  in.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
  std::string out;
  char hex[3];
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out += '-';
    }
    (void)std::snprintf(hex, sizeof(hex), "%02x", bytes[i]);
    out += hex;
  }
  return out;
}

class StoreIdentityTest : public DaemonTest {
 protected:
  void expect_first_store_intact() {
    const Json s0 = ok("store.show", {{"name", "s0"}});
    EXPECT_EQ(s0["state"], "online") << s0.dump();
    EXPECT_EQ(s0["path"], path0_);
    EXPECT_EQ(ok("store.check", {{"name", "s0"}})["ok"], true);
    EXPECT_EQ(ok("store.list")["stores"].size(), 2u);
    const Json v = ok("volume.show", {{"name", "v"}});
    EXPECT_EQ(v["in_sync"], 2) << v.dump();
    EXPECT_EQ(v["online"], true);
    ASSERT_EQ(v["snapshots"].size(), 1u) << v.dump();
    EXPECT_EQ(v["snapshots"][0], "snap");
    EXPECT_EQ(ok("volume.show", {{"name", "c"}})["in_sync"], 2);
  }

  std::string path0_;
};

TEST_F(StoreIdentityTest, EveryAliasOfALiveStoreIsRefused) {
  fs::create_directories(dir_ + "/d");
  path0_ = dir_ + "/d/s0.img";
  start();
  ok("store.add", {{"name", "s0"}, {"path", path0_}, {"format", true}, {"size", 96 * kMiB}});
  ok("store.add",
     {{"name", "s1"}, {"path", dir_ + "/s1.img"}, {"format", true}, {"size", 96 * kMiB}});
  ok("volume.create", {{"name", "v"}, {"size", 16 * kMiB}, {"stores", {"s0", "s1"}}});
  ok("snapshot.create", {{"volume", "v"}, {"name", "snap"}});
  ok("snapshot.clone", {{"volume", "v"}, {"snapshot", "snap"}, {"clone", "c"}});
  // The store's uuid is its superblock's.
  EXPECT_EQ(ok("store.show", {{"name", "s0"}})["uuid"], superblock_uuid(path0_));

  ASSERT_EQ(::symlink(path0_.c_str(), (dir_ + "/link.img").c_str()), 0);
  ASSERT_EQ(::link(path0_.c_str(), (dir_ + "/hard.img").c_str()), 0);
  const std::vector<std::string> aliases = {
      path0_,                   // the same path
      dir_ + "/d/../d/s0.img",  // d/../d/x
      "/" + path0_,             // //x
      dir_ + "/./d/s0.img",     // /./x
      dir_ + "/link.img",       // a symlink
      dir_ + "/hard.img",       // a hard link
  };
  const std::string same = "is the same file as store 's0' (" + path0_ + ")";
  for (size_t i = 0; i < aliases.size(); ++i) {
    // A name of its own per attempt: the code before the fix accepted some,
    // each must be seen refused on its own.
    const std::string& alias = aliases[i];
    const std::string x = "x" + std::to_string(i);
    SCOPED_TRACE(alias);
    refused("store.add", {{"name", x + "a"}, {"path", alias}}, "already_exists", same);
    refused("store.add", {{"name", x + "b"}, {"path", alias}, {"format", true}}, "already_exists",
            same + "; refusing to format a live store");
    refused("store.add", {{"name", x + "c"}, {"path", alias}, {"format", true}, {"force", true}},
            "already_exists", same);
  }
  EXPECT_EQ(ok("store.check", {{"name", "s0"}})["ok"], true);
  EXPECT_EQ(stop(SIGKILL), 128 + SIGKILL);
  start();
  expect_first_store_intact();

  // A byte copy of the (cleanly closed) image is the same DBS store.
  EXPECT_EQ(stop(), 0);
  fs::copy_file(path0_, dir_ + "/copy.img");
  start();
  refused("store.add", {{"name", "x"}, {"path", dir_ + "/copy.img"}}, "already_exists",
          "holds DBS store uuid " + superblock_uuid(path0_) + ", the same as store 's0' (" +
              path0_ + "): a copy");
  expect_first_store_intact();
  EXPECT_EQ(stop(), 0);
  start();
  expect_first_store_intact();
  EXPECT_EQ(stop(), 0);
}

TEST_F(StoreIdentityTest, FormatRefusesAStoreOrAFilesystemUnlessForced) {
  start();
  const std::string old_store = dir_ + "/old.img";
  ok("store.add", {{"name", "o"}, {"path", old_store}, {"format", true}, {"size", 64 * kMiB}});
  const std::string uuid = superblock_uuid(old_store);
  ok("store.remove", {{"name", "o"}});
  refused("store.add", {{"name", "o"}, {"path", old_store}, {"format", true}}, "already_exists",
          old_store + " holds a DBS store (uuid " + uuid + "); formatting would erase it");
  EXPECT_EQ(superblock_uuid(old_store), uuid);  // untouched
  refused("store.add", {{"name", "o"}, {"path", old_store}, {"force", true}}, "invalid_argument",
          "'force' is only allowed with format");

  // An ext4 superblock magic at byte 1080.
  const std::string fs_image = dir_ + "/ext4.img";
  {
    std::ofstream out(fs_image, std::ios::binary);
    std::string bytes(64 * kMiB, '\0');
    bytes[1080] = '\x53';
    bytes[1081] = '\xef';
    out << bytes;
  }
  refused("store.add", {{"name", "e"}, {"path", fs_image}, {"format", true}}, "already_exists",
          "holds an ext2/3/4 filesystem");
  // Forced: formatted (the old store gets a new uuid).
  const Json forced =
      ok("store.add", {{"name", "e"}, {"path", fs_image}, {"format", true}, {"force", true}});
  EXPECT_EQ(forced["state"], "online");
  const Json reformatted =
      ok("store.add", {{"name", "o"}, {"path", old_store}, {"format", true}, {"force", true}});
  EXPECT_NE(reformatted["uuid"], uuid);
  EXPECT_EQ(reformatted["uuid"], superblock_uuid(old_store));
  EXPECT_EQ(stop(), 0);
}

}  // namespace
}  // namespace ublkvol::daemon
