// Crash harness for the Direct Block Store (DESIGN.md guarantee 3).
//
// A seeded random workload (overlapping sync and async writes, discards,
// write-zeroes, flushes, snapshot create/delete/revert/clone, volume
// create/delete/grow) runs on a store over a CrashDevice. Afterwards, for
// every device epoch (interval between two completed device flushes) the
// harness builds crash images - the flush boundary itself, everything
// pending applied, and random subsets of the pending writes in random order,
// some torn at 512-byte sector granularity - and for each image:
//   - opens the store (must succeed) and runs check() (must be clean);
//   - compares every sector of every volume against a reference model: the
//     state at the last acknowledged flush/commit, or any value written after
//     it and before the crash point (old-or-new). Every block's sectors say
//     which volume, block and write produced them, so data of another volume,
//     a deleted volume or an older write shows up as a mismatch;
//   - checks that every visible snapshot is exactly what it was at creation,
//     that acknowledged volumes/snapshots exist and deleted ones don't;
//   - on some images, keeps using the recovered store (write, reopen as a
//     killed process would, commit, reopen) to prove recovery left a usable
//     journal - also when unflushed journal commits of the crashed run sit
//     beyond the recovered end of the journal.
// Process crashes (OpenOptions::journal_mappings): during the workload, at
// random points with nothing in flight, the image of everything completed so
// far (a killed process: the device keeps every completed write, nothing
// more is written) must open, check clean, and read back exactly the model -
// every completed request, flushed or not - and every snapshot.
// Half the seeds run each OpenOptions::MappingDataOrder (a flush before each
// mapping record, or FUA data writes).
//
// Corruption mode (issue 12): on every kCorruptEvery-th crash image, one bit
// is flipped in each metadata block kind in turn - superblock copy 0 and 1,
// checkpoint area A and B, every journal commit of the replayed chain (the
// middle ones and the tail) - and the flipped image must either be refused
// with an error naming the region ("superblock", "checkpoint", "journal")
// without a write reaching it, or open to exactly the state (volumes,
// snapshots, every block of each) the unflipped image opens to. The one
// documented exception: a flipped *last* record - the journal's tail commit,
// or the newest checkpoint while no commit of its epoch is written - cannot be
// told from a torn write of it, so it may instead open to exactly the state
// of the image with that record never written (counted and printed).
//
// Default: fixed seeds, >= 10,000 images, count printed. Soak mode:
// UBLKVOL_CRASH_SOAK=<seeds> runs that many extra seeds with more images.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <set>
#include <spdlog/spdlog.h>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/crash_device.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/format.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "../device/temp_file.h"
#include "../store/store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::decode_sector;
using testing::fill_block;
using testing::kBlock;
using testing::kSector;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDeviceBytes = 8 * kMiB;
constexpr uint64_t kVolumeBytes = uint64_t{512} * 1024;  // 128 blocks = 8 extents of 16 blocks

// Crash images that also get the corruption mode (every n-th): keeps the
// extra opens (about 30 per such image) to a few percent of the test's time.
constexpr size_t kCorruptEvery = 40;

// Everything a store shows: volumes, snapshots and a checksum of every block
// of each, to compare two opens for exact equality.
std::string state_of(Store& store) {
  std::string out;
  auto content = [&](uint64_t size, const std::function<Status(std::span<std::byte>)>& read) {
    Buffer buffer(size);
    auto span = buffer.span();
    Status status = read(span);
    if (!status.ok()) {
      return " read failed: " + status.error().message();
    }
    return " crc " + std::to_string(crc32c(span));
  };
  for (const VolumeInfo& v : store.list_volumes()) {
    out += "volume " + std::to_string(v.id) + " " + v.name + " " + std::to_string(v.size_bytes) +
           " gen " + std::to_string(v.generation) +
           content(v.size_bytes, [&](std::span<std::byte> b) { return store.read(v.id, 0, b); }) +
           "\n";
  }
  for (const SnapshotInfo& sn : store.list_all_snapshots()) {
    out += "snapshot " + std::to_string(sn.id) + " of " + std::to_string(sn.volume) + " " +
           sn.name + (sn.hidden ? " hidden" : "") + " parent " + std::to_string(sn.parent) +
           content(sn.size_bytes,
                   [&](std::span<std::byte> b) { return store.read_snapshot(sn.id, 0, b); }) +
           "\n";
  }
  return out;
}

// A metadata record (or superblock copy) of a crash image.
struct MetaTarget {
  std::string what;          // "superblock copy 0", "checkpoint area A", "journal commit 12 (tail)"
  uint64_t first = 0;        // first block
  uint64_t count = 1;        // blocks
  bool last_record = false;  // documented exception (see the header comment)
};

format::MetaHeader header_at(const std::vector<std::byte>& image, uint64_t block) {
  format::MetaHeader h{};
  std::memcpy(&h, image.data() + block * kBlock, sizeof(h));
  return h;
}

// Superblocks, both checkpoint areas and the replayed journal chain of
// `image`, located from their headers (nothing here trusts them further).
std::vector<MetaTarget> meta_targets(const std::vector<std::byte>& image) {
  using namespace format;
  std::vector<MetaTarget> targets = {{"superblock copy 0", 0, 1}, {"superblock copy 1", 1, 1}};
  Superblock sb{};
  std::memcpy(&sb, image.data(), sizeof(sb));
  uint64_t active_epoch = 0;
  uint64_t active_seq = 0;
  int active = -1;
  for (int area = 0; area < 2; ++area) {
    const MetaHeader h = header_at(image, sb.checkpoint_start[area]);
    if (h.magic != kMetaMagic || h.type != static_cast<uint16_t>(MetaType::kCheckpoint)) {
      continue;
    }
    targets.push_back({std::string("checkpoint area ") + (area == 0 ? "A" : "B"),
                       sb.checkpoint_start[area],
                       std::min<uint64_t>(h.count, sb.checkpoint_blocks)});
    if (active < 0 || h.epoch > active_epoch) {
      active = static_cast<int>(targets.size()) - 1;
      active_epoch = h.epoch;
      active_seq = h.seq;
    }
  }
  uint64_t pos = 0;
  uint64_t seq = active_seq;
  size_t first_commit = targets.size();
  while (pos < sb.journal_blocks) {
    const MetaHeader h = header_at(image, sb.journal_start + pos);
    if (h.magic != kMetaMagic || h.type != static_cast<uint16_t>(MetaType::kJournal) ||
        h.epoch != active_epoch || h.seq != seq + 1 || h.index != 0 || h.count == 0 ||
        pos + h.count > sb.journal_blocks) {
      break;
    }
    targets.push_back({"journal commit " + std::to_string(h.seq), sb.journal_start + pos, h.count});
    seq = h.seq;
    pos += h.count;
  }
  if (targets.size() > first_commit) {
    targets.back().last_record = true;
    targets.back().what += " (tail)";
  } else if (active >= 0) {
    targets[static_cast<size_t>(active)].last_record = true;  // no commit of its epoch yet
  }
  return targets;
}

