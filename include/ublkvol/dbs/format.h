// On-disk format of a Direct Block Store (DBS). docs/on-disk-format.md is the
// prose version of this file; keep them in step.
//
// A store is a device (or file) cut into 4 KiB blocks and five regions:
//
//   block 0            superblock, copy 0
//   block 1            superblock, copy 1 (identical; used when copy 0 is bad)
//   checkpoint area A  full metadata image, written when the journal is full
//   checkpoint area B  the other shadow copy (A and B alternate)
//   journal            commit records since the newest checkpoint
//   data               extents of `extent_blocks` blocks, extent-aligned
//
// The superblock only holds geometry; it is written once, at format time.
// Everything that changes lives in *metadata blocks*: 4 KiB blocks that start
// with a MetaHeader (magic, type, store id, epoch, sequence, CRC32C). The
// metadata content itself is a stream of *records* (volume, layer, extent,
// dirty-bitmap ...), each of which sets one object to a complete new state, so
// that applying a checkpoint's records and then each committed journal
// commit's records in order rebuilds the state at the last commit.
//
// All integers are little-endian (DBS runs on x86-64 and arm64 little-endian
// only; static_asserts below pin the layouts).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ublkvol::dbs::format {

inline constexpr uint32_t kBlockSize = 4096;
// "UBLKDBS1" read as a little-endian uint64.
inline constexpr uint64_t kSuperblockMagic = 0x315342444B4C4255ULL;
// "DBSM" read as a little-endian uint32.
inline constexpr uint32_t kMetaMagic = 0x4D534244U;
// Bumped on every incompatible change. Stores with a newer version are refused.
inline constexpr uint32_t kFormatVersion = 1;

// Extent size bounds, in blocks. The per-extent block bitmap is 256 bits.
inline constexpr uint32_t kMinExtentBlocks = 8;
inline constexpr uint32_t kMaxExtentBlocks = 256;
inline constexpr uint32_t kDefaultExtentBlocks = 256;  // 1 MiB
// Marks "no physical extent" in maps and records.
inline constexpr uint32_t kNoExtent = 0xFFFFFFFFU;
// Volume and snapshot names: 1..kNameMax bytes, no NUL.
inline constexpr size_t kNameMax = 63;

// Dirty-region bitmap (engine resync): at most kDirtyMaxBits regions per
// volume, region size a power of two >= 2^kDirtyMinShift bytes. Persisted in
// chunks of kDirtyChunkBits bits.
inline constexpr uint32_t kDirtyMinShift = 22;  // 4 MiB
inline constexpr uint32_t kDirtyMaxBits = 32768;
inline constexpr uint32_t kDirtyChunkBits = 4096;
inline constexpr uint32_t kDirtyMaxChunks = kDirtyMaxBits / kDirtyChunkBits;

// Block 0 and block 1. The rest of the block is zero. `crc` is the CRC32C of
// the whole 4096-byte block computed with `crc` set to 0.
struct Superblock {
  uint64_t magic;
  uint32_t version;
  uint32_t block_size;     // always 4096
  uint32_t extent_blocks;  // power of two in [kMinExtentBlocks, kMaxExtentBlocks]
  uint32_t copy;           // 0 in block 0, 1 in block 1
  uint64_t device_blocks;  // size of the store; the device must be at least this big
  uint8_t uuid[16];        // random at format; its first 8 bytes are the store id
  uint64_t checkpoint_start[2];
  uint64_t checkpoint_blocks;  // size of each checkpoint area
  uint64_t journal_start;
  uint64_t journal_blocks;
  uint64_t data_start;    // first block of physical extent 0 (extent-aligned)
  uint32_t extent_count;  // physical extents in the data region
  uint32_t max_volumes;   // limits the metadata regions were sized for
  uint32_t max_layers;
  uint32_t crc;
};
static_assert(sizeof(Superblock) == 112);

enum class MetaType : uint16_t {
  kCheckpoint = 1,  // a block of a checkpoint image
  kJournal = 2,     // a block of one journal commit
};

