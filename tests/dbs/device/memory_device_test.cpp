#include "ublkvol/dbs/memory_device.h"

#include <array>
#include <cerrno>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "test_buffers.h"

namespace ublkvol::dbs {
namespace {

using testing::AlignedBuffer;
using testing::Completion;
using testing::make_request;

constexpr uint64_t kSize = 1 << 20;
// Block-sized buffers and offsets are computed in size_t, never in int.
constexpr size_t kBlock = 4096;

TEST(IoOpTest, Names) {
  EXPECT_STREQ(to_string(IoOp::kRead), "read");
  EXPECT_STREQ(to_string(IoOp::kWrite), "write");
  EXPECT_STREQ(to_string(IoOp::kFlush), "flush");
  EXPECT_STREQ(to_string(IoOp::kDiscard), "discard");
  EXPECT_STREQ(to_string(IoOp::kWriteZeroes), "write-zeroes");
}

TEST(MemoryDeviceTest, Geometry) {
  MemoryDevice device(kSize);
  EXPECT_EQ(device.size_bytes(), kSize);
  EXPECT_EQ(device.block_size(), 4096u);
  EXPECT_EQ(device.name(), "memory(1 MiB)");
  EXPECT_EQ(device.completion_fd(), -1);
  EXPECT_EQ(device.in_flight(), 0u);
  for (std::byte b : device.bytes()) {
    ASSERT_EQ(b, std::byte{0});
  }
}

TEST(MemoryDeviceTest, CreateRejectsBadSizes) {
  auto zero = MemoryDevice::create(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.error().errno_value(), EINVAL);
  EXPECT_NE(zero.error().message().find("size 0"), std::string::npos);

  auto unaligned = MemoryDevice::create(4096 + 512);
  ASSERT_FALSE(unaligned.ok());
  EXPECT_NE(unaligned.error().message().find("4608"), std::string::npos);
  EXPECT_NE(unaligned.error().message().find("multiple of 4096"), std::string::npos);

  auto from_bad_image = MemoryDevice::from_image(std::vector<std::byte>(100));
  ASSERT_FALSE(from_bad_image.ok());

  auto good = MemoryDevice::create(8192);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ((*good)->size_bytes(), 8192u);
}

TEST(MemoryDeviceTest, WriteThenReadRoundTrips) {
  MemoryDevice device(kSize);
  AlignedBuffer data(3 * kBlock);
  data.fill_pattern(7);
  ASSERT_TRUE(write_sync(device, 8192, data.span()).ok());

  AlignedBuffer back(3 * kBlock);
  ASSERT_TRUE(read_sync(device, 8192, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(7));
  // Raw bytes reflect the write at the right place, neighbours untouched.
  EXPECT_EQ(device.bytes()[8192], data[0]);
  EXPECT_EQ(device.bytes()[8191], std::byte{0});
  EXPECT_EQ(device.bytes()[8192 + 3 * 4096], std::byte{0});
  EXPECT_EQ(device.counters().writes, 1u);
  EXPECT_EQ(device.counters().reads, 1u);
  EXPECT_EQ(device.counters().bytes_written, 3u * 4096);
}

TEST(MemoryDeviceTest, CompletesOnlyInPollInSubmissionOrder) {
  MemoryDevice device(kSize);
  AlignedBuffer first(4096);
  AlignedBuffer second(4096);
  AlignedBuffer readback(4096);
  first.fill(std::byte{1});
  second.fill(std::byte{2});
  int counter = 0;
  std::array<Completion, 3> done{};
  for (auto& c : done) {
    c.counter = &counter;
  }
  IoRequest w1 = make_request(IoOp::kWrite, 0, 4096, first.data(), &done[0]);
  IoRequest w2 = make_request(IoOp::kWrite, 0, 4096, second.data(), &done[1]);
  IoRequest r = make_request(IoOp::kRead, 0, 4096, readback.data(), &done[2]);
  device.submit(w1);
  device.submit(w2);
  device.submit(r);
  device.kick();
  EXPECT_EQ(device.in_flight(), 3u);
  EXPECT_FALSE(done[0].done);
  EXPECT_EQ(device.bytes()[0], std::byte{0}) << "submit must not execute";

  EXPECT_EQ(device.poll(false), 3u);
  EXPECT_EQ(device.in_flight(), 0u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(done[i].result, 0);
    EXPECT_EQ(done[i].order, i);
  }
  EXPECT_TRUE(readback.all_equal(std::byte{2}));  // second write won, read saw it
  EXPECT_EQ(device.poll(true), 0u);               // nothing left: must not block
}

TEST(MemoryDeviceTest, InvalidRequestsFailWithEinvalAndTouchNothing) {
  MemoryDevice device(kSize);
  AlignedBuffer buf(2 * kBlock);
  buf.fill(std::byte{0xAB});
  struct Case {
    const char* what;
    IoOp op;
    uint64_t offset;
    uint64_t length;
    std::byte* buffer;
  };
  const std::vector<Case> cases = {
      {"unaligned offset", IoOp::kWrite, 512, 4096, buf.data()},
      {"unaligned length", IoOp::kWrite, 0, 1000, buf.data()},
      {"zero length", IoOp::kWrite, 0, 0, buf.data()},
      {"unaligned buffer", IoOp::kWrite, 0, 4096, buf.data() + 512},
      {"null buffer", IoOp::kRead, 0, 4096, nullptr},
      {"past end", IoOp::kWrite, kSize - 4096, 2 * kBlock, buf.data()},
      {"offset past end", IoOp::kDiscard, kSize + 4096, 4096, nullptr},
      {"offset+length overflows", IoOp::kWriteZeroes, 4096, ~uint64_t{0} - 4095, nullptr},
      {"unaligned discard", IoOp::kDiscard, 0, 512, nullptr},
  };
  for (const Case& c : cases) {
    Completion done;
    IoRequest request = make_request(c.op, c.offset, c.length, c.buffer, &done);
    device.submit(request);
    EXPECT_EQ(device.poll(false), 1u) << c.what;
    EXPECT_TRUE(done.done) << c.what;
    EXPECT_EQ(done.result, -EINVAL) << c.what;
  }
  for (std::byte b : device.bytes()) {
    ASSERT_EQ(b, std::byte{0});
  }
  EXPECT_EQ(device.counters().writes, 0u);
  // A flush ignores offset/length entirely.
  Completion flush_done;
  IoRequest flush = make_request(IoOp::kFlush, 123, 7, nullptr, &flush_done);
  device.submit(flush);
  device.poll(false);
  EXPECT_EQ(flush_done.result, 0);
}

TEST(MemoryDeviceTest, DiscardAndWriteZeroesZeroTheRange) {
  MemoryDevice device(kSize);
  AlignedBuffer data(4 * kBlock);
  data.fill(std::byte{0x5A});
  ASSERT_TRUE(write_sync(device, 0, data.span()).ok());
  ASSERT_TRUE(discard_sync(device, 4096, 4096).ok());
  ASSERT_TRUE(write_zeroes_sync(device, 3 * kBlock, 4096).ok());
  AlignedBuffer back(4 * kBlock);
  ASSERT_TRUE(read_sync(device, 0, back.span()).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    size_t block = i / 4096;
    std::byte expected = (block == 1 || block == 3) ? std::byte{0} : std::byte{0x5A};
    ASSERT_EQ(back[i], expected) << "byte " << i;
  }
  EXPECT_EQ(device.counters().discards, 1u);
  EXPECT_EQ(device.counters().write_zeroes, 1u);
}

TEST(MemoryDeviceTest, SyncHelpersReportFailuresWithContext) {
  MemoryDevice device(kSize);
  AlignedBuffer buf(4096);
  Status status = write_sync(device, kSize, buf.span());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EINVAL);
  EXPECT_EQ(status.error().message(),
            "memory(1 MiB): write of 4096 bytes at offset 1048576 failed");
  EXPECT_TRUE(flush_sync(device).ok());
  EXPECT_EQ(device.counters().flushes, 1u);
  ASSERT_TRUE(write_sync(device, 0, buf.span(), /*fua=*/true).ok());
  EXPECT_EQ(device.counters().fua_writes, 1u);
}

// A callback that submits another request: the new one must run in the next
// poll, not extend the current one.
struct Chain {
  MemoryDevice* device{};
  IoRequest next;
  Completion next_done;
  bool submitted_next = false;
};

void submit_next(IoRequest& request, int /*result*/) {
  auto* chain = static_cast<Chain*>(request.user_data);
  chain->submitted_next = true;
  chain->device->submit(chain->next);
}

TEST(MemoryDeviceTest, RequestsSubmittedFromCallbacksRunInNextPoll) {
  MemoryDevice device(kSize);
  AlignedBuffer buf(4096);
  Chain chain{&device, {}, {}};
  chain.next = make_request(IoOp::kRead, 0, 4096, buf.data(), &chain.next_done);
  IoRequest first;
  first.op = IoOp::kFlush;
  first.on_complete = &submit_next;
  first.user_data = &chain;
  device.submit(first);
  EXPECT_EQ(device.poll(false), 1u);
  EXPECT_TRUE(chain.submitted_next);
  EXPECT_FALSE(chain.next_done.done);
  EXPECT_EQ(device.in_flight(), 1u);
  EXPECT_EQ(device.poll(false), 1u);
  EXPECT_EQ(chain.next_done.result, 0);
}

TEST(MemoryDeviceTest, SnapshotRestoreAndImages) {
  MemoryDevice device(kSize);
  AlignedBuffer data(4096);
  data.fill_pattern(1);
  ASSERT_TRUE(write_sync(device, 4096, data.span()).ok());
  std::vector<std::byte> image = device.snapshot();
  ASSERT_EQ(image.size(), kSize);

  data.fill_pattern(2);
  ASSERT_TRUE(write_sync(device, 4096, data.span()).ok());
  ASSERT_TRUE(device.restore(image).ok());
  AlignedBuffer back(4096);
  ASSERT_TRUE(read_sync(device, 4096, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(1));

  Status wrong = device.restore(std::vector<std::byte>(4096));
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("does not match the device size"), std::string::npos);

  auto reopened = MemoryDevice::from_image(std::move(image));
  ASSERT_TRUE(reopened.ok());
  ASSERT_TRUE(read_sync(**reopened, 4096, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(1));

  std::vector<std::byte> released = (*reopened)->release_image();
  EXPECT_EQ(released.size(), kSize);
  EXPECT_EQ((*reopened)->size_bytes(), 0u);
}

}  // namespace
}  // namespace ublkvol::dbs