struct VolumeModel {
  std::vector<BlockTag> blocks;
  // Acknowledgements taken while async requests were in flight: further
  // values a block may hold (overlapping requests settle either way).
  std::map<uint64_t, std::vector<BlockTag>> extra;
};

struct Model {
  std::map<VolumeId, VolumeModel> volumes;
  std::map<SnapshotId, VolumeId> snapshots;  // visible snapshots -> volume
};

struct Event {
  enum Kind { kWrite, kVolumeCreate, kVolumeDelete, kSnapshotCreate, kSnapshotDelete };
  Kind kind;
  size_t log_index;  // crash device log size when the operation was issued
  VolumeId volume = 0;
  uint64_t block = 0;
  BlockTag value;
  SnapshotId snapshot = 0;
};

struct Ack {
  size_t epoch;        // crash in this epoch or later must show `model`
  size_t event_index;  // events before this index are contained in `model`
  Model model;
};

struct HarnessOptions {
  // Share of steps (percent) that are async storms (async_storm()).
  int storm_percent = 0;
  // Device requests of the store under test (16: requests park and resume).
  uint32_t max_device_requests = 1024;
  // Non-empty: the store runs on an io_uring FileDevice on a file in this
  // directory (real asynchronous completion order) instead of a
  // MemoryDevice; crash images are built from the CrashDevice log as always.
  std::string file_directory;
  // How allocating writes' data is kept ahead of their journal record.
  OpenOptions::MappingDataOrder mapping_data_order = OpenOptions{}.mapping_data_order;
};

// Both ways of ordering allocating writes' data before their mapping record
// run in every test: odd seeds the default (a flush before the record), even
// seeds FUA data.
OpenOptions::MappingDataOrder order_for_seed(uint64_t seed) {
  return seed % 2 == 0 ? OpenOptions::MappingDataOrder::kFuaData
                       : OpenOptions::MappingDataOrder::kFlushBeforeRecord;
}

const char* order_name(OpenOptions::MappingDataOrder order) {
  return order == OpenOptions::MappingDataOrder::kFuaData ? "FUA data" : "flush before record";
}

class Harness {
 public:
  explicit Harness(uint64_t seed, HarnessOptions options = {})
      : rng_(seed), seed_(seed), options_(std::move(options)) {}

  // Runs the workload; returns false (with a gtest failure) on setup errors.
  void run_workload(int steps) {
    FormatOptions options;
    options.extent_blocks = 16;
    options.journal_blocks = 24;  // small: checkpoints happen often
    if (options_.file_directory.empty()) {
      auto memory = std::make_unique<MemoryDevice>(kDeviceBytes);
      ASSERT_TRUE(Store::format(*memory, options).ok());
      crash_ = std::make_unique<CrashDevice>(*memory);
      inner_ = std::move(memory);
    } else {
      file_ = std::make_unique<testing::TempPath>(options_.file_directory, "crash");
      FileDeviceOptions file_options;
      file_options.create_size = kDeviceBytes;
      file_options.queue_depth = 32;
      auto file = FileDevice::open(file_->path(), file_options);
      ASSERT_TRUE(file.ok()) << file.error().to_string();
      ASSERT_TRUE(Store::format(**file, options).ok());
      std::vector<std::byte> initial(kDeviceBytes);
      Buffer buffer(kDeviceBytes);
      ASSERT_TRUE(read_sync(**file, 0, buffer.span()).ok());
      std::memcpy(initial.data(), buffer.data(), kDeviceBytes);
      crash_ = std::make_unique<CrashDevice>(**file, std::move(initial));
      inner_ = std::move(*file);
    }
    OpenOptions open_options;
    open_options.max_device_requests = options_.max_device_requests;
    open_options.mapping_data_order = options_.mapping_data_order;
    auto opened = Store::open(*crash_, open_options);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    store_ = std::move(*opened);
    record_ack();
    create_volume();
    create_volume();
    for (int step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
      one_step();
      if (rand(8) == 0 && !::testing::Test::HasFailure()) {
        verify_process_crash();
      }
    }
    store_.reset();
  }

