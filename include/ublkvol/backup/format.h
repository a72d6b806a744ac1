// The backup store format: chunk files and manifests (docs/backup-format.md).
//
// A backup cuts the volume's address space into fixed 2 MiB chunks. A chunk
// holds only its blocks (4 KiB) that carry data: a 512-bit map says which,
// and their bytes follow in order; every other block of the chunk is a hole
// and restores as zeros. A chunk is stored once per distinct content, named
// by the SHA-256 of (map, data), zstd-compressed, with CRC32C checksums over
// its header and stored payload. A manifest lists, per backup, the chunks
// that are not all holes (offset -> hash), plus the volume size, the source
// volume/snapshot and the parent backup.
//
// Parsing never trusts the input: every length, count and offset is checked
// before use, and each failure says what is wrong where (the caller prefixes
// which backup / which key).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/backup/hash.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

inline constexpr uint64_t kBlockBytes = 4096;
inline constexpr uint64_t kChunkBytes = uint64_t{2} << 20U;
inline constexpr uint32_t kChunkBlocks = kChunkBytes / kBlockBytes;  // 512
// Longest name stored in a manifest (backup, volume, snapshot, parent, store uuid).
inline constexpr size_t kMaxNameBytes = 127;

// Bit b of word b/64: block b of the chunk holds data.
using ChunkBitmap = std::array<uint64_t, kChunkBlocks / 64>;

// A chunk's content: which blocks hold data, and that data in block order
// (present blocks only: popcount(present) * 4 KiB bytes).
struct ChunkContent {
  ChunkBitmap present{};
  std::vector<std::byte> data;

  [[nodiscard]] uint32_t block_count() const;
  [[nodiscard]] bool has_block(uint32_t block) const {
    return ((present[block / 64] >> (block % 64)) & 1U) != 0;
  }
  void set_block(uint32_t block) { present[block / 64] |= uint64_t{1} << (block % 64); }
};

// The content address of `chunk` (SHA-256 over the map, little-endian, and the data).
ChunkHash chunk_hash(const ChunkContent& chunk);

// The chunk file: header, map, payload (zstd at `level`, or raw where
// compression does not shrink it).
std::vector<std::byte> encode_chunk(const ChunkContent& chunk, int level = 3);

// Encodes chunks like encode_chunk (the same bytes) with one zstd context
// and the caller's output buffer reused from chunk to chunk: no allocation
// per chunk once the buffer has its full size. One per thread.
class ChunkEncoder {
 public:
  explicit ChunkEncoder(int level = 3);
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // Encodes `chunk` into `out` (grown once to the largest chunk file, never
  // shrunk) and returns the file's length.
  size_t encode(const ChunkContent& chunk, std::vector<std::byte>& out);

 private:
  int level_;
  void* context_;  // ZSTD_CCtx (zstd.h stays out of this header)
};

// Parses and checks a chunk file: magic, version, header CRC, payload CRC,
// decompressed length, and that its content hashes to `expected`. Errors are
// EUCLEAN (corruption) and say which check failed.
Result<ChunkContent> decode_chunk(std::span<const std::byte> file, const ChunkHash& expected);

struct ManifestEntry {
  uint64_t offset = 0;  // byte offset of the chunk in the volume, a multiple of kChunkBytes
  ChunkHash hash;
  uint32_t blocks = 0;  // blocks holding data in the chunk (1..512)
};

struct Manifest {
  std::string name;        // the backup's name
  std::string volume;      // source volume
  std::string snapshot;    // source snapshot
  std::string parent;      // parent backup ("" for a full backup)
  std::string store_uuid;  // store the snapshot was read from
  uint64_t snapshot_id = 0;
  uint64_t volume_size = 0;
  uint64_t create_time = 0;  // seconds since the Unix epoch
  // false: a partial manifest of a backup still running or interrupted; the
  // entries cover the volume below `next_offset` (where a resume continues).
  bool complete = false;
  uint64_t next_offset = 0;
  std::vector<ManifestEntry> entries;  // ascending offsets

  [[nodiscard]] uint64_t data_blocks() const;
};

std::vector<std::byte> encode_manifest(const Manifest& manifest);

// Parses and checks a manifest: magic, version, header CRC, size against the
// entry count, each entry's CRC, offsets ascending and inside the volume.
// Errors are EUCLEAN and name the entry and its volume offset.
Result<Manifest> decode_manifest(std::span<const std::byte> file);

// A name that may be stored (non-empty, <= kMaxNameBytes, no '/', no NUL,
// not "." or ".."); `what` names the field in the error.
Status check_backup_name(std::string_view name, std::string_view what);

}  // namespace ublkvol::backup
