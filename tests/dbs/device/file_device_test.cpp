#include "ublkvol/dbs/file_device.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "temp_file.h"
#include "test_buffers.h"

namespace ublkvol::dbs {
namespace {

using testing::AlignedBuffer;
using testing::Completion;
using testing::make_request;
using testing::TempPath;

constexpr uint64_t kFileSize = 8 << 20;
// Block-sized buffers and offsets are computed in size_t, never in int.
constexpr size_t kBlock = 4096;

std::unique_ptr<FileDevice> open_or_die(const std::string& path, FileDeviceOptions options) {
  auto device = FileDevice::open(path, options);
  EXPECT_TRUE(device.ok()) << (device.ok() ? "" : device.error().to_string());
  return device.ok() ? std::move(*device) : nullptr;
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// Polls until nothing is in flight; returns the number of poll() calls.
unsigned drain(BlockDevice& device) {
  unsigned polls = 0;
  while (device.in_flight() > 0) {
    device.poll(/*wait=*/true);
    ++polls;
  }
  return polls;
}

// Runs every test on a disk-backed file (/tmp) and on tmpfs (/dev/shm):
// both support O_DIRECT here, but take different kernel paths.
class FileDeviceTest : public ::testing::TestWithParam<std::string> {
 protected:
  FileDeviceOptions options_with_size(uint64_t size = kFileSize) {
    FileDeviceOptions options;
    options.create_size = size;
    return options;
  }
  TempPath temp_{GetParam()};
};

TEST_P(FileDeviceTest, OpenCreatesFileWithGeometry) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size_bytes(), kFileSize);
  EXPECT_EQ(device->block_size(), 4096u);
  EXPECT_EQ(device->name(), temp_.path());
  EXPECT_FALSE(device->is_block_device());
  struct stat st {};
  ASSERT_EQ(::stat(temp_.path().c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kFileSize);
}

TEST_P(FileDeviceTest, ReadAfterWrite) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(16 * kBlock);
  data.fill_pattern(42);
  ASSERT_TRUE(write_sync(*device, 1 << 20, data.span()).ok());
  AlignedBuffer back(16 * kBlock);
  ASSERT_TRUE(read_sync(*device, 1 << 20, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(42));

  // The bytes really are in the file, at that offset (plain pread, other fd).
  int fd = ::open(temp_.path().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::vector<std::byte> raw(4096);
  ASSERT_EQ(::pread(fd, raw.data(), raw.size(), (1 << 20) + 4096), 4096);
  ::close(fd);
  for (size_t i = 0; i < raw.size(); ++i) {
    ASSERT_EQ(raw[i], data[4096 + i]) << i;
  }
}

TEST_P(FileDeviceTest, ManyRequestsInFlightAreBatched) {
  FileDeviceOptions options = options_with_size();
  options.queue_depth = 32;
  auto device = open_or_die(temp_.path(), options);
  ASSERT_NE(device, nullptr);
  constexpr size_t kRequests = 300;  // > queue depth: most wait in the queue
  AlignedBuffer data(kRequests * 4096);
  for (size_t i = 0; i < kRequests; ++i) {
    AlignedBuffer block(4096);
    block.fill_pattern(i);
    std::memcpy(data.data() + i * 4096, block.data(), 4096);
  }
  std::vector<Completion> done(kRequests);
  std::vector<IoRequest> requests(kRequests);
  for (size_t i = 0; i < kRequests; ++i) {
    // Scattered offsets: block i goes to block (i * 7) % 1024.
    requests[i] =
        make_request(IoOp::kWrite, ((i * 7) % 1024) * 4096, 4096, data.data() + i * 4096, &done[i]);
    device->submit(requests[i]);
  }
  EXPECT_EQ(device->in_flight(), kRequests);
  device->kick();
  EXPECT_EQ(device->counters().submit_calls, 1u) << "one kick = one io_uring_submit";
  EXPECT_EQ(device->counters().sqes_submitted, 32u) << "queue depth bounds the ring";
  unsigned polls = drain(*device);
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(done[i].result, 0) << i;
  }
  EXPECT_EQ(device->counters().sqes_submitted, kRequests);
  // However the kernel spreads completions over time (tmpfs completes them
  // one by one from io-wq; ext4 in bursts), each poll() costs at most one
  // submit plus one submit-and-wait, whatever the number of requests it
  // refills.
  EXPECT_LE(device->counters().submit_calls, 1 + 2 * polls);

  // Read them all back, all in flight at once.
  AlignedBuffer back(kRequests * 4096);
  std::vector<Completion> read_done(kRequests);
  for (size_t i = 0; i < kRequests; ++i) {
    requests[i] = make_request(IoOp::kRead, ((i * 7) % 1024) * 4096, 4096, back.data() + i * 4096,
                               &read_done[i]);
    device->submit(requests[i]);
  }
  drain(*device);
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(read_done[i].result, 0) << i;
    ASSERT_EQ(std::memcmp(back.data() + i * 4096, data.data() + i * 4096, 4096), 0) << i;
  }
}

TEST_P(FileDeviceTest, FuaAndFlushComplete) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(4096);
  data.fill_pattern(3);
  ASSERT_TRUE(write_sync(*device, 0, data.span(), /*fua=*/true).ok());
  ASSERT_TRUE(write_sync(*device, 4096, data.span()).ok());
  ASSERT_TRUE(flush_sync(*device).ok());
  AlignedBuffer back(2 * kBlock);
  ASSERT_TRUE(read_sync(*device, 0, back.span()).ok());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 4096), 0);
  EXPECT_EQ(std::memcmp(back.data() + 4096, data.data(), 4096), 0);
}