  // The image a process killed now leaves (every completed write on the
  // device, nothing in flight) must hold exactly the model.
  void verify_process_crash() {
    const size_t epoch = crash_->epochs() - 1;
    CrashDevice::CrashSpec spec{epoch, crash_->log().size(), {}};
    for (size_t index : crash_->pending_entries(epoch)) {
      spec.applied.push_back({index, {}});
    }
    std::vector<std::byte> image;
    auto built = crash_->build_image(spec, image);
    ASSERT_TRUE(built.ok()) << built.error().to_string();
    MemoryDevice device(std::move(image));
    auto opened = Store::open(device);
    ASSERT_TRUE(opened.ok()) << "killed-process image does not open: "
                             << opened.error().to_string();
    for (const auto& problem : (*opened)->check()) {
      ADD_FAILURE() << "check of a killed-process image: " << problem;
    }
    for (const auto& [v, volume] : model_.volumes) {
      Buffer buffer(volume.blocks.size() * kBlock);
      ASSERT_TRUE((*opened)->read(v, 0, buffer.span()).ok()) << "volume " << v << " is missing";
      for (uint64_t b = 0; b < volume.blocks.size(); ++b) {
        BlockTag tag;
        ASSERT_TRUE(testing::decode_block(buffer.block(b), tag))
            << "killed process: volume " << v << " block " << b << " is torn or garbage";
        ASSERT_EQ(tag, volume.blocks[b])
            << "killed process lost a completed request: volume " << v << " block " << b
            << " holds " << testing::describe(tag) << ", completed "
            << testing::describe(volume.blocks[b]) << " (seed " << seed_ << ")";
      }
    }
    for (const auto& [s, v] : model_.snapshots) {
      auto info = (*opened)->snapshot_info(s);
      ASSERT_TRUE(info.ok()) << "killed process lost snapshot " << s;
      const auto& frozen = frozen_.at(s);
      Buffer buffer(info->size_bytes);
      ASSERT_TRUE((*opened)->read_snapshot(s, 0, buffer.span()).ok());
      for (uint64_t b = 0; b < info->size_bytes / kBlock; ++b) {
        BlockTag tag;
        ASSERT_TRUE(testing::decode_block(buffer.block(b), tag));
        ASSERT_EQ(tag, b < frozen.size() ? frozen[b] : BlockTag{})
            << "killed process: snapshot " << s << " block " << b << " changed";
      }
    }
    ++process_crash_images_;
  }

  size_t verify_images(int random_per_epoch) {
    size_t images = 0;
    std::vector<std::byte> image;
    const size_t epochs = crash_->epochs();
    for (size_t epoch = 0; epoch < epochs; ++epoch) {
      const size_t dp = crash_->durable_prefix(epoch);
      const size_t we = crash_->window_end(epoch);
      const std::vector<size_t> pending = crash_->pending_entries(epoch);
      std::vector<CrashDevice::CrashSpec> specs;
      specs.push_back({epoch, dp, {}});
      if (!pending.empty() || we > dp) {
        CrashDevice::CrashSpec all{epoch, we, {}};
        for (size_t index : pending) {
          all.applied.push_back({index, {}});
        }
        specs.push_back(all);
        for (int r = 0; r < random_per_epoch; ++r) {
          specs.push_back(random_spec(epoch, dp, we, pending));
        }
      }
      for (const auto& spec : specs) {
        auto built = crash_->build_image(spec, image);
        if (!built.ok()) {
          ADD_FAILURE() << built.error().to_string();
          return images;
        }
        if (images % kCorruptEvery == 0) {
          verify_corruptions(image);
          if (::testing::Test::HasFailure()) {
            ADD_FAILURE() << "corruption mode: seed " << seed_ << " epoch " << epoch << " cut "
                          << spec.cut << " applied " << spec.applied.size();
            return images;
          }
        }
        MemoryDevice device(std::move(image));
        verify_image(device, spec, images % 61 == 0);
        image = device.release_image();
        ++images;
        if (::testing::Test::HasFailure()) {
          ADD_FAILURE() << "seed " << seed_ << " epoch " << epoch << " cut " << spec.cut
                        << " applied " << spec.applied.size();
          return images;
        }
      }
    }
    return images;
  }

  // Corruption mode (see the header comment) on one crash image.
  void verify_corruptions(const std::vector<std::byte>& image) {
    std::string expected;
    {
      MemoryDevice device{std::vector<std::byte>(image)};
      auto opened = Store::open(device);
      ASSERT_TRUE(opened.ok()) << "crash image does not open: " << opened.error().to_string();
      expected = state_of(**opened);
    }
    for (const MetaTarget& target : meta_targets(image)) {
      std::vector<std::byte> flipped = image;
      const uint64_t block = target.first + rand(target.count);
      const uint64_t byte = block * kBlock + rand(kBlock);
      flipped[byte] ^= static_cast<std::byte>(1u << rand(8));
      MemoryDevice device(std::move(flipped));
      auto opened = Store::open(device);
      ++corrupted_images_;
      if (!opened.ok()) {
        const std::string& message = opened.error().message();
        const bool named = message.find("superblock") != std::string::npos ||
                           message.find("checkpoint") != std::string::npos ||
                           message.find("journal") != std::string::npos;
        EXPECT_TRUE(named) << target.what
                           << " flipped: refused without naming the region: " << message;
        EXPECT_EQ(device.counters().writes, 0u) << target.what << ": a refused image was written";
        ++corruptions_refused_;
        continue;
      }
      const std::string got = state_of(**opened);
      if (got == expected) {
        ++corruptions_recovered_;
        continue;
      }
      if (target.last_record) {
        // Indistinguishable from a torn write of the last record: must be
        // exactly the state without that record.
        std::vector<std::byte> without = image;
        std::memset(without.data() + target.first * kBlock, 0, target.count * kBlock);
        MemoryDevice torn(std::move(without));
        auto torn_open = Store::open(torn);
        ASSERT_TRUE(torn_open.ok()) << torn_open.error().to_string();
        EXPECT_EQ(got, state_of(**torn_open))
            << target.what << " flipped (byte " << byte << "): neither refused nor the state "
            << "of the unflipped image nor that of the image without the record";
        ++corruptions_as_torn_;
        continue;
      }
      ADD_FAILURE() << target.what << " flipped (byte " << byte
                    << "): silent loss - the store opened to a different state.\nexpected:\n"
                    << expected << "got:\n"
                    << got;
    }
  }

  [[nodiscard]] size_t corrupted_images() const { return corrupted_images_; }
  [[nodiscard]] size_t corruptions_refused() const { return corruptions_refused_; }
  [[nodiscard]] size_t corruptions_recovered() const { return corruptions_recovered_; }
  [[nodiscard]] size_t corruptions_as_torn() const { return corruptions_as_torn_; }

