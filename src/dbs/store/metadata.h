// In-memory metadata of a store and its translation to and from the on-disk
// record stream (format.h): geometry, volumes, layers, extent maps, and the
// dirty tracking that lets a commit write only what changed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/format.h"
#include "ublkvol/dbs/store.h"

#include "layer_map.h"

namespace ublkvol::dbs::detail {

// The superblock's geometry, validated.
struct Geometry {
  uint64_t device_blocks = 0;
  uint32_t extent_blocks = 0;
  uint8_t uuid[16] = {};
  uint64_t store_id = 0;
  uint64_t checkpoint_start[2] = {0, 0};
  uint64_t checkpoint_blocks = 0;
  uint64_t journal_start = 0;
  uint64_t journal_blocks = 0;
  uint64_t data_start = 0;
  uint32_t extent_count = 0;
  uint32_t max_volumes = 0;
  uint32_t max_layers = 0;

  [[nodiscard]] uint64_t extent_bytes() const {
    return uint64_t{extent_blocks} * format::kBlockSize;
  }
  // Byte offset of block `block` of physical extent `phys`.
  [[nodiscard]] uint64_t data_offset(uint32_t phys, uint32_t block) const {
    return (data_start + uint64_t{phys} * extent_blocks + block) * format::kBlockSize;
  }
};

// Worst-case size of a checkpoint body for these limits: what the checkpoint
// areas are sized for, so a full checkpoint always fits.
uint64_t checkpoint_body_bound(uint64_t extent_count, uint64_t max_volumes, uint64_t max_layers);
uint64_t checkpoint_blocks_for(uint64_t extent_count, uint64_t max_volumes, uint64_t max_layers);

// Lays out a new store on a device of `device_bytes`.
Result<Geometry> plan_geometry(uint64_t device_bytes, const FormatOptions& options);
void encode_superblock(const Geometry& geometry, uint32_t copy, std::span<std::byte> block);
// Decodes and validates one superblock copy (`copy` = its index). The error
// message names the problem ("bad magic", "checksum mismatch", ...).
Result<Geometry> decode_superblock(std::span<const std::byte> block, uint32_t copy);

// Dirty-region geometry for a volume size.
uint32_t dirty_shift_for(uint64_t size_bytes);
uint64_t dirty_regions(uint64_t size_bytes, uint32_t shift);

struct Layer {
  uint32_t id = 0;
  uint32_t parent_id = 0;
  Layer* parent = nullptr;
  uint32_t volume_id = 0;
  uint32_t flags = 0;
  uint64_t size_bytes = 0;
  uint64_t create_time = 0;
  std::string name;
  LayerMap map;
  uint64_t mapped_blocks = 0;  // set bits over all entries
  uint32_t children = 0;       // layers whose parent this is
  bool queued = false;         // in Metadata::dirty_layers_

  [[nodiscard]] bool is_snapshot() const { return (flags & format::kLayerSnapshot) != 0; }
  [[nodiscard]] bool hidden() const { return (flags & format::kLayerHidden) != 0; }
};

struct Volume {
  uint32_t id = 0;
  std::string name;
  uint64_t size_bytes = 0;
  uint32_t head_id = 0;
  Layer* head = nullptr;
  uint64_t generation = 0;
  uint32_t dirty_shift = format::kDirtyMinShift;
  std::vector<uint64_t> dirty_bits;
  bool record_dirty = false;     // VolumeRecord must be written
  uint8_t dirty_chunk_mask = 0;  // DirtyChunkRecords to write
  bool queued = false;           // in Metadata::dirty_volumes_
};

class Metadata {
 public:
  explicit Metadata(const Geometry& geometry) : geometry_(geometry) {}
  Metadata(Metadata&&) = default;

  [[nodiscard]] const Geometry& geometry() const { return geometry_; }

  // ---- Loading ----
  // Applies one checkpoint or journal body. Every value is range-checked;
  // an error names the offending record.
  Status apply(std::span<const std::byte> body);
  // Resolves parent pointers and children counts and recomputes counters.
  // Returns the problems that make the state unusable (bad references,
  // cycles, extents mapped twice, ...); empty means consistent.
  std::vector<std::string> link_and_validate();

  // ---- Dirty tracking (what the next commit writes) ----
  void mark_layer(Layer& layer);
  void mark_layer_deleted(uint32_t layer_id);
  void mark_volume(Volume& volume);
  void mark_volume_deleted(uint32_t volume_id);
  void mark_dirty_chunk(Volume& volume, uint32_t chunk);
  void mark_extent(Layer& layer, uint32_t logical, ExtentEntry* entry);
  void mark_ids() { ids_dirty_ = true; }
  [[nodiscard]] bool has_changes() const;
  // Appends the records of everything changed since the last capture to
  // `body` and forgets the changes. Returns false (appending nothing useful)
  // if the change log overflowed: then only serialize_full() is complete.
  bool capture_delta(std::vector<std::byte>& body);
  // Appends the whole state; forgets all changes.
  void serialize_full(std::vector<std::byte>& body);
  // Bounds the extent change log (entries beyond force a full checkpoint).
  void set_change_log_capacity(size_t entries);
  // Gives back change-log memory after a burst of changes.
  void trim_change_log();

  // ---- State ----
  uint32_t next_volume_id = 1;
  uint32_t next_layer_id = 1;
  std::map<uint32_t, std::unique_ptr<Volume>> volumes;
  std::map<uint32_t, std::unique_ptr<Layer>> layers;

  [[nodiscard]] Layer* layer(uint32_t id) const {
    auto it = layers.find(id);
    return it == layers.end() ? nullptr : it->second.get();
  }
  [[nodiscard]] Volume* volume(uint32_t id) const {
    auto it = volumes.find(id);
    return it == volumes.end() ? nullptr : it->second.get();
  }
  [[nodiscard]] size_t memory_bytes() const;

 private:
  Status apply_record(format::RecordType type, std::span<const std::byte> body);

  Geometry geometry_;
  bool ids_dirty_ = false;
  std::vector<uint32_t> dirty_layers_;
  std::vector<uint32_t> dirty_volumes_;
  std::vector<uint64_t> dirty_extents_;  // layer << 32 | logical
  size_t change_log_capacity_ = size_t{1} << 20;
  bool change_log_overflow_ = false;
};

// Writes a name into a fixed NUL-padded record field.
void put_name(char (&field)[64], std::string_view name);
// Checks a user-supplied name; error message names the problem.
Status validate_name(std::string_view what, std::string_view name);

}  // namespace ublkvol::dbs::detail