TEST_P(FileDeviceTest, DiscardReadsZerosAndFreesSpace) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  constexpr uint64_t kBytes = 2 << 20;
  AlignedBuffer data(kBytes);
  data.fill(std::byte{0x77});
  ASSERT_TRUE(write_sync(*device, 0, data.span()).ok());
  ASSERT_TRUE(flush_sync(*device).ok());
  uint64_t before = allocated_bytes(temp_.path());
  ASSERT_GE(before, kBytes);

  ASSERT_TRUE(discard_sync(*device, 1 << 20, 1 << 20).ok());
  EXPECT_EQ(device->counters().discards_ignored, 0u);
  uint64_t after = allocated_bytes(temp_.path());
  EXPECT_LE(after, before - (1 << 20)) << "st_blocks must shrink by the discarded MiB";

  AlignedBuffer back(kBytes);
  ASSERT_TRUE(read_sync(*device, 0, back.span()).ok());
  for (uint64_t i = 0; i < kBytes; ++i) {
    ASSERT_EQ(back[i], i < (1 << 20) ? std::byte{0x77} : std::byte{0}) << i;
  }
}

TEST_P(FileDeviceTest, WriteZeroesReadsZeros) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(8 * kBlock);
  data.fill(std::byte{0x11});
  ASSERT_TRUE(write_sync(*device, 0, data.span()).ok());
  ASSERT_TRUE(write_zeroes_sync(*device, 2 * kBlock, 3 * kBlock).ok());
  AlignedBuffer back(8 * kBlock);
  ASSERT_TRUE(read_sync(*device, 0, back.span()).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    size_t block = i / 4096;
    ASSERT_EQ(back[i], (block >= 2 && block < 5) ? std::byte{0} : std::byte{0x11}) << i;
  }
  // A second write-zeroes takes the same (possibly fallen-back) path.
  ASSERT_TRUE(write_zeroes_sync(*device, 0, 4096).ok());
  ASSERT_TRUE(read_sync(*device, 0, back.span().first(4096)).ok());
  for (size_t i = 0; i < 4096; ++i) {
    ASSERT_EQ(back[i], std::byte{0});
  }
}