  [[nodiscard]] size_t epochs() const { return crash_->epochs(); }
  [[nodiscard]] size_t process_crash_images() const { return process_crash_images_; }
  [[nodiscard]] uint64_t storm_requests() const { return storm_requests_; }
  [[nodiscard]] uint64_t storm_acks() const { return storm_acks_; }
  [[nodiscard]] unsigned max_in_flight() const { return max_in_flight_; }

 private:
  uint64_t rand(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }

  CrashDevice::CrashSpec random_spec(size_t epoch, size_t dp, size_t we,
                                     const std::vector<size_t>& pending) {
    CrashDevice::CrashSpec spec{epoch, dp + rand(we - dp + 1), {}};
    for (size_t index : pending) {
      if (index >= spec.cut || rand(2) == 0) {
        continue;
      }
      CrashDevice::Applied applied{index, {}};
      const auto& entry = crash_->log()[index];
      if (rand(3) == 0) {  // torn
        applied.block_sector_masks.resize(entry.length / kBlock);
        for (auto& mask : applied.block_sector_masks) {
          const uint64_t kind = rand(4);
          mask = kind == 0 ? 0 : kind == 1 ? 0xFF : static_cast<uint8_t>(rand(256));
        }
      }
      spec.applied.push_back(std::move(applied));
    }
    std::shuffle(spec.applied.begin(), spec.applied.end(), rng_);
    return spec;
  }

  void record_ack() { acks_.push_back({crash_->epochs() - 1, events_.size(), model_}); }

  void event(Event e) {
    e.log_index = issue_index_;
    events_.push_back(e);
  }

  void begin_op() { issue_index_ = crash_->log().size(); }

  VolumeId pick_volume() {
    auto it = model_.volumes.begin();
    std::advance(it, static_cast<long>(rand(model_.volumes.size())));
    return it->first;
  }

  void create_volume() {
    if (model_.volumes.size() >= 6 || layers() >= 40) {
      return;
    }
    begin_op();
    auto id = store_->create_volume("v" + std::to_string(next_name_++), kVolumeBytes);
    ASSERT_TRUE(id.ok()) << id.error().to_string();
    event({Event::kVolumeCreate, 0, *id});
    model_.volumes[*id].blocks.assign(kVolumeBytes / kBlock, BlockTag{});
    record_ack();
  }

  size_t layers() const { return store_->list_all_snapshots().size() + model_.volumes.size(); }

  void write(VolumeId v, uint64_t block, uint64_t count) {
    auto& blocks = model_.volumes[v].blocks;
    count = std::min<uint64_t>(count, blocks.size() - block);
    Buffer buffer(count * kBlock);
    const uint64_t seq = ++seq_;
    begin_op();
    for (uint64_t i = 0; i < count; ++i) {
      fill_block(buffer.block(i), BlockTag{v, block + i, seq});
    }
    ASSERT_TRUE(store_->write(v, block * kBlock, buffer.span()).ok());
    for (uint64_t i = 0; i < count; ++i) {
      blocks[block + i] = BlockTag{v, block + i, seq};
      event({Event::kWrite, 0, v, block + i, blocks[block + i]});
    }
  }

  // Several writes in flight at once, some overlapping; the model takes what
  // the store ends up with (which must be one of the candidates).
  void async_batch() {
    const VolumeId v = pick_volume();
    auto& blocks = model_.volumes[v].blocks;
    const int n = 2 + static_cast<int>(rand(6));
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::vector<StoreIo> ios(static_cast<size_t>(n));
    std::map<uint64_t, std::set<BlockTag>> candidates;
    int done = 0;
    begin_op();
    const uint64_t base = rand(blocks.size() - 8);
    for (int i = 0; i < n; ++i) {
      const uint64_t block = base + rand(8);
      const uint64_t count = std::min<uint64_t>(1 + rand(4), blocks.size() - block);
      const uint64_t seq = ++seq_;
      buffers.push_back(std::make_unique<Buffer>(count * kBlock));
      for (uint64_t b = 0; b < count; ++b) {
        const BlockTag tag{v, block + b, seq};
        fill_block(buffers.back()->block(b), tag);
        candidates[block + b].insert(tag);
        event({Event::kWrite, 0, v, block + b, tag});
      }
      StoreIo& io = ios[static_cast<size_t>(i)];
      io.op = StoreOp::kWrite;
      io.volume = v;
      io.offset = block * kBlock;
      io.length = count * kBlock;
      io.buffer = buffers.back()->data();
      io.user_data = &done;
      io.on_complete = [](StoreIo& completed, int result) {
        EXPECT_EQ(result, 0);
        ++*static_cast<int*>(completed.user_data);
      };
      store_->submit(io);
    }
    while (done < n) {
      store_->poll(true);
    }
    for (auto& [block, tags] : candidates) {
      Buffer buffer(kBlock);
      ASSERT_TRUE(store_->read(v, block * kBlock, buffer.span()).ok());
      BlockTag tag;
      ASSERT_TRUE(testing::decode_block(buffer.span(), tag));
      ASSERT_TRUE(tags.count(tag)) << "async write result is none of the writes";
      blocks[block] = tag;
    }
  }

  // Many requests in flight at once across all volumes - overlapping writes,
  // FUA writes, discards and write-zeroes, with FLUSHes racing them -
  // submitted and completed in interleaved order through the same
  // Store::submit / poll path the engine uses. Every FLUSH that completes is
  // an acknowledgement the crash images are checked against: per block, the
  // values of requests that completed before the FLUSH was submitted and
  // were not superseded (a request submitted after another completed lands
  // after it), plus those of requests still in flight then.
  struct StormOp {
    StoreIo io;
    Harness* harness = nullptr;
    std::unique_ptr<Buffer> buffer;
    uint64_t first = 0;  // block range (data ops)
    uint64_t count = 0;
    BlockTag tags_seq;  // volume + seq; per-block tag = {volume, block, seq} (seq 0: zeros)
    uint64_t submit_time = 0;
    uint64_t complete_time = 0;  // 0: not completed
    size_t event_index = 0;      // flushes: events_.size() at submission
    Model ack;                   // flushes: what their success acknowledges
  };

