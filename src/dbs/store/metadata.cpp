#include "metadata.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "ublkvol/common/crc32c.h"

namespace ublkvol::dbs::detail {

using namespace format;

namespace {

constexpr uint64_t kRecordOverhead = sizeof(RecordHeader);
// Extents a volume may span: logical indexes are 32-bit and kNoExtent-free.
constexpr uint64_t kMaxLogicalExtents = 0xFFFFFFF0ULL;

// The entry for `id` in `table`, created empty if new. A new entry that
// would take the table past `limit` is refused, so a corrupt or hostile
// journal cannot grow memory beyond what the store was sized for.
template <typename T>
Result<T*> entry_for(std::map<uint32_t, std::unique_ptr<T>>& table, uint32_t id, uint32_t limit,
                     const char* what) {
  auto& slot = table[id];
  if (!slot) {
    if (table.size() > limit) {
      table.erase(id);
      return Error(EINVAL, std::string("more ") + what + " than the store's limit of " +
                               std::to_string(limit));
    }
    slot = std::make_unique<T>();
  }
  return slot.get();
}

template <typename T>
void append_record(std::vector<std::byte>& body, RecordType type, const T& record) {
  RecordHeader header{static_cast<uint16_t>(type), static_cast<uint16_t>(sizeof(T))};
  const size_t at = body.size();
  body.resize(at + sizeof(header) + sizeof(T));
  std::memcpy(body.data() + at, &header, sizeof(header));
  std::memcpy(body.data() + at + sizeof(header), &record, sizeof(T));
}

std::string name_from(const char (&field)[64]) {
  const void* nul = std::memchr(field, 0, sizeof(field));
  const size_t len = nul ? static_cast<size_t>(static_cast<const char*>(nul) - field) : 64;
  return std::string(field, len);
}

LayerRecord layer_record(const Layer& layer) {
  LayerRecord record{};
  record.id = layer.id;
  record.parent = layer.parent_id;
  record.volume = layer.volume_id;
  record.flags = layer.flags;
  record.size_bytes = layer.size_bytes;
  record.create_time = layer.create_time;
  put_name(record.name, layer.name);
  return record;
}

VolumeRecord volume_record(const Volume& volume) {
  VolumeRecord record{};
  record.id = volume.id;
  record.head_layer = volume.head_id;
  record.size_bytes = volume.size_bytes;
  record.generation = volume.generation;
  record.dirty_shift = volume.dirty_shift;
  put_name(record.name, volume.name);
  return record;
}

DirtyChunkRecord dirty_chunk_record(const Volume& volume, uint32_t chunk) {
  DirtyChunkRecord record{};
  record.volume = volume.id;
  record.chunk = chunk;
  constexpr size_t kWords = kDirtyChunkBits / 64;
  for (size_t w = 0; w < kWords; ++w) {
    const size_t index = chunk * kWords + w;
    record.bits[w] = index < volume.dirty_bits.size() ? volume.dirty_bits[index] : 0;
  }
  return record;
}

ExtentRecord extent_record(uint32_t layer, uint32_t logical, const ExtentEntry* entry) {
  ExtentRecord record{};
  record.layer = layer;
  record.logical = logical;
  record.phys = entry ? entry->phys : kNoExtent;
  if (entry) {
    std::memcpy(record.bits, entry->bits, sizeof(record.bits));
  }
  return record;
}

}  // namespace

void put_name(char (&field)[64], std::string_view name) {
  std::memset(field, 0, sizeof(field));
  std::memcpy(field, name.data(), std::min(name.size(), kNameMax));
}

Status validate_name(std::string_view what, std::string_view name) {
  if (name.empty()) {
    return Error(EINVAL, std::string(what) + " name is empty");
  }
  if (name.size() > kNameMax) {
    return Error(EINVAL, std::string(what) + " name '" + std::string(name.substr(0, 20)) +
                             "...' is longer than " + std::to_string(kNameMax) + " bytes");
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == '/' || c == '@' || c == 0x7f) {
      return Error(EINVAL, std::string(what) + " name '" + std::string(name) +
                               "' contains a control character, '/' or '@'");
    }
  }
  return ok_status();
}

// ---------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------