TEST_P(FileDeviceTest, InvalidRequestsFailWithEinval) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer buf(2 * kBlock);
  struct Case {
    const char* what;
    IoOp op;
    uint64_t offset;
    uint64_t length;
    std::byte* buffer;
  };
  const std::vector<Case> cases = {
      {"unaligned offset", IoOp::kRead, 100, 4096, buf.data()},
      {"unaligned length", IoOp::kWrite, 0, 4097, buf.data()},
      {"unaligned buffer", IoOp::kRead, 0, 4096, buf.data() + 8},
      {"past end", IoOp::kRead, kFileSize, 4096, buf.data()},
      {"straddles end", IoOp::kDiscard, kFileSize - 4096, 8192, nullptr},
      {"zero length", IoOp::kWriteZeroes, 0, 0, nullptr},
  };
  std::vector<Completion> done(cases.size());
  std::vector<IoRequest> requests(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    requests[i] =
        make_request(cases[i].op, cases[i].offset, cases[i].length, cases[i].buffer, &done[i]);
    device->submit(requests[i]);
  }
  EXPECT_EQ(device->poll(false), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(done[i].result, -EINVAL) << cases[i].what;
  }
  EXPECT_EQ(device->counters().sqes_submitted, 0u) << "invalid requests never reach the kernel";
}

TEST_P(FileDeviceTest, CompletionFdSignalsCompletions) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  int fd = device->completion_fd();
  ASSERT_GE(fd, 0);
  EXPECT_EQ(device->completion_fd(), fd);
  AlignedBuffer buf(4096);
  Completion done;
  IoRequest request = make_request(IoOp::kRead, 0, 4096, buf.data(), &done);
  device->submit(request);
  device->kick();
  pollfd pfd{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10'000), 1) << "completion never signalled";
  EXPECT_EQ(device->poll(false), 1u);
  EXPECT_EQ(done.result, 0);
  pfd.revents = 0;
  EXPECT_EQ(::poll(&pfd, 1, 0), 0) << "poll() must consume the wakeup";
}

// poll() skips resetting the completion eventfd when it saw no activity;
// the fd must still be readable exactly when completions wait.
TEST_P(FileDeviceTest, CompletionFdStaysAccurateAcrossIdlePolls) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  const int fd = device->completion_fd();
  ASSERT_GE(fd, 0);
  AlignedBuffer buf(4096);
  for (int round = 0; round < 3; ++round) {
    Completion done;
    IoRequest request = make_request(IoOp::kRead, kBlock * round, 4096, buf.data(), &done);
    device->submit(request);
    device->kick();
    pollfd pfd{fd, POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 10'000), 1) << "round " << round << ": completion never signalled";
    EXPECT_EQ(device->poll(false), 1u);
    EXPECT_EQ(done.result, 0);
    for (int idle = 0; idle < 3; ++idle) {
      EXPECT_EQ(device->poll(false), 0u);
      pfd.revents = 0;
      EXPECT_EQ(::poll(&pfd, 1, 0), 0) << "round " << round << ": readable with nothing to do";
    }
  }
}

// Batched waits (wait_batch): a lone request still completes (the wait for
// a batch of 16 must not hang on 1), and a deep queue drains with every
// request completed once and its data right.
TEST_P(FileDeviceTest, BatchedWaitCompletesEverything) {
  FileDeviceOptions options = options_with_size();
  options.queue_depth = 64;
  options.wait_batch = 16;
  options.wait_batch_usec = 200;
  auto device = open_or_die(temp_.path(), options);
  ASSERT_NE(device, nullptr);
  AlignedBuffer one(4096);
  one.fill_pattern(3);
  ASSERT_TRUE(write_sync(*device, 0, one.span()).ok()) << "a lone request must not wait for 16";
  constexpr size_t kRequests = 64;
  AlignedBuffer data(kRequests * 4096);
  std::vector<Completion> done(kRequests);
  std::vector<IoRequest> requests(kRequests);
  for (size_t i = 0; i < kRequests; ++i) {
    requests[i] = make_request(IoOp::kRead, 0, 4096, data.data() + i * 4096, &done[i]);
    device->submit(requests[i]);
  }
  drain(*device);
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(done[i].result, 0) << i;
    ASSERT_TRUE(done[i].done) << i;
    ASSERT_EQ(std::memcmp(data.data() + i * 4096, one.data(), 4096), 0) << i;
  }
}