  BlockTag storm_tag(const StormOp& op, uint64_t block) const {
    return op.tags_seq.seq == 0 ? BlockTag{} : BlockTag{op.tags_seq.volume, block, op.tags_seq.seq};
  }

  static void on_storm_complete(StoreIo& io, int result) {
    auto& op = *static_cast<StormOp*>(io.user_data);
    EXPECT_EQ(result, 0) << to_string(io.op) << " failed in an async storm";
    op.complete_time = ++op.harness->clock_;
    if (io.op == StoreOp::kFlush && result == 0) {
      Harness& h = *op.harness;
      h.acks_.push_back({h.crash_->epochs() - 1, op.event_index, std::move(op.ack)});
      ++h.storm_acks_;
    }
  }

  // The model a FLUSH submitted now acknowledges (see async_storm()).
  Model storm_ack_model(const std::vector<std::unique_ptr<StormOp>>& ops) const {
    Model ack = model_;
    std::map<std::pair<VolumeId, uint64_t>, std::vector<const StormOp*>> touching;
    for (const auto& op : ops) {
      if (op->io.op == StoreOp::kFlush) {
        continue;
      }
      for (uint64_t b = op->first; b < op->first + op->count; ++b) {
        touching[{op->io.volume, b}].push_back(op.get());
      }
    }
    for (const auto& [key, list] : touching) {
      uint64_t latest_completed_submit = 0;
      for (const StormOp* op : list) {
        if (op->complete_time != 0) {
          latest_completed_submit = std::max(latest_completed_submit, op->submit_time);
        }
      }
      std::vector<BlockTag> allowed;
      if (latest_completed_submit == 0) {
        allowed.push_back(model_.volumes.at(key.first).blocks[key.second]);
      }
      for (const StormOp* op : list) {
        // Completed and not superseded, or still in flight.
        if (op->complete_time == 0 || op->complete_time > latest_completed_submit) {
          allowed.push_back(storm_tag(*op, key.second));
        }
      }
      auto& volume = ack.volumes.at(key.first);
      volume.blocks[key.second] = allowed.front();
      volume.extra[key.second].assign(allowed.begin() + 1, allowed.end());
    }
    return ack;
  }

  void async_storm() {
    const int n = 16 + static_cast<int>(rand(49));
    std::vector<std::unique_ptr<StormOp>> ops;
    std::map<VolumeId, uint64_t> bases;  // overlapping region per volume
    for (auto& [v, volume] : model_.volumes) {
      bases[v] = rand(volume.blocks.size() - 32);
    }
    for (int i = 0; i < n; ++i) {
      auto op = std::make_unique<StormOp>();
      op->harness = this;
      op->io.user_data = op.get();
      op->io.on_complete = &Harness::on_storm_complete;
      const uint64_t dice = rand(100);
      begin_op();
      if (dice < 18) {
        op->io.op = StoreOp::kFlush;
        op->event_index = events_.size();
        op->ack = storm_ack_model(ops);
      } else {
        const VolumeId v = pick_volume();
        const uint64_t size = model_.volumes[v].blocks.size();
        const bool zeroing = dice >= 82;
        op->first = bases[v] + rand(24);
        op->count = std::min<uint64_t>(1 + rand(zeroing ? 20 : 8), size - op->first);
        op->io.volume = v;
        op->io.offset = op->first * kBlock;
        op->io.length = op->count * kBlock;
        if (zeroing) {
          op->io.op = dice >= 92 ? StoreOp::kWriteZeroes : StoreOp::kDiscard;
          op->tags_seq = BlockTag{v, 0, 0};
        } else {
          op->io.op = StoreOp::kWrite;
          op->io.fua = dice < 26;
          op->tags_seq = BlockTag{v, 0, ++seq_};
          op->buffer = std::make_unique<Buffer>(op->count * kBlock);
          for (uint64_t b = 0; b < op->count; ++b) {
            fill_block(op->buffer->block(b), storm_tag(*op, op->first + b));
          }
          op->io.buffer = op->buffer->data();
        }
        for (uint64_t b = op->first; b < op->first + op->count; ++b) {
          event({Event::kWrite, 0, v, b, storm_tag(*op, b)});
        }
      }
      op->submit_time = ++clock_;
      store_->submit(op->io);
      ++storm_requests_;
      ops.push_back(std::move(op));
      max_in_flight_ = std::max(max_in_flight_, store_->in_flight());
      if (rand(10) == 0) {
        store_->poll(false);
      } else if (rand(8) == 0) {
        store_->kick();
      }
    }
    for (;;) {
      bool all_done = true;
      for (const auto& op : ops) {
        all_done = all_done && op->complete_time != 0;
      }
      if (all_done) {
        break;
      }
      store_->poll(true);
    }
    // Settle the model: nothing is in flight, so a read shows what the
    // store now holds, which must be one of the values the block could get.
    std::map<std::pair<VolumeId, uint64_t>, std::set<BlockTag>> candidates;
    for (const auto& op : ops) {
      for (uint64_t b = op->first; b < op->first + op->count; ++b) {
        candidates[{op->io.volume, b}].insert(storm_tag(*op, b));
      }
    }
    Buffer buffer(kBlock);
    for (auto& [key, tags] : candidates) {
      auto& blocks = model_.volumes[key.first].blocks;
      tags.insert(blocks[key.second]);
      ASSERT_TRUE(store_->read(key.first, key.second * kBlock, buffer.span()).ok());
      BlockTag tag;
      ASSERT_TRUE(testing::decode_block(buffer.span(), tag));
      ASSERT_TRUE(tags.count(tag))
          << "async storm left " << testing::describe(tag) << ", none of the requests' values";
      blocks[key.second] = tag;
    }
  }

