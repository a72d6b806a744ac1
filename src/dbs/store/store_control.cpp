// Store::Impl control operations: volumes, snapshots, clones, engine state,
// and the checker. Each operation waits for the data path to go quiet, changes
// the in-memory metadata, and commits before returning. (~830 lines: one
// quiesce-change-commit pattern per operation; the checker goes with them.)
#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>
#include <spdlog/spdlog.h>
#include <system_error>

#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;
using namespace format;

namespace {

uint64_t now_seconds() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

constexpr uint64_t kMaxLogicalExtents = 0xFFFFFFF0ULL;

}  // namespace

Status Store::Impl::prologue() {
  if (failed_) {
    return Error(EIO, failure_);
  }
  return drain();
}

void Store::Impl::begin_collecting_frees() {
  control_freed_.clear();
  collecting_frees_ = true;
}

Status Store::Impl::commit_and_discard_freed() {
  collecting_frees_ = false;
  UBLKVOL_TRY(commit_sync());
  // The frees are durable; nothing can allocate these extents until this
  // (synchronous) operation returns, so the discards cannot hit new data.
  std::sort(control_freed_.begin(), control_freed_.end());
  for (size_t i = 0; i < control_freed_.size();) {
    size_t end = i + 1;
    while (end < control_freed_.size() && control_freed_[end] == control_freed_[end - 1] + 1) {
      ++end;
    }
    const uint64_t extents = end - i;
    // A discard is a hint: a device that cannot discard loses nothing.
    (void)control_io(IoOp::kDiscard, g_.data_offset(control_freed_[i], 0),
                     extents * g_.extent_bytes(), nullptr);
    i = end;
  }
  control_freed_.clear();
  return ok_status();
}

Result<Volume*> Store::Impl::find_volume(VolumeId id) const {
  Volume* volume = md_->volume(id);
  if (volume == nullptr) {
    return Error(ENOENT, "no volume with id " + std::to_string(id));
  }
  return volume;
}

Result<Layer*> Store::Impl::find_snapshot(SnapshotId id) const {
  Layer* layer = md_->layer(id);
  if (layer == nullptr || !layer->is_snapshot()) {
    return Error(ENOENT, "no snapshot with id " + std::to_string(id));
  }
  return layer;
}

std::vector<Layer*> Store::Impl::children_of(const Layer& layer) const {
  std::vector<Layer*> children;
  for (auto& [id, l] : md_->layers) {
    if (l->parent == &layer) {
      children.push_back(l.get());
    }
  }
  return children;
}

// ---------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------

namespace {

Status check_volume_size(uint64_t size_bytes, uint64_t extent_bytes) {
  if (size_bytes == 0 || size_bytes % kBlockSize != 0) {
    return Error(EINVAL, "volume size " + std::to_string(size_bytes) +
                             " is not a positive multiple of 4096 bytes");
  }
  if (size_bytes / extent_bytes >= kMaxLogicalExtents) {
    return Error(EFBIG, "volume size " + std::to_string(size_bytes) + " is too large");
  }
  return ok_status();
}

}  // namespace

Result<VolumeId> Store::Impl::create_volume(std::string_view name, uint64_t size_bytes) {
  UBLKVOL_TRY(validate_name("volume", name));
  UBLKVOL_TRY(check_volume_size(size_bytes, g_.extent_bytes()));
  UBLKVOL_TRY(check_volume_name_free(name));
  if (md_->volumes.size() >= g_.max_volumes) {
    return Error(ENOSPC, "the store already holds its maximum of " +
                             std::to_string(g_.max_volumes) + " volumes");
  }
  if (md_->layers.size() >= g_.max_layers) {
    return Error(ENOSPC, "the store already holds its maximum of " + std::to_string(g_.max_layers) +
                             " layers (volumes + snapshots)");
  }
  UBLKVOL_TRY(prologue());
  auto layer = std::make_unique<Layer>();
  layer->id = md_->next_layer_id++;
  layer->size_bytes = size_bytes;
  layer->create_time = now_seconds();
  return add_volume(name, std::move(layer));
}

