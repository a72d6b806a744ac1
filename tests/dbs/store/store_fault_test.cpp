// A failing disk under a Store (docs/dbs.md, "Failure model"): a FaultDevice
// between the store and a MemoryDevice injects errors, hangs and a dead disk,
// and every test then reopens the store on the MemoryDevice - the image the
// disk holds - to prove nothing acknowledged was lost and check() is clean.
//
//   - data write / read errors fail just that StoreIo, with the device's
//     errno; the store stays healthy and usable;
//   - a failed device flush, journal write, checkpoint write or metadata
//     flush fails the FLUSH (never acknowledged) and puts the store into the
//     failed state: writes/flushes -EIO, control operations refused, health()
//     names the device and the step; reads still work;
//   - a hung device completes nothing and corrupts nothing;
//   - a disk that dies mid-workload (fail_all) with many requests in flight
//     keeps every acknowledged FLUSH;
//   - a read error while opening refuses the open (never a rolled-back
//     store) and writes nothing.
#include <chrono>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "ublkvol/dbs/fault_device.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::decode_block;
using testing::describe;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kExtentBlocks = 16;

FormatOptions small_format() {
  FormatOptions options;
  options.extent_blocks = kExtentBlocks;
  options.journal_blocks = 64;
  return options;
}

// Reads `block` of `volume` into a tag (fails the test on garbage or a torn
// block).
BlockTag read_tag(Store& store, VolumeId volume, uint64_t block) {
  Buffer buffer(kBlock);
  auto status = store.read(volume, block * kBlock, buffer.span());
  EXPECT_TRUE(status.ok()) << status.error().to_string();
  BlockTag tag;
  EXPECT_TRUE(decode_block(buffer.span(), tag)) << "block " << block << " is garbage";
  return tag;
}

// A store on FaultDevice(MemoryDevice), plus helpers to write tagged blocks
// and to reopen on the raw MemoryDevice.
class StoreFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { setup(64 * kMiB, small_format()); }

  void setup(uint64_t device_bytes, const FormatOptions& options,
             const OpenOptions& open_options = {}) {
    store_.reset();
    fault_.reset();
    memory_ = std::make_unique<MemoryDevice>(device_bytes);
    ASSERT_TRUE(Store::format(*memory_, options).ok());
    fault_ = std::make_unique<FaultDevice>(*memory_, 7);
    auto opened = Store::open(*fault_, open_options);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    store_ = std::move(*opened);
    auto v = store_->create_volume("vol", 48 * kMiB);
    ASSERT_TRUE(v.ok());
    volume_ = *v;
  }

  Status write_tags(uint64_t block, uint64_t count, uint64_t seq) {
    Buffer buffer(count * kBlock);
    for (uint64_t i = 0; i < count; ++i) {
      fill_block(buffer.block(i), BlockTag{volume_, block + i, seq});
    }
    return store_->write(volume_, block * kBlock, buffer.span());
  }

  // Closes the store and reopens it on the disk's content (the MemoryDevice
  // without the fault wrapper); check() must be clean.
  std::unique_ptr<Store> reopen_on_disk() {
    if (fault_->hung_count() > 0) {
      fault_->fail_hung(EIO);  // let the store destructor drain
    }
    store_.reset();
    auto opened = Store::open(*memory_);
    EXPECT_TRUE(opened.ok()) << opened.error().to_string();
    if (!opened.ok()) {
      return nullptr;
    }
    for (const auto& problem : (*opened)->check()) {
      ADD_FAILURE() << "check after reopen: " << problem;
    }
    return std::move(*opened);
  }

  std::unique_ptr<MemoryDevice> memory_;
  std::unique_ptr<FaultDevice> fault_;
  std::unique_ptr<Store> store_;
  VolumeId volume_ = 0;
};

// Counts a StoreIo's completion and keeps its result.
template <typename T>
Status as_status(const Result<T>& result) {
  return result.ok() ? ok_status() : Status(result.error());
}

struct Completion {
  bool done = false;
  int result = 1;
};

void on_completion(StoreIo& io, int result) {
  auto* c = static_cast<Completion*>(io.user_data);
  c->done = true;
  c->result = result;
}