  void zero_range(bool discard) {
    const VolumeId v = pick_volume();
    auto& blocks = model_.volumes[v].blocks;
    const uint64_t block = rand(blocks.size());
    const uint64_t count = std::min<uint64_t>(1 + rand(40), blocks.size() - block);
    begin_op();
    auto status = discard ? store_->discard(v, block * kBlock, count * kBlock)
                          : store_->write_zeroes(v, block * kBlock, count * kBlock);
    ASSERT_TRUE(status.ok()) << status.error().to_string();
    for (uint64_t i = 0; i < count; ++i) {
      blocks[block + i] = BlockTag{};
      event({Event::kWrite, 0, v, block + i, BlockTag{}});
    }
  }

  void one_step() {
    if (options_.storm_percent > 0 && static_cast<int>(rand(100)) < options_.storm_percent) {
      async_storm();
      return;
    }
    const uint64_t dice = rand(100);
    if (dice < 34) {
      write(pick_volume(), rand(kVolumeBytes / kBlock), 1 + rand(8));
    } else if (dice < 44) {
      async_batch();
    } else if (dice < 52) {
      zero_range(rand(2) == 0);
    } else if (dice < 68) {
      begin_op();
      ASSERT_TRUE(store_->commit().ok());
      record_ack();
    } else if (dice < 74) {
      const VolumeId v = pick_volume();
      if (layers() >= 40) {
        return;
      }
      begin_op();
      auto s = store_->create_snapshot(v, "s" + std::to_string(next_name_++));
      ASSERT_TRUE(s.ok()) << s.error().to_string();
      event({Event::kSnapshotCreate, 0, v, 0, {}, *s});
      frozen_[*s] = model_.volumes[v].blocks;
      model_.snapshots[*s] = v;
      record_ack();
    } else if (dice < 79) {
      if (model_.snapshots.empty()) {
        return;
      }
      auto it = model_.snapshots.begin();
      std::advance(it, static_cast<long>(rand(model_.snapshots.size())));
      const SnapshotId s = it->first;
      begin_op();
      ASSERT_TRUE(store_->delete_snapshot(s).ok());
      event({Event::kSnapshotDelete, 0, it->second, 0, {}, s});
      model_.snapshots.erase(s);
      record_ack();
    } else if (dice < 83) {
      // Revert a volume to one of its snapshots.
      const VolumeId v = pick_volume();
      std::vector<SnapshotId> own;
      for (auto& [s, sv] : model_.snapshots) {
        if (sv == v) {
          own.push_back(s);
        }
      }
      if (own.empty()) {
        return;
      }
      const SnapshotId s = own[rand(own.size())];
      begin_op();
      auto status = store_->revert_volume(v, s);
      if (!status.ok()) {
        // Only ancestors can be reverted to (after an earlier revert to an
        // older snapshot, newer ones are no longer ancestors).
        ASSERT_EQ(status.error().errno_value(), EINVAL) << status.error().to_string();
        return;
      }
      auto& blocks = model_.volumes[v].blocks;
      const auto& snap = frozen_[s];
      for (uint64_t b = 0; b < blocks.size(); ++b) {
        blocks[b] = b < snap.size() ? snap[b] : BlockTag{};
        event({Event::kWrite, 0, v, b, blocks[b]});
      }
      record_ack();
    } else if (dice < 87) {
      if (model_.snapshots.empty() || model_.volumes.size() >= 6 || layers() >= 40) {
        return;
      }
      auto it = model_.snapshots.begin();
      std::advance(it, static_cast<long>(rand(model_.snapshots.size())));
      begin_op();
      auto c = store_->clone_snapshot(it->first, "c" + std::to_string(next_name_++));
      ASSERT_TRUE(c.ok()) << c.error().to_string();
      event({Event::kVolumeCreate, 0, *c});
      model_.volumes[*c].blocks = frozen_[it->first];
      for (uint64_t b = 0; b < frozen_[it->first].size(); ++b) {
        event({Event::kWrite, 0, *c, b, frozen_[it->first][b]});
      }
      record_ack();
    } else if (dice < 91) {
      create_volume();
    } else if (dice < 95) {
      if (model_.volumes.size() <= 1) {
        return;
      }
      const VolumeId v = pick_volume();
      begin_op();
      ASSERT_TRUE(store_->delete_volume(v).ok());
      event({Event::kVolumeDelete, 0, v});
      model_.volumes.erase(v);
      for (auto it = model_.snapshots.begin(); it != model_.snapshots.end();) {
        if (it->second == v) {
          event({Event::kSnapshotDelete, 0, v, 0, {}, it->first});
          it = model_.snapshots.erase(it);
        } else {
          ++it;
        }
      }
      record_ack();
    } else {
      // Engine state: generation + dirty bits ride along with commits.
      const VolumeId v = pick_volume();
      ASSERT_TRUE(store_->set_generation(v, seq_).ok());
      ASSERT_TRUE(store_->mark_dirty(v, 0, kBlock).ok());
    }
  }

