// Refusal of foreign / newer / truncated / corrupted devices (no write
// request reaches a refused device, its bytes are unchanged, and the error
// starts with the device's name), and check() / check_device() finding each
// kind of metadata inconsistency injected by hand as checksummed records
// (check_device() never writes either).
#include <cstring>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <iterator>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/format.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "../device/temp_file.h"
#include "meta_io.h"
#include "metadata.h"
#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using namespace format;
using testing::BlockTag;
using testing::Buffer;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    device_ = std::make_unique<MemoryDevice>(32 * kMiB);
    FormatOptions options;
    options.extent_blocks = 16;
    ASSERT_TRUE(Store::format(*device_, options).ok());
    auto store = Store::open(*device_);
    ASSERT_TRUE(store.ok());
    auto v = (*store)->create_volume("v", 4 * kMiB);
    ASSERT_TRUE(v.ok());
    volume_ = *v;
    Buffer data(4 * kBlock);
    for (uint64_t b = 0; b < 4; ++b) {
      fill_block(data.block(b), BlockTag{volume_, b * 16, 1});
    }
    for (uint64_t b = 0; b < 4; ++b) {  // blocks 0, 16, 32, 48: four extents
      ASSERT_TRUE((*store)->write(volume_, b * 16 * kBlock, data.block(b)).ok());
    }
    ASSERT_TRUE((*store)->commit().ok());
  }

  // Writes a block and commits, over and over, until `done(stats)` holds:
  // how the tests below roll the journal into checkpoints.
  void commit_until(const std::function<bool(const StoreStats&)>& done) {
    auto store = Store::open(*device_);
    ASSERT_TRUE(store.ok());
    Buffer data(kBlock);
    for (int i = 0; !done((*store)->stats()); ++i) {
      ASSERT_TRUE(
          (*store)->write(volume_, static_cast<uint64_t>(i % 1000) * kBlock, data.span()).ok());
      ASSERT_TRUE((*store)->commit().ok());
      ASSERT_LT(i, 100000);
    }
  }

  // Expects open to fail with an error that names the device and contains
  // `needle`, without a single write, discard or flush reaching the device
  // and with its bytes untouched.
  static void expect_refused(MemoryDevice& device, std::span<const std::byte> bytes,
                             const std::string& needle) {
    const std::vector<std::byte> before(bytes.begin(), bytes.end());
    const MemoryDevice::Counters counters = device.counters();
    auto store = Store::open(device);
    ASSERT_FALSE(store.ok()) << "opened a store that should be refused (" << needle << ")";
    const std::string& message = store.error().message();
    EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message;
    EXPECT_EQ(message.rfind(std::string(device.name()) + ": ", 0), 0u)
        << "message does not start with the device name: " << message;
    expect_untouched(device, counters, before, bytes);
  }

  static void expect_untouched(const MemoryDevice& device, const MemoryDevice::Counters& counters,
                               const std::vector<std::byte>& before,
                               std::span<const std::byte> bytes) {
    EXPECT_EQ(device.counters().writes, counters.writes) << "a refused device was written";
    EXPECT_EQ(device.counters().discards, counters.discards);
    EXPECT_EQ(device.counters().write_zeroes, counters.write_zeroes);
    EXPECT_EQ(device.counters().flushes, counters.flushes);
    EXPECT_TRUE(std::equal(before.begin(), before.end(), bytes.begin()))
        << "a refused device was modified";
  }

  void rewrite_superblocks(const std::function<void(Superblock&)>& change) {
    for (size_t copy = 0; copy < 2; ++copy) {
      std::byte* block = device_->bytes().data() + copy * kBlockSize;
      Superblock sb{};
      std::memcpy(&sb, block, sizeof(sb));
      change(sb);
      sb.crc = 0;
      std::memcpy(block, &sb, sizeof(sb));
      const uint32_t crc = crc32c(block, kBlockSize);
      std::memcpy(block + offsetof(Superblock, crc), &crc, sizeof(crc));
    }
  }

  // Appends a checksummed journal commit with `records` after the valid ones.
  template <typename... Records>
  void append_commit(const Records&... records) {
    std::vector<std::string> problems;
    auto loaded = detail::load_store(*device_, false, &problems);
    ASSERT_TRUE(loaded.ok()) << loaded.error().to_string();
    std::vector<std::byte> body;
    auto add = [&](RecordType type, const auto& record) {
      RecordHeader header{static_cast<uint16_t>(type), static_cast<uint16_t>(sizeof(record))};
      const size_t at = body.size();
      body.resize(at + sizeof(header) + sizeof(record));
      std::memcpy(body.data() + at, &header, sizeof(header));
      std::memcpy(body.data() + at + sizeof(header), &record, sizeof(record));
    };
    (add(records.first, records.second), ...);
    detail::AlignedBuffer framed;
    detail::frame_body(loaded->geometry, MetaType::kJournal, loaded->epoch, loaded->seq + 1, body,
                       framed);
    ASSERT_TRUE(write_sync(*device_,
                           (loaded->geometry.journal_start + loaded->journal_pos) * kBlockSize,
                           framed.span())
                    .ok());
  }

  ExtentRecord extent_of(uint32_t layer, uint32_t logical, uint32_t phys) {
    ExtentRecord r{};
    r.layer = layer;
    r.logical = logical;
    r.phys = phys;
    r.bits[0] = 1;
    return r;
  }

  uint32_t head_layer() {
    auto loaded = detail::load_store(*device_, false, nullptr);
    const detail::Volume* volume = loaded.ok() ? loaded->metadata->volume(volume_) : nullptr;
    EXPECT_NE(volume, nullptr);
    return volume != nullptr ? volume->head_id : 0;
  }
  uint32_t phys_of(uint32_t logical) {
    const uint32_t head = head_layer();
    auto loaded = detail::load_store(*device_, false, nullptr);
    const detail::Layer* layer = loaded.ok() ? loaded->metadata->layer(head) : nullptr;
    const detail::ExtentEntry* entry = layer != nullptr ? layer->map.find(logical) : nullptr;
    EXPECT_NE(entry, nullptr);
    return entry != nullptr ? entry->phys : 0;
  }

  void expect_check_finds(const std::string& needle) {
    const std::vector<std::byte> before = device_->snapshot();
    const MemoryDevice::Counters counters = device_->counters();
    auto problems = Store::check_device(*device_);
    expect_untouched(*device_, counters, before, device_->bytes());
    bool found = false;
    for (const auto& p : problems) {
      found |= p.find(needle) != std::string::npos;
    }
    EXPECT_TRUE(found) << "check_device did not report '" << needle << "'; got "
                       << (problems.empty() ? std::string("nothing") : problems.front());
  }

  std::unique_ptr<MemoryDevice> device_;
  VolumeId volume_ = 0;
};