StoreIo make_io(StoreOp op, VolumeId volume, uint64_t offset, uint64_t length, std::byte* buffer,
                Completion& completion) {
  StoreIo io;
  io.op = op;
  io.volume = volume;
  io.offset = offset;
  io.length = length;
  io.buffer = buffer;
  io.user_data = &completion;
  io.on_complete = &on_completion;
  return io;
}

// ---------------------------------------------------------------------------
// Data path errors
// ---------------------------------------------------------------------------

TEST_F(StoreFaultTest, DataWriteErrorFailsTheIoWithTheDeviceErrnoAndLosesNothing) {
  ASSERT_TRUE(write_tags(0, 32, 1).ok());  // extents 0 and 1
  ASSERT_TRUE(store_->commit().ok());

  // An in-place overwrite of a committed block fails.
  FaultRule rule;
  rule.ops = op_bit(IoOp::kWrite);
  rule.max_hits = 1;
  rule.error = EREMOTEIO;
  const auto in_place = fault_->add_rule(rule);
  auto status = write_tags(3, 1, 2);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EREMOTEIO);
  EXPECT_NE(status.error().message().find(std::string(fault_->name())), std::string::npos)
      << status.error().message();
  EXPECT_NE(status.error().message().find("volume " + std::to_string(volume_)), std::string::npos)
      << status.error().message();
  EXPECT_EQ(fault_->rule_hits(in_place), 1u);

  // A write redirected into a fresh extent fails: nothing gets mapped.
  rule.error = EIO;
  fault_->add_rule(rule);
  status = write_tags(100, 2, 3);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);

  // One device request of a three-extent write fails: the StoreIo fails.
  rule.after = 1;
  const auto middle = fault_->add_rule(rule);
  status = write_tags(40, 40, 4);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(fault_->rule_hits(middle), 1u);

  EXPECT_FALSE(store_->failed());
  EXPECT_TRUE(store_->health().ok());
  EXPECT_EQ(store_->stats().write_errors, 3u);
  EXPECT_EQ(read_tag(*store_, volume_, 3), (BlockTag{volume_, 3, 1}));
  EXPECT_EQ(read_tag(*store_, volume_, 100), BlockTag{});
  EXPECT_EQ(read_tag(*store_, volume_, 101), BlockTag{});
  // The store keeps working: a new write and commit succeed.
  ASSERT_TRUE(write_tags(5, 1, 5).ok());
  ASSERT_TRUE(store_->commit().ok());
  EXPECT_TRUE(store_->check().empty());

  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  for (uint64_t b = 0; b < 32; ++b) {
    const uint64_t seq = b == 5 ? 5 : 1;
    EXPECT_EQ(read_tag(*reopened, volume_, b), (BlockTag{volume_, b, seq})) << "block " << b;
  }
  EXPECT_EQ(read_tag(*reopened, volume_, 100), BlockTag{});
  for (uint64_t b = 40; b < 80; ++b) {  // failed write: old (zeros) or new per block
    const BlockTag tag = read_tag(*reopened, volume_, b);
    EXPECT_TRUE(tag == BlockTag{} || tag == (BlockTag{volume_, b, 4})) << describe(tag);
  }
}

TEST_F(StoreFaultTest, ReadErrorFailsOnlyThatRead) {
  ASSERT_TRUE(write_tags(0, 8, 1).ok());
  ASSERT_TRUE(store_->commit().ok());
  FaultRule rule;
  rule.ops = op_bit(IoOp::kRead);
  rule.max_hits = 1;
  rule.error = EIO;
  fault_->add_rule(rule);
  Buffer buffer(8 * kBlock);
  auto status = store_->read(volume_, 0, buffer.span());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
  EXPECT_NE(status.error().message().find("read of 32768 bytes at offset 0"), std::string::npos)
      << status.error().message();
  EXPECT_TRUE(store_->health().ok());
  EXPECT_EQ(store_->stats().read_errors, 1u);
  for (uint64_t b = 0; b < 8; ++b) {
    EXPECT_EQ(read_tag(*store_, volume_, b), (BlockTag{volume_, b, 1}));
  }
  ASSERT_TRUE(write_tags(8, 1, 2).ok());
  ASSERT_TRUE(store_->commit().ok());
  EXPECT_TRUE(store_->check().empty());
}

// ---------------------------------------------------------------------------
// Commit step failures
// ---------------------------------------------------------------------------