uint64_t checkpoint_body_bound(uint64_t extent_count, uint64_t max_volumes, uint64_t max_layers) {
  return (kRecordOverhead + sizeof(IdsRecord)) +
         max_layers * (kRecordOverhead + sizeof(LayerRecord)) +
         max_volumes * ((kRecordOverhead + sizeof(VolumeRecord)) +
                        kDirtyMaxChunks * (kRecordOverhead + sizeof(DirtyChunkRecord))) +
         extent_count * (kRecordOverhead + sizeof(ExtentRecord));
}

uint64_t checkpoint_blocks_for(uint64_t extent_count, uint64_t max_volumes, uint64_t max_layers) {
  const uint64_t bytes = checkpoint_body_bound(extent_count, max_volumes, max_layers);
  return (bytes + kMetaPayloadBytes - 1) / kMetaPayloadBytes + 1;
}

uint32_t dirty_shift_for(uint64_t size_bytes) {
  uint32_t shift = kDirtyMinShift;
  while (shift < 63 && dirty_regions(size_bytes, shift) > kDirtyMaxBits) {
    ++shift;
  }
  return shift;
}

uint64_t dirty_regions(uint64_t size_bytes, uint32_t shift) {
  const uint64_t region = uint64_t{1} << shift;
  return size_bytes / region + (size_bytes % region != 0 ? 1 : 0);
}

Result<Geometry> plan_geometry(uint64_t device_bytes, const FormatOptions& options) {
  const uint32_t eb = options.extent_blocks;
  if (eb < kMinExtentBlocks || eb > kMaxExtentBlocks || !std::has_single_bit(eb)) {
    return Error(EINVAL,
                 "extent size of " + std::to_string(eb) + " blocks is not a power of two between " +
                     std::to_string(kMinExtentBlocks) + " and " + std::to_string(kMaxExtentBlocks));
  }
  Geometry g;
  g.device_blocks = device_bytes / kBlockSize;
  g.extent_blocks = eb;
  const uint64_t by_size = device_bytes / (uint64_t{256} << 20);
  g.max_volumes = options.max_volumes != 0
                      ? options.max_volumes
                      : static_cast<uint32_t>(std::clamp<uint64_t>(by_size, 16, 4096));
  g.max_layers = options.max_layers != 0 ? options.max_layers : 4 * g.max_volumes;
  if (g.max_volumes > (1u << 20) || g.max_layers > (1u << 22) || g.max_layers < g.max_volumes) {
    return Error(EINVAL, "limits max_volumes=" + std::to_string(g.max_volumes) +
                             " max_layers=" + std::to_string(g.max_layers) +
                             " are out of range (at most 2^20 volumes and 2^22 layers, "
                             "and at least one layer per volume)");
  }
  g.journal_blocks = options.journal_blocks != 0
                         ? options.journal_blocks
                         : std::clamp<uint64_t>(g.device_blocks / 256, 64, 16384);
  if (g.journal_blocks < 8 || g.journal_blocks > (uint64_t{1} << 24)) {
    return Error(EINVAL, "journal of " + std::to_string(g.journal_blocks) +
                             " blocks is out of range (8 .. 2^24)");
  }
  if (g.device_blocks < 2) {
    return Error(ENOSPC, "device of " + std::to_string(device_bytes) + " bytes is too small");
  }
  const uint64_t upper_extents = std::min<uint64_t>((g.device_blocks - 2) / eb, 0xFFFFFFFEULL);
  g.checkpoint_blocks = checkpoint_blocks_for(upper_extents, g.max_volumes, g.max_layers);
  g.checkpoint_start[0] = 2;
  g.checkpoint_start[1] = 2 + g.checkpoint_blocks;
  g.journal_start = 2 + 2 * g.checkpoint_blocks;
  const uint64_t meta_end = g.journal_start + g.journal_blocks;
  g.data_start = (meta_end + eb - 1) / eb * eb;
  if (g.data_start + eb > g.device_blocks) {
    return Error(ENOSPC, "device of " + std::to_string(device_bytes) +
                             " bytes is too small: metadata for these limits needs " +
                             std::to_string(g.data_start * kBlockSize) +
                             " bytes before the first extent");
  }
  g.extent_count = static_cast<uint32_t>(
      std::min<uint64_t>((g.device_blocks - g.data_start) / eb, 0xFFFFFFFEULL));
  return g;
}