TEST_F(CorruptionTest, ValidStoreChecksClean) {
  EXPECT_TRUE(Store::check_device(*device_).empty());
}

TEST_F(CorruptionTest, ForeignDeviceIsRefused) {
  MemoryDevice zeros(8 * kMiB);
  expect_refused(zeros, zeros.bytes(), "not a DBS store");
  MemoryDevice random(8 * kMiB);
  for (size_t i = 0; i < random.bytes().size(); ++i) {
    random.bytes()[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  }
  expect_refused(random, random.bytes(), "not a DBS store");
}

TEST_F(CorruptionTest, NewerVersionIsRefused) {
  rewrite_superblocks([](Superblock& sb) { sb.version = kFormatVersion + 1; });
  expect_refused(*device_, device_->bytes(), "newer than this build supports");
}

TEST_F(CorruptionTest, TruncatedDeviceIsRefused) {
  std::vector<std::byte> image(device_->bytes().begin(), device_->bytes().begin() + 16 * kMiB);
  MemoryDevice truncated(std::move(image));
  expect_refused(truncated, truncated.bytes(), "smaller than the store");
  std::vector<std::byte> tiny(device_->bytes().begin(), device_->bytes().begin() + kBlockSize);
  MemoryDevice one_block(std::move(tiny));
  expect_refused(one_block, one_block.bytes(), "too small");
}

TEST_F(CorruptionTest, BothSuperblocksCorruptedIsRefused) {
  device_->bytes()[100] ^= std::byte{1};
  device_->bytes()[kBlockSize + 100] ^= std::byte{1};
  expect_refused(*device_, device_->bytes(), "checksum mismatch");
}

TEST_F(CorruptionTest, OneBadSuperblockCopyIsFoundByCheckAndRewrittenByOpen) {
  device_->bytes()[100] ^= std::byte{1};
  auto problems = Store::check_device(*device_);  // offline check: reports, never writes
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("superblock copy 0"), std::string::npos);
  auto store = Store::open(*device_);
  ASSERT_TRUE(store.ok()) << store.error().to_string();
  EXPECT_TRUE((*store)->check().empty()) << (*store)->check().front();
}

