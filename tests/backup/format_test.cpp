// Chunk and manifest encoding: round trips, compression, and every kind of
// damage reported as corruption naming what is wrong.
#include "ublkvol/backup/format.h"

#include <cstring>
#include <gtest/gtest.h>

namespace ublkvol::backup {
namespace {

// A chunk holding `blocks` (block indices), each filled with a pattern of
// its index and `seed`; `random` makes the bytes incompressible.
ChunkContent make_chunk(const std::vector<uint32_t>& blocks, uint32_t seed, bool random = false) {
  ChunkContent chunk;
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (const uint32_t b : blocks) {
    chunk.set_block(b);
  }
  for (uint32_t b = 0; b < kChunkBlocks; ++b) {
    if (!chunk.has_block(b)) {
      continue;
    }
    for (uint64_t i = 0; i < kBlockBytes; ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      chunk.data.push_back(random ? static_cast<std::byte>(state >> 56U)
                                  : static_cast<std::byte>((b + seed + i / 512) & 0xFFU));
    }
  }
  return chunk;
}

TEST(BackupHash, HexRoundTripAndKnownValue) {
  // SHA-256("abc"), FIPS 180-2 appendix B.1.
  const char abc[] = "abc";
  const ChunkHash h = sha256({std::as_bytes(std::span(abc, 3))});
  EXPECT_EQ(h.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto parsed = ChunkHash::parse_hex(h.hex());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, h);
  EXPECT_FALSE(ChunkHash::parse_hex("xyz").ok());
  EXPECT_FALSE(ChunkHash::parse_hex(std::string(64, 'g')).ok());
}

TEST(BackupFormat, ChunkRoundTripCompressesPatterns) {
  const ChunkContent chunk = make_chunk({0, 1, 7, 100, 511}, 3);
  ASSERT_EQ(chunk.block_count(), 5U);
  const auto file = encode_chunk(chunk);
  // Patterned data compresses; the file is far below 5 blocks.
  EXPECT_LT(file.size(), 5 * kBlockBytes / 4);
  auto back = decode_chunk(file, chunk_hash(chunk));
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->present, chunk.present);
  EXPECT_EQ(back->data, chunk.data);
}

TEST(BackupFormat, IncompressibleChunkIsStoredRaw) {
  const ChunkContent chunk = make_chunk({5, 6}, 9, /*random=*/true);
  const auto file = encode_chunk(chunk);
  EXPECT_LE(file.size(), 2 * kBlockBytes + 96);
  auto back = decode_chunk(file, chunk_hash(chunk));
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->data, chunk.data);
}

TEST(BackupFormat, SameDataAtOtherBlocksHashesDifferently) {
  // The map is part of the content: the same bytes at other block positions
  // restore differently, so they must not share an address.
  ChunkContent a = make_chunk({1}, 4);
  ChunkContent b = a;
  b.present = {};
  b.set_block(2);
  EXPECT_NE(chunk_hash(a), chunk_hash(b));
}

TEST(BackupFormat, EveryDamagedChunkByteIsCaught) {
  const ChunkContent chunk = make_chunk({0, 3, 200}, 1);
  const auto file = encode_chunk(chunk);
  const ChunkHash hash = chunk_hash(chunk);
  // Every single-byte flip, header or payload, is refused as corruption.
  for (size_t at = 0; at < file.size(); ++at) {
    auto damaged = file;
    damaged[at] = ~damaged[at];
    auto result = decode_chunk(damaged, hash);
    ASSERT_FALSE(result.ok()) << "flip at byte " << at << " went unnoticed";
    EXPECT_EQ(result.error().kind(), ErrorKind::kCorruption) << result.error().message();
  }
  auto short_file = file;
  short_file.resize(file.size() - 1);
  auto truncated = decode_chunk(short_file, hash);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.error().message().find("truncated"), std::string::npos)
      << truncated.error().message();
  // A whole, valid chunk under the wrong name is caught by the hash.
  const ChunkContent other = make_chunk({0}, 2);
  auto wrong = decode_chunk(encode_chunk(other), hash);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("not its name " + hash.hex()), std::string::npos)
      << wrong.error().message();
}

