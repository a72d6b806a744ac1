#include "dbs_open_case.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/format.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

namespace ublkvol::dbs::fuzz {

using namespace format;

namespace {

constexpr size_t kMaxImage = 1 << 20;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "dbs fuzz property broken: %s\n", what.c_str());
  std::abort();
}

void fix_block_crc(std::byte* block, size_t crc_offset) {
  std::memset(block + crc_offset, 0, 4);
  const uint32_t crc = crc32c(block, kBlockSize);
  std::memcpy(block + crc_offset, &crc, 4);
}

// Recomputes superblock CRCs and, for every run of metadata blocks that
// starts with a block of index 0, its body CRC and block CRCs.
void fix_checksums(std::vector<std::byte>& image) {
  const size_t blocks = image.size() / kBlockSize;
  for (size_t b = 0; b < std::min<size_t>(blocks, 2); ++b) {
    uint64_t magic;
    std::memcpy(&magic, image.data() + b * kBlockSize, 8);
    if (magic == kSuperblockMagic) {
      fix_block_crc(image.data() + b * kBlockSize, offsetof(Superblock, crc));
    }
  }
  for (size_t b = 2; b < blocks; ++b) {
    MetaHeader h;
    std::memcpy(&h, image.data() + b * kBlockSize, sizeof(h));
    if (h.magic != kMetaMagic || h.index != 0 || h.count == 0 || h.count > blocks - b) {
      continue;
    }
    uint32_t body_crc = 0;
    uint64_t body_bytes = 0;
    for (size_t i = 0; i < h.count; ++i) {
      const std::byte* block = image.data() + (b + i) * kBlockSize;
      MetaHeader hi;
      std::memcpy(&hi, block, sizeof(hi));
      const size_t n = std::min<size_t>(hi.payload_bytes, kMetaPayloadBytes);
      body_crc = crc32c_extend(body_crc, {block + sizeof(MetaHeader), n});
      body_bytes += n;
    }
    for (size_t i = 0; i < h.count; ++i) {
      std::byte* block = image.data() + (b + i) * kBlockSize;
      std::memcpy(block + offsetof(MetaHeader, body_crc), &body_crc, 4);
      std::memcpy(block + offsetof(MetaHeader, body_bytes), &body_bytes, 8);
      fix_block_crc(block, offsetof(MetaHeader, crc));
    }
    b += h.count - 1;
  }
}

}  // namespace

std::string run_open_case(std::span<const uint8_t> input) {
  if (input.empty()) {
    return "";
  }
  const uint8_t mode = input[0];
  const size_t payload = std::min(input.size() - 1, kMaxImage);
  const size_t size = std::max<size_t>((payload + kBlockSize - 1) / kBlockSize, 1) * kBlockSize;
  std::vector<std::byte> image(size);
  std::memcpy(image.data(), input.data() + 1, payload);
  if (mode & 1) {
    fix_checksums(image);
  }
  MemoryDevice device(std::move(image));
  auto opened = Store::open(device);
  if (!opened.ok()) {
    if (opened.error().message().empty()) {
      fail("open refused an image without a message");
    }
    return "";
  }
  Store& store = **opened;
  // Open tolerates exactly one kind of damage that check() reports: a bad
  // or differing superblock copy (the other copy is used). Anything else
  // check() finds in a store that opened is a bug.
  for (const auto& problem : store.check()) {
    if (problem.rfind("superblock copy", 0) != 0) {
      fail("opened image does not check clean: " + problem);
    }
  }
  alignas(4096) static std::byte buffer[64 * 1024];
  VolumeId written = 0;
  for (const VolumeInfo& volume : store.list_volumes()) {
    const uint64_t n = std::min<uint64_t>(sizeof(buffer), volume.size_bytes);
    if (!store.read(volume.id, 0, {buffer, n}).ok() ||
        !store.read(volume.id, volume.size_bytes - n, {buffer, n}).ok()) {
      fail("read of an opened volume failed");
    }
    written = volume.id;
  }
  for (const SnapshotInfo& snapshot : store.list_all_snapshots()) {
    const uint64_t n = std::min<uint64_t>(sizeof(buffer), snapshot.size_bytes);
    if (!store.read_snapshot(snapshot.id, 0, {buffer, n}).ok()) {
      fail("read of a snapshot failed");
    }
  }
  if (written != 0) {
    std::memset(buffer, 0x6B, 4096);
    auto status = store.write(written, 0, {buffer, 4096});
    if (!status.ok() && status.error().errno_value() != ENOSPC) {
      fail("write to an opened volume failed: " + status.error().to_string());
    }
  }
  if (auto status = store.commit(); !status.ok()) {
    fail("commit on an opened store failed: " + status.error().to_string());
  }
  opened->reset();
  auto again = Store::open(device);
  if (!again.ok()) {
    fail("store does not reopen after a commit: " + again.error().to_string());
  }
  for (const auto& problem : (*again)->check()) {
    if (problem.rfind("superblock copy", 0) != 0) {
      fail("reopened store does not check clean: " + problem);
    }
  }
  return "opened";
}

std::string make_seed(int which, std::string& name) {
  MemoryDevice device(128 * 1024);
  FormatOptions options;
  options.extent_blocks = 8;
  options.max_volumes = 2;
  options.max_layers = 4;
  options.journal_blocks = 8;
  if (!Store::format(device, options).ok()) {
    fail("seed format failed");
  }
  name = "empty";
  if (which > 0) {
    auto store = Store::open(device);
    if (!store.ok()) {
      fail("seed open failed");
    }
    Store& s = **store;
    alignas(4096) static std::byte block[4096];
    std::memset(block, 0x42, sizeof(block));
    auto v = s.create_volume("vol", 64 * 1024);
    (void)s.write(*v, 0, block);
    (void)s.write(*v, 40960, block);
    (void)s.commit();
    name = "volume";
    if (which > 1) {
      auto snap = s.create_snapshot(*v, "snap");
      (void)s.write(*v, 4096, block);
      (void)s.clone_snapshot(*snap, "clone");
      (void)s.commit();
      name = "snapshot-clone";
    }
    if (which > 2) {
      for (int i = 0; i < 12; ++i) {  // roll the 8-block journal into checkpoints
        (void)s.set_generation(*v, static_cast<uint64_t>(i));
        (void)s.mark_dirty(*v, 0, 4096);
        (void)s.commit();
      }
      name = "checkpointed";
    }
  }
  std::string out(1, '\0');
  out.append(reinterpret_cast<const char*>(device.bytes().data()), device.bytes().size());
  return out;
}

}  // namespace ublkvol::dbs::fuzz