// Issue 12 item 9: a store with one damaged superblock copy opens from the
// other copy and, opened for writing, rewrites the damaged copy (durably,
// said in the open notes); its data stays intact. Copy 0, then copy 1.
TEST_F(CorruptionTest, DamagedSuperblockCopyIsRewrittenFromTheGoodOne) {
  const std::span<const std::byte> superblocks = device_->bytes().first(size_t{2} * kBlockSize);
  const std::vector<std::byte> good(superblocks.begin(), superblocks.end());
  for (uint32_t copy = 0; copy < 2; ++copy) {
    SCOPED_TRACE("damaged copy " + std::to_string(copy));
    device_->bytes()[size_t{copy} * kBlockSize + 40] ^= std::byte{0x10};
    {
      auto store = Store::open(*device_);
      ASSERT_TRUE(store.ok()) << store.error().to_string();
      bool noted = false;
      for (const std::string& note : (*store)->open_notes()) {
        noted |= note.find("superblock copy " + std::to_string(copy)) != std::string::npos &&
                 note.find("rewritten") != std::string::npos;
      }
      EXPECT_TRUE(noted) << "the open notes do not say the copy was rewritten";
      Buffer block(kBlock);
      ASSERT_TRUE((*store)->read(volume_, 16 * kBlock, block.span()).ok());
      BlockTag tag;
      ASSERT_TRUE(testing::decode_block(block.block(0), tag));
      EXPECT_TRUE(tag == (BlockTag{volume_, 16, 1})) << testing::describe(tag);
    }
    EXPECT_TRUE(std::equal(good.begin(), good.end(), device_->bytes().begin()))
        << "superblock copy " << copy << " was not restored";
    EXPECT_TRUE(Store::check_device(*device_).empty());
  }
}

TEST_F(CorruptionTest, InvalidGeometryIsRefused) {
  rewrite_superblocks([](Superblock& sb) { sb.extent_count = 0xFFFFFF; });
  expect_refused(*device_, device_->bytes(), "invalid geometry");
}

TEST_F(CorruptionTest, CorruptedCheckpointIsRefused) {
  // Area A holds the format's empty checkpoint, area B the one the first
  // commit after open wrote. Damage one byte of each.
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  device_->bytes()[loaded->geometry.checkpoint_start[0] * kBlockSize + 200] ^= std::byte{0x40};
  device_->bytes()[loaded->geometry.checkpoint_start[1] * kBlockSize + 200] ^= std::byte{0x40};
  expect_refused(*device_, device_->bytes(), "no valid metadata checkpoint");
}

TEST_F(CorruptionTest, CorruptedNewestCheckpointWithLaterJournalIsRefused) {
  // Enough commits to roll the journal into a checkpoint, then one more.
  ASSERT_NO_FATAL_FAILURE(commit_until(
      [](const StoreStats& st) { return st.checkpoints != 0 && st.journal_blocks_used != 0; }));
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  ASSERT_GT(loaded->journal_pos, 0u);
  const uint64_t active = loaded->geometry.checkpoint_start[loaded->active_checkpoint];
  device_->bytes()[active * kBlockSize + kBlockSize - 1] ^= std::byte{1};
  expect_refused(*device_, device_->bytes(), "refusing to roll back");
}

