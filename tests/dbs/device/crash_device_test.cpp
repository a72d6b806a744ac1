#include "ublkvol/dbs/crash_device.h"

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
using Spec = CrashDevice::CrashSpec;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kSize = 16 * kBlock;

// Block-sized buffer filled with one byte value; the "content id" of a block.
AlignedBuffer block_of(uint8_t value) {
  AlignedBuffer buffer(kBlock);
  buffer.fill(std::byte{value});
  return buffer;
}

// The byte value at every byte of block `b` if uniform, else -1.
int block_value(const std::vector<std::byte>& image, uint64_t b) {
  std::byte first = image[b * kBlock];
  for (uint64_t i = 0; i < kBlock; ++i) {
    if (image[b * kBlock + i] != first) {
      return -1;
    }
  }
  return static_cast<int>(first);
}

// Log (index: op, block, content):
//   epoch 0:  0 A  write blk0 'A'                    -> flush F1 (covers 0)
//   epoch 1:  1 B  write blk1 'B', 2 C write blk0 'C'
//             3 D  write blk2 'D' submitted together with F2: F2 covers 0..2
//   epoch 2:  4 E  FUA blk3 'E', 5 G write blk4 'G',
//             6 H  write blk5 'H', 7 I FUA blk5 'I', 8 J discard blk1
class CrashDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write(0, 'A');
    ASSERT_TRUE(flush_sync(crash_).ok());
    write(1, 'B');
    write(0, 'C');
    // D and F2 in one batch: the flush is submitted before D completes.
    AlignedBuffer d = block_of('D');
    Completion d_done;
    Completion f_done;
    IoRequest d_request = make_request(IoOp::kWrite, 2 * kBlock, kBlock, d.data(), &d_done);
    IoRequest flush = make_request(IoOp::kFlush, 0, 0, nullptr, &f_done);
    crash_.submit(d_request);
    crash_.submit(flush);
    while (crash_.in_flight() > 0) {
      crash_.poll(true);
    }
    ASSERT_EQ(d_done.result, 0);
    ASSERT_EQ(f_done.result, 0);
    write(3, 'E', /*fua=*/true);
    write(4, 'G');
    write(5, 'H');
    write(5, 'I', /*fua=*/true);
    ASSERT_TRUE(discard_sync(crash_, 1 * kBlock, kBlock).ok());
  }

  void write(uint64_t block, uint8_t value, bool fua = false) {
    AlignedBuffer buffer = block_of(value);
    ASSERT_TRUE(write_sync(crash_, block * kBlock, buffer.span(), fua).ok());
  }

  std::vector<std::byte> image(const Spec& spec) {
    std::vector<std::byte> out;
    Status status = crash_.build_image(spec, out);
    EXPECT_TRUE(status.ok()) << status.error().to_string();
    EXPECT_EQ(out.size(), kSize);
    return out;
  }

  MemoryDevice inner_{kSize};
  CrashDevice crash_{inner_};
};

TEST_F(CrashDeviceTest, LogAndEpochs) {
  ASSERT_EQ(crash_.log().size(), 9u);
  EXPECT_EQ(crash_.epochs(), 3u);
  EXPECT_EQ(crash_.durable_prefix(0), 0u);
  EXPECT_EQ(crash_.durable_prefix(1), 1u);
  EXPECT_EQ(crash_.durable_prefix(2), 3u) << "D completed after F2 was submitted";
  EXPECT_EQ(crash_.window_end(0), 1u);
  EXPECT_EQ(crash_.window_end(1), 4u) << "D completed before F2 did";
  EXPECT_EQ(crash_.window_end(2), 9u);
  EXPECT_EQ(crash_.pending_entries(1), (std::vector<size_t>{1, 2, 3}));
  EXPECT_EQ(crash_.pending_entries(2), (std::vector<size_t>{3, 5, 6, 8})) << "FUA 4, 7 excluded";
  EXPECT_TRUE(crash_.log()[4].fua);
  EXPECT_EQ(crash_.log()[8].op, IoOp::kDiscard);
  EXPECT_EQ(crash_.entry_data(2)[0], static_cast<std::byte>('C'));
  EXPECT_TRUE(crash_.entry_data(8).empty());
}

TEST_F(CrashDeviceTest, EpochZeroOnlyHasWhatWasChosen) {
  auto nothing = image({.epoch = 0});
  for (uint64_t b = 0; b < 16; ++b) {
    EXPECT_EQ(block_value(nothing, b), 0) << b;
  }
  auto with_a = image({.epoch = 0, .applied = {{.entry = 0}}});
  EXPECT_EQ(block_value(with_a, 0), 'A');
}

TEST_F(CrashDeviceTest, EpochOneDurableAndPending) {
  auto nothing = image({.epoch = 1});
  EXPECT_EQ(block_value(nothing, 0), 'A');
  EXPECT_EQ(block_value(nothing, 1), 0);
  EXPECT_EQ(block_value(nothing, 2), 0);

  auto c_only = image({.epoch = 1, .applied = {{.entry = 2}}});
  EXPECT_EQ(block_value(c_only, 0), 'C');
  EXPECT_EQ(block_value(c_only, 1), 0);

  // Torn C: sectors 0-3 written, 4-7 still A.
  auto torn = image({.epoch = 1, .applied = {{.entry = 2, .block_sector_masks = {0x0F}}}});
  for (uint64_t i = 0; i < kBlock; ++i) {
    ASSERT_EQ(torn[i], static_cast<std::byte>(i < 2048 ? 'C' : 'A')) << i;
  }
  // D completed within epoch 1's window, so it may be there too.
  auto with_d = image({.epoch = 1, .applied = {{.entry = 3}, {.entry = 1}}});
  EXPECT_EQ(block_value(with_d, 2), 'D');
  EXPECT_EQ(block_value(with_d, 1), 'B');
}