// submit_batch: the owning thread's submit() enters the kernel once that
// many requests are prepared; 0 leaves everything for kick()/poll(); another
// thread's submit() never enters a ring it does not own.
TEST_P(FileDeviceTest, SubmitBatchSendsEarlyOnlyFromTheOwner) {
  for (unsigned submit_batch : {0u, 1u, 4u}) {
    SCOPED_TRACE("submit_batch " + std::to_string(submit_batch));
    FileDeviceOptions options = options_with_size();
    options.submit_batch = submit_batch;
    auto device = open_or_die(temp_.path(), options);
    ASSERT_NE(device, nullptr);
    AlignedBuffer data(10 * kBlock);
    data.fill_pattern(submit_batch);
    std::vector<Completion> done(10);
    std::vector<IoRequest> requests(10);
    // Not yet owned by any thread: queued until the first kick()/poll().
    requests[0] = make_request(IoOp::kWrite, 0, 4096, data.data(), &done[0]);
    device->submit(requests[0]);
    EXPECT_EQ(device->counters().sqes_submitted, 0u);
    drain(*device);  // binds the ring to this thread
    ASSERT_EQ(done[0].result, 0);
    const uint64_t calls_before = device->counters().submit_calls;
    for (size_t i = 1; i < 9; ++i) {
      requests[i] = make_request(IoOp::kWrite, i * 4096, 4096, data.data() + i * 4096, &done[i]);
      device->submit(requests[i]);
    }
    if (submit_batch == 0) {
      EXPECT_EQ(device->counters().sqes_submitted, 1u);
      EXPECT_EQ(device->counters().submit_calls, calls_before);
    } else {
      EXPECT_EQ(device->counters().sqes_submitted, 9u);
      EXPECT_EQ(device->counters().submit_calls, calls_before + 8 / submit_batch);
    }
    // From a thread that does not own the ring: queued, not entered.
    requests[9] = make_request(IoOp::kWrite, 9 * kBlock, 4096, data.data() + 9 * kBlock, &done[9]);
    std::thread other([&] { device->submit(requests[9]); });
    other.join();
    EXPECT_EQ(device->counters().sqes_submitted, submit_batch == 0 ? 1u : 9u);
    drain(*device);
    EXPECT_EQ(device->counters().sqes_submitted, 10u);
    AlignedBuffer back(10 * kBlock);
    ASSERT_TRUE(read_sync(*device, 0, back.span()).ok());
    for (size_t i = 0; i < 10; ++i) {
      ASSERT_EQ(done[i].result, 0) << i;
    }
    EXPECT_EQ(std::memcmp(back.data(), data.data(), back.size()), 0);
  }
}

TEST_P(FileDeviceTest, RegisteredBuffersAreUsed) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer pool(8 * kBlock);
  std::vector<std::span<std::byte>> regions = {pool.span()};
  ASSERT_TRUE(device->register_buffers(regions).ok());
  pool.fill_pattern(9);
  ASSERT_TRUE(write_sync(*device, 4096, pool.span().subspan(0, 2 * kBlock)).ok());
  AlignedBuffer outside(2 * kBlock);
  ASSERT_TRUE(read_sync(*device, 4096, outside.span()).ok());
  EXPECT_EQ(std::memcmp(outside.data(), pool.data(), 2 * kBlock), 0);
  ASSERT_TRUE(read_sync(*device, 4096, pool.span().subspan(4 * kBlock, 2 * kBlock)).ok());
  EXPECT_EQ(std::memcmp(pool.data() + 4 * kBlock, pool.data(), 2 * kBlock), 0);
  EXPECT_EQ(device->counters().fixed_buffer_ios, 2u);
}