// Issue 12 item 2: the newest checkpoint is damaged before any journal
// commit of its epoch was written. Falling back to the older checkpoint
// would silently drop what only the newer one holds; the epoch-start record
// written after every checkpoint proves the newer one was complete.
TEST_F(CorruptionTest, CorruptedNewestCheckpointWithoutLaterCommitsIsRefused) {
  ASSERT_NO_FATAL_FAILURE(commit_until([](const StoreStats& st) { return st.checkpoints != 0; }));
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  const uint64_t active = loaded->geometry.checkpoint_start[loaded->active_checkpoint];
  device_->bytes()[active * kBlockSize + kBlockSize - 1] ^= std::byte{1};
  expect_refused(*device_, device_->bytes(), "refusing to roll back");
  expect_check_finds("refusing to roll back");
}

// Found by dbs_open_fuzz: the newest checkpoint AND the start of its
// journal are damaged, later commits of its epoch survive further on. The
// replay stops at block 0 of the older epoch's view; the surviving blocks of
// the newer epoch still prove a newer checkpoint was complete, so falling
// back would roll the store back (and the next checkpoint, reusing that epoch
// number, would make the stale blocks look like later commits).
TEST_F(CorruptionTest, CorruptedNewestCheckpointAndJournalStartWithLaterCommitsIsRefused) {
  ASSERT_NO_FATAL_FAILURE(commit_until(
      [](const StoreStats& st) { return st.checkpoints != 0 && st.journal_blocks_used >= 3; }));
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  ASSERT_GE(loaded->journal_pos, 3u);
  const detail::Geometry& g = loaded->geometry;
  const uint64_t active = g.checkpoint_start[loaded->active_checkpoint];
  device_->bytes()[active * kBlockSize + kBlockSize - 1] ^= std::byte{1};
  device_->bytes()[g.journal_start * kBlockSize + 100] ^= std::byte{1};
  expect_refused(*device_, device_->bytes(), "refusing to roll back");
  expect_check_finds("refusing to roll back");
}

// Issue 12 item 2: 13 valid journal commits, one bit flipped in a middle
// one. Replay must not stop there and call it the journal's end (the later
// commits prove it is not a torn tail): open and check refuse, naming the
// damaged block and commit and the later commit found, and nothing is written.
TEST_F(CorruptionTest, BitFlipInMiddleJournalCommitIsRefused) {
  {
    auto store = Store::open(*device_);
    ASSERT_TRUE(store.ok());
    // The first commit after open is a checkpoint; 13 journal commits follow.
    for (int i = 0; i < 14; ++i) {
      ASSERT_TRUE((*store)->create_volume("x" + std::to_string(i), 4 * kMiB).ok());
    }
  }
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  ASSERT_GE(loaded->journal_commits, 13u);
  // Walk the journal to the 7th commit.
  const detail::Geometry& g = loaded->geometry;
  uint64_t pos = 0;
  uint64_t seq = 0;
  for (int i = 0; i < 7; ++i) {
    auto run = detail::read_run(*device_, g, g.journal_start + pos,
                                g.journal_start + g.journal_blocks, MetaType::kJournal);
    ASSERT_TRUE(run.ok());
    seq = run->header.seq;
    if (i < 6) {
      pos += run->header.count;
    }
  }
  device_->bytes()[(g.journal_start + pos) * kBlockSize + 2000] ^= std::byte{0x04};
  const std::string needle =
      "journal block " + std::to_string(pos) + " (commit " + std::to_string(seq) + ") is corrupted";
  expect_refused(*device_, device_->bytes(), needle);
  expect_refused(*device_, device_->bytes(), "later commit " + std::to_string(seq + 1));
  expect_check_finds(needle);
}