Status Store::Impl::check_volume_name_free(std::string_view name, VolumeId except) const {
  for (auto& [id, v] : md_->volumes) {
    if (v->name == name && id != except) {
      return Error(EEXIST, "a volume named '" + std::string(name) + "' already exists");
    }
  }
  return ok_status();
}

Result<VolumeId> Store::Impl::add_volume(std::string_view name, std::unique_ptr<Layer> head) {
  auto volume = std::make_unique<Volume>();
  volume->id = md_->next_volume_id++;
  volume->name = std::string(name);
  volume->size_bytes = head->size_bytes;
  volume->dirty_shift = dirty_shift_for(volume->size_bytes);
  volume->dirty_bits.assign((dirty_regions(volume->size_bytes, volume->dirty_shift) + 63) / 64, 0);
  head->volume_id = volume->id;
  volume->head_id = head->id;
  volume->head = head.get();
  const VolumeId id = volume->id;
  md_->mark_ids();
  md_->mark_layer(*head);
  md_->mark_volume(*volume);
  md_->layers.emplace(head->id, std::move(head));
  md_->volumes.emplace(id, std::move(volume));
  UBLKVOL_TRY(commit_sync());
  return id;
}

Status Store::Impl::delete_volume(VolumeId id) {
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  UBLKVOL_TRY(prologue());
  // Merges below copy blocks into layers' free blocks: those must not still
  // be mapped in the committed state (a discard not yet committed).
  UBLKVOL_TRY(commit_sync());
  begin_collecting_frees();
  Volume& volume = **found;
  drop_layer(*volume.head);
  for (auto& [layer_id, layer] : md_->layers) {
    if (layer->volume_id == id) {
      layer->volume_id = 0;
      layer->flags |= kLayerHidden;
      layer->name.clear();
      md_->mark_layer(*layer);
    }
  }
  md_->volumes.erase(id);
  md_->mark_volume_deleted(id);
  UBLKVOL_TRY(collect_garbage());
  return commit_and_discard_freed();
}

Status Store::Impl::rename_volume(VolumeId id, std::string_view new_name) {
  UBLKVOL_TRY(validate_name("volume", new_name));
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  UBLKVOL_TRY(check_volume_name_free(new_name, id));
  UBLKVOL_TRY(prologue());
  (*found)->name = std::string(new_name);
  md_->mark_volume(**found);
  return commit_sync();
}

Status Store::Impl::grow_volume(VolumeId id, uint64_t new_size) {
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  Volume& volume = **found;
  UBLKVOL_TRY(check_volume_size(new_size, g_.extent_bytes()));
  if (new_size < volume.size_bytes) {
    return Error(EINVAL, "volume '" + volume.name + "' cannot shrink from " +
                             std::to_string(volume.size_bytes) + " to " + std::to_string(new_size) +
                             " bytes");
  }
  UBLKVOL_TRY(prologue());
  const uint32_t shift = dirty_shift_for(new_size);
  if (shift != volume.dirty_shift) {
    // Coarser regions: a new region is dirty if any old region in it was.
    std::vector<uint64_t> bits((dirty_regions(new_size, shift) + 63) / 64, 0);
    const uint64_t old_regions = dirty_regions(volume.size_bytes, volume.dirty_shift);
    for (uint64_t r = 0; r < old_regions; ++r) {
      if ((volume.dirty_bits[r / 64] >> (r % 64)) & 1) {
        const uint64_t nr = r >> (shift - volume.dirty_shift);
        bits[nr / 64] |= uint64_t{1} << (nr % 64);
      }
    }
    volume.dirty_bits = std::move(bits);
    volume.dirty_shift = shift;
  } else {
    volume.dirty_bits.resize((dirty_regions(new_size, shift) + 63) / 64, 0);
  }
  for (uint32_t c = 0; size_t{c} * (kDirtyChunkBits / 64) < volume.dirty_bits.size(); ++c) {
    md_->mark_dirty_chunk(volume, c);
  }
  volume.size_bytes = new_size;
  volume.head->size_bytes = new_size;
  md_->mark_volume(volume);
  md_->mark_layer(*volume.head);
  return commit_sync();
}

