#include "ublkvol/dbs/fault_device.h"

#include <cerrno>
#include <chrono>
#include <gtest/gtest.h>
#include <vector>

#include "ublkvol/dbs/memory_device.h"

#include "test_buffers.h"

namespace ublkvol::dbs {
namespace {

using testing::AlignedBuffer;
using testing::Completion;
using testing::make_request;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kSize = 64 * kBlock;

class FaultDeviceTest : public ::testing::Test {
 protected:
  Status write_block(uint64_t block, uint8_t value) {
    AlignedBuffer buffer(kBlock);
    buffer.fill(std::byte{value});
    return write_sync(fault_, block * kBlock, buffer.span());
  }
  std::byte inner_byte(uint64_t block) { return memory_.bytes()[block * kBlock]; }

  MemoryDevice memory_{kSize};
  FaultDevice fault_{memory_, /*seed=*/42};
};

TEST_F(FaultDeviceTest, PassesThroughWithoutRules) {
  ASSERT_TRUE(write_block(3, 0x33).ok());
  EXPECT_EQ(inner_byte(3), std::byte{0x33});
  EXPECT_EQ(fault_.counters().passed, 1u);
  EXPECT_EQ(fault_.name(), "fault(memory(256 KiB))");
  EXPECT_EQ(fault_.size_bytes(), kSize);
}

TEST_F(FaultDeviceTest, FailRuleOnRangeAndOps) {
  FaultRule rule;
  rule.ops = op_bit(IoOp::kWrite);
  rule.offset = 8 * kBlock;
  rule.length = 4 * kBlock;
  rule.error = ENOSPC;
  auto id = fault_.add_rule(rule);

  Status in_range = write_block(9, 0x99);
  ASSERT_FALSE(in_range.ok());
  EXPECT_EQ(in_range.error().errno_value(), ENOSPC);
  EXPECT_EQ(inner_byte(9), std::byte{0}) << "a failed write never reaches the device";
  EXPECT_TRUE(write_block(12, 0x12).ok()) << "just past the range";
  EXPECT_TRUE(write_block(7, 0x07).ok()) << "just before the range";
  AlignedBuffer buffer(kBlock);
  EXPECT_TRUE(read_sync(fault_, 9 * kBlock, buffer.span()).ok()) << "reads are not in `ops`";
  // A multi-block write that only overlaps the range's first block fails too.
  AlignedBuffer big(2 * kBlock);
  EXPECT_FALSE(write_sync(fault_, 7 * kBlock, big.span()).ok());
  EXPECT_EQ(fault_.rule_hits(id), 2u);
  EXPECT_EQ(fault_.counters().failed, 2u);

  EXPECT_TRUE(fault_.remove_rule(id));
  EXPECT_FALSE(fault_.remove_rule(id));
  EXPECT_TRUE(write_block(9, 0x99).ok());
  EXPECT_EQ(inner_byte(9), std::byte{0x99});
}

TEST_F(FaultDeviceTest, AfterNAndMaxHits) {
  FaultRule rule;
  rule.ops = kDataWriteOps;
  rule.after = 2;
  rule.max_hits = 1;
  auto id = fault_.add_rule(rule);
  EXPECT_TRUE(write_block(0, 1).ok());
  EXPECT_TRUE(discard_sync(fault_, 0, kBlock).ok());
  EXPECT_FALSE(write_block(0, 3).ok()) << "third matching op fails";
  EXPECT_TRUE(write_block(0, 4).ok()) << "max_hits reached";
  EXPECT_TRUE(flush_sync(fault_).ok()) << "flush is not a data-write op";
  EXPECT_EQ(fault_.rule_hits(id), 1u);
}

TEST_F(FaultDeviceTest, FlushRule) {
  FaultRule rule;
  rule.ops = op_bit(IoOp::kFlush);
  rule.offset = 40 * kBlock;  // ranges do not apply to flushes
  rule.length = kBlock;
  fault_.add_rule(rule);
  Status status = flush_sync(fault_);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
}

std::vector<bool> coin_pattern(uint64_t seed) {
  MemoryDevice memory(kSize);
  FaultDevice fault(memory, seed);
  FaultRule rule;
  rule.probability = 0.3;
  fault.add_rule(rule);
  std::vector<bool> failed;
  failed.reserve(1000);
  for (int i = 0; i < 1000; ++i) {
    failed.push_back(!flush_sync(fault).ok());
  }
  return failed;
}

TEST_F(FaultDeviceTest, ProbabilityIsSeededAndRoughlyRight) {
  std::vector<bool> a = coin_pattern(7);
  std::vector<bool> b = coin_pattern(7);
  std::vector<bool> c = coin_pattern(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto hits = std::count(a.begin(), a.end(), true);
  EXPECT_GT(hits, 220);
  EXPECT_LT(hits, 380);
}

TEST_F(FaultDeviceTest, DelayHoldsCompletionWithoutBlockingSubmission) {
  FaultRule rule;
  rule.action = FaultAction::kDelay;
  rule.delay = std::chrono::milliseconds(50);
  fault_.add_rule(rule);
  AlignedBuffer buffer(kBlock);
  buffer.fill(std::byte{0x44});
  Completion done;
  IoRequest request = make_request(IoOp::kWrite, 4 * kBlock, kBlock, buffer.data(), &done);
  auto start = std::chrono::steady_clock::now();
  fault_.submit(request);
  fault_.kick();
  EXPECT_EQ(fault_.poll(false), 0u);
  EXPECT_FALSE(done.done);
  EXPECT_EQ(inner_byte(4), std::byte{0x44}) << "the write itself reached the device";
  EXPECT_EQ(fault_.in_flight(), 1u);
  EXPECT_EQ(fault_.poll(true), 1u);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(done.done);
  EXPECT_EQ(done.result, 0);
  EXPECT_GE(elapsed, std::chrono::milliseconds(50));
  EXPECT_EQ(fault_.counters().delayed, 1u);
}

TEST_F(FaultDeviceTest, HangUntilReleased) {
  FaultRule rule;
  rule.action = FaultAction::kHang;
  rule.ops = op_bit(IoOp::kWrite);
  fault_.add_rule(rule);
  AlignedBuffer buffer(kBlock);
  buffer.fill(std::byte{0x55});
  Completion done;
  IoRequest request = make_request(IoOp::kWrite, 5 * kBlock, kBlock, buffer.data(), &done);
  fault_.submit(request);
  EXPECT_EQ(fault_.poll(true), 0u) << "only hung requests: poll(wait) must not block";
  EXPECT_EQ(fault_.hung_count(), 1u);
  EXPECT_EQ(fault_.in_flight(), 1u);
  EXPECT_EQ(inner_byte(5), std::byte{0});
  AlignedBuffer other(kBlock);
  EXPECT_TRUE(read_sync(fault_, 0, other.span()).ok()) << "reads still work";

  fault_.clear_rules();
  fault_.release_hung();
  while (fault_.in_flight() > 0) {
    fault_.poll(true);
  }
  EXPECT_EQ(done.result, 0);
  EXPECT_EQ(inner_byte(5), std::byte{0x55});
}

TEST_F(FaultDeviceTest, FailHungLikeAnAbort) {
  FaultRule rule;
  rule.action = FaultAction::kHang;
  fault_.add_rule(rule);
  Completion done;
  IoRequest request = make_request(IoOp::kFlush, 0, 0, nullptr, &done);
  fault_.submit(request);
  fault_.fail_hung(ETIMEDOUT);
  EXPECT_EQ(fault_.poll(false), 1u);
  EXPECT_EQ(done.result, -ETIMEDOUT);
  EXPECT_EQ(fault_.hung_count(), 0u);
}

TEST_F(FaultDeviceTest, DeadDiskAndRevive) {
  // Submitted before the disk dies, completed after: fails too.
  AlignedBuffer buffer(kBlock);
  Completion early;
  IoRequest request = make_request(IoOp::kRead, 0, kBlock, buffer.data(), &early);
  fault_.submit(request);
  fault_.fail_all(EIO);
  EXPECT_TRUE(fault_.dead());
  EXPECT_EQ(fault_.poll(false), 1u);
  EXPECT_EQ(early.result, -EIO);
  Status status = write_block(1, 1);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
  EXPECT_FALSE(flush_sync(fault_).ok());

  fault_.revive();
  EXPECT_FALSE(fault_.dead());
  EXPECT_TRUE(write_block(1, 1).ok());
  EXPECT_TRUE(flush_sync(fault_).ok());
}

}  // namespace
}  // namespace ublkvol::dbs
