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
//   - on some images, keeps using the recovered store (write, commit,
//     reopen) to prove recovery left a usable journal.
//
// Default: fixed seeds, >= 10,000 images, count printed. Soak mode:
// UBLKVOL_CRASH_SOAK=<seeds> runs that many extra seeds with more images.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "ublkvol/dbs/crash_device.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

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
constexpr uint64_t kVolumeBytes = 512 * 1024;  // 128 blocks = 8 extents of 16 blocks

struct VolumeModel {
  std::vector<BlockTag> blocks;
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

class Harness {
 public:
  explicit Harness(uint64_t seed) : rng_(seed), seed_(seed) {}

  // Runs the workload; returns false (with a gtest failure) on setup errors.
  void run_workload(int steps) {
    inner_ = std::make_unique<MemoryDevice>(kDeviceBytes);
    FormatOptions options;
    options.extent_blocks = 16;
    options.journal_blocks = 24;  // small: checkpoints happen often
    ASSERT_TRUE(Store::format(*inner_, options).ok());
    crash_ = std::make_unique<CrashDevice>(*inner_);
    auto opened = Store::open(*crash_);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    store_ = std::move(*opened);
    record_ack();
    create_volume();
    create_volume();
    for (int step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
      one_step();
    }
    store_.reset();
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

  [[nodiscard]] size_t epochs() const { return crash_->epochs(); }

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
      // The recovered store keeps working: write, commit, reopen, read back.
      const VolumeId v = store.list_volumes().front().id;
      Buffer buffer(2 * kBlock);
      fill_block(buffer.block(0), BlockTag{v, 3, 1'000'000});
      fill_block(buffer.block(1), BlockTag{v, 4, 1'000'000});
      ASSERT_TRUE(store.write(v, 3 * kBlock, buffer.span()).ok());
      ASSERT_TRUE(store.commit().ok());
      opened->reset();
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
  std::unique_ptr<MemoryDevice> inner_;
  std::unique_ptr<CrashDevice> crash_;
  std::unique_ptr<Store> store_;
  Model model_;
  std::map<SnapshotId, std::vector<BlockTag>> frozen_;
  std::vector<Event> events_;
  std::vector<Ack> acks_;
  size_t issue_index_ = 0;
  uint64_t seq_ = 0;
  int next_name_ = 0;
};

TEST(DbsCrash, RandomWorkloadsSurviveEveryCrashImage) {
  std::vector<uint64_t> seeds = {1, 2, 3, 4, 5, 6, 7, 8};
  int steps = 220;
  int random_per_epoch = 8;
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
  for (uint64_t seed : seeds) {
    Harness harness(seed);
    harness.run_workload(steps);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "workload of seed " << seed << " failed";
    const size_t images = harness.verify_images(random_per_epoch);
    ASSERT_FALSE(::testing::Test::HasFailure());
    std::printf("seed %llu: %zu epochs, %zu crash images verified\n",
                static_cast<unsigned long long>(seed), harness.epochs(), images);
    total += images;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("crash images verified: %zu in %.1f s\n", total, seconds);
  EXPECT_GE(total, 10000u);
}

}  // namespace
}  // namespace ublkvol::dbs