enum class FailedStep { kDataFlush, kJournalWrite, kMetadataFlush, kCheckpointWrite };

const char* step_words(FailedStep step) {
  switch (step) {
    case FailedStep::kDataFlush:
      return "device flush of data before metadata commit";
    case FailedStep::kJournalWrite:
      return "write of journal commit";
    case FailedStep::kMetadataFlush:
      return "device flush after writing metadata commit";
    case FailedStep::kCheckpointWrite:
      return "write of checkpoint epoch";
  }
  return "";
}

class StoreCommitFaultTest : public StoreFaultTest,
                             public ::testing::WithParamInterface<FailedStep> {};

TEST_P(StoreCommitFaultTest, FailedCommitStepFailsTheStoreAndKeepsAcknowledgedData) {
  const FailedStep step = GetParam();
  // The FLUSH commit below must carry B's new mappings, so they are not
  // journaled as the writes complete (that path: MappingJournalWriteFails).
  OpenOptions open_options;
  open_options.journal_mappings = false;
  FormatOptions options = small_format();
  if (step == FailedStep::kCheckpointWrite) {
    // A journal too small for the commit below: it becomes a checkpoint.
    options.journal_blocks = 8;
  }
  setup(64 * kMiB, options, open_options);
  // Acknowledged state A: blocks 0..63 (4 extents) and one block in each of
  // the extents 8.. that B touches below.
  ASSERT_TRUE(write_tags(0, 64, 1).ok());
  ASSERT_TRUE(store_->commit().ok());
  // B: in-place overwrites of blocks 0..15, new blocks 200..215 (a fresh
  // extent); for the checkpoint case, one block in each of 700 extents so
  // the commit cannot fit in the 64-block journal.
  ASSERT_TRUE(write_tags(0, 16, 2).ok());
  ASSERT_TRUE(write_tags(200, 16, 2).ok());
  const uint64_t spread = step == FailedStep::kCheckpointWrite ? 700 : 0;
  for (uint64_t e = 0; e < spread; ++e) {
    ASSERT_TRUE(write_tags(256 + e * kExtentBlocks, 1, 2).ok());
  }
  const uint64_t checkpoints_before = store_->stats().checkpoints;

  // From here the commit's own requests are the only writes and flushes.
  FaultRule rule;
  rule.max_hits = 1;
  rule.error = EIO;
  switch (step) {
    case FailedStep::kDataFlush:
      rule.ops = op_bit(IoOp::kFlush);
      break;
    case FailedStep::kMetadataFlush:
      rule.ops = op_bit(IoOp::kFlush);
      rule.after = 1;
      break;
    case FailedStep::kJournalWrite:
    case FailedStep::kCheckpointWrite:
      rule.ops = op_bit(IoOp::kWrite);
      break;
  }
  const auto rule_id = fault_->add_rule(rule);

  // A FLUSH and a FUA write are both waiting on this commit.
  Completion flush_done, fua_done;
  Buffer fua_buffer(kBlock);
  fill_block(fua_buffer.block(0), BlockTag{volume_, 20, 3});
  StoreIo flush = make_io(StoreOp::kFlush, volume_, 0, 0, nullptr, flush_done);
  StoreIo fua = make_io(StoreOp::kWrite, volume_, 20 * kBlock, kBlock, fua_buffer.data(), fua_done);
  fua.fua = true;
  if (step == FailedStep::kJournalWrite || step == FailedStep::kCheckpointWrite) {
    store_->submit(flush);  // the FUA write's data would be the first write
  } else {
    store_->submit(fua);
    store_->submit(flush);
  }
  while (!flush_done.done || (step != FailedStep::kJournalWrite &&
                              step != FailedStep::kCheckpointWrite && !fua_done.done)) {
    store_->poll(true);
  }
  EXPECT_EQ(fault_->rule_hits(rule_id), 1u);
  EXPECT_EQ(flush_done.result, -EIO) << "a FLUSH whose commit failed was acknowledged";
  if (fua_done.done) {
    EXPECT_EQ(fua_done.result, -EIO) << "a FUA write whose commit failed was acknowledged";
  }
  EXPECT_EQ(store_->stats().checkpoints, checkpoints_before);

  // Failed state: named, queryable, counted, and refusing changes.
  ASSERT_TRUE(store_->failed());
  EXPECT_EQ(store_->stats().write_errors, 1u) << "the failed commit step was not counted";
  EXPECT_EQ(store_->stats().read_errors, 0u);
  const Status health = store_->health();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.error().errno_value(), EIO);
  EXPECT_NE(health.error().message().find(std::string(fault_->name())), std::string::npos)
      << health.error().message();
  EXPECT_NE(health.error().message().find(step_words(step)), std::string::npos)
      << health.error().message();
  auto status = write_tags(30, 1, 4);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
  EXPECT_NE(status.error().message().find(step_words(step)), std::string::npos)
      << status.error().message();
  status = store_->commit();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), EIO);
  EXPECT_FALSE(store_->discard(volume_, 0, kBlock).ok());
  auto created = store_->create_volume("after-failure", kMiB);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().message(), health.error().message());
  EXPECT_FALSE(store_->create_snapshot(volume_, "s").ok());
  // Reads still work and see what the completed writes wrote.
  EXPECT_EQ(read_tag(*store_, volume_, 0), (BlockTag{volume_, 0, 2}));
  EXPECT_EQ(read_tag(*store_, volume_, 40), (BlockTag{volume_, 40, 1}));
  EXPECT_EQ(read_tag(*store_, volume_, 200), (BlockTag{volume_, 200, 2}));

  // The disk itself is fine: reopen on it.
  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  EXPECT_FALSE(reopened->failed());
  for (uint64_t b = 0; b < 64; ++b) {
    const BlockTag tag = read_tag(*reopened, volume_, b);
    if (b < 16) {
      // Overwritten in place after the acknowledged flush: old or new.
      EXPECT_TRUE(tag == (BlockTag{volume_, b, 1}) || tag == (BlockTag{volume_, b, 2}))
          << "block " << b << " holds " << describe(tag);
    } else if (b == 20 && fua_done.done) {
      EXPECT_TRUE(tag == (BlockTag{volume_, b, 1}) || tag == (BlockTag{volume_, b, 3}))
          << "block " << b << " holds " << describe(tag);
    } else {
      EXPECT_EQ(tag, (BlockTag{volume_, b, 1})) << "acknowledged block " << b << " lost";
    }
  }
  for (uint64_t b = 200; b < 216; ++b) {
    const BlockTag tag = read_tag(*reopened, volume_, b);
    EXPECT_TRUE(tag == BlockTag{} || tag == (BlockTag{volume_, b, 2}))
        << "block " << b << " holds " << describe(tag);
  }
  // The recovered store takes writes and commits again.
  auto v = reopened->create_volume("after-reopen", kMiB);
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  EXPECT_TRUE(reopened->check().empty());
}

