// RawReplicaStore: a replica directly on a BlockDevice (raw_replica_store.h).
#include "ublkvol/engine/raw_replica_store.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "ublkvol/common/crc32c.h"

#include "replica_store_util.h"

namespace ublkvol::engine {

const char* to_string(ReplicaOp op) {
  switch (op) {
    case ReplicaOp::kRead:
      return "read";
    case ReplicaOp::kWrite:
      return "write";
    case ReplicaOp::kFlush:
      return "flush";
    case ReplicaOp::kDiscard:
      return "discard";
    case ReplicaOp::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown";
}

Status ReplicaStore::create_snapshot(std::string_view /*name*/) {
  return Error(ENOTSUP, std::string(name()) + ": snapshots are not supported by this store");
}
Status ReplicaStore::delete_snapshot(std::string_view /*name*/) {
  return Error(ENOTSUP, std::string(name()) + ": snapshots are not supported by this store");
}
Status ReplicaStore::revert_snapshot(std::string_view /*name*/) {
  return Error(ENOTSUP, std::string(name()) + ": snapshots are not supported by this store");
}

Status ReplicaStore::clone_snapshot(std::string_view /*snapshot*/, std::string_view /*clone*/,
                                    const ReplicaMeta& /*clone_meta*/) {
  return Error(ENOTSUP, std::string(name()) + ": snapshots are not supported");
}

Status ReplicaStore::delete_clone(std::string_view /*clone*/) {
  return Error(ENOTSUP, std::string(name()) + ": snapshots are not supported");
}

Status ReplicaStore::mark_all_dirty() {
  return Error(ENOTSUP, std::string(name()) + ": marking every region dirty is not supported");
}

namespace {

constexpr uint64_t kBlock = 4096;
constexpr char kMagic[8] = {'U', 'B', 'V', 'R', 'E', 'P', 'L', '1'};
// Version 2 added replica_id and in_sync; version 1 headers still open (they
// read as "no id, in-sync set unknown") and are rewritten as version 2.
constexpr uint32_t kVersion = 2;
constexpr uint32_t kVersionNoInSync = 1;
constexpr uint32_t kFlagFresh = 1;
constexpr uint32_t kFlagRebuilding = 2;
constexpr uint64_t kDataAlign = 1U << 20U;

// The on-disk header (little-endian; the daemon only runs on x86-64/arm64 LE).
struct OnDiskHeader {
  char magic[8];
  uint32_t version;
  uint32_t crc;  // CRC32C of the whole 4 KiB block with this field zero
  uint64_t seq;  // higher wins between the two copies
  uint64_t device_size;
  uint64_t data_offset;
  uint64_t data_size;
  uint64_t region_bytes;
  uint64_t bitmap_blocks;
  uint64_t volume_uuid;
  uint32_t flags;
  uint32_t reserved;
  uint64_t generation;
  uint64_t history[kGenerationHistory];
  uint64_t bitmap_base;
  uint64_t rebuild_generation;
  uint64_t rebuild_watermark;
  // Version 2 on (zero in a version 1 block).
  uint64_t replica_id;
  uint64_t in_sync[kInSyncSetSize];
};
static_assert(sizeof(OnDiskHeader) <= kBlock);

using detail::AlignedBytes;
AlignedBytes aligned_bytes(size_t size) { return detail::aligned_bytes(dbs::kIoAlignment, size); }

struct Geometry {
  uint64_t data_offset = 0;
  uint64_t data_size = 0;
  uint64_t region_bytes = 0;
  uint64_t bitmap_blocks = 0;
  [[nodiscard]] uint64_t regions() const { return (data_size + region_bytes - 1) / region_bytes; }
};

void encode(const ReplicaMeta& meta, const Geometry& geo, uint64_t device_size, uint64_t seq,
            std::byte* block) {
  std::memset(block, 0, kBlock);
  OnDiskHeader h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.seq = seq;
  h.device_size = device_size;
  h.data_offset = geo.data_offset;
  h.data_size = geo.data_size;
  h.region_bytes = geo.region_bytes;
  h.bitmap_blocks = geo.bitmap_blocks;
  h.volume_uuid = meta.volume_uuid;
  h.flags = (meta.fresh ? kFlagFresh : 0U) | (meta.rebuilding ? kFlagRebuilding : 0U);
  h.generation = meta.generation;
  std::copy(meta.history.begin(), meta.history.end(), h.history);
  h.bitmap_base = meta.bitmap_base;
  h.rebuild_generation = meta.rebuild_generation;
  h.rebuild_watermark = meta.rebuild_watermark;
  h.replica_id = meta.replica_id;
  std::copy(meta.in_sync.begin(), meta.in_sync.end(), h.in_sync);
  std::memcpy(block, &h, sizeof(h));
  h.crc = crc32c(block, kBlock);
  std::memcpy(block, &h, sizeof(h));
}

// Decodes one header copy; an empty string on success, else why it is bad.
std::string decode(const std::byte* block, uint64_t device_size, OnDiskHeader& out) {
  std::memcpy(&out, block, sizeof(out));
  if (std::memcmp(out.magic, kMagic, sizeof(kMagic)) != 0) {
    return "bad magic (not a replica)";
  }
  if (out.version != kVersion && out.version != kVersionNoInSync) {
    return "unsupported version " + std::to_string(out.version);
  }
  std::byte copy[kBlock];
  std::memcpy(copy, block, kBlock);
  OnDiskHeader zeroed = out;
  zeroed.crc = 0;
  std::memcpy(copy, &zeroed, sizeof(zeroed));
  if (crc32c(copy, kBlock) != out.crc) {
    return "checksum mismatch";
  }
  if (out.region_bytes < kBlock || (out.region_bytes & (out.region_bytes - 1)) != 0 ||
      out.data_offset % kBlock != 0 || out.data_size % kBlock != 0 || out.data_size == 0 ||
      out.data_offset < 2 * kBlock + out.bitmap_blocks * kBlock || out.data_offset > device_size ||
      out.data_size > device_size - out.data_offset ||
      out.bitmap_blocks * kBlock * 8 < (out.data_size + out.region_bytes - 1) / out.region_bytes) {
    return "inconsistent geometry";
  }
  if (out.device_size != device_size) {
    return "device size changed from " + std::to_string(out.device_size) + " to " +
           std::to_string(device_size);
  }
  return {};
}

ReplicaMeta meta_from(const OnDiskHeader& h) {
  ReplicaMeta m;
  m.volume_uuid = h.volume_uuid;
  m.fresh = (h.flags & kFlagFresh) != 0;
  m.rebuilding = (h.flags & kFlagRebuilding) != 0;
  m.generation = h.generation;
  std::copy(std::begin(h.history), std::end(h.history), m.history.begin());
  m.bitmap_base = h.bitmap_base;
  m.rebuild_generation = h.rebuild_generation;
  m.rebuild_watermark = h.rebuild_watermark;
  if (h.version != kVersionNoInSync) {
    m.replica_id = h.replica_id;
    std::copy(std::begin(h.in_sync), std::end(h.in_sync), m.in_sync.begin());
  }
  return m;
}

dbs::IoOp device_op(ReplicaOp op) {
  switch (op) {
    case ReplicaOp::kRead:
      return dbs::IoOp::kRead;
    case ReplicaOp::kWrite:
      return dbs::IoOp::kWrite;
    case ReplicaOp::kFlush:
      return dbs::IoOp::kFlush;
    case ReplicaOp::kDiscard:
      return dbs::IoOp::kDiscard;
    case ReplicaOp::kWriteZeroes:
      return dbs::IoOp::kWriteZeroes;
  }
  return dbs::IoOp::kRead;
}

using detail::is_mutating;

static_assert(sizeof(dbs::IoRequest) <= kReplicaIoStoreScratchBytes);

dbs::IoRequest& device_request(ReplicaIo& io) {
  return *std::launder(reinterpret_cast<dbs::IoRequest*>(io.store_scratch));
}

using detail::IoList;

}  // namespace

struct RawReplicaStore::Impl {
  dbs::BlockDevice* device = nullptr;
  std::string name;
  Geometry geo;
  ReplicaMeta meta;
  uint64_t header_seq = 0;
  AlignedBytes header_block;
  // In-memory bitmap, bitmap_blocks * 4 KiB, written to disk directly.
  AlignedBytes bitmap;
  unsigned in_flight = 0;
  uint64_t commits = 0;
  // Commit numbers: started_commits is the last one issued, durable_commit
  // the last one completed; block_commit[b] is the commit that persists the
  // newest change of bitmap block b.
  uint64_t started_commits = 0;
  uint64_t durable_commit = 0;
  std::vector<uint64_t> block_commit;

  // Group commit of bitmap blocks.
  dbs::IoRequest commit_request;
  bool commit_in_flight = false;
  uint64_t dirty_first = UINT64_MAX;  // bitmap blocks changed, not yet in a commit
  uint64_t dirty_last = 0;
  IoList waiting_next_commit;  // need bits that the next commit writes
  IoList waiting_this_commit;  // need bits that the commit in flight writes
  // Completed without reaching the device (invalid requests).
  IoList local_done;

  static void finish(ReplicaIo& io, int result) {
    io.result = result;
    // in_flight is decremented by the owner through the back pointer kept in
    // the request's submitter field (see issue()).
    auto* impl = reinterpret_cast<Impl*>(io.store_next);
    io.store_next = nullptr;
    --impl->in_flight;
    io.on_complete(io, result);
  }

  void issue(ReplicaIo& io) {
    dbs::IoRequest& req = device_request(io);
    // store_next holds the owning Impl while the request is at the device
    // (it is only a list link while the request waits inside the store).
    io.store_next = reinterpret_cast<ReplicaIo*>(this);
    device->submit(req);
  }

  void complete_locally(ReplicaIo& io, int result) {
    io.result = result;
    local_done.push(io);
  }

  // Sets the bits of [offset, offset+length) and returns the number of the
  // commit that makes all of them durable (<= durable_commit: already are).
  uint64_t mark(uint64_t offset, uint64_t length) {
    uint64_t first = offset / geo.region_bytes;
    uint64_t last = (offset + length - 1) / geo.region_bytes;
    auto* bits = reinterpret_cast<uint8_t*>(bitmap.get());
    uint64_t needed = 0;
    for (uint64_t r = first; r <= last; ++r) {
      uint8_t mask = static_cast<uint8_t>(1U << (r % 8));
      uint64_t block = r / 8 / kBlock;
      if ((bits[r / 8] & mask) == 0) {
        bits[r / 8] = static_cast<uint8_t>(bits[r / 8] | mask);
        dirty_first = std::min(dirty_first, block);
        dirty_last = std::max(dirty_last, block);
        block_commit[block] = started_commits + 1;
      }
      needed = std::max(needed, block_commit[block]);
    }
    return needed;
  }

  void start_commit() {
    if (commit_in_flight || waiting_next_commit.empty()) {
      return;
    }
    waiting_this_commit = waiting_next_commit;
    waiting_next_commit = {};
    commit_request = {};
    commit_request.op = dbs::IoOp::kWrite;
    commit_request.fua = true;
    commit_request.offset = 2 * kBlock + dirty_first * kBlock;
    commit_request.length = (dirty_last - dirty_first + 1) * kBlock;
    commit_request.buffer = bitmap.get() + dirty_first * kBlock;
    commit_request.on_complete = &Impl::on_commit_complete;
    commit_request.user_data = this;
    dirty_first = UINT64_MAX;
    dirty_last = 0;
    commit_in_flight = true;
    ++started_commits;
    ++commits;
    device->submit(commit_request);
  }

  static void on_commit_complete(dbs::IoRequest& request, int result) {
    auto* self = static_cast<Impl*>(request.user_data);
    self->commit_in_flight = false;
    if (result >= 0) {
      self->durable_commit = self->started_commits;
    } else {
      // Rewrite the same blocks with the next commit.
      uint64_t first = (request.offset - 2 * kBlock) / kBlock;
      uint64_t last = first + request.length / kBlock - 1;
      self->dirty_first = std::min(self->dirty_first, first);
      self->dirty_last = std::max(self->dirty_last, last);
      for (uint64_t b = first; b <= last; ++b) {
        self->block_commit[b] = self->started_commits + 1;
      }
    }
    ReplicaIo* io = self->waiting_this_commit.take_all();
    while (io != nullptr) {
      ReplicaIo* next = io->store_next;
      if (result < 0) {
        // The region could not be marked: the data request must not be
        // issued, or a crash could leave an unmarked difference.
        io->store_next = reinterpret_cast<ReplicaIo*>(self);
        finish(*io, result);
      } else {
        self->issue(*io);
      }
      io = next;
    }
    self->start_commit();
  }
};

RawReplicaStore::RawReplicaStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RawReplicaStore::~RawReplicaStore() = default;

std::string_view RawReplicaStore::name() const { return impl_->name; }
uint64_t RawReplicaStore::size_bytes() const { return impl_->geo.data_size; }
unsigned RawReplicaStore::in_flight() const { return impl_->in_flight; }
int RawReplicaStore::completion_fd() const { return impl_->device->completion_fd(); }
const ReplicaMeta& RawReplicaStore::meta() const { return impl_->meta; }
uint64_t RawReplicaStore::region_bytes() const { return impl_->geo.region_bytes; }
uint64_t RawReplicaStore::bitmap_commits() const { return impl_->commits; }
uint64_t RawReplicaStore::data_offset() const { return impl_->geo.data_offset; }

void RawReplicaStore::submit(ReplicaIo& io) {
  Impl& s = *impl_;
  ++s.in_flight;
  auto* req = ::new (static_cast<void*>(io.store_scratch)) dbs::IoRequest{};
  req->op = device_op(io.op);
  req->fua = io.fua;
  req->user_data = &io;
  req->on_complete = [](dbs::IoRequest& request, int result) {
    Impl::finish(*static_cast<ReplicaIo*>(request.user_data), result);
  };
  if (io.op != ReplicaOp::kFlush) {
    if (io.length == 0 || io.offset % kBlock != 0 || io.length % kBlock != 0 ||
        io.offset > s.geo.data_size || io.length > s.geo.data_size - io.offset) {
      s.complete_locally(io, -EINVAL);
      return;
    }
    req->offset = s.geo.data_offset + io.offset;
    req->length = io.length;
    req->buffer = io.buffer;
  }
  if (is_mutating(io.op) && !io.untracked) {
    uint64_t needed = s.mark(io.offset, io.length);
    if (needed > s.durable_commit) {
      // The commit in flight, or the next one, persists this request's bits.
      if (s.commit_in_flight && needed == s.started_commits) {
        s.waiting_this_commit.push(io);
      } else {
        s.waiting_next_commit.push(io);
        s.start_commit();
      }
      return;
    }
  }
  s.issue(io);
}

void RawReplicaStore::kick() { impl_->device->kick(); }

unsigned RawReplicaStore::poll(bool wait) {
  Impl& s = *impl_;
  // Counts our own completions, not the device's (bitmap commits).
  return detail::complete_local_then_poll(s.local_done, s.in_flight, wait,
                                          [&](bool w) { s.device->poll(w); });
}

Status RawReplicaStore::write_meta(const ReplicaMeta& meta) {
  Impl& s = *impl_;
  uint64_t seq = s.header_seq + 1;
  encode(meta, s.geo, s.device->size_bytes(), seq, s.header_block.get());
  Status st = dbs::write_sync(*s.device, (seq % 2) * kBlock, {s.header_block.get(), kBlock}, true);
  if (!st.ok()) {
    return st.error().with_context(s.name + ": writing replica metadata");
  }
  s.header_seq = seq;
  s.meta = meta;
  return ok_status();
}

std::vector<uint8_t> RawReplicaStore::dirty_regions() const {
  const Impl& s = *impl_;
  std::vector<uint8_t> out(s.geo.regions());
  const auto* bits = reinterpret_cast<const uint8_t*>(s.bitmap.get());
  for (uint64_t r = 0; r < out.size(); ++r) {
    out[r] = static_cast<uint8_t>((bits[r / 8] >> (r % 8)) & 1U);
  }
  return out;
}

Status RawReplicaStore::clear_dirty() {
  Impl& s = *impl_;
  while (s.commit_in_flight) {
    s.device->poll(true);
  }
  // Header first: a crash between the two writes leaves extra bits (safe),
  // never a bitmap that claims to cover more history than it does.
  ReplicaMeta m = s.meta;
  m.bitmap_base = m.generation;
  UBLKVOL_TRY(write_meta(m));
  std::memset(s.bitmap.get(), 0, s.geo.bitmap_blocks * kBlock);
  std::fill(s.block_commit.begin(), s.block_commit.end(), 0);
  s.durable_commit = s.started_commits;
  s.dirty_first = UINT64_MAX;
  s.dirty_last = 0;
  Status st =
      dbs::write_sync(*s.device, 2 * kBlock, {s.bitmap.get(), s.geo.bitmap_blocks * kBlock}, true);
  if (!st.ok()) {
    return st.error().with_context(s.name + ": clearing the dirty bitmap");
  }
  return ok_status();
}

Status format_raw_replica(dbs::BlockDevice& device, const RawReplicaFormatOptions& options) {
  std::string what = std::string(device.name()) + ": formatting replica";
  if (options.region_bytes < (64U << 10U) ||
      (options.region_bytes & (options.region_bytes - 1)) != 0) {
    return Error(EINVAL, what + ": region size " + std::to_string(options.region_bytes) +
                             " is not a power of two >= 65536");
  }
  if (device.block_size() != kBlock) {
    return Error(EINVAL, what + ": device block size must be 4096");
  }
  uint64_t dev = device.size_bytes();
  // Bitmap blocks for the largest data area the device could hold.
  uint64_t max_regions = (dev + options.region_bytes - 1) / options.region_bytes;
  Geometry geo;
  geo.region_bytes = options.region_bytes;
  geo.bitmap_blocks = std::max<uint64_t>(1, (max_regions + kBlock * 8 - 1) / (kBlock * 8));
  geo.data_offset = ((2 + geo.bitmap_blocks) * kBlock + kDataAlign - 1) / kDataAlign * kDataAlign;
  if (geo.data_offset >= dev) {
    return Error(ENOSPC,
                 what + ": device of " + std::to_string(dev) + " bytes is too small for a replica");
  }
  uint64_t avail = dev - geo.data_offset;
  geo.data_size = options.size_bytes == 0 ? avail : options.size_bytes / kBlock * kBlock;
  if (geo.data_size == 0 || geo.data_size > avail) {
    return Error(ENOSPC, what + ": replica size " + std::to_string(options.size_bytes) +
                             " does not fit (at most " + std::to_string(avail) + " bytes)");
  }
  AlignedBytes zeros = aligned_bytes(geo.bitmap_blocks * kBlock);
  UBLKVOL_TRY(dbs::write_sync(device, 2 * kBlock, {zeros.get(), geo.bitmap_blocks * kBlock}));
  if (options.zero_data) {
    UBLKVOL_TRY(dbs::write_zeroes_sync(device, geo.data_offset, geo.data_size));
  }
  AlignedBytes block = aligned_bytes(2 * kBlock);
  ReplicaMeta fresh;
  encode(fresh, geo, dev, 1, block.get() + kBlock);
  // Copy 0 stays invalid (zeroed) so the valid copy is unambiguous.
  UBLKVOL_TRY(dbs::write_sync(device, 0, {block.get(), 2 * kBlock}));
  UBLKVOL_TRY(dbs::flush_sync(device));
  return ok_status();
}

Result<std::unique_ptr<RawReplicaStore>> open_raw_replica(dbs::BlockDevice& device) {
  std::string name = "raw(" + std::string(device.name()) + ")";
  AlignedBytes headers = aligned_bytes(2 * kBlock);
  Status st = dbs::read_sync(device, 0, {headers.get(), 2 * kBlock});
  if (!st.ok()) {
    return st.error().with_context(name + ": reading replica header");
  }
  OnDiskHeader h[2];
  std::string why[2];
  for (int i = 0; i < 2; ++i) {
    why[i] = decode(headers.get() + i * kBlock, device.size_bytes(), h[i]);
  }
  int pick = -1;
  if (why[0].empty() && why[1].empty()) {
    pick = h[0].seq > h[1].seq ? 0 : 1;
  } else if (why[0].empty()) {
    pick = 0;
  } else if (why[1].empty()) {
    pick = 1;
  } else {
    return Error(EUCLEAN, name + ": no valid replica header (copy 0: " + why[0] +
                              "; copy 1: " + why[1] + ")");
  }
  auto impl = std::make_unique<RawReplicaStore::Impl>();
  impl->device = &device;
  impl->name = name;
  impl->geo.data_offset = h[pick].data_offset;
  impl->geo.data_size = h[pick].data_size;
  impl->geo.region_bytes = h[pick].region_bytes;
  impl->geo.bitmap_blocks = h[pick].bitmap_blocks;
  impl->meta = meta_from(h[pick]);
  impl->header_seq = h[pick].seq;
  impl->header_block = aligned_bytes(kBlock);
  impl->bitmap = aligned_bytes(impl->geo.bitmap_blocks * kBlock);
  impl->block_commit.assign(impl->geo.bitmap_blocks, 0);
  st = dbs::read_sync(device, 2 * kBlock, {impl->bitmap.get(), impl->geo.bitmap_blocks * kBlock});
  if (!st.ok()) {
    return st.error().with_context(name + ": reading dirty bitmap");
  }
  return std::unique_ptr<RawReplicaStore>(new RawReplicaStore(std::move(impl)));
}

}  // namespace ublkvol::engine