TEST_P(FileDeviceTest, ReadOnlyRefusesWrites) {
  { ASSERT_NE(open_or_die(temp_.path(), options_with_size()), nullptr); }
  FileDeviceOptions options;
  options.read_only = true;
  auto device = open_or_die(temp_.path(), options);
  ASSERT_NE(device, nullptr);
  AlignedBuffer buf(4096);
  ASSERT_TRUE(read_sync(*device, 0, buf.span()).ok());
  Status write = write_sync(*device, 0, buf.span());
  ASSERT_FALSE(write.ok());
  EXPECT_EQ(write.error().errno_value(), EBADF);
}

TEST_P(FileDeviceTest, TruncatedUnderneathGivesEio) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  ASSERT_EQ(::truncate(temp_.path().c_str(), kFileSize / 2), 0);
  AlignedBuffer buf(4096);
  Status status = read_sync(*device, kFileSize - 4096, buf.span());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
}

TEST_P(FileDeviceTest, MovesToAnotherThreadWhenIdle) {
  auto device = open_or_die(temp_.path(), options_with_size());
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(4096);
  data.fill_pattern(11);
  // Opened and used on this thread (like a store checked on a control
  // thread), then handed to a "store thread".
  ASSERT_TRUE(write_sync(*device, 0, data.span()).ok());
  bool thread_ok = false;
  std::thread owner([&] {
    AlignedBuffer back(4096);
    thread_ok = read_sync(*device, 0, back.span()).ok() && back.has_pattern(11) &&
                write_sync(*device, 4096, back.span()).ok();
  });
  owner.join();
  EXPECT_TRUE(thread_ok);
  AlignedBuffer back(4096);
  ASSERT_TRUE(read_sync(*device, 4096, back.span()).ok());  // and back again
  EXPECT_TRUE(back.has_pattern(11));
  EXPECT_EQ(device->counters().ring_rebuilds, 2u);
}

INSTANTIATE_TEST_SUITE_P(TmpAndShm, FileDeviceTest, ::testing::Values("/tmp", "/dev/shm"),
                         [](const auto& param_info) {
                           return param_info.param == "/tmp" ? "tmp" : "shm";
                         });

// --- open errors -----------------------------------------------------------

TEST(FileDeviceOpenTest, MissingPath) {
  auto device = FileDevice::open("/nonexistent-ublkvol/x/y");
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.error().errno_value(), ENOENT);
  EXPECT_EQ(device.error().to_string(),
            "/nonexistent-ublkvol/x/y: cannot open for writing (No such file or directory)");
}

TEST(FileDeviceOpenTest, Directory) {
  FileDeviceOptions options;
  options.read_only = true;
  auto device = FileDevice::open("/tmp", options);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.error().errno_value(), EISDIR);
  EXPECT_NE(device.error().message().find("/tmp: is a directory"), std::string::npos);
  auto writable = FileDevice::open("/tmp");
  ASSERT_FALSE(writable.ok());
  EXPECT_NE(writable.error().to_string().find("/tmp: "), std::string::npos);
}

TEST(FileDeviceOpenTest, UnalignedOrEmptyFile) {
  TempPath temp("/tmp");
  int fd = ::open(temp.path().c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  auto empty = FileDevice::open(temp.path());
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().message(),
            temp.path() + ": file size 0 is not a positive multiple of 4096");
  ASSERT_EQ(::truncate(temp.path().c_str(), 4096 * 3 + 512), 0);
  auto unaligned = FileDevice::open(temp.path());
  ASSERT_FALSE(unaligned.ok());
  EXPECT_EQ(unaligned.error().message(),
            temp.path() + ": file size 12800 is not a positive multiple of 4096");
}

TEST(FileDeviceOpenTest, NotAFileOrBlockDevice) {
  FileDeviceOptions options;
  options.read_only = true;
  auto device = FileDevice::open("/dev/null", options);
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.error().message().find("/dev/null: "), std::string::npos);
}

TEST(FileDeviceOpenTest, BadQueueDepth) {
  FileDeviceOptions options;
  options.queue_depth = 0;
  auto device = FileDevice::open("/tmp/whatever", options);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.error().message(), "/tmp/whatever: queue depth 0 is not in 1..4096");
}

}  // namespace
}  // namespace ublkvol::dbs