INSTANTIATE_TEST_SUITE_P(Steps, StoreCommitFaultTest,
                         ::testing::Values(FailedStep::kDataFlush, FailedStep::kJournalWrite,
                                           FailedStep::kMetadataFlush,
                                           FailedStep::kCheckpointWrite),
                         [](const auto& param_info) {
                           switch (param_info.param) {
                             case FailedStep::kDataFlush:
                               return std::string("DataFlush");
                             case FailedStep::kJournalWrite:
                               return std::string("JournalWrite");
                             case FailedStep::kMetadataFlush:
                               return std::string("MetadataFlush");
                             case FailedStep::kCheckpointWrite:
                               return std::string("CheckpointWrite");
                           }
                           return std::string("unknown");
                         });

// ---------------------------------------------------------------------------
// Hung device
// ---------------------------------------------------------------------------

// journal_mappings: the journal write of a completed allocating write fails.
// The write is not acknowledged, the store fails (as for any commit write),
// and the disk still holds every acknowledged block.
TEST_F(StoreFaultTest, MappingJournalWriteFailsTheStoreAndTheWrite) {
  ASSERT_TRUE(write_tags(0, 16, 1).ok());
  ASSERT_TRUE(store_->commit().ok());
  // The allocating write's data goes through; its journal write fails.
  FaultRule rule;
  rule.ops = op_bit(IoOp::kWrite);
  rule.after = 1;
  rule.max_hits = 1;
  rule.error = EIO;
  const auto rule_id = fault_->add_rule(rule);
  auto status = write_tags(300, 1, 2);
  EXPECT_EQ(fault_->rule_hits(rule_id), 1u);
  ASSERT_FALSE(status.ok()) << "an allocating write whose mapping was not journaled completed";
  EXPECT_EQ(status.error().errno_value(), EIO);
  ASSERT_TRUE(store_->failed());
  EXPECT_EQ(store_->stats().write_errors, 1u);
  EXPECT_NE(store_->health().error().message().find("write of journal commit"), std::string::npos)
      << store_->health().error().message();
  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  for (uint64_t b = 0; b < 16; ++b) {
    EXPECT_EQ(read_tag(*reopened, volume_, b), (BlockTag{volume_, b, 1}));
  }
  const BlockTag tag = read_tag(*reopened, volume_, 300);
  EXPECT_TRUE(tag == BlockTag{} || tag == (BlockTag{volume_, 300, 2})) << describe(tag);
}