  void verify_image(MemoryDevice& device, const CrashDevice::CrashSpec& spec, bool continue_use) {
    auto opened = Store::open(device);
    ASSERT_TRUE(opened.ok()) << "crash image does not open: " << opened.error().to_string();
    Store& store = **opened;
    for (const auto& problem : store.check()) {
      ADD_FAILURE() << "check: " << problem;
    }
    // The last acknowledged state before the crash point.
    const Ack* ack = &acks_.front();
    for (const Ack& a : acks_) {
      if (a.epoch <= spec.epoch) {
        ack = &a;
      }
    }
    // Operations issued after it and before the cut may or may not show.
    std::map<std::pair<VolumeId, uint64_t>, std::vector<BlockTag>> later_values;
    std::set<VolumeId> later_created, later_deleted;
    std::set<SnapshotId> later_snap_created, later_snap_deleted;
    for (size_t i = ack->event_index; i < events_.size(); ++i) {
      const Event& e = events_[i];
      if (e.log_index >= spec.cut) {
        break;
      }
      switch (e.kind) {
        case Event::kWrite:
          later_values[{e.volume, e.block}].push_back(e.value);
          break;
        case Event::kVolumeCreate:
          later_created.insert(e.volume);
          break;
        case Event::kVolumeDelete:
          later_deleted.insert(e.volume);
          break;
        case Event::kSnapshotCreate:
          later_snap_created.insert(e.snapshot);
          break;
        case Event::kSnapshotDelete:
          later_snap_deleted.insert(e.snapshot);
          break;
      }
    }
    const Model& model = ack->model;
    std::set<VolumeId> seen;
    for (const VolumeInfo& info : store.list_volumes()) {
      seen.insert(info.id);
      auto known = model.volumes.find(info.id);
      if (known == model.volumes.end() && !later_created.count(info.id)) {
        ADD_FAILURE() << "volume " << info.id << " exists but was deleted or never created";
        continue;
      }
      const uint64_t blocks = info.size_bytes / kBlock;
      Buffer buffer(info.size_bytes);
      ASSERT_TRUE(store.read(info.id, 0, buffer.span()).ok());
      for (uint64_t b = 0; b < blocks; ++b) {
        std::vector<BlockTag> allowed;
        if (known != model.volumes.end() && b < known->second.blocks.size()) {
          allowed.push_back(known->second.blocks[b]);
          if (auto x = known->second.extra.find(b); x != known->second.extra.end()) {
            allowed.insert(allowed.end(), x->second.begin(), x->second.end());
          }
        } else {
          allowed.push_back(BlockTag{});
        }
        if (auto it = later_values.find({info.id, b}); it != later_values.end()) {
          allowed.insert(allowed.end(), it->second.begin(), it->second.end());
        }
        for (uint64_t s = 0; s < kBlock / kSector; ++s) {
          BlockTag tag;
          const std::byte* sector = buffer.data() + b * kBlock + s * kSector;
          ASSERT_TRUE(decode_sector(sector, s, tag))
              << "volume " << info.id << " block " << b << " sector " << s << " holds garbage";
          ASSERT_TRUE(std::find(allowed.begin(), allowed.end(), tag) != allowed.end())
              << "volume " << info.id << " block " << b << " sector " << s << " holds "
              << testing::describe(tag) << ", acknowledged " << testing::describe(allowed.front())
              << " (+" << allowed.size() - 1 << " later writes)";
        }
      }
    }
    for (const auto& [id, volume] : model.volumes) {
      if (!seen.count(id) && !later_deleted.count(id)) {
        ADD_FAILURE() << "acknowledged volume " << id << " is missing";
      }
    }
    std::set<SnapshotId> seen_snaps;
    for (const SnapshotInfo& info : store.list_all_snapshots()) {
      if (info.hidden) {
        continue;
      }
      seen_snaps.insert(info.id);
      if (!model.snapshots.count(info.id) && !later_snap_created.count(info.id)) {
        ADD_FAILURE() << "snapshot " << info.id << " exists but was deleted or never created";
        continue;
      }
      const auto& frozen = frozen_.at(info.id);
      Buffer buffer(info.size_bytes);
      ASSERT_TRUE(store.read_snapshot(info.id, 0, buffer.span()).ok());
      for (uint64_t b = 0; b < info.size_bytes / kBlock; ++b) {
        BlockTag tag;
        ASSERT_TRUE(testing::decode_block(buffer.block(b), tag))
            << "snapshot " << info.id << " block " << b << " is torn or garbage";
        ASSERT_EQ(tag, b < frozen.size() ? frozen[b] : BlockTag{})
            << "snapshot " << info.id << " block " << b << " changed";
      }
    }
    for (const auto& [id, volume] : model.snapshots) {
      if (!seen_snaps.count(id) && !later_snap_deleted.count(id)) {
        ADD_FAILURE() << "acknowledged snapshot " << id << " is missing";
      }
    }
    if (continue_use && !store.list_volumes().empty()) {
      // The recovered store keeps working: write (fresh blocks: journaled
      // without a flush, while commits of the crashed run may still sit
      // beyond the recovered end of the journal), die as a killed process,
      // reopen, read back; then commit, reopen, read back.
      const VolumeId v = store.list_volumes().front().id;
      const uint64_t fresh = store.volume_info(v)->size_bytes / kBlock - 2;
      Buffer buffer(2 * kBlock);
      Buffer tail(2 * kBlock);
      fill_block(buffer.block(0), BlockTag{v, 3, 1'000'000});
      fill_block(buffer.block(1), BlockTag{v, 4, 1'000'000});
      fill_block(tail.block(0), BlockTag{v, fresh, 1'000'000});
      fill_block(tail.block(1), BlockTag{v, fresh + 1, 1'000'000});
      ASSERT_TRUE(store.discard(v, fresh * kBlock, 2 * kBlock).ok());
      ASSERT_TRUE(store.write(v, fresh * kBlock, tail.span()).ok());
      ASSERT_TRUE(store.write(v, 3 * kBlock, buffer.span()).ok());
      opened->reset();
      auto killed = Store::open(device);
      ASSERT_TRUE(killed.ok()) << killed.error().to_string();
      Buffer check_tail(2 * kBlock);
      ASSERT_TRUE((*killed)->read(v, fresh * kBlock, check_tail.span()).ok());
      EXPECT_EQ(std::memcmp(check_tail.data(), tail.data(), 2 * kBlock), 0)
          << "a completed write after recovery was lost by a killed process";
      for (const auto& problem : (*killed)->check()) {
        ADD_FAILURE() << "check after recovery and a killed process: " << problem;
      }
      ASSERT_TRUE((*killed)->write(v, 3 * kBlock, buffer.span()).ok());
      ASSERT_TRUE((*killed)->commit().ok());
      killed->reset();
      auto again = Store::open(device);
      ASSERT_TRUE(again.ok()) << again.error().to_string();
      Buffer check(2 * kBlock);
      ASSERT_TRUE((*again)->read(v, 3 * kBlock, check.span()).ok());
      EXPECT_EQ(std::memcmp(check.data(), buffer.data(), 2 * kBlock), 0);
      for (const auto& problem : (*again)->check()) {
        ADD_FAILURE() << "check after continued use: " << problem;
      }
    }
  }