void encode_superblock(const Geometry& g, uint32_t copy, std::span<std::byte> block) {
  std::memset(block.data(), 0, kBlockSize);
  Superblock sb{};
  sb.magic = kSuperblockMagic;
  sb.version = kFormatVersion;
  sb.block_size = kBlockSize;
  sb.extent_blocks = g.extent_blocks;
  sb.copy = copy;
  sb.device_blocks = g.device_blocks;
  std::memcpy(sb.uuid, g.uuid, sizeof(sb.uuid));
  sb.checkpoint_start[0] = g.checkpoint_start[0];
  sb.checkpoint_start[1] = g.checkpoint_start[1];
  sb.checkpoint_blocks = g.checkpoint_blocks;
  sb.journal_start = g.journal_start;
  sb.journal_blocks = g.journal_blocks;
  sb.data_start = g.data_start;
  sb.extent_count = g.extent_count;
  sb.max_volumes = g.max_volumes;
  sb.max_layers = g.max_layers;
  sb.crc = 0;
  std::memcpy(block.data(), &sb, sizeof(sb));
  const uint32_t crc = crc32c(block.first(kBlockSize));
  std::memcpy(block.data() + offsetof(Superblock, crc), &crc, sizeof(crc));
}

Result<Geometry> decode_superblock(std::span<const std::byte> block, uint32_t copy) {
  const std::string where = "superblock copy " + std::to_string(copy);
  if (block.size() < kBlockSize) {
    return Error(ErrorKind::kCorruption, EINVAL, where + ": short block");
  }
  Superblock sb{};
  std::memcpy(&sb, block.data(), sizeof(sb));
  if (sb.magic != kSuperblockMagic) {
    return Error(EINVAL, where + ": bad magic (not a DBS store)");
  }
  alignas(8) std::byte scratch[kBlockSize];
  std::memcpy(scratch, block.data(), kBlockSize);
  std::memset(scratch + offsetof(Superblock, crc), 0, sizeof(uint32_t));
  if (crc32c(std::span<const std::byte>(scratch, kBlockSize)) != sb.crc) {
    return Error(ErrorKind::kCorruption, EINVAL, where + ": checksum mismatch (corrupted)");
  }
  if (sb.version > kFormatVersion) {
    return Error(ENOTSUP, where + ": format version " + std::to_string(sb.version) +
                              " is newer than this build supports (" +
                              std::to_string(kFormatVersion) + ")");
  }
  if (sb.version == 0) {
    return Error(ErrorKind::kCorruption, EINVAL, where + ": format version 0 is invalid");
  }
  auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kCorruption, EINVAL, where + ": invalid geometry: " + what);
  };
  if (sb.block_size != kBlockSize) {
    return bad("block size " + std::to_string(sb.block_size));
  }
  if (sb.extent_blocks < kMinExtentBlocks || sb.extent_blocks > kMaxExtentBlocks ||
      !std::has_single_bit(sb.extent_blocks)) {
    return bad("extent size " + std::to_string(sb.extent_blocks) + " blocks");
  }
  if (sb.copy != copy) {
    return bad("copy index " + std::to_string(sb.copy) + " in block " + std::to_string(copy));
  }
  if (sb.device_blocks > (uint64_t{1} << 40)) {
    return bad("device size of " + std::to_string(sb.device_blocks) + " blocks");
  }
  if (sb.max_volumes == 0 || sb.max_volumes > (1u << 20) || sb.max_layers < sb.max_volumes ||
      sb.max_layers > (1u << 22)) {
    return bad("limits max_volumes=" + std::to_string(sb.max_volumes) +
               " max_layers=" + std::to_string(sb.max_layers));
  }
  if (sb.extent_count == 0 || sb.extent_count == kNoExtent) {
    return bad("extent count " + std::to_string(sb.extent_count));
  }
  const uint64_t need = checkpoint_blocks_for(sb.extent_count, sb.max_volumes, sb.max_layers);
  if (sb.checkpoint_blocks < need || sb.checkpoint_blocks > sb.device_blocks) {
    return bad("checkpoint area of " + std::to_string(sb.checkpoint_blocks) + " blocks (needs " +
               std::to_string(need) + ")");
  }
  if (sb.checkpoint_start[0] != 2 || sb.checkpoint_start[1] != 2 + sb.checkpoint_blocks ||
      sb.journal_start != 2 + 2 * sb.checkpoint_blocks) {
    return bad("metadata regions are not laid out back to back after the superblocks");
  }
  if (sb.journal_blocks < 8 || sb.journal_blocks > (uint64_t{1} << 24)) {
    return bad("journal of " + std::to_string(sb.journal_blocks) + " blocks");
  }
  if (sb.data_start < sb.journal_start + sb.journal_blocks ||
      sb.data_start % sb.extent_blocks != 0) {
    return bad("data region start " + std::to_string(sb.data_start));
  }
  const uint64_t data_end = sb.data_start + uint64_t{sb.extent_count} * sb.extent_blocks;
  if (data_end > sb.device_blocks) {
    return bad(std::to_string(sb.extent_count) + " extents do not fit in " +
               std::to_string(sb.device_blocks) + " blocks");
  }
  Geometry g;
  g.device_blocks = sb.device_blocks;
  g.extent_blocks = sb.extent_blocks;
  std::memcpy(g.uuid, sb.uuid, sizeof(g.uuid));
  std::memcpy(&g.store_id, sb.uuid, sizeof(g.store_id));
  g.checkpoint_start[0] = sb.checkpoint_start[0];
  g.checkpoint_start[1] = sb.checkpoint_start[1];
  g.checkpoint_blocks = sb.checkpoint_blocks;
  g.journal_start = sb.journal_start;
  g.journal_blocks = sb.journal_blocks;
  g.data_start = sb.data_start;
  g.extent_count = sb.extent_count;
  g.max_volumes = sb.max_volumes;
  g.max_layers = sb.max_layers;
  return g;
}