// Issue 3 leftover: a hung device must not hang control operations, check()
// or closing the store. Each gives up after OpenOptions::device_timeout with
// an error naming the device and what it still holds.
TEST_F(StoreFaultTest, HungDeviceTimesOutControlOperationsAndClose) {
  OpenOptions open_options;
  open_options.device_timeout = std::chrono::milliseconds(300);
  setup(64 * kMiB, small_format(), open_options);
  ASSERT_TRUE(write_tags(0, 16, 1).ok());
  ASSERT_TRUE(store_->commit().ok());

  FaultRule hang;
  hang.action = FaultAction::kHang;
  hang.ops = kAllOps;
  fault_->add_rule(hang);
  Buffer data(kBlock);
  fill_block(data.block(0), BlockTag{volume_, 3, 2});
  Completion w;
  StoreIo write = make_io(StoreOp::kWrite, volume_, 3 * kBlock, kBlock, data.data(), w);
  store_->submit(write);
  store_->kick();

  const auto expect_timeout = [&](const Status& status, const char* what) {
    ASSERT_FALSE(status.ok()) << what << " succeeded on a hung device";
    EXPECT_EQ(status.error().errno_value(), ETIMEDOUT) << status.error().to_string();
    EXPECT_NE(status.error().message().find(std::string(fault_->name()) +
                                            " did not complete 1 requests within 0.3 s"),
              std::string::npos)
        << what << ": " << status.error().message();
  };
  const auto start = std::chrono::steady_clock::now();
  expect_timeout(as_status(store_->create_volume("other", kMiB)), "create_volume");
  expect_timeout(as_status(store_->create_snapshot(volume_, "s")), "create_snapshot");
  const auto problems = store_->check();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("did not complete 1 requests"), std::string::npos) << problems[0];
  expect_timeout(store_->close(), "close");
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(waited, 30.0) << "four 0.3 s timeouts took " << waited << " s";
  EXPECT_FALSE(w.done);
  // The device comes back after the store gave up: the late completion
  // lands in the store's kept-alive request state (ASan would flag a
  // use-after-free), and nothing of the hung write was acknowledged.
  fault_->clear_rules();
  fault_->release_hung();
  while (fault_->in_flight() > 0) {
    fault_->poll(true);
  }
  EXPECT_FALSE(w.done) << "a callback ran after close()";
  store_.reset();
  // Nothing was written while hung: the disk opens clean with the
  // acknowledged blocks (the hung write landed late: old or new).
  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  EXPECT_EQ(read_tag(*reopened, volume_, 0), (BlockTag{volume_, 0, 1}));
  const BlockTag tag = read_tag(*reopened, volume_, 3);
  EXPECT_TRUE(tag == (BlockTag{volume_, 3, 1}) || tag == (BlockTag{volume_, 3, 2}))
      << describe(tag);
}