Status Store::Impl::set_generation(VolumeId id, uint64_t generation) {
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  (*found)->generation = generation;
  md_->mark_volume(**found);
  return ok_status();
}

Status Store::Impl::set_dirty(VolumeId id, uint64_t offset, uint64_t length, bool value) {
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  Volume& volume = **found;
  if (offset > volume.size_bytes || length > volume.size_bytes - offset) {
    return Error(EINVAL, "dirty range beyond the end of volume '" + volume.name + "'");
  }
  if (length == 0) {
    return ok_status();
  }
  const uint64_t first = offset >> volume.dirty_shift;
  const uint64_t last = (offset + length - 1) >> volume.dirty_shift;
  for (uint64_t r = first; r <= last; ++r) {
    uint64_t& word = volume.dirty_bits[r / 64];
    const uint64_t bit = uint64_t{1} << (r % 64);
    const uint64_t before = word;
    word = value ? (word | bit) : (word & ~bit);
    if (word != before) {
      md_->mark_dirty_chunk(volume, static_cast<uint32_t>(r / kDirtyChunkBits));
    }
  }
  return ok_status();
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

Result<SnapshotId> Store::Impl::create_snapshot(VolumeId id, std::string_view name) {
  UBLKVOL_TRY(validate_name("snapshot", name));
  auto found = find_volume(id);
  if (!found.ok()) {
    return found.error();
  }
  Volume& volume = **found;
  for (auto& [layer_id, layer] : md_->layers) {
    if (layer->is_snapshot() && !layer->hidden() && layer->volume_id == id && layer->name == name) {
      return Error(EEXIST, "volume '" + volume.name + "' already has a snapshot named '" +
                               std::string(name) + "'");
    }
  }
  if (md_->layers.size() >= g_.max_layers) {
    return Error(ENOSPC, "the store already holds its maximum of " + std::to_string(g_.max_layers) +
                             " layers (volumes + snapshots)");
  }
  UBLKVOL_TRY(prologue());
  // The head becomes the snapshot (its map stays where it is: O(1)); the
  // volume continues on a new, empty head on top of it.
  Layer& snapshot = *volume.head;
  snapshot.flags = kLayerSnapshot;
  snapshot.name = std::string(name);
  snapshot.create_time = now_seconds();
  auto head = std::make_unique<Layer>();
  head->id = md_->next_layer_id++;
  head->parent_id = snapshot.id;
  head->parent = &snapshot;
  head->volume_id = id;
  head->size_bytes = volume.size_bytes;
  head->create_time = snapshot.create_time;
  snapshot.children = 1;
  volume.head_id = head->id;
  volume.head = head.get();
  md_->mark_ids();
  md_->mark_layer(snapshot);
  md_->mark_layer(*head);
  md_->mark_volume(volume);
  md_->layers.emplace(head->id, std::move(head));
  UBLKVOL_TRY(commit_sync());
  return snapshot.id;
}

Status Store::Impl::delete_snapshot(SnapshotId id) {
  auto found = find_snapshot(id);
  if (!found.ok() || (*found)->hidden()) {
    return Error(ENOENT, "no snapshot with id " + std::to_string(id));
  }
  UBLKVOL_TRY(prologue());
  UBLKVOL_TRY(commit_sync());  // see delete_volume
  begin_collecting_frees();
  Layer& snapshot = **found;
  std::vector<Layer*> children = children_of(snapshot);
  if (children.empty()) {
    drop_layer(snapshot);
  } else if (children.size() == 1) {
    UBLKVOL_TRY(merge_into_child(snapshot, *children.front()));
  } else {
    // Clones (or several snapshots after a revert) still read through it:
    // keep it, hidden, until one child is left (collect_garbage merges then).
    snapshot.flags |= kLayerHidden;
    snapshot.name.clear();
    md_->mark_layer(snapshot);
  }
  UBLKVOL_TRY(collect_garbage());
  return commit_and_discard_freed();
}

Status Store::Impl::revert_volume(VolumeId id, SnapshotId snapshot_id) {
  auto volume_found = find_volume(id);
  if (!volume_found.ok()) {
    return volume_found.error();
  }
  auto snapshot_found = find_snapshot(snapshot_id);
  if (!snapshot_found.ok()) {
    return snapshot_found.error();
  }
  Volume& volume = **volume_found;
  Layer& snapshot = **snapshot_found;
  // One of the volume's own snapshots (also one off the head's chain: left
  // by an earlier revert, or made by adopt_as_snapshot), or an ancestor of
  // the head (a clone's origin).
  bool allowed = !snapshot.hidden() && snapshot.volume_id == id;
  for (Layer* l = volume.head->parent; l != nullptr; l = l->parent) {
    allowed |= l == &snapshot;
  }
  if (!allowed) {
    return Error(EINVAL, "snapshot " + std::to_string(snapshot_id) +
                             " is neither a snapshot of volume '" + volume.name +
                             "' nor an ancestor of it");
  }
  if (md_->layers.size() >= g_.max_layers + 1) {
    return Error(ENOSPC, "layer limit reached");
  }
  UBLKVOL_TRY(prologue());
  UBLKVOL_TRY(commit_sync());
  begin_collecting_frees();
  drop_layer(*volume.head);
  auto head = std::make_unique<Layer>();
  head->id = md_->next_layer_id++;
  head->parent_id = snapshot.id;
  head->parent = &snapshot;
  head->volume_id = id;
  head->size_bytes = volume.size_bytes;
  head->create_time = now_seconds();
  ++snapshot.children;
  volume.head_id = head->id;
  volume.head = head.get();
  md_->mark_ids();
  md_->mark_layer(*head);
  md_->mark_volume(volume);
  md_->layers.emplace(head->id, std::move(head));
  UBLKVOL_TRY(collect_garbage());
  return commit_and_discard_freed();
}

Result<VolumeId> Store::Impl::clone_snapshot(SnapshotId snapshot_id, std::string_view name) {
  UBLKVOL_TRY(validate_name("volume", name));
  auto found = find_snapshot(snapshot_id);
  if (!found.ok() || (*found)->hidden()) {
    return Error(ENOENT, "no snapshot with id " + std::to_string(snapshot_id));
  }
  UBLKVOL_TRY(check_volume_name_free(name));
  if (md_->volumes.size() >= g_.max_volumes || md_->layers.size() >= g_.max_layers) {
    return Error(ENOSPC, "the store already holds its maximum of volumes or layers");
  }
  UBLKVOL_TRY(prologue());
  Layer& snapshot = **found;
  auto head = std::make_unique<Layer>();
  head->id = md_->next_layer_id++;
  head->parent_id = snapshot.id;
  head->parent = &snapshot;
  head->size_bytes = snapshot.size_bytes;
  head->create_time = now_seconds();
  ++snapshot.children;
  return add_volume(name, std::move(head));
}

Status Store::Impl::rename_snapshot(SnapshotId id, std::string_view name) {
  UBLKVOL_TRY(validate_name("snapshot", name));
  auto found = find_snapshot(id);
  if (!found.ok() || (*found)->hidden()) {
    return Error(ENOENT, "no snapshot with id " + std::to_string(id));
  }
  Layer& snapshot = **found;
  for (auto& [layer_id, layer] : md_->layers) {
    if (layer_id != id && layer->is_snapshot() && !layer->hidden() &&
        layer->volume_id == snapshot.volume_id && snapshot.volume_id != 0 && layer->name == name) {
      return Error(EEXIST, "the volume already has a snapshot named '" + std::string(name) + "'");
    }
  }
  UBLKVOL_TRY(prologue());
  snapshot.name = std::string(name);
  md_->mark_layer(snapshot);
  return commit_sync();
}

Status Store::Impl::copy_blocks(uint32_t from_phys, uint32_t to_phys, const uint64_t (&mask)[4]) {
  copy_buffer_.resize(g_.extent_bytes());
  const uint32_t eb = g_.extent_blocks;
  for (uint32_t b = 0; b < eb;) {
    if (!((mask[b >> 6] >> (b & 63)) & 1)) {
      ++b;
      continue;
    }
    uint32_t end = b + 1;
    while (end < eb && ((mask[end >> 6] >> (end & 63)) & 1)) {
      ++end;
    }
    std::span<std::byte> buffer(copy_buffer_.data(), uint64_t{end - b} * kBlockSize);
    UBLKVOL_TRY(
        control_io(IoOp::kRead, g_.data_offset(from_phys, b), buffer.size(), buffer.data()));
    UBLKVOL_TRY(control_io(IoOp::kWrite, g_.data_offset(to_phys, b), buffer.size(), buffer.data()));
    b = end;
  }
  return ok_status();
}

// Folds `snapshot` into its only child: the child keeps its view (its own
// blocks win; the snapshot's blocks it lacked become its own) and takes the
// snapshot's parent. Extents only the snapshot had move over without any data
// I/O; where both have one, the snapshot's blocks the child lacks are copied
// into the child's extent - into blocks the child's committed state does not
// map, so a crash before the commit changes nothing visible.
Status Store::Impl::merge_into_child(Layer& snapshot, Layer& child) {
  struct Moved {
    uint32_t logical;
    uint32_t phys;
    uint64_t bits[4];
  };
  std::vector<Moved> moved;
  moved.reserve(snapshot.map.size());
  snapshot.map.for_each([&](uint32_t logical, ExtentEntry& entry) {
    Moved m{logical, entry.phys, {}};
    std::memcpy(m.bits, entry.bits, sizeof(m.bits));
    moved.push_back(m);
  });
  for (const Moved& m : moved) {
    ExtentEntry* target = child.map.find(m.logical);
    if (target == nullptr) {
      ExtentEntry* entry = child.map.insert(m.logical, m.phys);
      std::memcpy(entry->bits, m.bits, sizeof(entry->bits));
      child.mapped_blocks += entry->count();
      md_->mark_extent(child, m.logical, entry);
      continue;
    }
    uint64_t mask[4];
    bool any = false;
    for (int w = 0; w < 4; ++w) {
      mask[w] = m.bits[w] & ~target->bits[w];
      any |= mask[w] != 0;
    }
    if (any) {
      auto copied = copy_blocks(m.phys, target->phys, mask);
      if (!copied.ok()) {
        // In-memory maps are half merged: stop here; reopening recovers.
        const Error error =
            copied.error().with_context("merging snapshot " + std::to_string(snapshot.id));
        fail("copying blocks while merging snapshot " + std::to_string(snapshot.id),
             -error.errno_value());
        return error;
      }
      for (int w = 0; w < 4; ++w) {
        target->bits[w] |= mask[w];
        child.mapped_blocks += static_cast<uint64_t>(std::popcount(mask[w]));
      }
      md_->mark_extent(child, m.logical, target);
    }
    free_extent_later(m.phys);
  }
  snapshot.map.clear();
  child.parent = snapshot.parent;
  child.parent_id = snapshot.parent_id;
  md_->mark_layer(child);
  const uint32_t id = snapshot.id;
  md_->layers.erase(id);
  md_->mark_layer_deleted(id);
  return ok_status();
}

Status Store::Impl::collect_garbage() {
  bool changed = true;
  while (changed) {
    changed = false;
    for (auto& [id, layer] : md_->layers) {
      if (!layer->hidden()) {
        continue;
      }
      std::vector<Layer*> children = children_of(*layer);
      if (children.empty()) {
        drop_layer(*layer);
        changed = true;
        break;
      }
      if (children.size() == 1) {
        UBLKVOL_TRY(merge_into_child(*layer, *children.front()));
        changed = true;
        break;
      }
    }
  }
  return ok_status();
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

VolumeInfo Store::Impl::volume_info(const Volume& volume) const {
  VolumeInfo info;
  info.id = volume.id;
  info.name = volume.name;
  info.size_bytes = volume.size_bytes;
  info.generation = volume.generation;
  info.parent_snapshot = volume.head->parent_id;
  info.allocated_bytes = volume.head->map.size() * g_.extent_bytes();
  info.mapped_bytes = volume.head->mapped_blocks * kBlockSize;
  for (auto& [id, layer] : md_->layers) {
    if (layer->is_snapshot() && !layer->hidden() && layer->volume_id == volume.id) {
      ++info.snapshot_count;
    }
  }
  return info;
}

SnapshotInfo Store::Impl::snapshot_info(const Layer& layer) const {
  SnapshotInfo info;
  info.id = layer.id;
  info.volume = layer.volume_id;
  info.name = layer.name;
  info.parent = layer.parent_id;
  info.size_bytes = layer.size_bytes;
  info.create_time = layer.create_time;
  info.allocated_bytes = layer.map.size() * g_.extent_bytes();
  info.mapped_bytes = layer.mapped_blocks * kBlockSize;
  info.children = layer.children;
  info.hidden = layer.hidden();
  return info;
}

StoreStats Store::Impl::stats() const {
  StoreStats s;
  s.extent_bytes = g_.extent_bytes();
  s.total_extents = g_.extent_count;
  s.free_extents = free_count_;
  s.pending_free_extents = pending_frees_.size() + committing_frees_.size() + limbo_extents_;
  s.volumes = static_cast<uint32_t>(md_->volumes.size());
  s.layers = static_cast<uint32_t>(md_->layers.size());
  s.commits = commits_;
  s.mapping_commits = mapping_commits_;
  s.checkpoints = checkpoints_;
  s.journal_blocks_used = journal_pos_;
  s.journal_blocks = g_.journal_blocks;
  s.metadata_memory_bytes =
      md_->memory_bytes() + free_bits_.capacity() * sizeof(uint64_t) +
      (pending_frees_.capacity() + committing_frees_.capacity()) * sizeof(uint32_t);
  for (auto& [id, layer] : md_->layers) {
    s.mapped_extents += layer->map.size();
  }
  s.read_errors = read_errors_;
  s.write_errors = write_errors_;
  return s;
}

Status Store::Impl::health() const {
  if (!failed_) {
    return ok_status();
  }
  return Error(failure_errno_ != 0 ? failure_errno_ : EIO, failure_);
}

void Store::Impl::fail(const std::string& step, int error) {
  if (failed_) {
    return;  // keep the first cause: later failures are its consequences
  }
  failed_ = true;
  failure_errno_ = error < 0 ? -error : EIO;
  failure_ = std::string(device_.name()) + ": " + step + " failed (" +
             std::error_code(failure_errno_, std::generic_category()).message() +
             "); the store refuses writes and flushes until it is reopened";
  spdlog::error("dbs store {}", failure_);
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

std::vector<std::string> Store::Impl::check_memory() const {
  std::vector<std::string> problems;
  // Tree and counters: recompute into a scratch view and compare.
  for (auto& [id, layer] : md_->layers) {
    const std::string what = "layer " + std::to_string(id);
    if (layer->parent_id != (layer->parent ? layer->parent->id : 0)) {
      problems.push_back(what + ": parent pointer does not match parent id " +
                         std::to_string(layer->parent_id));
    }
    if (layer->parent_id != 0) {
      Layer* parent = md_->layer(layer->parent_id);
      if (parent == nullptr) {
        problems.push_back(what + ": parent " + std::to_string(layer->parent_id) + " is missing");
      } else if (!parent->is_snapshot()) {
        problems.push_back(what + ": parent " + std::to_string(layer->parent_id) +
                           " is not a snapshot");
      }
    }
    size_t steps = 0;
    for (const Layer* l = layer.get(); l != nullptr && steps <= md_->layers.size();
         l = md_->layer(l->parent_id)) {
      ++steps;
    }
    if (steps > md_->layers.size()) {
      problems.push_back(what + ": part of a parent cycle");
    }
    uint32_t children = 0;
    for (auto& [other_id, other] : md_->layers) {
      children += other->parent_id == id ? 1 : 0;
    }
    if (children != layer->children) {
      problems.push_back(what + ": child count " + std::to_string(layer->children) + " but " +
                         std::to_string(children) + " layers name it as parent");
    }
    if (layer->hidden() && !layer->is_snapshot()) {
      problems.push_back(what + ": hidden but not a snapshot");
    }
    if (layer->hidden() && children < 2) {
      problems.push_back(what + ": hidden snapshot with " + std::to_string(children) +
                         " children should have been merged or deleted");
    }
    if (!layer->is_snapshot()) {
      Volume* volume = md_->volume(layer->volume_id);
      if (volume == nullptr || volume->head != layer.get()) {
        problems.push_back(what + ": a volume head that no volume uses");
      }
    } else if (layer->volume_id != 0 && md_->volume(layer->volume_id) == nullptr) {
      problems.push_back(what + ": snapshot of volume " + std::to_string(layer->volume_id) +
                         " which does not exist");
    }
    uint64_t mapped = 0;
    const uint64_t layer_size = layer->size_bytes;
    layer->map.for_each([&](uint32_t logical, ExtentEntry& entry) {
      mapped += entry.count();
      if (entry.empty() && entry.inflight == 0) {
        problems.push_back(what + " logical extent " + std::to_string(logical) +
                           ": allocated extent " + std::to_string(entry.phys) + " holds no blocks");
      }
      if (uint64_t{logical} * g_.extent_bytes() >= layer_size) {
        problems.push_back(what + " logical extent " + std::to_string(logical) +
                           ": beyond the layer's size");
      }
      for (uint32_t b = g_.extent_blocks; b < kMaxExtentBlocks; ++b) {
        if (entry.test(b)) {
          problems.push_back(what + " logical extent " + std::to_string(logical) +
                             ": block bits beyond the extent size");
          break;
        }
      }
    });
    if (mapped != layer->mapped_blocks) {
      problems.push_back(what + ": mapped-block counter " + std::to_string(layer->mapped_blocks) +
                         " but the maps hold " + std::to_string(mapped));
    }
  }
  std::set<std::string_view> names;
  for (auto& [id, volume] : md_->volumes) {
    if (volume->head == nullptr || md_->layer(volume->head_id) != volume->head ||
        volume->head->is_snapshot() || volume->head->volume_id != id) {
      problems.push_back("volume " + std::to_string(id) + ": head layer " +
                         std::to_string(volume->head_id) + " is missing or not its head");
    } else if (volume->head->size_bytes != volume->size_bytes) {
      problems.push_back("volume " + std::to_string(id) + ": size differs from its head's");
    }
    if (!names.insert(volume->name).second) {
      problems.push_back("volume name '" + volume->name + "' is used twice");
    }
  }
  // Extents: each mapped at most once, never both mapped and free, never
  // allocated without a mapping (unless waiting for a commit to free it).
  std::vector<uint64_t> mapped((uint64_t{g_.extent_count} + 63) / 64, 0);
  for (auto& [id, layer] : md_->layers) {
    const uint32_t layer_id = id;
    layer->map.for_each([&](uint32_t logical, ExtentEntry& entry) {
      if (entry.phys >= g_.extent_count) {
        problems.push_back("layer " + std::to_string(layer_id) + " logical extent " +
                           std::to_string(logical) + ": physical extent " +
                           std::to_string(entry.phys) + " beyond the data region");
        return;
      }
      const uint64_t bit = uint64_t{1} << (entry.phys & 63);
      if (mapped[entry.phys >> 6] & bit) {
        problems.push_back("physical extent " + std::to_string(entry.phys) +
                           " is mapped more than once (again by layer " + std::to_string(layer_id) +
                           " logical extent " + std::to_string(logical) + ")");
      }
      mapped[entry.phys >> 6] |= bit;
    });
  }
  std::vector<uint64_t> pending(mapped.size(), 0);
  for (const auto* list : {&pending_frees_, &committing_frees_}) {
    for (uint32_t phys : *list) {
      if (phys < g_.extent_count) {
        pending[phys >> 6] |= uint64_t{1} << (phys & 63);
      }
    }
  }
  uint64_t free_count = 0;
  for (uint64_t phys = 0; phys < g_.extent_count; ++phys) {
    const uint64_t bit = uint64_t{1} << (phys & 63);
    const bool is_mapped = mapped[phys >> 6] & bit;
    const bool is_free = free_bits_[phys >> 6] & bit;
    const bool is_pending = pending[phys >> 6] & bit;
    free_count += is_free ? 1 : 0;
    if (is_mapped && is_free) {
      problems.push_back("physical extent " + std::to_string(phys) + " is mapped and marked free");
    } else if (is_mapped && is_pending) {
      problems.push_back("physical extent " + std::to_string(phys) +
                         " is mapped and waiting to be freed");
    } else if (!is_mapped && !is_free && !is_pending && limbo_extents_ == 0) {
      problems.push_back("physical extent " + std::to_string(phys) +
                         " is allocated but mapped by no layer (leaked)");
    }
  }
  if (free_count != free_count_) {
    problems.push_back("free extent counter " + std::to_string(free_count_) + " but " +
                       std::to_string(free_count) + " extents are marked free");
  }
  return problems;
}

std::vector<std::string> Store::Impl::check() {
  std::vector<std::string> problems;
  if (!failed_) {
    if (auto drained = drain(); !drained.ok()) {
      problems.push_back(drained.error().message());
      return problems;
    }
  }
  const std::string name(device_.name());
  // Superblocks.
  AlignedBuffer buffer;
  if (auto read = read_blocks(device_, 0, 2, buffer); !read.ok()) {
    problems.push_back(name + ": cannot read the superblocks: " + read.error().to_string());
  } else {
    for (uint32_t copy = 0; copy < 2; ++copy) {
      auto decoded =
          decode_superblock({buffer.data() + size_t{copy} * kBlockSize, kBlockSize}, copy);
      if (!decoded.ok()) {
        problems.push_back(decoded.error().message());
      } else if (decoded->store_id != g_.store_id || decoded->extent_count != g_.extent_count ||
                 decoded->data_start != g_.data_start) {
        problems.push_back("superblock copy " + std::to_string(copy) +
                           " describes a different store than the one open");
      }
    }
  }
  // The committed metadata on the device: active checkpoint + journal chain.
  const int area = active_checkpoint_;
  auto checkpoint =
      read_run(device_, g_, g_.checkpoint_start[area],
               g_.checkpoint_start[area] + g_.checkpoint_blocks, MetaType::kCheckpoint);
  if (!checkpoint.ok()) {
    problems.push_back(std::string("active checkpoint (area ") + (area == 0 ? "A" : "B") +
                       "): " + checkpoint.error().message());
  } else if (checkpoint->header.epoch != epoch_) {
    problems.push_back("active checkpoint has epoch " + std::to_string(checkpoint->header.epoch) +
                       ", expected " + std::to_string(epoch_));
  } else {
    uint64_t pos = 0;
    uint64_t seq = checkpoint->header.seq;
    while (pos < journal_pos_) {
      auto run = read_run(device_, g_, g_.journal_start + pos, g_.journal_start + g_.journal_blocks,
                          MetaType::kJournal);
      if (!run.ok()) {
        problems.push_back("journal block " + std::to_string(pos) + ": " + run.error().message());
        break;
      }
      if (run->header.epoch != epoch_ || run->header.seq != seq + 1) {
        problems.push_back("journal block " + std::to_string(pos) +
                           ": commit out of sequence (epoch " + std::to_string(run->header.epoch) +
                           ", seq " + std::to_string(run->header.seq) + ")");
        break;
      }
      seq = run->header.seq;
      pos += run->header.count;
    }
    if (problems.empty() && seq != seq_) {
      problems.push_back("journal ends at commit " + std::to_string(seq) + ", expected " +
                         std::to_string(seq_));
    }
  }
  auto memory = check_memory();
  problems.insert(problems.end(), memory.begin(), memory.end());
  return problems;
}

}  // namespace ublkvol::dbs
