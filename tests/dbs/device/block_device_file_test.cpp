// FileDevice on a real block device: a loop device over a file in /tmp,
// configured with 4096-byte logical blocks and direct I/O. Needs root and
// /dev/loop-control (CI containers have both); skipped with a reason
// otherwise.
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <system_error>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/dbs/file_device.h"

#include "temp_file.h"
#include "test_buffers.h"

namespace ublkvol::dbs {
namespace {

// strerror() text without strerror's shared buffer (tests run threads).
std::string errno_text(int errno_value) {
  return std::error_code(errno_value, std::generic_category()).message();
}

using testing::AlignedBuffer;
using testing::TempPath;

constexpr uint64_t kBackingSize = 16 << 20;

// A loop device attached to a backing file; detached (LO_FLAGS_AUTOCLEAR)
// when the last fd on it closes.
class LoopDevice {
 public:
  // Returns an empty path (and a reason) if loop devices are unavailable.
  bool attach(const std::string& backing, uint32_t block_size, std::string* why) {
    UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
    if (!control) {
      *why = std::string("/dev/loop-control: ") + errno_text(errno);
      return false;
    }
    UniqueFd backing_fd(::open(backing.c_str(), O_RDWR | O_CLOEXEC));
    if (!backing_fd) {
      *why = backing + ": " + errno_text(errno);
      return false;
    }
    // Another process may grab the free device between GET_FREE and
    // CONFIGURE: retry a few times.
    for (int attempt = 0; attempt < 10; ++attempt) {
      int index = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
      if (index < 0) {
        *why = std::string("LOOP_CTL_GET_FREE: ") + errno_text(errno);
        return false;
      }
      std::string path = "/dev/loop" + std::to_string(index);
      UniqueFd loop(::open(path.c_str(), O_RDWR | O_CLOEXEC));
      if (!loop) {
        continue;
      }
      loop_config config{};
      config.fd = static_cast<uint32_t>(backing_fd.get());
      config.block_size = block_size;
      config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
      if (::ioctl(loop.get(), LOOP_CONFIGURE, &config) == 0) {
        path_ = path;
        fd_ = std::move(loop);
        return true;
      }
      if (errno != EBUSY) {
        *why = path + ": LOOP_CONFIGURE: " + errno_text(errno);
        return false;
      }
    }
    *why = "no free loop device";
    return false;
  }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd fd_;  // keeps the device attached until the test ends
};

class BlockDeviceFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    UniqueFd fd(::open(backing_.path().c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), kBackingSize), 0);
  }
  uint64_t backing_allocated() {
    struct stat st {};
    EXPECT_EQ(::stat(backing_.path().c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }
  TempPath backing_{"/tmp", "loop-backing"};
};

TEST_F(BlockDeviceFileTest, FullOperationSet) {
  LoopDevice loop;
  std::string why;
  if (!loop.attach(backing_.path(), 4096, &why)) {
    GTEST_SKIP() << "no loop device: " << why;
  }
  auto opened = FileDevice::open(loop.path());
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  FileDevice& device = **opened;
  EXPECT_TRUE(device.is_block_device());
  EXPECT_EQ(device.size_bytes(), kBackingSize);

  // Exclusive claim: a second writable open is refused with a clear message.
  auto second = FileDevice::open(loop.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().errno_value(), EBUSY);
  EXPECT_NE(second.error().message().find("cannot open exclusively"), std::string::npos);
  // ... naming the holder: this process (O_EXCL and the flock of the first open).
  EXPECT_NE(second.error().message().find("this process (pid " + std::to_string(::getpid())),
            std::string::npos)
      << second.error().message();
  // A read-only open (an offline check) is refused too while the writer holds it.
  FileDeviceOptions read_only;
  read_only.read_only = true;
  auto reader = FileDevice::open(loop.path(), read_only);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.error().errno_value(), EBUSY);

  constexpr uint64_t kBytes = 2 << 20;
  AlignedBuffer data(kBytes);
  data.fill_pattern(5);
  ASSERT_TRUE(write_sync(device, 0, data.span()).ok());
  ASSERT_TRUE(write_sync(device, kBytes, data.span().first(4096), /*fua=*/true).ok());
  ASSERT_TRUE(flush_sync(device).ok());
  AlignedBuffer back(kBytes);
  ASSERT_TRUE(read_sync(device, 0, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(5));

  // Discard reaches the backing file as a hole punch (loop's discard).
  uint64_t before = backing_allocated();
  ASSERT_TRUE(discard_sync(device, 1 << 20, 1 << 20).ok());
  EXPECT_EQ(device.counters().discards_ignored, 0u);
  EXPECT_LE(backing_allocated(), before - (1 << 20));
  ASSERT_TRUE(read_sync(device, 1 << 20, back.span().first(1 << 20)).ok());
  for (uint64_t i = 0; i < (1 << 20); ++i) {
    ASSERT_EQ(back[i], std::byte{0}) << i;
  }

  ASSERT_TRUE(write_zeroes_sync(device, 0, 8192).ok());
  ASSERT_TRUE(read_sync(device, 0, back.span().first(size_t{3} * 4096)).ok());
  for (uint64_t i = 0; i < uint64_t{3} * 4096; ++i) {
    ASSERT_EQ(back[i], i < 8192 ? std::byte{0} : AlignedBuffer::pattern_byte(5, i)) << i;
  }
}

TEST_F(BlockDeviceFileTest, RefusesLogicalBlocksLargerThan4096) {
  LoopDevice loop;
  std::string why;
  if (!loop.attach(backing_.path(), 8192, &why)) {
    GTEST_SKIP() << "no loop device with 8192-byte blocks: " << why;
  }
  auto device = FileDevice::open(loop.path());
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.error().message(),
            loop.path() + ": logical block size 8192 is not supported (must be at most 4096)");
}

}  // namespace
}  // namespace ublkvol::dbs