// ---------------------------------------------------------------------------
// Applying records
// ---------------------------------------------------------------------------

Status Metadata::apply(std::span<const std::byte> body) {
  size_t at = 0;
  while (at < body.size()) {
    if (body.size() - at < sizeof(RecordHeader)) {
      return Error(ErrorKind::kCorruption, EINVAL,
                   "truncated record header at body offset " + std::to_string(at));
    }
    RecordHeader header{};
    std::memcpy(&header, body.data() + at, sizeof(header));
    at += sizeof(header);
    if (body.size() - at < header.length) {
      return Error(
          ErrorKind::kCorruption, EINVAL,
          "record of type " + std::to_string(header.type) + " runs past the end of its commit");
    }
    auto status =
        apply_record(static_cast<RecordType>(header.type), body.subspan(at, header.length));
    if (!status.ok()) {
      return status.error().with_context("record at body offset " +
                                         std::to_string(at - sizeof(header)));
    }
    at += header.length;
  }
  return ok_status();
}

Status Metadata::apply_record(RecordType type, std::span<const std::byte> body) {
  auto load = [&](auto& record) -> Status {
    if (body.size() != sizeof(record)) {
      return Error(ErrorKind::kCorruption, EINVAL,
                   "record type " + std::to_string(static_cast<int>(type)) + " has length " +
                       std::to_string(body.size()) + ", expected " +
                       std::to_string(sizeof(record)));
    }
    std::memcpy(&record, body.data(), sizeof(record));
    return ok_status();
  };
  const Geometry& g = geometry_;
  switch (type) {
    case RecordType::kIds: {
      IdsRecord r{};
      UBLKVOL_TRY(load(r));
      if (r.next_volume_id == 0 || r.next_layer_id == 0) {
        return Error(ErrorKind::kCorruption, EINVAL, "id record with a zero next id");
      }
      next_volume_id = r.next_volume_id;
      next_layer_id = r.next_layer_id;
      return ok_status();
    }
    case RecordType::kVolume: {
      VolumeRecord r{};
      UBLKVOL_TRY(load(r));
      if (r.id == 0 || r.head_layer == 0) {
        return Error(ErrorKind::kCorruption, EINVAL, "volume record with id 0 or no head layer");
      }
      if (r.size_bytes == 0 || r.size_bytes % kBlockSize != 0 ||
          r.size_bytes / g.extent_bytes() >= kMaxLogicalExtents) {
        return Error(
            ErrorKind::kCorruption, EINVAL,
            "volume " + std::to_string(r.id) + " has invalid size " + std::to_string(r.size_bytes));
      }
      if (r.dirty_shift < kDirtyMinShift || r.dirty_shift > 62 ||
          dirty_regions(r.size_bytes, r.dirty_shift) > kDirtyMaxBits) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "volume " + std::to_string(r.id) + " has invalid dirty-region size");
      }
      auto slot = entry_for(volumes, r.id, g.max_volumes, "volumes");
      if (!slot.ok()) {
        return slot.error();
      }
      Volume& v = **slot;
      v.id = r.id;
      v.name = name_from(r.name);
      v.size_bytes = r.size_bytes;
      v.head_id = r.head_layer;
      v.generation = r.generation;
      v.dirty_shift = r.dirty_shift;
      v.dirty_bits.resize((dirty_regions(r.size_bytes, r.dirty_shift) + 63) / 64, 0);
      return ok_status();
    }
    case RecordType::kVolumeDelete: {
      DeleteRecord r{};
      UBLKVOL_TRY(load(r));
      // Idempotent: a volume created and deleted between two commits is
      // deleted without ever having been written.
      volumes.erase(r.id);
      return ok_status();
    }
    case RecordType::kLayer: {
      LayerRecord r{};
      UBLKVOL_TRY(load(r));
      if (r.id == 0 || r.id == r.parent) {
        return Error(ErrorKind::kCorruption, EINVAL, "layer record with id 0 or itself as parent");
      }
      if ((r.flags & ~(kLayerSnapshot | kLayerHidden)) != 0 ||
          ((r.flags & kLayerHidden) && !(r.flags & kLayerSnapshot))) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "layer " + std::to_string(r.id) + " has invalid flags");
      }
      if (r.size_bytes == 0 || r.size_bytes % kBlockSize != 0 ||
          r.size_bytes / g.extent_bytes() >= kMaxLogicalExtents) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "layer " + std::to_string(r.id) + " has invalid size");
      }
      auto slot = entry_for(layers, r.id, g.max_layers, "layers");
      if (!slot.ok()) {
        return slot.error();
      }
      Layer& l = **slot;
      l.id = r.id;
      l.parent_id = r.parent;
      l.volume_id = r.volume;
      l.flags = r.flags;
      l.size_bytes = r.size_bytes;
      l.create_time = r.create_time;
      l.name = name_from(r.name);
      return ok_status();
    }
    case RecordType::kLayerDelete: {
      DeleteRecord r{};
      UBLKVOL_TRY(load(r));
      layers.erase(r.id);  // idempotent, as for volumes
      return ok_status();
    }
    case RecordType::kExtent: {
      ExtentRecord r{};
      UBLKVOL_TRY(load(r));
      Layer* l = layer(r.layer);
      if (l == nullptr) {
        return Error(
            EINVAL, "extent record for layer " + std::to_string(r.layer) + " which does not exist");
      }
      if (uint64_t{r.logical} * g.extent_bytes() >= l->size_bytes) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "extent record for layer " + std::to_string(r.layer) + " at logical extent " +
                         std::to_string(r.logical) + " beyond the layer's size");
      }
      ExtentEntry* entry = l->map.find(r.logical);
      if (r.phys == kNoExtent) {
        if (entry != nullptr) {
          l->map.erase(r.logical);
        }
        return ok_status();
      }
      if (r.phys >= g.extent_count) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "extent record maps layer " + std::to_string(r.layer) + " logical extent " +
                         std::to_string(r.logical) + " to physical extent " +
                         std::to_string(r.phys) + " beyond the data region");
      }
      if (g.extent_blocks < 256) {
        for (uint32_t b = g.extent_blocks; b < 256; ++b) {
          if ((r.bits[b >> 6] >> (b & 63)) & 1) {
            return Error(ErrorKind::kCorruption, EINVAL,
                         "extent record has block bits beyond the extent size");
          }
        }
      }
      if (entry == nullptr) {
        entry = l->map.insert(r.logical, r.phys);
      }
      entry->phys = r.phys;
      std::memcpy(entry->bits, r.bits, sizeof(entry->bits));
      return ok_status();
    }
    case RecordType::kDirtyChunk: {
      DirtyChunkRecord r{};
      UBLKVOL_TRY(load(r));
      Volume* v = volume(r.volume);
      if (v == nullptr) {
        return Error(
            ErrorKind::kCorruption, EINVAL,
            "dirty-bitmap record for volume " + std::to_string(r.volume) + " which does not exist");
      }
      constexpr size_t kWords = kDirtyChunkBits / 64;
      if (uint64_t{r.chunk} * kWords >= std::max<size_t>(v->dirty_bits.size(), 1)) {
        return Error(ErrorKind::kCorruption, EINVAL,
                     "dirty-bitmap record chunk " + std::to_string(r.chunk) + " beyond volume " +
                         std::to_string(r.volume) + "'s bitmap");
      }
      for (size_t w = 0; w < kWords; ++w) {
        const size_t index = r.chunk * kWords + w;
        if (index < v->dirty_bits.size()) {
          v->dirty_bits[index] = r.bits[w];
        }
      }
      return ok_status();
    }
  }
  return Error(ErrorKind::kCorruption, EINVAL,
               "unknown record type " + std::to_string(static_cast<int>(type)));
}