TEST_F(StoreFaultTest, HungDeviceCompletesNothingAndCorruptsNothing) {
  ASSERT_TRUE(write_tags(0, 32, 1).ok());
  ASSERT_TRUE(store_->commit().ok());
  const std::vector<std::byte> acknowledged_image = memory_->snapshot();

  FaultRule hang;
  hang.action = FaultAction::kHang;
  hang.ops = kAllOps;
  fault_->add_rule(hang);
  // Writes (in place and redirected), a FLUSH and a read: all held.
  Buffer data(4 * kBlock);
  for (uint64_t i = 0; i < 4; ++i) {
    fill_block(data.block(i), BlockTag{volume_, i < 2 ? i : 100 + i, 2});
  }
  Completion w1, w2, f, r;
  StoreIo in_place = make_io(StoreOp::kWrite, volume_, 0, 2 * kBlock, data.data(), w1);
  StoreIo redirected =
      make_io(StoreOp::kWrite, volume_, 102 * kBlock, 2 * kBlock, data.data() + 2 * kBlock, w2);
  StoreIo flush = make_io(StoreOp::kFlush, volume_, 0, 0, nullptr, f);
  Buffer read_buffer(kBlock);
  StoreIo read = make_io(StoreOp::kRead, volume_, 5 * kBlock, kBlock, read_buffer.data(), r);
  store_->submit(in_place);
  store_->submit(redirected);
  store_->submit(flush);
  store_->submit(read);
  // Hung requests never complete, however long the owner polls.
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(store_->poll(false), 0u);
  }
  EXPECT_FALSE(w1.done || w2.done || f.done || r.done);
  EXPECT_EQ(store_->in_flight(), 4u);
  EXPECT_EQ(fault_->hung_count(), 4u);
  EXPECT_FALSE(store_->failed());
  // Nothing reached the disk: a power cut now finds the acknowledged image,
  // which opens cleanly.
  EXPECT_TRUE(memory_->snapshot() == acknowledged_image);
  {
    MemoryDevice crashed(memory_->snapshot());
    auto opened = Store::open(crashed);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    EXPECT_TRUE((*opened)->check().empty());
    EXPECT_EQ(read_tag(**opened, volume_, 0), (BlockTag{volume_, 0, 1}));
  }

  // The device comes back: everything completes and commits normally.
  fault_->clear_rules();
  fault_->release_hung();
  while (!(w1.done && w2.done && f.done && r.done)) {
    store_->poll(true);
  }
  EXPECT_EQ(w1.result, 0);
  EXPECT_EQ(w2.result, 0);
  EXPECT_EQ(r.result, 0);
  EXPECT_EQ(f.result, 0);
  ASSERT_TRUE(store_->commit().ok());
  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  EXPECT_EQ(read_tag(*reopened, volume_, 0), (BlockTag{volume_, 0, 2}));
  EXPECT_EQ(read_tag(*reopened, volume_, 103), (BlockTag{volume_, 103, 2}));
  EXPECT_EQ(read_tag(*reopened, volume_, 5), (BlockTag{volume_, 5, 1}));
}

TEST_F(StoreFaultTest, HungFlushAbortedByTheDeviceFailsTheStore) {
  ASSERT_TRUE(write_tags(0, 16, 1).ok());
  ASSERT_TRUE(store_->commit().ok());
  ASSERT_TRUE(write_tags(0, 16, 2).ok());
  FaultRule hang;
  hang.action = FaultAction::kHang;
  hang.ops = op_bit(IoOp::kFlush);
  fault_->add_rule(hang);
  Completion f;
  StoreIo flush = make_io(StoreOp::kFlush, volume_, 0, 0, nullptr, f);
  store_->submit(flush);
  for (int i = 0; i < 100; ++i) {
    store_->poll(false);
  }
  ASSERT_FALSE(f.done);
  ASSERT_EQ(fault_->hung_count(), 1u);
  fault_->fail_hung(ETIMEDOUT);  // the command was aborted
  while (!f.done) {
    store_->poll(true);
  }
  EXPECT_EQ(f.result, -EIO);
  ASSERT_FALSE(store_->health().ok());
  EXPECT_EQ(store_->health().error().errno_value(), ETIMEDOUT);
  EXPECT_NE(store_->health().error().message().find("device flush of data"), std::string::npos)
      << store_->health().error().message();
  auto reopened = reopen_on_disk();
  ASSERT_TRUE(reopened);
  for (uint64_t b = 0; b < 16; ++b) {
    const BlockTag tag = read_tag(*reopened, volume_, b);
    EXPECT_TRUE(tag == (BlockTag{volume_, b, 1}) || tag == (BlockTag{volume_, b, 2}));
  }
}

// ---------------------------------------------------------------------------
// A disk that dies mid-workload
// ---------------------------------------------------------------------------