  std::mt19937_64 rng_;
  uint64_t seed_;
  HarnessOptions options_;
  std::unique_ptr<testing::TempPath> file_;
  std::unique_ptr<BlockDevice> inner_;
  std::unique_ptr<CrashDevice> crash_;
  std::unique_ptr<Store> store_;
  Model model_;
  std::map<SnapshotId, std::vector<BlockTag>> frozen_;
  std::vector<Event> events_;
  std::vector<Ack> acks_;
  size_t issue_index_ = 0;
  uint64_t seq_ = 0;
  uint64_t clock_ = 0;  // logical time of async submissions and completions
  uint64_t storm_requests_ = 0;
  uint64_t storm_acks_ = 0;
  unsigned max_in_flight_ = 0;
  size_t process_crash_images_ = 0;
  size_t corrupted_images_ = 0;
  size_t corruptions_refused_ = 0;
  size_t corruptions_recovered_ = 0;
  size_t corruptions_as_torn_ = 0;
  int next_name_ = 0;
};

TEST(DbsCrash, RandomWorkloadsSurviveEveryCrashImage) {
  // The corruption mode repairs thousands of superblock copies, each logged.
  spdlog::set_level(spdlog::level::err);
  std::vector<uint64_t> seeds = {1, 2, 3, 4, 5, 6, 7, 8};
  int steps = 260;
  int random_per_epoch = 8;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read before any thread starts
  if (const char* soak = std::getenv("UBLKVOL_CRASH_SOAK")) {
    const int extra = std::max(1, std::atoi(soak));
    for (int i = 0; i < extra; ++i) {
      seeds.push_back(1000 + static_cast<uint64_t>(i));
    }
    steps = 600;
    random_per_epoch = 12;
  }
  const auto start = std::chrono::steady_clock::now();
  size_t total = 0;
  size_t killed = 0;
  size_t corrupted = 0;
  size_t refused = 0;
  for (uint64_t seed : seeds) {
    HarnessOptions options;
    options.mapping_data_order = order_for_seed(seed);
    Harness harness(seed, options);
    harness.run_workload(steps);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "workload of seed " << seed << " failed";
    const size_t images = harness.verify_images(random_per_epoch);
    ASSERT_FALSE(::testing::Test::HasFailure());
    std::printf(
        "seed %llu (%s): %zu epochs, %zu crash images verified, %zu killed-process images\n",
        static_cast<unsigned long long>(seed), order_name(options.mapping_data_order),
        harness.epochs(), images, harness.process_crash_images());
    std::printf(
        "  corruption mode: %zu flipped images: %zu refused, %zu recovered exactly, %zu last "
        "records read as torn\n",
        harness.corrupted_images(), harness.corruptions_refused(), harness.corruptions_recovered(),
        harness.corruptions_as_torn());
    total += images;
    killed += harness.process_crash_images();
    corrupted += harness.corrupted_images();
    refused += harness.corruptions_refused();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("crash images verified: %zu (+ %zu killed-process images) in %.1f s\n", total, killed,
              seconds);
  EXPECT_GE(total, 10000u);
  EXPECT_GE(killed, 100u);
  std::printf("corruption mode: %zu flipped images, %zu refused\n", corrupted, refused);
  EXPECT_GE(corrupted, 1000u);
  EXPECT_GT(refused, 0u);
}

// Async storms (async_storm()): up to 64 requests in flight through
// Store::submit/poll - the engine's path - with overlapping writes, FUA,
// discards, write-zeroes and racing FLUSHes, each completed FLUSH checked as
// an acknowledgement. Half the seeds run with a 16-request device pool so
// requests park and resume; the last seeds run on an io_uring FileDevice
// (tmpfs if available), whose completions arrive in the kernel's order.
TEST(DbsCrash, AsyncStormsSurviveEveryCrashImage) {
  struct Run {
    uint64_t seed;
    uint32_t pool;
    bool file;
  };
  std::vector<Run> runs = {{11, 16, false},   {12, 1024, false}, {13, 16, false},
                           {14, 1024, false}, {15, 16, true},    {16, 1024, true}};
  int steps = 70;
  int random_per_epoch = 8;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read before any thread starts
  if (const char* soak = std::getenv("UBLKVOL_CRASH_SOAK")) {
    const int extra = std::max(1, std::atoi(soak));
    for (int i = 0; i < extra; ++i) {
      runs.push_back({2000 + static_cast<uint64_t>(i), i % 2 == 0 ? 16u : 1024u, i % 3 == 0});
    }
    steps = 300;
    random_per_epoch = 12;
  }
  const std::string file_directory = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  const auto start = std::chrono::steady_clock::now();
  size_t total = 0;
  for (const Run& run : runs) {
    HarnessOptions options;
    options.storm_percent = 35;
    options.max_device_requests = run.pool;
    options.mapping_data_order = order_for_seed(run.seed);
    if (run.file) {
      options.file_directory = file_directory;
    }
    Harness harness(run.seed, options);
    harness.run_workload(steps);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "workload of seed " << run.seed << " failed";
    EXPECT_GT(harness.storm_acks(), 0u);
    const size_t images = harness.verify_images(random_per_epoch);
    ASSERT_FALSE(::testing::Test::HasFailure());
    std::printf(
        "async seed %llu (%s, %u device requests, %s): %llu async requests, max %u in "
        "flight, %llu FLUSHes acknowledged mid-storm, %zu epochs, %zu crash images verified, "
        "%zu killed-process images\n",
        static_cast<unsigned long long>(run.seed),
        run.file ? ("io_uring file in " + file_directory).c_str() : "memory", run.pool,
        order_name(options.mapping_data_order),
        static_cast<unsigned long long>(harness.storm_requests()), harness.max_in_flight(),
        static_cast<unsigned long long>(harness.storm_acks()), harness.epochs(), images,
        harness.process_crash_images());
    total += images;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("async crash images verified: %zu in %.1f s\n", total, seconds);
  EXPECT_GE(total, 2000u);
}

}  // namespace
}  // namespace ublkvol::dbs