std::vector<std::string> Metadata::link_and_validate() {
  std::vector<std::string> problems;
  const Geometry& g = geometry_;
  for (auto& [id, layer] : layers) {
    layer->children = 0;
    layer->parent = nullptr;
    layer->mapped_blocks = 0;
  }
  for (auto& [id, layer] : layers) {
    if (id >= next_layer_id) {
      problems.push_back("layer " + std::to_string(id) + " has an id at or above the next id " +
                         std::to_string(next_layer_id));
    }
    if (layer->parent_id != 0) {
      Layer* parent = this->layer(layer->parent_id);
      if (parent == nullptr) {
        problems.push_back("layer " + std::to_string(id) + " has parent " +
                           std::to_string(layer->parent_id) + " which does not exist");
      } else if (!parent->is_snapshot()) {
        problems.push_back("layer " + std::to_string(id) + " has parent " +
                           std::to_string(layer->parent_id) + " which is not a snapshot");
      } else {
        layer->parent = parent;
        ++parent->children;
      }
    }
    if (!layer->is_snapshot()) {
      Volume* v = volume(layer->volume_id);
      if (v == nullptr || v->head_id != id) {
        problems.push_back("layer " + std::to_string(id) +
                           " is a volume head but not the head of volume " +
                           std::to_string(layer->volume_id));
      }
    } else if (layer->volume_id != 0 && volume(layer->volume_id) == nullptr) {
      problems.push_back("snapshot layer " + std::to_string(id) + " belongs to volume " +
                         std::to_string(layer->volume_id) + " which does not exist");
    }
    if (layer->map.size() > 0) {
      uint64_t mapped = 0;
      layer->map.for_each([&](uint32_t, ExtentEntry& entry) { mapped += entry.count(); });
      layer->mapped_blocks = mapped;
    }
  }
  // Cycles: walking up from any layer must end within layers.size() steps.
  for (auto& [id, layer] : layers) {
    size_t steps = 0;
    for (Layer* l = layer.get(); l != nullptr && steps <= layers.size(); l = l->parent) {
      ++steps;
    }
    if (steps > layers.size()) {
      problems.push_back("layer " + std::to_string(id) + " is part of a parent cycle");
      break;
    }
  }
  for (auto& [id, layer] : layers) {
    if (layer->hidden() && layer->children < 2) {
      problems.push_back("hidden snapshot layer " + std::to_string(id) + " has " +
                         std::to_string(layer->children) + " children (must be merged)");
    }
    const uint64_t extents = (layer->size_bytes + g.extent_bytes() - 1) / g.extent_bytes();
    const uint32_t layer_id = id;
    layer->map.for_each([&](uint32_t logical, ExtentEntry&) {
      if (logical >= extents) {
        problems.push_back("layer " + std::to_string(layer_id) + " maps logical extent " +
                           std::to_string(logical) + " beyond its size");
      }
    });
  }
  std::set<std::string_view> names;
  for (auto& [id, v] : volumes) {
    if (id >= next_volume_id) {
      problems.push_back("volume " + std::to_string(id) + " has an id at or above the next id " +
                         std::to_string(next_volume_id));
    }
    Layer* head = layer(v->head_id);
    if (head == nullptr || head->is_snapshot() || head->volume_id != id) {
      problems.push_back("volume " + std::to_string(id) + " ('" + v->name + "') has head layer " +
                         std::to_string(v->head_id) +
                         " which is missing, a snapshot, or owned by another volume");
      v->head = nullptr;
    } else {
      v->head = head;
      if (head->size_bytes != v->size_bytes) {
        problems.push_back("volume " + std::to_string(id) + " size " +
                           std::to_string(v->size_bytes) + " differs from its head layer's " +
                           std::to_string(head->size_bytes));
      }
    }
    if (!names.insert(v->name).second) {
      problems.push_back("volume name '" + v->name + "' is used twice");
    }
  }
  // Every physical extent at most once.
  std::vector<uint64_t> seen((uint64_t{g.extent_count} + 63) / 64, 0);
  for (auto& [id, layer] : layers) {
    const uint32_t layer_id = id;
    layer->map.for_each([&](uint32_t logical, ExtentEntry& entry) {
      if (entry.phys >= g.extent_count) {
        problems.push_back("layer " + std::to_string(layer_id) + " logical extent " +
                           std::to_string(logical) + " maps to physical extent " +
                           std::to_string(entry.phys) + " beyond the data region");
        return;
      }
      uint64_t& word = seen[entry.phys >> 6];
      const uint64_t bit = uint64_t{1} << (entry.phys & 63);
      if (word & bit) {
        problems.push_back("physical extent " + std::to_string(entry.phys) +
                           " is mapped twice (again by layer " + std::to_string(layer_id) +
                           " logical extent " + std::to_string(logical) + ")");
      }
      word |= bit;
    });
  }
  return problems;
}

