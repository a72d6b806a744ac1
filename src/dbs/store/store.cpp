// Store: the public face (store.h) - format, open, and thin forwarding to
// Store::Impl.
#include "ublkvol/dbs/store.h"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <spdlog/spdlog.h>

#if defined(__SANITIZE_ADDRESS__)
#define UBLKVOL_STORE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UBLKVOL_STORE_LSAN 1
#endif
#endif
#ifdef UBLKVOL_STORE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

#include "meta_io.h"
#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;
using namespace format;

Status Store::format(BlockDevice& device, const FormatOptions& options) {
  const std::string name(device.name());
  if (device.block_size() != kBlockSize) {
    return Error(EINVAL,
                 name + ": block size " + std::to_string(device.block_size()) + " is not 4096");
  }
  auto planned = plan_geometry(device.size_bytes(), options);
  if (!planned.ok()) {
    return planned.error().with_context(name);
  }
  Geometry g = *planned;
  std::random_device random;
  std::mt19937_64 rng(
      (uint64_t{random()} << 32) ^ random() ^
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (size_t i = 0; i < sizeof(g.uuid); i += 8) {
    const uint64_t word = rng();
    std::memcpy(g.uuid + i, &word, 8);
  }
  g.uuid[6] = static_cast<uint8_t>((g.uuid[6] & 0x0F) | 0x40);  // RFC 4122 version 4
  g.uuid[8] = static_cast<uint8_t>((g.uuid[8] & 0x3F) | 0x80);
  std::memcpy(&g.store_id, g.uuid, sizeof(g.store_id));

  // Invalidate the old superblocks first: a crash mid-format leaves a device
  // that is refused, not a mix of two stores.
  AlignedBuffer zero(size_t{kBlockSize} * 2);
  std::memset(zero.data(), 0, zero.size());
  UBLKVOL_TRY(write_sync(device, 0, zero.span()));
  UBLKVOL_TRY(flush_sync(device));

  // Checkpoint A: the empty state (epoch 1). Area B and the journal start
  // empty; blocks left there by an older store carry another store id.
  Metadata empty(g);
  empty.mark_ids();
  std::vector<std::byte> body;
  empty.serialize_full(body);
  AlignedBuffer framed;
  frame_body(g, MetaType::kCheckpoint, 1, 0, body, framed);
  UBLKVOL_TRY(write_sync(device, g.checkpoint_start[0] * kBlockSize, framed.span()));
  UBLKVOL_TRY(
      write_sync(device, g.checkpoint_start[1] * kBlockSize, zero.span().first(kBlockSize)));
  UBLKVOL_TRY(write_sync(device, g.journal_start * kBlockSize, zero.span().first(kBlockSize)));
  UBLKVOL_TRY(flush_sync(device));

  AlignedBuffer superblocks(size_t{kBlockSize} * 2);
  encode_superblock(g, 0, superblocks.span().first(kBlockSize));
  encode_superblock(g, 1, superblocks.span().subspan(kBlockSize, kBlockSize));
  UBLKVOL_TRY(write_sync(device, 0, superblocks.span()));
  UBLKVOL_TRY(flush_sync(device));
  return ok_status();
}

namespace {

// One superblock copy failed validation and the other is good: write the
// damaged one again from the good geometry (the copies are identical except
// for their index), durably, so the store has two good copies again.
// Returns the note for the open report.
std::string rewrite_superblock_copy(BlockDevice& device, const Geometry& g, uint32_t copy) {
  const std::string which = "superblock copy " + std::to_string(copy);
  AlignedBuffer block(kBlockSize);
  std::memset(block.data(), 0, kBlockSize);
  encode_superblock(g, copy, block.span());
  Status status = write_sync(device, uint64_t{copy} * kBlockSize, block.span());
  if (status.ok()) {
    status = flush_sync(device);
  }
  if (!status.ok()) {
    return which + " could not be rewritten: " + status.error().message();
  }
  return which + " rewritten from copy " + std::to_string(1 - copy);
}

}  // namespace

Result<std::unique_ptr<Store>> Store::open(BlockDevice& device, const OpenOptions& options) {
  auto loaded = load_store(device, /*validate=*/true, nullptr);
  if (!loaded.ok()) {
    return loaded.error();
  }
  const int bad_copy = loaded->bad_superblock_copy;
  std::string repaired;
  if (bad_copy >= 0) {
    repaired = rewrite_superblock_copy(device, loaded->geometry, static_cast<uint32_t>(bad_copy));
  }
  auto impl = std::make_unique<Impl>(device, std::move(*loaded), options);
  if (!repaired.empty()) {
    impl->add_open_note(std::move(repaired));
  }
  for (const std::string& note : impl->open_notes()) {
    // A damaged superblock copy is news for the operator; the other notes
    // (e.g. the unused checkpoint area of a fresh store) are routine.
    if (note.find("superblock") != std::string::npos) {
      spdlog::warn("dbs store {}: {}", device.name(), note);
    } else {
      spdlog::debug("dbs store {}: {}", device.name(), note);
    }
  }
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

std::vector<std::string> Store::check_device(BlockDevice& device) {
  std::vector<std::string> problems;
  auto loaded = load_store(device, /*validate=*/false, &problems);
  if (!loaded.ok()) {
    return {loaded.error().message()};
  }
  if (!problems.empty()) {
    return problems;
  }
  Impl impl(device, std::move(*loaded), OpenOptions{16});
  return impl.check();
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::array<uint8_t, 16> Store::uuid() const {
  std::array<uint8_t, 16> out{};
  std::memcpy(out.data(), impl_->geometry().uuid, out.size());
  return out;
}

std::string Store::uuid_string() const {
  const std::array<uint8_t, 16> u = uuid();
  std::string out;
  out.reserve(36);
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out.push_back('-');
    }
    out.push_back(kHex[u[i] >> 4]);
    out.push_back(kHex[u[i] & 0xF]);
  }
  return out;
}

const std::vector<std::string>& Store::open_notes() const { return impl_->open_notes(); }

Status Store::close() {
  if (!impl_) {
    return ok_status();
  }
  // Let requests in flight finish: the device must not call back into
  // freed state. Nothing is written: changes not journaled yet are dropped,
  // as when the process dies.
  auto quiet = impl_->quiesce();
  if (!quiet.ok()) {
    // The device still holds requests that point into the store's state
    // (request pool, commit buffers): keep it alive rather than let a late
    // completion write into freed memory. Bounded: one store's state.
    spdlog::error(
        "dbs store {}: {}; leaking the store's request state so late completions "
        "stay safe",
        impl_->device().name(), quiet.error().message());
    Impl* kept = impl_.release();
#ifdef UBLKVOL_STORE_LSAN
    __lsan_ignore_object(kept);  // deliberate: see above
#else
    (void)kept;
#endif
    return quiet;
  }
  impl_.reset();
  return ok_status();
}

Store::~Store() { (void)close(); }

Result<VolumeId> Store::create_volume(std::string_view name, uint64_t size_bytes) {
  return impl_->create_volume(name, size_bytes);
}
Status Store::delete_volume(VolumeId volume) { return impl_->delete_volume(volume); }
Status Store::rename_volume(VolumeId volume, std::string_view new_name) {
  return impl_->rename_volume(volume, new_name);
}
Status Store::grow_volume(VolumeId volume, uint64_t new_size_bytes) {
  return impl_->grow_volume(volume, new_size_bytes);
}

std::vector<VolumeInfo> Store::list_volumes() const {
  std::vector<VolumeInfo> out;
  for (auto& [id, volume] : impl_->metadata().volumes) {
    out.push_back(impl_->volume_info(*volume));
  }
  return out;
}

Result<VolumeInfo> Store::volume_info(VolumeId volume) const {
  auto found = impl_->find_volume(volume);
  if (!found.ok()) {
    return found.error();
  }
  return impl_->volume_info(**found);
}

Result<VolumeId> Store::find_volume(std::string_view name) const {
  for (auto& [id, volume] : impl_->metadata().volumes) {
    if (volume->name == name) {
      return id;
    }
  }
  return Error(ENOENT, "no volume named '" + std::string(name) + "'");
}

Status Store::set_generation(VolumeId volume, uint64_t generation) {
  return impl_->set_generation(volume, generation);
}

Result<uint64_t> Store::dirty_region_bytes(VolumeId volume) const {
  auto found = impl_->find_volume(volume);
  if (!found.ok()) {
    return found.error();
  }
  return uint64_t{1} << (*found)->dirty_shift;
}

Status Store::mark_dirty(VolumeId volume, uint64_t offset, uint64_t length) {
  return impl_->set_dirty(volume, offset, length, true);
}
Status Store::clear_dirty(VolumeId volume, uint64_t offset, uint64_t length) {
  return impl_->set_dirty(volume, offset, length, false);
}

Result<std::vector<uint64_t>> Store::dirty_bitmap(VolumeId volume) const {
  auto found = impl_->find_volume(volume);
  if (!found.ok()) {
    return found.error();
  }
  return (*found)->dirty_bits;
}

Result<SnapshotId> Store::create_snapshot(VolumeId volume, std::string_view name) {
  return impl_->create_snapshot(volume, name);
}
Status Store::delete_snapshot(SnapshotId snapshot) { return impl_->delete_snapshot(snapshot); }
Status Store::revert_volume(VolumeId volume, SnapshotId snapshot) {
  return impl_->revert_volume(volume, snapshot);
}
Result<VolumeId> Store::clone_snapshot(SnapshotId snapshot, std::string_view volume_name) {
  return impl_->clone_snapshot(snapshot, volume_name);
}
Status Store::rename_snapshot(SnapshotId snapshot, std::string_view new_name) {
  return impl_->rename_snapshot(snapshot, new_name);
}

std::vector<SnapshotInfo> Store::list_snapshots(VolumeId volume) const {
  std::vector<SnapshotInfo> out;
  for (auto& [id, layer] : impl_->metadata().layers) {
    if (layer->is_snapshot() && !layer->hidden() && layer->volume_id == volume) {
      out.push_back(impl_->snapshot_info(*layer));
    }
  }
  return out;
}

std::vector<SnapshotInfo> Store::list_all_snapshots() const {
  std::vector<SnapshotInfo> out;
  for (auto& [id, layer] : impl_->metadata().layers) {
    if (layer->is_snapshot()) {
      out.push_back(impl_->snapshot_info(*layer));
    }
  }
  return out;
}

Result<SnapshotInfo> Store::snapshot_info(SnapshotId snapshot) const {
  auto found = impl_->find_snapshot(snapshot);
  if (!found.ok()) {
    return found.error();
  }
  return impl_->snapshot_info(**found);
}

Result<SnapshotId> Store::find_snapshot(VolumeId volume, std::string_view name) const {
  for (auto& [id, layer] : impl_->metadata().layers) {
    if (layer->is_snapshot() && !layer->hidden() && layer->volume_id == volume &&
        layer->name == name) {
      return id;
    }
  }
  return Error(ENOENT, "volume " + std::to_string(volume) + " has no snapshot named '" +
                           std::string(name) + "'");
}

void Store::submit(StoreIo& io) { impl_->submit(io); }
void Store::kick() { impl_->device().kick(); }
unsigned Store::poll(bool wait) { return impl_->poll(wait); }
unsigned Store::in_flight() const { return impl_->in_flight(); }
int Store::completion_fd() const { return impl_->device().completion_fd(); }

Status Store::read(VolumeId volume, uint64_t offset, std::span<std::byte> buffer) {
  StoreIo io;
  io.op = StoreOp::kRead;
  io.volume = volume;
  io.offset = offset;
  io.length = buffer.size();
  io.buffer = buffer.data();
  return impl_->run_sync(io);
}

Status Store::read_snapshot(SnapshotId snapshot, uint64_t offset, std::span<std::byte> buffer) {
  StoreIo io;
  io.op = StoreOp::kRead;
  io.snapshot = snapshot;
  io.offset = offset;
  io.length = buffer.size();
  io.buffer = buffer.data();
  return impl_->run_sync(io);
}

Status Store::write(VolumeId volume, uint64_t offset, std::span<const std::byte> buffer) {
  StoreIo io;
  io.op = StoreOp::kWrite;
  io.volume = volume;
  io.offset = offset;
  io.length = buffer.size();
  // The store only reads from a write's buffer.
  io.buffer = const_cast<std::byte*>(buffer.data());
  return impl_->run_sync(io);
}

Status Store::discard(VolumeId volume, uint64_t offset, uint64_t length) {
  StoreIo io;
  io.op = StoreOp::kDiscard;
  io.volume = volume;
  io.offset = offset;
  io.length = length;
  return impl_->run_sync(io);
}

Status Store::write_zeroes(VolumeId volume, uint64_t offset, uint64_t length) {
  StoreIo io;
  io.op = StoreOp::kWriteZeroes;
  io.volume = volume;
  io.offset = offset;
  io.length = length;
  return impl_->run_sync(io);
}

Status Store::commit() {
  StoreIo io;
  io.op = StoreOp::kFlush;
  return impl_->run_sync(io);
}

std::vector<std::string> Store::check() { return impl_->check(); }
StoreStats Store::stats() const { return impl_->stats(); }
bool Store::failed() const { return impl_->failed(); }
Status Store::health() const { return impl_->health(); }

}  // namespace ublkvol::dbs
