// Chunk and manifest encoding (layout: docs/backup-format.md).
#include "ublkvol/backup/format.h"

#include <zstd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <new>

#include "ublkvol/common/crc32c.h"

namespace ublkvol::backup {

namespace {

static_assert(std::endian::native == std::endian::little,
              "the backup format is little-endian; add byte swaps for this host");

constexpr char kChunkMagic[8] = {'U', 'V', 'B', 'K', 'C', 'H', 'N', 'K'};
constexpr char kManifestMagic[8] = {'U', 'V', 'B', 'K', 'M', 'A', 'N', 'I'};
constexpr uint32_t kVersion = 1;

// Chunk file header (96 bytes), then the payload.
constexpr size_t kChunkHeaderBytes = 96;
constexpr size_t kChunkHeaderCrcAt = 28;
enum class Compression : uint32_t { kNone = 0, kZstd = 1 };

// Manifest: header (1024 bytes), then 48-byte entries.
constexpr size_t kManifestHeaderBytes = 1024;
constexpr size_t kManifestHeaderCrcAt = 1020;
constexpr size_t kNameFieldBytes = kMaxNameBytes + 1;
constexpr size_t kNamesAt = 64;
constexpr size_t kEntryBytes = 48;
constexpr uint32_t kFlagComplete = 1;

template <typename T>
void put(std::span<std::byte> out, size_t at, T value) {
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <typename T>
T get(std::span<const std::byte> in, size_t at) {
  T value;
  std::memcpy(&value, in.data() + at, sizeof(T));
  return value;
}

Error corrupt(std::string message) {
  return Error(ErrorKind::kCorruption, EUCLEAN, std::move(message));
}

std::span<const std::byte> as_bytes_of(const ChunkBitmap& map) {
  return std::as_bytes(std::span(map));
}

// CRC32C over `bytes` with the 4 bytes at `crc_at` taken as zero.
uint32_t crc_without_field(std::span<const std::byte> bytes, size_t crc_at) {
  static constexpr std::byte kZero[4]{};
  uint32_t crc = crc32c_extend(0, bytes.first(crc_at));
  crc = crc32c_extend(crc, kZero);
  return crc32c_extend(crc, bytes.subspan(crc_at + 4));
}

void put_name(std::vector<std::byte>& out, size_t field, const std::string& name) {
  const size_t at = kNamesAt + field * kNameFieldBytes;
  std::memcpy(out.data() + at, name.data(), std::min(name.size(), kMaxNameBytes));
}

Result<std::string> get_name(std::span<const std::byte> in, size_t field, const char* what) {
  const size_t at = kNamesAt + field * kNameFieldBytes;
  const auto* chars = reinterpret_cast<const char*>(in.data() + at);
  const size_t length = strnlen(chars, kNameFieldBytes);
  if (length == kNameFieldBytes) {
    return corrupt(std::string("manifest header: the ") + what + " field is not terminated");
  }
  return std::string(chars, length);
}

}  // namespace

uint32_t ChunkContent::block_count() const {
  uint32_t count = 0;
  for (const uint64_t word : present) {
    count += static_cast<uint32_t>(std::popcount(word));
  }
  return count;
}

ChunkHash chunk_hash(const ChunkContent& chunk) {
  return sha256({as_bytes_of(chunk.present), std::span<const std::byte>(chunk.data)});
}

namespace {

// The chunk file of `chunk` into `out` (at least header + compress bound
// long); `context` null: a one-off context (ZSTD_compress). The same bytes
// either way: a context carries no state from one frame to the next.
size_t encode_into(const ChunkContent& chunk, int level, ZSTD_CCtx* context,
                   std::span<std::byte> out) {
  const size_t bound = ZSTD_compressBound(chunk.data.size());
  size_t stored = context != nullptr
                      ? ZSTD_compressCCtx(context, out.data() + kChunkHeaderBytes, bound,
                                          chunk.data.data(), chunk.data.size(), level)
                      : ZSTD_compress(out.data() + kChunkHeaderBytes, bound, chunk.data.data(),
                                      chunk.data.size(), level);
  Compression compression = Compression::kZstd;
  if (ZSTD_isError(stored) != 0U || stored >= chunk.data.size()) {
    // Incompressible data is kept raw: never bigger than the blocks themselves.
    compression = Compression::kNone;
    stored = chunk.data.size();
    std::memcpy(out.data() + kChunkHeaderBytes, chunk.data.data(), stored);
  }
  const std::span<std::byte> file = out.first(kChunkHeaderBytes + stored);
  std::memcpy(file.data(), kChunkMagic, sizeof(kChunkMagic));
  put<uint32_t>(file, 8, kVersion);
  put<uint32_t>(file, 12, static_cast<uint32_t>(compression));
  put<uint32_t>(file, 16, chunk.block_count());
  put<uint32_t>(file, 20, static_cast<uint32_t>(stored));
  put<uint32_t>(file, 24, crc32c(file.subspan(kChunkHeaderBytes)));
  std::memcpy(file.data() + 32, chunk.present.data(), sizeof(ChunkBitmap));
  put<uint32_t>(file, kChunkHeaderCrcAt,
                crc_without_field(file.first(kChunkHeaderBytes), kChunkHeaderCrcAt));
  return file.size();
}

size_t encoded_bound(const ChunkContent& chunk) {
  return kChunkHeaderBytes + std::max(ZSTD_compressBound(chunk.data.size()), chunk.data.size());
}

}  // namespace

std::vector<std::byte> encode_chunk(const ChunkContent& chunk, int level) {
  std::vector<std::byte> out(encoded_bound(chunk));
  out.resize(encode_into(chunk, level, nullptr, out));
  return out;
}

ChunkEncoder::ChunkEncoder(int level) : level_(level), context_(ZSTD_createCCtx()) {
  if (context_ == nullptr) {
    throw std::bad_alloc();
  }
}

ChunkEncoder::~ChunkEncoder() { ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(context_)); }

size_t ChunkEncoder::encode(const ChunkContent& chunk, std::vector<std::byte>& out) {
  // Sized once for a whole 2 MiB chunk, so a smaller chunk never shrinks it
  // and a later bigger one never grows it again.
  const size_t need =
      std::max(encoded_bound(chunk), kChunkHeaderBytes + ZSTD_compressBound(kChunkBytes));
  if (out.size() < need) {
    out.resize(need);
  }
  return encode_into(chunk, level_, static_cast<ZSTD_CCtx*>(context_), out);
}

Result<ChunkContent> decode_chunk(std::span<const std::byte> file, const ChunkHash& expected) {
  if (file.size() < kChunkHeaderBytes) {
    return corrupt("chunk file is " + std::to_string(file.size()) + " bytes, shorter than its " +
                   std::to_string(kChunkHeaderBytes) + "-byte header");
  }
  if (std::memcmp(file.data(), kChunkMagic, sizeof(kChunkMagic)) != 0) {
    return corrupt("chunk file has a bad magic (not a backup chunk)");
  }
  const auto header = file.first(kChunkHeaderBytes);
  if (get<uint32_t>(header, kChunkHeaderCrcAt) != crc_without_field(header, kChunkHeaderCrcAt)) {
    return corrupt("chunk header checksum mismatch");
  }
  if (const auto version = get<uint32_t>(header, 8); version != kVersion) {
    return Error(ErrorKind::kCorruption, EUCLEAN,
                 "chunk format version " + std::to_string(version) + " is not supported (this is " +
                     std::to_string(kVersion) + ")");
  }
  ChunkContent chunk;
  std::memcpy(chunk.present.data(), header.data() + 32, sizeof(ChunkBitmap));
  const uint32_t blocks = get<uint32_t>(header, 16);
  const uint32_t stored = get<uint32_t>(header, 20);
  if (blocks != chunk.block_count() || blocks == 0) {
    return corrupt("chunk header counts " + std::to_string(blocks) + " blocks, its map " +
                   std::to_string(chunk.block_count()));
  }
  if (file.size() != kChunkHeaderBytes + stored) {
    return corrupt("chunk payload is " + std::to_string(file.size() - kChunkHeaderBytes) +
                   " bytes, its header says " + std::to_string(stored) + " (truncated?)");
  }
  const auto payload = file.subspan(kChunkHeaderBytes);
  if (crc32c(payload) != get<uint32_t>(header, 24)) {
    return corrupt("chunk payload checksum mismatch");
  }
  chunk.data.resize(uint64_t{blocks} * kBlockBytes);
  switch (static_cast<Compression>(get<uint32_t>(header, 12))) {
    case Compression::kNone:
      if (payload.size() != chunk.data.size()) {
        return corrupt("raw chunk payload is " + std::to_string(payload.size()) + " bytes, not " +
                       std::to_string(chunk.data.size()));
      }
      std::memcpy(chunk.data.data(), payload.data(), payload.size());
      break;
    case Compression::kZstd: {
      const size_t n =
          ZSTD_decompress(chunk.data.data(), chunk.data.size(), payload.data(), payload.size());
      if (ZSTD_isError(n) != 0U) {
        return corrupt(std::string("chunk payload does not decompress: ") + ZSTD_getErrorName(n));
      }
      if (n != chunk.data.size()) {
        return corrupt("chunk payload decompresses to " + std::to_string(n) + " bytes, not " +
                       std::to_string(chunk.data.size()));
      }
      break;
    }
    default:
      return corrupt("chunk compression " + std::to_string(get<uint32_t>(header, 12)) +
                     " is unknown");
  }
  if (chunk_hash(chunk) != expected) {
    return corrupt("chunk content hashes to " + chunk_hash(chunk).hex() + ", not its name " +
                   expected.hex());
  }
  return chunk;
}

uint64_t Manifest::data_blocks() const {
  uint64_t blocks = 0;
  for (const auto& entry : entries) {
    blocks += entry.blocks;
  }
  return blocks;
}

std::vector<std::byte> encode_manifest(const Manifest& manifest) {
  std::vector<std::byte> out(kManifestHeaderBytes + manifest.entries.size() * kEntryBytes);
  std::memcpy(out.data(), kManifestMagic, sizeof(kManifestMagic));
  put<uint32_t>(out, 8, kVersion);
  put<uint32_t>(out, 12, manifest.complete ? kFlagComplete : 0);
  put<uint64_t>(out, 16, manifest.volume_size);
  put<uint64_t>(out, 24, kChunkBytes);
  put<uint64_t>(out, 32, manifest.create_time);
  put<uint64_t>(out, 40, manifest.entries.size());
  put<uint64_t>(out, 48, manifest.next_offset);
  put<uint64_t>(out, 56, manifest.snapshot_id);
  put_name(out, 0, manifest.name);
  put_name(out, 1, manifest.volume);
  put_name(out, 2, manifest.snapshot);
  put_name(out, 3, manifest.parent);
  put_name(out, 4, manifest.store_uuid);
  put<uint32_t>(
      out, kManifestHeaderCrcAt,
      crc_without_field(std::span(out).first(kManifestHeaderBytes), kManifestHeaderCrcAt));
  size_t at = kManifestHeaderBytes;
  for (const auto& entry : manifest.entries) {
    put<uint64_t>(out, at, entry.offset);
    std::memcpy(out.data() + at + 8, entry.hash.bytes.data(), entry.hash.bytes.size());
    put<uint32_t>(out, at + 40, entry.blocks);
    put<uint32_t>(out, at + 44, crc32c(std::span(out).subspan(at, 44)));
    at += kEntryBytes;
  }
  return out;
}

Result<Manifest> decode_manifest(std::span<const std::byte> file) {
  if (file.size() < kManifestHeaderBytes) {
    return corrupt("manifest is " + std::to_string(file.size()) + " bytes, shorter than its " +
                   std::to_string(kManifestHeaderBytes) + "-byte header");
  }
  if (std::memcmp(file.data(), kManifestMagic, sizeof(kManifestMagic)) != 0) {
    return corrupt("manifest has a bad magic (not a backup manifest)");
  }
  const auto header = file.first(kManifestHeaderBytes);
  if (get<uint32_t>(header, kManifestHeaderCrcAt) !=
      crc_without_field(header, kManifestHeaderCrcAt)) {
    return corrupt("manifest header checksum mismatch");
  }
  if (const auto version = get<uint32_t>(header, 8); version != kVersion) {
    return corrupt("manifest format version " + std::to_string(version) +
                   " is not supported (this is " + std::to_string(kVersion) + ")");
  }
  if (const auto chunk = get<uint64_t>(header, 24); chunk != kChunkBytes) {
    return corrupt("manifest chunk size " + std::to_string(chunk) + " is not supported (" +
                   std::to_string(kChunkBytes) + ")");
  }
  Manifest m;
  m.complete = (get<uint32_t>(header, 12) & kFlagComplete) != 0;
  m.volume_size = get<uint64_t>(header, 16);
  m.create_time = get<uint64_t>(header, 32);
  const auto count = get<uint64_t>(header, 40);
  m.next_offset = get<uint64_t>(header, 48);
  m.snapshot_id = get<uint64_t>(header, 56);
  const char* fields[] = {"name", "volume", "snapshot", "parent", "store uuid"};
  std::string* targets[] = {&m.name, &m.volume, &m.snapshot, &m.parent, &m.store_uuid};
  for (size_t i = 0; i < 5; ++i) {
    UBLKVOL_ASSIGN_OR_RETURN(*targets[i], get_name(header, i, fields[i]));
  }
  if ((file.size() - kManifestHeaderBytes) / kEntryBytes != count ||
      (file.size() - kManifestHeaderBytes) % kEntryBytes != 0) {
    return corrupt("manifest holds " + std::to_string(file.size() - kManifestHeaderBytes) +
                   " bytes of entries, its header counts " + std::to_string(count) +
                   " entries of " + std::to_string(kEntryBytes) + " bytes (truncated?)");
  }
  m.entries.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const auto entry = file.subspan(kManifestHeaderBytes + i * kEntryBytes, kEntryBytes);
    ManifestEntry e;
    e.offset = get<uint64_t>(entry, 0);
    std::memcpy(e.hash.bytes.data(), entry.data() + 8, e.hash.bytes.size());
    e.blocks = get<uint32_t>(entry, 40);
    // The offset is only trusted once the entry's checksum holds; before
    // that the message can only name the entry's position.
    if (crc32c(entry.first(44)) != get<uint32_t>(entry, 44)) {
      const std::string after =
          i == 0 ? "the first entry"
                 : "the entry after volume offset " + std::to_string(m.entries.back().offset);
      return corrupt("manifest entry " + std::to_string(i) + " (" + after + ") checksum mismatch");
    }
    if (e.offset % kChunkBytes != 0 || e.offset >= m.volume_size ||
        (!m.entries.empty() && e.offset <= m.entries.back().offset)) {
      return corrupt("manifest entry " + std::to_string(i) + " has offset " +
                     std::to_string(e.offset) +
                     " (not chunk-aligned, beyond the volume size or out of order)");
    }
    if (e.blocks == 0 || e.blocks > kChunkBlocks) {
      return corrupt("manifest entry " + std::to_string(i) + " (volume offset " +
                     std::to_string(e.offset) + ") counts " + std::to_string(e.blocks) + " blocks");
    }
    m.entries.push_back(e);
  }
  return m;
}

Status check_backup_name(std::string_view name, std::string_view what) {
  if (name.empty() || name.size() > kMaxNameBytes || name == "." || name == ".." ||
      name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
    return Error(EINVAL, std::string(what) + " '" + std::string(name) + "' is not valid: 1 to " +
                             std::to_string(kMaxNameBytes) + " bytes, no '/' and not '.' or '..'");
  }
  return ok_status();
}

}  // namespace ublkvol::backup