// ---------------------------------------------------------------------------
// Dirty tracking and serialisation
// ---------------------------------------------------------------------------

void Metadata::mark_layer(Layer& layer) {
  if (!layer.queued) {
    layer.queued = true;
    dirty_layers_.push_back(layer.id);
  }
}

void Metadata::mark_layer_deleted(uint32_t layer_id) { dirty_layers_.push_back(layer_id); }

void Metadata::mark_volume(Volume& volume) {
  volume.record_dirty = true;
  if (!volume.queued) {
    volume.queued = true;
    dirty_volumes_.push_back(volume.id);
  }
}

void Metadata::mark_volume_deleted(uint32_t volume_id) { dirty_volumes_.push_back(volume_id); }

void Metadata::mark_dirty_chunk(Volume& volume, uint32_t chunk) {
  volume.dirty_chunk_mask = static_cast<uint8_t>(volume.dirty_chunk_mask | (1u << chunk));
  if (!volume.queued) {
    volume.queued = true;
    dirty_volumes_.push_back(volume.id);
  }
}

void Metadata::mark_extent(Layer& layer, uint32_t logical, ExtentEntry* entry) {
  if (entry != nullptr) {
    if (entry->flags & ExtentEntry::kDirty) {
      return;
    }
    entry->flags |= ExtentEntry::kDirty;
  }
  if (dirty_extents_.size() >= change_log_capacity_) {
    change_log_overflow_ = true;
    return;
  }
  dirty_extents_.push_back(uint64_t{layer.id} << 32 | logical);
}