TEST_F(CrashDeviceTest, EpochTwoFuaAndCuts) {
  auto nothing = image({.epoch = 2});
  EXPECT_EQ(block_value(nothing, 0), 'C');
  EXPECT_EQ(block_value(nothing, 1), 'B') << "discard J not applied: old content stays";
  EXPECT_EQ(block_value(nothing, 2), 0) << "D not covered by F2";
  EXPECT_EQ(block_value(nothing, 3), 'E') << "FUA is durable at completion";
  EXPECT_EQ(block_value(nothing, 4), 0);
  EXPECT_EQ(block_value(nothing, 5), 'I');

  // Cut before E completed: E is not there, only D can be pending.
  auto early = image({.epoch = 2, .cut = 4});
  EXPECT_EQ(block_value(early, 3), 0);
  EXPECT_EQ(block_value(early, 5), 0);
  std::vector<std::byte> out;
  EXPECT_FALSE(crash_.build_image({.epoch = 2, .cut = 4, .applied = {{.entry = 5}}}, out).ok());

  // H is older than the FUA write I to the same block: it never shows.
  auto with_h = image({.epoch = 2, .applied = {{.entry = 6}}});
  EXPECT_EQ(block_value(with_h, 5), 'I');
  // ...but with a cut before I, H may be there.
  auto h_before_i = image({.epoch = 2, .cut = 7, .applied = {{.entry = 6}}});
  EXPECT_EQ(block_value(h_before_i, 5), 'H');

  // Discard applied: zeros.
  auto discarded = image({.epoch = 2, .applied = {{.entry = 8}}});
  EXPECT_EQ(block_value(discarded, 1), 0);

  // All pending applied in log order = what the inner device holds.
  auto all =
      image({.epoch = 2, .applied = {{.entry = 3}, {.entry = 5}, {.entry = 6}, {.entry = 8}}});
  std::span<const std::byte> inner = inner_.bytes();
  EXPECT_TRUE(std::equal(all.begin(), all.end(), inner.begin(), inner.end()));
}

TEST_F(CrashDeviceTest, AnyOrderOfPendingWrites) {
  // Two pending writes to the same block (B then the discard J): a cache may
  // have written them to the medium in either order.
  auto b_last = image({.epoch = 2, .applied = {{.entry = 8}}});
  EXPECT_EQ(block_value(b_last, 1), 0);
  // In epoch 1, C (blk0) on top of durable A, or a torn multi-entry mix.
  auto mixed =
      image({.epoch = 1, .applied = {{.entry = 2, .block_sector_masks = {0x81}}, {.entry = 1}}});
  EXPECT_EQ(mixed[0], static_cast<std::byte>('C'));
  EXPECT_EQ(mixed[512], static_cast<std::byte>('A'));
  EXPECT_EQ(mixed[size_t{7} * 512], static_cast<std::byte>('C'));
  EXPECT_EQ(block_value(mixed, 1), 'B');
}

TEST_F(CrashDeviceTest, RejectsBadSpecs) {
  std::vector<std::byte> out;
  Status bad_epoch = crash_.build_image({.epoch = 3}, out);
  ASSERT_FALSE(bad_epoch.ok());
  EXPECT_NE(bad_epoch.error().message().find("epoch 3 out of range"), std::string::npos);
  Status durable = crash_.build_image({.epoch = 2, .applied = {{.entry = 0}}}, out);
  ASSERT_FALSE(durable.ok());
  EXPECT_NE(durable.error().message().find("log entry 0 is not pending"), std::string::npos);
  EXPECT_FALSE(crash_.build_image({.epoch = 2, .applied = {{.entry = 4}}}, out).ok())
      << "FUA entries are durable, not pending";
  Status masks = crash_.build_image(
      {.epoch = 2, .applied = {{.entry = 5, .block_sector_masks = {1, 2}}}}, out);
  ASSERT_FALSE(masks.ok());
  EXPECT_NE(masks.error().message().find("1 blocks but 2 sector masks"), std::string::npos);
}

TEST_F(CrashDeviceTest, ImagesOpenAsMemoryDevices) {
  auto device = crash_.build_device({.epoch = 1, .applied = {{.entry = 2}}});
  ASSERT_TRUE(device.ok());
  AlignedBuffer back(kBlock);
  ASSERT_TRUE(read_sync(**device, 0, back.span()).ok());
  EXPECT_TRUE(back.all_equal(static_cast<std::byte>('C')));
  // Going back to an earlier epoch after a later one rebuilds the cached base.
  auto later = image({.epoch = 2});
  auto earlier = image({.epoch = 1});
  EXPECT_EQ(block_value(later, 0), 'C');
  EXPECT_EQ(block_value(earlier, 0), 'A');
}

TEST_F(CrashDeviceTest, FailedAndReadRequestsAreNotLogged) {
  size_t before = crash_.log().size();
  AlignedBuffer buffer = block_of('X');
  EXPECT_FALSE(write_sync(crash_, kSize, buffer.span()).ok());
  EXPECT_TRUE(read_sync(crash_, 0, buffer.span()).ok());
  EXPECT_EQ(crash_.log().size(), before);
}

TEST_F(CrashDeviceTest, ResetHistoryStartsOver) {
  ASSERT_TRUE(crash_.reset_history().ok());
  EXPECT_EQ(crash_.epochs(), 1u);
  EXPECT_TRUE(crash_.log().empty());
  auto now = image({.epoch = 0});
  std::span<const std::byte> inner = inner_.bytes();
  EXPECT_TRUE(std::equal(now.begin(), now.end(), inner.begin(), inner.end()));
}

}  // namespace
}  // namespace ublkvol::dbs