// The operator's escape hatch: OpenOptions::truncate_journal_at_corruption
// opens the state before the damaged commit (what a refused open protects),
// says so in the open notes, and only then can the store be used again.
TEST_F(CorruptionTest, TruncateJournalAtCorruptionOpensTheStateBeforeTheDamagedCommit) {
  {
    auto store = Store::open(*device_);
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE((*store)->create_volume("y" + std::to_string(i), 4 * kMiB).ok());
    }
  }
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_TRUE(loaded.ok());
  // y0 went into the checkpoint (first commit after open); the journal holds
  // the epoch-start record, y1, y2, y3. Damage y2.
  const detail::Geometry& g = loaded->geometry;
  uint64_t pos = 0;
  for (int i = 0; i < 2; ++i) {
    auto run = detail::read_run(*device_, g, g.journal_start + pos,
                                g.journal_start + g.journal_blocks, MetaType::kJournal);
    ASSERT_TRUE(run.ok());
    pos += run->header.count;
  }
  device_->bytes()[(g.journal_start + pos) * kBlockSize + 100] ^= std::byte{0x01};
  expect_refused(*device_, device_->bytes(), "is corrupted");
  OpenOptions options;
  options.truncate_journal_at_corruption = true;
  auto store = Store::open(*device_, options);
  ASSERT_TRUE(store.ok()) << store.error().to_string();
  EXPECT_TRUE((*store)->find_volume("y1").ok());
  EXPECT_FALSE((*store)->find_volume("y2").ok());
  EXPECT_FALSE((*store)->find_volume("y3").ok());
  bool noted = false;
  for (const std::string& note : (*store)->open_notes()) {
    noted |= note.find("journal truncated") != std::string::npos;
  }
  EXPECT_TRUE(noted);
  EXPECT_TRUE((*store)->check().empty());
  ASSERT_TRUE((*store)->create_volume("after", 4 * kMiB).ok());
  store->reset();
  auto reopened = Store::open(*device_);
  ASSERT_TRUE(reopened.ok()) << reopened.error().to_string();
  EXPECT_TRUE((*reopened)->find_volume("after").ok());
  EXPECT_FALSE((*reopened)->find_volume("y3").ok());
}

TEST_F(CorruptionTest, ExtentMappedTwiceIsFound) {
  append_commit(std::pair{RecordType::kExtent, extent_of(head_layer(), 10, phys_of(0))});
  expect_refused(*device_, device_->bytes(), "mapped twice");
  expect_check_finds("mapped twice");
}

TEST_F(CorruptionTest, ExtentBeyondDataRegionIsFound) {
  append_commit(std::pair{RecordType::kExtent, extent_of(head_layer(), 10, 0xFFFFF0)});
  expect_refused(*device_, device_->bytes(), "beyond the data region");
  expect_check_finds("beyond the data region");
}

TEST_F(CorruptionTest, ExtentOfMissingLayerIsFound) {
  append_commit(std::pair{RecordType::kExtent, extent_of(999, 1, 100)});
  expect_refused(*device_, device_->bytes(), "does not exist");
}

TEST_F(CorruptionTest, BlockBitsBeyondExtentSizeAreFound) {
  ExtentRecord r = extent_of(head_layer(), 20, 200);
  r.bits[3] = 1;  // block 192 of a 16-block extent
  append_commit(std::pair{RecordType::kExtent, r});
  expect_refused(*device_, device_->bytes(), "beyond the extent size");
}

TEST_F(CorruptionTest, MissingParentIsFound) {
  LayerRecord r{};
  r.id = head_layer();
  r.parent = 77;
  r.volume = volume_;
  r.size_bytes = 4 * kMiB;
  append_commit(std::pair{RecordType::kIds, IdsRecord{100, 100}}, std::pair{RecordType::kLayer, r});
  expect_refused(*device_, device_->bytes(), "which does not exist");
  expect_check_finds("has parent 77 which does not exist");
}

TEST_F(CorruptionTest, ParentCycleIsFound) {
  LayerRecord a{};
  a.id = 50;
  a.parent = 51;
  a.flags = kLayerSnapshot;
  a.size_bytes = 4 * kMiB;
  LayerRecord b = a;
  b.id = 51;
  b.parent = 50;
  append_commit(std::pair{RecordType::kIds, IdsRecord{100, 100}}, std::pair{RecordType::kLayer, a},
                std::pair{RecordType::kLayer, b});
  expect_refused(*device_, device_->bytes(), "metadata is inconsistent");
  expect_check_finds("cycle");
}

TEST_F(CorruptionTest, VolumeWithMissingHeadIsFound) {
  VolumeRecord r{};
  r.id = volume_;
  r.head_layer = 4242;
  r.size_bytes = 4 * kMiB;
  r.dirty_shift = kDirtyMinShift;
  std::memcpy(r.name, "v", 1);
  append_commit(std::pair{RecordType::kVolume, r});
  expect_refused(*device_, device_->bytes(), "metadata is inconsistent");
  expect_check_finds("has head layer 4242");
}