void Metadata::set_change_log_capacity(size_t entries) {
  change_log_capacity_ = std::max<size_t>(entries, 16);
  dirty_extents_.reserve(std::min<size_t>(change_log_capacity_, size_t{1} << 16));
}

void Metadata::trim_change_log() {
  constexpr size_t kKeep = size_t{1} << 16;
  if (dirty_extents_.empty() && dirty_extents_.capacity() > kKeep) {
    std::vector<uint64_t>().swap(dirty_extents_);
    dirty_extents_.reserve(std::min(change_log_capacity_, kKeep));
  }
}

bool Metadata::has_changes() const {
  return ids_dirty_ || !dirty_layers_.empty() || !dirty_volumes_.empty() ||
         !dirty_extents_.empty() || change_log_overflow_;
}

bool Metadata::capture_delta(std::vector<std::byte>& body) {
  if (change_log_overflow_) {
    return false;
  }
  if (ids_dirty_) {
    append_record(body, RecordType::kIds, IdsRecord{next_volume_id, next_layer_id});
    ids_dirty_ = false;
  }
  for (uint32_t id : dirty_layers_) {
    if (Layer* l = layer(id)) {
      if (l->queued) {
        append_record(body, RecordType::kLayer, layer_record(*l));
        l->queued = false;
      }
    } else {
      append_record(body, RecordType::kLayerDelete, DeleteRecord{id, 0});
    }
  }
  dirty_layers_.clear();
  for (uint32_t id : dirty_volumes_) {
    if (Volume* v = volume(id)) {
      if (!v->queued) {
        continue;
      }
      if (v->record_dirty) {
        append_record(body, RecordType::kVolume, volume_record(*v));
      }
      for (uint32_t c = 0; c < kDirtyMaxChunks; ++c) {
        if (v->dirty_chunk_mask & (1u << c)) {
          append_record(body, RecordType::kDirtyChunk, dirty_chunk_record(*v, c));
        }
      }
      v->record_dirty = false;
      v->dirty_chunk_mask = 0;
      v->queued = false;
    } else {
      append_record(body, RecordType::kVolumeDelete, DeleteRecord{id, 0});
    }
  }
  dirty_volumes_.clear();
  for (uint64_t key : dirty_extents_) {
    const auto layer_id = static_cast<uint32_t>(key >> 32);
    const auto logical = static_cast<uint32_t>(key);
    Layer* l = layer(layer_id);
    if (l == nullptr) {
      continue;  // deleted since: its LayerDelete record drops the whole map
    }
    ExtentEntry* entry = l->map.find(logical);
    if (entry != nullptr) {
      entry->flags &= static_cast<uint16_t>(~ExtentEntry::kDirty);
    }
    append_record(body, RecordType::kExtent, extent_record(layer_id, logical, entry));
  }
  dirty_extents_.clear();
  return true;
}

