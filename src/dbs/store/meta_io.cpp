#include "meta_io.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "ublkvol/common/crc32c.h"

namespace ublkvol::dbs::detail {

using namespace format;

void AlignedBuffer::resize(size_t size) {
  if (size > capacity_) {
    const size_t capacity = (size + kBlockSize - 1) / kBlockSize * kBlockSize;
    void* p = nullptr;
    if (posix_memalign(&p, kBlockSize, capacity) != 0) {
      throw std::bad_alloc();
    }
    data_.reset(static_cast<std::byte*>(p));
    capacity_ = capacity;
  }
  size_ = size;
}

uint64_t blocks_for_body(size_t body_bytes) {
  return std::max<uint64_t>(1, (body_bytes + kMetaPayloadBytes - 1) / kMetaPayloadBytes);
}

void frame_body(const Geometry& g, MetaType type, uint64_t epoch, uint64_t seq,
                std::span<const std::byte> body, AlignedBuffer& out) {
  const uint64_t count = blocks_for_body(body.size());
  out.resize(count * kBlockSize);
  const uint32_t body_crc = crc32c(body);
  for (uint64_t i = 0; i < count; ++i) {
    std::byte* block = out.data() + i * kBlockSize;
    std::memset(block, 0, kBlockSize);
    const size_t from = i * kMetaPayloadBytes;
    const size_t n = from < body.size() ? std::min(kMetaPayloadBytes, body.size() - from) : 0;
    MetaHeader h{};
    h.magic = kMetaMagic;
    h.type = static_cast<uint16_t>(type);
    h.payload_bytes = static_cast<uint32_t>(n);
    h.store_id = g.store_id;
    h.epoch = epoch;
    h.seq = seq;
    h.index = static_cast<uint32_t>(i);
    h.count = static_cast<uint32_t>(count);
    h.body_crc = body_crc;
    h.body_bytes = body.size();
    std::memcpy(block, &h, sizeof(h));
    if (n > 0) {
      std::memcpy(block + sizeof(h), body.data() + from, n);
    }
    const uint32_t crc = crc32c(block, kBlockSize);
    std::memcpy(block + offsetof(MetaHeader, crc), &crc, sizeof(crc));
  }
}

Result<MetaHeader> check_meta_block(const Geometry& g, std::span<const std::byte> block,
                                    MetaType type) {
  MetaHeader h{};
  std::memcpy(&h, block.data(), sizeof(h));
  if (h.magic != kMetaMagic) {
    return Error(ErrorKind::kCorruption, EINVAL, "no metadata block magic");
  }
  alignas(8) std::byte scratch[kBlockSize];
  std::memcpy(scratch, block.data(), kBlockSize);
  std::memset(scratch + offsetof(MetaHeader, crc), 0, sizeof(uint32_t));
  if (crc32c(std::span<const std::byte>(scratch, kBlockSize)) != h.crc) {
    return Error(ErrorKind::kCorruption, EINVAL, "checksum mismatch");
  }
  if (h.store_id != g.store_id) {
    return Error(ErrorKind::kCorruption, EINVAL,
                 "block belongs to another store (store id mismatch)");
  }
  if (h.type != static_cast<uint16_t>(type)) {
    return Error(ErrorKind::kCorruption, EINVAL, "unexpected block type " + std::to_string(h.type));
  }
  if (h.payload_bytes > kMetaPayloadBytes || h.count == 0 || h.index >= h.count ||
      h.count > (1u << 26) || h.body_bytes > uint64_t{h.count} * kMetaPayloadBytes) {
    return Error(ErrorKind::kCorruption, EINVAL, "inconsistent block fields");
  }
  return h;
}

Status read_blocks(BlockDevice& device, uint64_t first, uint64_t count, AlignedBuffer& out) {
  out.resize(count * kBlockSize);
  // Large runs go in 1 MiB pieces: bounded requests for every device type.
  constexpr uint64_t kPiece = 256;
  for (uint64_t done = 0; done < count; done += kPiece) {
    const uint64_t n = std::min(kPiece, count - done);
    UBLKVOL_TRY(read_sync(device, (first + done) * kBlockSize,
                          {out.data() + done * kBlockSize, n * kBlockSize}));
  }
  return ok_status();
}

Result<MetaRun> read_run(BlockDevice& device, const Geometry& g, uint64_t start,
                         uint64_t region_end, MetaType type, bool* io_failed) {
  AlignedBuffer buffer;
  if (io_failed != nullptr) {
    *io_failed = false;
  }
  auto read = read_blocks(device, start, 1, buffer);
  if (!read.ok()) {
    if (io_failed != nullptr) {
      *io_failed = true;
    }
    return read.error();
  }
  auto first = check_meta_block(g, buffer.span(), type);
  if (!first.ok()) {
    return first.error();
  }
  MetaRun run;
  run.header = *first;
  if (run.header.index != 0) {
    return Error(ErrorKind::kCorruption, EINVAL, "run does not start with its first block");
  }
  if (start + run.header.count > region_end) {
    return Error(ErrorKind::kCorruption, EINVAL,
                 "run of " + std::to_string(run.header.count) + " blocks extends past its region");
  }
  if (run.header.count > 1) {
    read = read_blocks(device, start, run.header.count, buffer);
    if (!read.ok()) {
      if (io_failed != nullptr) {
        *io_failed = true;
      }
      return read.error();
    }
  }
  run.body.resize(run.header.body_bytes);
  size_t at = 0;
  for (uint32_t i = 0; i < run.header.count; ++i) {
    std::span<const std::byte> block(buffer.data() + uint64_t{i} * kBlockSize, kBlockSize);
    auto h = check_meta_block(g, block, type);
    if (!h.ok()) {
      return h.error().with_context("block " + std::to_string(i) + " of the run");
    }
    if (h->index != i || h->count != run.header.count || h->epoch != run.header.epoch ||
        h->seq != run.header.seq || h->body_crc != run.header.body_crc ||
        h->body_bytes != run.header.body_bytes) {
      return Error(ErrorKind::kCorruption, EINVAL,
                   "block " + std::to_string(i) + " belongs to a different run");
    }
    if (h->payload_bytes > run.body.size() - at) {
      return Error(ErrorKind::kCorruption, EINVAL,
                   "block " + std::to_string(i) + " payload overflows the run body");
    }
    if (h->payload_bytes > 0) {  // an empty run (epoch-start record) has no body buffer
      std::memcpy(run.body.data() + at, block.data() + sizeof(MetaHeader), h->payload_bytes);
    }
    at += h->payload_bytes;
  }
  if (at != run.body.size()) {
    return Error(ErrorKind::kCorruption, EINVAL, "run body is shorter than its header says");
  }
  if (crc32c(std::span<const std::byte>(run.body)) != run.header.body_crc) {
    return Error(ErrorKind::kCorruption, EINVAL, "run body checksum mismatch");
  }
  return run;
}

namespace {

Result<Geometry> load_geometry(BlockDevice& device, std::vector<std::string>& notes,
                               int& bad_copy) {
  const std::string name(device.name());
  if (device.block_size() != kBlockSize) {
    return Error(EINVAL,
                 name + ": block size " + std::to_string(device.block_size()) + " is not 4096");
  }
  if (device.size_bytes() < uint64_t{2} * kBlockSize) {
    return Error(EINVAL, name + ": device of " + std::to_string(device.size_bytes()) +
                             " bytes is too small to hold a store (truncated?)");
  }
  AlignedBuffer buffer;
  auto read = read_blocks(device, 0, 2, buffer);
  if (!read.ok()) {
    return read.error().with_context(name + ": reading the superblocks");
  }
  auto copy0 = decode_superblock({buffer.data(), kBlockSize}, 0);
  auto copy1 = decode_superblock({buffer.data() + kBlockSize, kBlockSize}, 1);
  // A newer format is refused even if the other copy looks older: the store
  // was upgraded, and an old build must not interpret it.
  for (const auto* copy : {&copy0, &copy1}) {
    if (!copy->ok() && copy->error().errno_value() == ENOTSUP) {
      return copy->error().with_context(name);
    }
  }
  if (!copy0.ok() && !copy1.ok()) {
    const bool magic0 = copy0.error().message().find("bad magic") != std::string::npos;
    const bool magic1 = copy1.error().message().find("bad magic") != std::string::npos;
    if (magic0 && magic1) {
      return Error(EINVAL, name + ": not a DBS store (no superblock magic in block 0 or 1)");
    }
    return Error(ErrorKind::kCorruption, EINVAL,
                 name + ": both superblock copies are unusable: " + copy0.error().message() + "; " +
                     copy1.error().message());
  }
  Geometry g = copy0.ok() ? *copy0 : *copy1;
  if (!copy0.ok()) {
    notes.push_back(copy0.error().message() + " (using copy 1)");
    bad_copy = 0;
  } else if (!copy1.ok()) {
    notes.push_back(copy1.error().message() + " (using copy 0)");
    bad_copy = 1;
  } else if (std::memcmp(buffer.data() + 8, buffer.data() + kBlockSize + 8,
                         offsetof(Superblock, copy) - 8) != 0 ||
             std::memcmp(buffer.data() + offsetof(Superblock, device_blocks),
                         buffer.data() + kBlockSize + offsetof(Superblock, device_blocks),
                         offsetof(Superblock, crc) - offsetof(Superblock, device_blocks)) != 0) {
    notes.push_back("superblock copies 0 and 1 differ (using copy 0)");
  }
  if (g.device_blocks * kBlockSize > device.size_bytes()) {
    return Error(EINVAL, name + ": device of " + std::to_string(device.size_bytes()) +
                             " bytes is smaller than the store's " +
                             std::to_string(g.device_blocks * kBlockSize) +
                             " bytes (truncated or wrong device)");
  }
  return g;
}

// Journal commits exist that extend a newer checkpoint than any valid one:
// that checkpoint was complete once (its epoch-start record is written only
// after it is durable) and is now damaged. Opening the older state would
// silently roll back acknowledged writes.
Error newer_checkpoint_damaged(const std::string& name, uint64_t newer_epoch, uint64_t epoch) {
  return Error(ErrorKind::kCorruption, EIO,
               name + ": the newest checkpoint (epoch " + std::to_string(newer_epoch) +
                   ") is corrupted but journal commits after it exist; refusing to roll "
                   "back to epoch " +
                   std::to_string(epoch));
}

// Replay stopped at journal block `pos`: the run there is not commit
// `last_seq + 1` of `epoch` (`why`). That is the journal's end only if no
// later commit of the epoch exists: commits are written one at a time, each
// only after every earlier one is durable (docs/dbs.md, "Journal ordering"),
// so a torn write can only be the last commit. A block further on whose own
// header is valid and that belongs to a later commit of the same epoch
// proves that the stopping point is a damaged middle; replaying up to it
// would silently roll the store back, so the store is refused. A valid block
// of a newer epoch anywhere proves the same of the checkpoint itself (and
// would, once the next checkpoint reuses that epoch number, pass for a later
// commit); it is the diagnosis given when both are found.
// Blocks of older epochs and stale blocks of the dropped commit itself (a
// torn commit overwritten by a shorter one after recovery) carry a lower or
// equal sequence number and are ignored.
Status refuse_if_later_commit(BlockDevice& device, const Geometry& g, uint64_t pos, uint64_t epoch,
                              uint64_t last_seq, const std::string& why) {
  const std::string name(device.name());
  AlignedBuffer buffer;
  constexpr uint64_t kPiece = 256;
  std::optional<Error> later_commit;
  for (uint64_t at = 0; at < g.journal_blocks; at += kPiece) {
    const uint64_t n = std::min(kPiece, g.journal_blocks - at);
    auto read = read_blocks(device, g.journal_start + at, n, buffer);
    if (!read.ok()) {
      return read.error().with_context(name + ": cannot read journal blocks " + std::to_string(at) +
                                       ".." + std::to_string(at + n - 1) +
                                       " (looking for commits after the journal's end)");
    }
    for (uint64_t i = 0; i < n; ++i) {
      auto h =
          check_meta_block(g, {buffer.data() + i * kBlockSize, kBlockSize}, MetaType::kJournal);
      if (!h.ok()) {
        continue;
      }
      if (h->epoch > epoch) {
        return newer_checkpoint_damaged(name, h->epoch, epoch);
      }
      if (later_commit || at + i < pos || h->epoch != epoch || h->seq <= last_seq + 1) {
        continue;
      }
      std::string message = name;
      message.append(": journal block ")
          .append(std::to_string(pos))
          .append(" (commit ")
          .append(std::to_string(last_seq + 1))
          .append(") is corrupted (")
          .append(why)
          .append("), but a later commit ")
          .append(std::to_string(h->seq))
          .append(" exists at journal block ")
          .append(std::to_string(at + i))
          .append("; refusing to open a state that would silently drop commits from ")
          .append(std::to_string(last_seq + 1))
          .append(" on (nothing was changed on the device)");
      later_commit = Error(EUCLEAN, message);
    }
  }
  if (later_commit) {
    return *later_commit;
  }
  return ok_status();
}

// The replay ends here: `found` is refuse_if_later_commit()'s verdict. With
// the operator's escape hatch a corruption ends the journal too, recorded in
// `loaded`.
Status end_of_journal(Status found, bool truncate_at_corruption, LoadedStore& loaded) {
  if (found.ok() || !truncate_at_corruption || found.error().errno_value() != EUCLEAN) {
    return found;
  }
  loaded.journal_truncated = found.error().message();
  loaded.notes.push_back("journal truncated at corruption (truncate_journal_at_corruption): " +
                         found.error().message());
  return ok_status();
}

}  // namespace

Result<LoadedStore> load_store(BlockDevice& device, bool validate,
                               std::vector<std::string>* problems, bool truncate_at_corruption) {
  const std::string name(device.name());
  LoadedStore loaded;
  auto geometry = load_geometry(device, loaded.notes, loaded.bad_superblock_copy);
  if (!geometry.ok()) {
    return geometry.error();
  }
  const Geometry& g = *geometry;
  loaded.geometry = g;

  // Both checkpoint areas; the valid one with the newest epoch wins.
  bool io_failed[2] = {false, false};
  Result<MetaRun> checkpoints[2] = {
      read_run(device, g, g.checkpoint_start[0], g.checkpoint_start[0] + g.checkpoint_blocks,
               MetaType::kCheckpoint, &io_failed[0]),
      read_run(device, g, g.checkpoint_start[1], g.checkpoint_start[1] + g.checkpoint_blocks,
               MetaType::kCheckpoint, &io_failed[1])};
  for (int i = 0; i < 2; ++i) {
    // Not "invalid, use the other one": the unreadable area may hold the
    // newest checkpoint, and the other one would roll the store back.
    if (io_failed[i]) {
      return checkpoints[i].error().with_context(name + ": cannot read checkpoint area " +
                                                 (i == 0 ? "A" : "B"));
    }
  }
  int active = -1;
  for (int i = 0; i < 2; ++i) {
    if (checkpoints[i].ok() &&
        (active < 0 || checkpoints[i]->header.epoch > checkpoints[active]->header.epoch)) {
      active = i;
    }
  }
  if (active < 0) {
    return Error(ErrorKind::kCorruption, EINVAL,
                 name +
                     ": no valid metadata checkpoint: area A: " + checkpoints[0].error().message() +
                     "; area B: " + checkpoints[1].error().message());
  }
  MetaRun& checkpoint = *checkpoints[active];
  loaded.active_checkpoint = active;
  loaded.epoch = checkpoint.header.epoch;
  loaded.seq = checkpoint.header.seq;
  if (!checkpoints[1 - active].ok()) {
    loaded.notes.push_back(std::string("checkpoint area ") + (active == 0 ? "B" : "A") +
                           " is not valid: " + checkpoints[1 - active].error().message());
  }

  auto metadata = std::make_unique<Metadata>(g);
  auto applied = metadata->apply(checkpoint.body);
  if (!applied.ok()) {
    return applied.error().with_context(name + ": checkpoint of epoch " +
                                        std::to_string(loaded.epoch));
  }

  // Journal: commits of this epoch with consecutive sequence numbers.
  const uint64_t journal_end = g.journal_start + g.journal_blocks;
  uint64_t pos = 0;
  for (;;) {
    if (pos >= g.journal_blocks) {
      break;
    }
    bool journal_io_failed = false;
    auto run = read_run(device, g, g.journal_start + pos, journal_end, MetaType::kJournal,
                        &journal_io_failed);
    if (!run.ok()) {
      if (journal_io_failed) {
        // Ending the journal here would drop the commits after it.
        return run.error().with_context(name + ": cannot read journal block " +
                                        std::to_string(pos));
      }
      UBLKVOL_TRY(end_of_journal(
          refuse_if_later_commit(device, g, pos, loaded.epoch, loaded.seq, run.error().message()),
          truncate_at_corruption, loaded));
      break;  // end of the journal (or a torn, never-acknowledged commit)
    }
    if (run->header.epoch != loaded.epoch || run->header.seq != loaded.seq + 1) {
      if (run->header.epoch > loaded.epoch) {
        return newer_checkpoint_damaged(name, run->header.epoch, loaded.epoch);
      }
      UBLKVOL_TRY(end_of_journal(
          refuse_if_later_commit(device, g, pos, loaded.epoch, loaded.seq,
                                 "holds commit " + std::to_string(run->header.seq) + " of epoch " +
                                     std::to_string(run->header.epoch) + " instead"),
          truncate_at_corruption, loaded));
      break;
    }
    auto status = metadata->apply(run->body);
    if (!status.ok()) {
      return status.error().with_context(name + ": journal commit " +
                                         std::to_string(run->header.seq));
    }
    loaded.seq = run->header.seq;
    pos += run->header.count;
    ++loaded.journal_commits;
  }
  loaded.journal_pos = pos;
  std::vector<std::string> found = metadata->link_and_validate();
  if (validate && !found.empty()) {
    std::string message = name + ": metadata is inconsistent: " + found.front();
    if (found.size() > 1) {
      message += " (and " + std::to_string(found.size() - 1) + " more problems)";
    }
    return Error(ErrorKind::kCorruption, EINVAL, message);
  }
  if (problems != nullptr) {
    problems->insert(problems->end(), found.begin(), found.end());
  }
  loaded.metadata = std::move(metadata);
  return loaded;
}

}  // namespace ublkvol::dbs::detail