TEST_F(CorruptionTest, MalformedRecordIsRefused) {
  DeleteRecord r{1, 0};
  append_commit(std::pair{RecordType::kExtent, r});  // wrong length for an extent record
  expect_refused(*device_, device_->bytes(), "has length 8, expected 48");
}

TEST_F(CorruptionTest, TornJournalTailIsIgnored) {
  // A commit whose block checksum is wrong is a torn, unacknowledged commit:
  // opening ignores it and keeps the state before it.
  append_commit(std::pair{RecordType::kExtent, extent_of(head_layer(), 10, phys_of(0))});
  auto loaded = detail::load_store(*device_, false, nullptr);
  const uint64_t at = (loaded->geometry.journal_start + loaded->journal_pos - 1) * kBlockSize;
  device_->bytes()[at + 3000] ^= std::byte{1};
  auto store = Store::open(*device_);
  ASSERT_TRUE(store.ok()) << store.error().to_string();
  EXPECT_TRUE((*store)->check().empty());
}

TEST_F(CorruptionTest, CheckOnOpenStoreFindsDamagedJournal) {
  auto store = Store::open(*device_);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->check().empty());
  auto loaded = detail::load_store(*device_, false, nullptr);
  ASSERT_GT(loaded->journal_pos, 0u);
  device_->bytes()[loaded->geometry.journal_start * kBlockSize + 100] ^= std::byte{1};
  auto problems = (*store)->check();
  ASSERT_FALSE(problems.empty());
  EXPECT_NE(problems[0].find("journal block 0"), std::string::npos) << problems[0];
}

// A real file through the io_uring FileDevice: a foreign file and a store
// file whose checkpoint was damaged are refused with the file's path in the
// message, and the file's bytes stay exactly as they were.
TEST(FileRefusalTest, ForeignAndCorruptedFilesAreRefusedUnchanged) {
  testing::TempPath path("/tmp", "refuse");
  auto read_file = [&] {
    std::ifstream in(path.path(), std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  };
  FileDeviceOptions options;
  options.create_size = 16 * kMiB;
  {
    auto device = FileDevice::open(path.path(), options);
    ASSERT_TRUE(device.ok()) << device.error().to_string();
    Buffer junk(kMiB);
    for (size_t i = 0; i < junk.size(); ++i) {
      junk.data()[i] = static_cast<std::byte>((i * 2654435761u) >> 11);
    }
    ASSERT_TRUE(write_sync(**device, 0, junk.span()).ok());
    ASSERT_TRUE(flush_sync(**device).ok());
  }
  const std::vector<char> foreign = read_file();
  {
    auto device = FileDevice::open(path.path(), options);
    ASSERT_TRUE(device.ok());
    auto store = Store::open(**device);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.error().message(),
              path.path() + ": not a DBS store (no superblock magic in block 0 or 1)");
  }
  EXPECT_TRUE(read_file() == foreign) << "a refused foreign file was modified";

  {
    auto device = FileDevice::open(path.path(), options);
    ASSERT_TRUE(device.ok());
    FormatOptions format_options;
    format_options.extent_blocks = 16;
    ASSERT_TRUE(Store::format(**device, format_options).ok());
    auto loaded = detail::load_store(**device, false, nullptr);
    ASSERT_TRUE(loaded.ok());
    Buffer block(kBlock);
    const uint64_t at = loaded->geometry.checkpoint_start[0] * kBlockSize;
    ASSERT_TRUE(read_sync(**device, at, block.span()).ok());
    block.data()[300] ^= std::byte{4};
    ASSERT_TRUE(write_sync(**device, at, block.span()).ok());
    ASSERT_TRUE(flush_sync(**device).ok());
  }
  const std::vector<char> corrupted = read_file();
  {
    auto device = FileDevice::open(path.path(), options);
    ASSERT_TRUE(device.ok());
    auto store = Store::open(**device);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.error().message().rfind(path.path() + ": no valid metadata checkpoint", 0), 0u)
        << store.error().message();
    EXPECT_FALSE(Store::check_device(**device).empty());
  }
  EXPECT_TRUE(read_file() == corrupted) << "a refused store file was modified";
}

}  // namespace
}  // namespace ublkvol::dbs