Manifest make_manifest(uint64_t entries) {
  Manifest m;
  m.name = "nightly-1";
  m.volume = "db";
  m.snapshot = "s1";
  m.parent = "nightly-0";
  m.store_uuid = "0123abcd-0000-0000-0000-000000000000";
  m.snapshot_id = 7;
  m.volume_size = entries * 2 * kChunkBytes;
  m.create_time = 1700000000;
  m.complete = true;
  m.next_offset = m.volume_size;
  for (uint64_t i = 0; i < entries; ++i) {
    ManifestEntry e;
    e.offset = i * 2 * kChunkBytes;
    e.hash = sha256({std::as_bytes(std::span(&i, 1))});
    e.blocks = static_cast<uint32_t>(1 + i % kChunkBlocks);
    m.entries.push_back(e);
  }
  return m;
}

TEST(BackupFormat, ManifestRoundTrip) {
  const Manifest m = make_manifest(10);
  auto back = decode_manifest(encode_manifest(m));
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->name, m.name);
  EXPECT_EQ(back->volume, m.volume);
  EXPECT_EQ(back->snapshot, m.snapshot);
  EXPECT_EQ(back->parent, m.parent);
  EXPECT_EQ(back->store_uuid, m.store_uuid);
  EXPECT_EQ(back->snapshot_id, m.snapshot_id);
  EXPECT_EQ(back->volume_size, m.volume_size);
  EXPECT_EQ(back->create_time, m.create_time);
  EXPECT_TRUE(back->complete);
  ASSERT_EQ(back->entries.size(), m.entries.size());
  for (size_t i = 0; i < m.entries.size(); ++i) {
    EXPECT_EQ(back->entries[i].offset, m.entries[i].offset);
    EXPECT_EQ(back->entries[i].hash, m.entries[i].hash);
    EXPECT_EQ(back->entries[i].blocks, m.entries[i].blocks);
  }
  EXPECT_EQ(back->data_blocks(), m.data_blocks());
}

TEST(BackupFormat, DamagedManifestNamesTheEntry) {
  const Manifest m = make_manifest(8);
  const auto file = encode_manifest(m);
  // A flip inside entry 5 names entry 5 and the offset of the entry before.
  auto damaged = file;
  damaged[1024 + 5 * 48 + 20] = ~damaged[1024 + 5 * 48 + 20];
  auto result = decode_manifest(damaged);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind(), ErrorKind::kCorruption);
  EXPECT_NE(
      result.error().message().find("manifest entry 5 (the entry after volume offset " +
                                    std::to_string(m.entries[4].offset) + ") checksum mismatch"),
      std::string::npos)
      << result.error().message();
  // Every byte of the header is covered.
  for (size_t at = 0; at < 1024; ++at) {
    auto h = file;
    h[at] = ~h[at];
    auto r = decode_manifest(h);
    ASSERT_FALSE(r.ok()) << "flip at header byte " << at << " went unnoticed";
    EXPECT_EQ(r.error().kind(), ErrorKind::kCorruption);
  }
  auto cut = file;
  cut.resize(file.size() - 48);
  auto truncated = decode_manifest(cut);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.error().message().find("header counts 8 entries"), std::string::npos)
      << truncated.error().message();
}

TEST(BackupFormat, BackupNames) {
  EXPECT_TRUE(check_backup_name("nightly-2026-12-07", "backup name").ok());
  for (const std::string& bad :
       std::vector<std::string>{"", ".", "..", "a/b", std::string(kMaxNameBytes + 1, 'x')}) {
    auto s = check_backup_name(bad, "backup name");
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.error().kind(), ErrorKind::kInvalidArgument);
  }
}

}  // namespace
}  // namespace ublkvol::backup
