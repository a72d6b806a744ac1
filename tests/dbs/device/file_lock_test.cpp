// One owner per store, enforced by the kernel (issue 12, item 1): a
// FileDevice opened for writing holds an exclusive flock on the file for its
// whole life, so a second open of the same inode is refused - whatever the
// path spelling (same path, d/../d/x, //x, /./x, a symlink, a hard link),
// in this process or another one - and a read-only open (offline check) is
// refused while a writer holds it. The refusal is EBUSY and names the holder
// (pid and command name). Destroying the device releases the lock at once.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "ublkvol/dbs/device_users.h"
#include "ublkvol/dbs/file_device.h"

#include "temp_file.h"
#include "test_buffers.h"

namespace ublkvol::dbs {
namespace {

constexpr uint64_t kSize = 1 << 20;

class FileLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FileDeviceOptions options;
    options.create_size = kSize;
    auto created = FileDevice::open(file_.path(), options);
    ASSERT_TRUE(created.ok()) << created.error().to_string();
  }

  static std::unique_ptr<FileDevice> open_ok(const std::string& path, bool read_only = false) {
    FileDeviceOptions options;
    options.read_only = read_only;
    auto device = FileDevice::open(path, options);
    EXPECT_TRUE(device.ok()) << path << ": " << device.error().to_string();
    return device.ok() ? std::move(*device) : nullptr;
  }

  // Expects `path` to be refused with EBUSY naming `holder` (pid) and its
  // command name.
  static void expect_refused(const std::string& path, pid_t holder, bool read_only = false) {
    FileDeviceOptions options;
    options.read_only = read_only;
    auto device = FileDevice::open(path, options);
    ASSERT_FALSE(device.ok()) << path << " opened while another owner holds it";
    EXPECT_EQ(device.error().errno_value(), EBUSY) << device.error().to_string();
    const std::string& message = device.error().message();
    EXPECT_NE(message.find("pid " + std::to_string(holder)), std::string::npos) << message;
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("dbs_device_test"), std::string::npos)
        << "the holder's command name is missing: " << message;
  }

  testing::TempPath file_{"/tmp", "lock"};
};

TEST_F(FileLockTest, SecondOpenThroughAnyAliasIsRefused) {
  const std::string& path = file_.path();  // /tmp/ublkvol-test-lock-...
  const std::string base = path.substr(path.rfind('/') + 1);
  testing::TempPath symlink_path("/tmp", "lock-symlink");
  testing::TempPath hardlink_path("/tmp", "lock-hardlink");
  ASSERT_EQ(::symlink(path.c_str(), symlink_path.path().c_str()), 0);
  ASSERT_EQ(::link(path.c_str(), hardlink_path.path().c_str()), 0);
  const std::vector<std::string> aliases = {
      path,                   // the same spelling
      "/tmp/../tmp/" + base,  // d/../d/x
      "/" + path,             // //x
      "/./tmp/./" + base,     // /./x
      symlink_path.path(),    // a symlink
      hardlink_path.path(),   // a hard link
  };
  auto owner = open_ok(path);
  ASSERT_NE(owner, nullptr);
  for (const std::string& alias : aliases) {
    SCOPED_TRACE(alias);
    expect_refused(alias, ::getpid());
  }
  // And the other way round: owned through an alias, the plain path is refused.
  owner.reset();
  auto through_link = open_ok(hardlink_path.path());
  ASSERT_NE(through_link, nullptr);
  expect_refused(path, ::getpid());
}

TEST_F(FileLockTest, ReadOnlyOpenIsRefusedWhileAWriterHoldsIt) {
  auto owner = open_ok(file_.path());
  ASSERT_NE(owner, nullptr);
  expect_refused(file_.path(), ::getpid(), /*read_only=*/true);
}

TEST_F(FileLockTest, ReadersShareButExcludeAWriter) {
  auto reader1 = open_ok(file_.path(), true);
  auto reader2 = open_ok(file_.path(), true);
  ASSERT_NE(reader1, nullptr);
  ASSERT_NE(reader2, nullptr);
  expect_refused(file_.path(), ::getpid());
}

TEST_F(FileLockTest, LockIsReleasedWhenTheDeviceIsDestroyed) {
  for (int i = 0; i < 3; ++i) {
    auto device = open_ok(file_.path());
    ASSERT_NE(device, nullptr);
    testing::AlignedBuffer block(4096);
    // I/O through the registered file: the ring holds a reference to it.
    ASSERT_TRUE(write_sync(*device, 0, block.span()).ok());
  }
  // Each reopen above worked at once; so does one of another kind.
  EXPECT_NE(open_ok(file_.path(), true), nullptr);
}

TEST_F(FileLockTest, IdentityIsTheInodeWhateverThePath) {
  testing::TempPath symlink_path("/tmp", "lock-symlink");
  ASSERT_EQ(::symlink(file_.path().c_str(), symlink_path.path().c_str()), 0);
  DeviceIdentity first;
  {
    auto device = open_ok(file_.path());
    ASSERT_NE(device, nullptr);
    first = device->identity();
  }
  auto device = open_ok(symlink_path.path());
  ASSERT_NE(device, nullptr);
  EXPECT_TRUE(device->identity() == first);
  struct stat st {};
  ASSERT_EQ(::stat(file_.path().c_str(), &st), 0);
  EXPECT_EQ(first.dev, st.st_dev);
  EXPECT_EQ(first.ino, st.st_ino);
  EXPECT_FALSE(first.block_device);
}

// A second daemon: another process owns the file. Its open is refused naming
// that process; once the process has exited, the file opens again (waiting
// for the kernel to drop the dead owner's io_uring file reference if needed).
TEST_F(FileLockTest, AnotherProcessIsRefusedAndNamed) {
  int ready[2];
  int release[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(release, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(release[1]);  // or the parent's close would not end our read
    ::close(ready[0]);
    auto device = FileDevice::open(file_.path());
    char status = device.ok() ? 'y' : 'n';
    (void)!::write(ready[1], &status, 1);
    char byte = 0;
    (void)!::read(release[0], &byte, 1);  // until the parent is done
    ::_exit(device.ok() ? 0 : 1);
  }
  ::close(ready[1]);
  ::close(release[0]);
  char status = 0;
  ASSERT_EQ(::read(ready[0], &status, 1), 1);
  ASSERT_EQ(status, 'y') << "the child could not open the file";
  expect_refused(file_.path(), child);
  expect_refused(file_.path(), child, /*read_only=*/true);
  const std::string users = describe_device_users(file_.path());
  EXPECT_NE(users.find("pid " + std::to_string(child)), std::string::npos) << users;
  ::close(release[1]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  ::close(ready[0]);
  EXPECT_NE(open_ok(file_.path()), nullptr);
}

}  // namespace
}  // namespace ublkvol::dbs