// Rounds of random overlapping async writes, write-zeroes and FUA writes
// (many in flight, a 16-request pool so requests park) with a FLUSH racing
// them; each round ends with a commit that settles the model. The disk dies
// (fail_all) in the middle of a random round with requests in flight. After
// reopening on the disk's content, every block holds its value at the last
// acknowledged commit or one written in the round the disk died in.
TEST(StoreDeadDiskTest, DiskDyingMidWorkloadKeepsEveryAcknowledgedFlush) {
  constexpr uint64_t kBlocks = 256;  // 16 extents
  for (uint64_t seed = 1; seed <= 24; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    auto rand = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    MemoryDevice memory(32 * kMiB);
    ASSERT_TRUE(Store::format(memory, small_format()).ok());
    FaultDevice fault(memory, seed);
    OpenOptions open_options;
    open_options.max_device_requests = 16;  // requests park and resume
    auto opened = Store::open(fault, open_options);
    ASSERT_TRUE(opened.ok());
    std::unique_ptr<Store> store = std::move(*opened);
    auto created = store->create_volume("v", kBlocks * kBlock);
    ASSERT_TRUE(created.ok());
    const VolumeId v = *created;

    // Per block: the value at the last acknowledged commit, and the values
    // written since (any of which a crash may show, old-or-new per sector).
    std::vector<BlockTag> acked(kBlocks, BlockTag{});
    std::vector<std::set<BlockTag>> since(kBlocks);
    struct Op {
      StoreIo io;
      Completion done;
      std::unique_ptr<Buffer> buffer;
    };
    uint64_t seq = 0;
    const int death_round = 1 + static_cast<int>(rand(10));
    bool dead = false;
    for (int round = 0; round < 12 && !dead; ++round) {
      std::vector<std::unique_ptr<Op>> ops;
      const int n = 8 + static_cast<int>(rand(40));
      const int flush_at = static_cast<int>(rand(static_cast<uint64_t>(n)));
      const int death_at =
          round == death_round ? static_cast<int>(rand(static_cast<uint64_t>(n))) : -1;
      for (int i = 0; i < n; ++i) {
        auto op = std::make_unique<Op>();
        if (i == flush_at) {
          op->io = make_io(StoreOp::kFlush, v, 0, 0, nullptr, op->done);
        } else {
          const uint64_t block = rand(kBlocks - 8);
          const uint64_t count = 1 + rand(8);
          const StoreOp kind = rand(6) == 0 ? StoreOp::kWriteZeroes : StoreOp::kWrite;
          op->buffer = std::make_unique<Buffer>(count * kBlock);
          ++seq;
          for (uint64_t b = 0; b < count; ++b) {
            const BlockTag tag = kind == StoreOp::kWrite ? BlockTag{v, block + b, seq} : BlockTag{};
            fill_block(op->buffer->block(b), tag);
            since[block + b].insert(tag);
          }
          op->io = make_io(kind, v, block * kBlock, count * kBlock,
                           kind == StoreOp::kWrite ? op->buffer->data() : nullptr, op->done);
          op->io.fua = kind == StoreOp::kWrite && rand(8) == 0;
        }
        store->submit(op->io);
        ops.push_back(std::move(op));
        if (i == death_at) {
          fault.fail_all(EIO);  // requests inside the disk fail too
          dead = true;
        }
        if (rand(3) == 0) {
          store->poll(false);
        }
      }
      for (bool all_done = false; !all_done;) {
        store->poll(true);
        all_done = true;
        for (auto& op : ops) {
          all_done = all_done && op->done.done;
        }
      }
      if (dead) {
        break;
      }
      for (auto& op : ops) {
        ASSERT_EQ(op->done.result, 0) << to_string(op->io.op);
      }
      // Settle: nothing in flight, so the store's content is exactly what
      // the next commit acknowledges; it must be one of the candidates.
      ASSERT_TRUE(store->commit().ok());
      for (uint64_t b = 0; b < kBlocks; ++b) {
        if (since[b].empty()) {
          continue;
        }
        const BlockTag tag = read_tag(*store, v, b);
        ASSERT_TRUE(tag == acked[b] || since[b].count(tag))
            << "block " << b << " holds " << describe(tag);
        acked[b] = tag;
        since[b].clear();
      }
    }
    ASSERT_TRUE(dead);
    // A dead disk: the next commit fails and the store refuses changes.
    Buffer buffer(kBlock);
    EXPECT_FALSE(store->commit().ok());
    EXPECT_TRUE(store->failed());
    EXPECT_FALSE(store->health().ok());
    EXPECT_FALSE(store->write(v, 0, buffer.span()).ok());
    store.reset();

    auto again = Store::open(memory);
    ASSERT_TRUE(again.ok()) << again.error().to_string();
    for (const auto& problem : (*again)->check()) {
      ADD_FAILURE() << "check: " << problem;
    }
    for (uint64_t b = 0; b < kBlocks; ++b) {
      ASSERT_TRUE((*again)->read(v, b * kBlock, buffer.span()).ok());
      for (uint64_t s = 0; s < kBlock / testing::kSector; ++s) {
        BlockTag tag;
        ASSERT_TRUE(testing::decode_sector(buffer.data() + s * testing::kSector, s, tag));
        ASSERT_TRUE(tag == acked[b] || since[b].count(tag))
            << "block " << b << " sector " << s << " holds " << describe(tag) << ", acknowledged "
            << describe(acked[b]);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Read errors while opening
// ---------------------------------------------------------------------------

// Fails the k-th device read of open() for every k: open must refuse with an
// error naming the device - never open a rolled-back store (an unreadable
// journal block is not the end of the journal) - and write nothing.
TEST(StoreOpenFaultTest, ReadErrorDuringOpenRefusesAndWritesNothing) {
  MemoryDevice memory(32 * kMiB);
  FormatOptions options = small_format();
  options.journal_blocks = 16;
  ASSERT_TRUE(Store::format(memory, options).ok());
  VolumeId v = 0;
  {
    auto opened = Store::open(memory);
    ASSERT_TRUE(opened.ok());
    auto created = (*opened)->create_volume("v", 4 * kMiB);
    ASSERT_TRUE(created.ok());
    v = *created;
    // Enough commits for a checkpoint in area B plus journal commits after.
    Buffer buffer(kBlock);
    for (uint64_t i = 0; i < 40; ++i) {
      fill_block(buffer.block(0), BlockTag{v, i, 1});
      ASSERT_TRUE((*opened)->write(v, i * 16 * kBlock, buffer.span()).ok());
      ASSERT_TRUE((*opened)->commit().ok());
    }
    EXPECT_GE((*opened)->stats().checkpoints, 1u);
    EXPECT_GE((*opened)->stats().journal_blocks_used, 1u);
  }
  const std::vector<std::byte> image = memory.snapshot();
  uint64_t reads = 0;
  {
    FaultDevice counting(memory);
    auto opened = Store::open(counting);
    ASSERT_TRUE(opened.ok());
    reads = counting.counters().passed;
  }
  ASSERT_GE(reads, 4u);  // superblocks, two checkpoints, journal
  const uint64_t writes_before = memory.counters().writes;
  for (uint64_t k = 0; k < reads; ++k) {
    SCOPED_TRACE("failing read " + std::to_string(k));
    FaultDevice fault(memory);
    FaultRule rule;
    rule.ops = op_bit(IoOp::kRead);
    rule.after = k;
    rule.max_hits = 1;
    rule.error = EIO;
    fault.add_rule(rule);
    auto opened = Store::open(fault);
    ASSERT_FALSE(opened.ok()) << "open succeeded despite a read error";
    const std::string& message = opened.error().message();
    EXPECT_EQ(opened.error().errno_value(), EIO) << message;
    EXPECT_EQ(message.rfind(std::string(fault.name()) + ": ", 0), 0u) << message;
    EXPECT_TRUE(message.find("cannot read") != std::string::npos ||
                message.find("reading the superblocks") != std::string::npos)
        << message;
    EXPECT_EQ(memory.counters().writes, writes_before) << "a refused open wrote";
    EXPECT_TRUE(memory.snapshot() == image) << "a refused open modified the device";
  }
  // And every block committed is there on a healthy open.
  auto opened = Store::open(memory);
  ASSERT_TRUE(opened.ok());
  Buffer buffer(kBlock);
  for (uint64_t i = 0; i < 40; ++i) {
    ASSERT_TRUE((*opened)->read(v, i * 16 * kBlock, buffer.span()).ok());
    BlockTag tag;
    ASSERT_TRUE(decode_block(buffer.span(), tag));
    EXPECT_EQ(tag, (BlockTag{v, i, 1}));
  }
}

}  // namespace
}  // namespace ublkvol::dbs