void Metadata::serialize_full(std::vector<std::byte>& body) {
  append_record(body, RecordType::kIds, IdsRecord{next_volume_id, next_layer_id});
  for (auto& [id, l] : layers) {
    append_record(body, RecordType::kLayer, layer_record(*l));
    l->queued = false;
  }
  for (auto& [id, v] : volumes) {
    append_record(body, RecordType::kVolume, volume_record(*v));
    for (uint32_t c = 0; size_t{c} * (kDirtyChunkBits / 64) < v->dirty_bits.size(); ++c) {
      append_record(body, RecordType::kDirtyChunk, dirty_chunk_record(*v, c));
    }
    v->record_dirty = false;
    v->dirty_chunk_mask = 0;
    v->queued = false;
  }
  for (auto& [id, l] : layers) {
    const uint32_t layer_id = id;
    l->map.for_each([&](uint32_t logical, ExtentEntry& entry) {
      entry.flags &= static_cast<uint16_t>(~ExtentEntry::kDirty);
      append_record(body, RecordType::kExtent, extent_record(layer_id, logical, &entry));
    });
  }
  ids_dirty_ = false;
  dirty_layers_.clear();
  dirty_volumes_.clear();
  dirty_extents_.clear();
  change_log_overflow_ = false;
}

size_t Metadata::memory_bytes() const {
  size_t bytes = dirty_extents_.capacity() * sizeof(uint64_t);
  for (const auto& [id, l] : layers) {
    bytes += sizeof(Layer) + l->map.memory_bytes() + 64;
  }
  for (const auto& [id, v] : volumes) {
    bytes += sizeof(Volume) + v->dirty_bits.capacity() * sizeof(uint64_t) + 64;
  }
  return bytes;
}

}  // namespace ublkvol::dbs::detail