// First 64 bytes of every metadata block. A checkpoint or a journal commit is
// a run of `count` consecutive blocks (index 0..count-1) sharing epoch, seq,
// body_bytes and body_crc; its *body* is the concatenation of the blocks'
// payloads (the bytes after the header, `payload_bytes` of them per block).
// It is valid only if every block is valid and body_crc matches the body, so a
// torn write of any block, or a stale block left by an older commit at the same
// position, invalidates the whole commit.
struct MetaHeader {
  uint32_t magic;  // kMetaMagic
  uint16_t type;   // MetaType
  uint16_t reserved0;
  uint32_t crc;            // CRC32C of the 4096-byte block with crc = 0
  uint32_t payload_bytes;  // payload bytes used in this block
  uint64_t store_id;       // first 8 bytes of the superblock uuid
  uint64_t epoch;          // checkpoint epoch (journal blocks: the epoch they extend)
  uint64_t seq;            // commit sequence number (checkpoint: last commit it contains)
  uint32_t index;          // block index within the checkpoint / commit
  uint32_t count;          // blocks in the checkpoint / commit
  uint32_t body_crc;       // CRC32C of the whole body
  uint32_t reserved1;
  uint64_t body_bytes;  // total body bytes
};
static_assert(sizeof(MetaHeader) == 64);
inline constexpr size_t kMetaPayloadBytes = kBlockSize - sizeof(MetaHeader);

// Records: a RecordHeader followed by `length` bytes of body.
enum class RecordType : uint16_t {
  kIds = 1,           // IdsRecord
  kVolume = 2,        // VolumeRecord: create or replace
  kVolumeDelete = 3,  // DeleteRecord
  kLayer = 4,         // LayerRecord: create or replace (map untouched)
  kLayerDelete = 5,   // DeleteRecord: drops the layer and its whole map
  kExtent = 6,        // ExtentRecord: set or (phys == kNoExtent) remove one map entry
  kDirtyChunk = 7,    // DirtyChunkRecord
};

struct RecordHeader {
  uint16_t type;
  uint16_t length;
};
static_assert(sizeof(RecordHeader) == 4);

// Id allocators; ids are never reused, so a stale reference cannot alias.
struct IdsRecord {
  uint32_t next_volume_id;
  uint32_t next_layer_id;
};
static_assert(sizeof(IdsRecord) == 8);

struct VolumeRecord {
  uint32_t id;
  uint32_t head_layer;  // the volume's writable layer
  uint64_t size_bytes;
  uint64_t generation;   // engine-owned (guarantee 4)
  uint32_t dirty_shift;  // log2 of the dirty-region size in bytes
  uint32_t flags;        // reserved, 0
  char name[64];         // NUL-padded
};
static_assert(sizeof(VolumeRecord) == 96);

struct DeleteRecord {
  uint32_t id;
  uint32_t reserved;
};
static_assert(sizeof(DeleteRecord) == 8);

inline constexpr uint32_t kLayerSnapshot = 1;  // read-only snapshot (else a volume head)
inline constexpr uint32_t kLayerHidden = 2;    // deleted snapshot kept for its clones

struct LayerRecord {
  uint32_t id;
  uint32_t parent;       // 0: none
  uint32_t volume;       // owning volume; 0 once that volume is deleted
  uint32_t flags;        // kLayerSnapshot | kLayerHidden
  uint64_t size_bytes;   // logical size (a snapshot keeps its volume's size at creation)
  uint64_t create_time;  // seconds since the epoch
  char name[64];         // snapshots only; NUL-padded
};
static_assert(sizeof(LayerRecord) == 96);

// Map entry of `layer`: logical extent `logical` -> physical extent `phys`,
// with the set of blocks of that extent the layer holds.
struct ExtentRecord {
  uint32_t layer;
  uint32_t logical;
  uint32_t phys;  // kNoExtent: entry removed
  uint32_t reserved;
  uint64_t bits[4];
};
static_assert(sizeof(ExtentRecord) == 48);

struct DirtyChunkRecord {
  uint32_t volume;
  uint32_t chunk;  // < kDirtyMaxChunks
  uint64_t bits[kDirtyChunkBits / 64];
};
static_assert(sizeof(DirtyChunkRecord) == 520);

}  // namespace ublkvol::dbs::format
