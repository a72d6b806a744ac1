// DbsReplicaStore: a replica as a DBS volume (dbs_replica_store.h).
#include "ublkvol/engine/dbs_replica_store.h"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <new>

#include "ublkvol/common/crc32c.h"

#include "replica_store_util.h"

namespace ublkvol::engine {

namespace {

constexpr uint64_t kBlock = 4096;
// Format 2 ("...M2") appends replica_id and in_sync; its CRC covers the
// whole struct. Format 1 ("...M1", CRC over the struct without them) still
// opens, as "no id, in-sync set unknown", and is rewritten as format 2.
constexpr char kMagic[8] = {'U', 'B', 'V', 'D', 'B', 'S', 'M', '2'};
constexpr char kMagicNoInSync[8] = {'U', 'B', 'V', 'D', 'B', 'S', 'M', '1'};

// The metadata volume's one block.
struct MetaBlock {
  char magic[8];
  uint32_t crc;  // CRC32C of the struct with crc = 0 (format 1: up to replica_id)
  uint32_t flags;
  uint64_t volume_uuid;
  uint64_t generation;
  uint64_t history[kGenerationHistory];
  uint64_t bitmap_base;
  uint64_t rebuild_generation;
  uint64_t rebuild_watermark;
  // Format 2 on.
  uint64_t replica_id;
  uint64_t in_sync[kInSyncSetSize];
};
constexpr size_t kMetaBlockV1Bytes = offsetof(MetaBlock, replica_id);
constexpr uint32_t kFlagFresh = 1;
constexpr uint32_t kFlagRebuilding = 2;

std::string meta_volume_name(const std::string& name) { return name + ".engine-meta"; }

using detail::AlignedBytes;
AlignedBytes aligned_block() { return detail::aligned_bytes(kBlock, kBlock); }

void encode(const ReplicaMeta& m, std::byte* block) {
  MetaBlock b{};
  std::memcpy(b.magic, kMagic, sizeof(kMagic));
  b.flags = (m.fresh ? kFlagFresh : 0U) | (m.rebuilding ? kFlagRebuilding : 0U);
  b.volume_uuid = m.volume_uuid;
  b.generation = m.generation;
  std::copy(m.history.begin(), m.history.end(), b.history);
  b.bitmap_base = m.bitmap_base;
  b.rebuild_generation = m.rebuild_generation;
  b.rebuild_watermark = m.rebuild_watermark;
  b.replica_id = m.replica_id;
  std::copy(m.in_sync.begin(), m.in_sync.end(), b.in_sync);
  b.crc = crc32c(&b, sizeof(b));
  std::memset(block, 0, kBlock);
  std::memcpy(block, &b, sizeof(b));
}

bool decode(const std::byte* block, ReplicaMeta& m) {
  MetaBlock b{};
  std::memcpy(&b, block, sizeof(b));
  uint32_t crc = b.crc;
  b.crc = 0;
  const bool v1 = std::memcmp(b.magic, kMagicNoInSync, sizeof(kMagicNoInSync)) == 0;
  if (!v1 && std::memcmp(b.magic, kMagic, sizeof(kMagic)) != 0) {
    return false;
  }
  if (crc32c(&b, v1 ? kMetaBlockV1Bytes : sizeof(b)) != crc) {
    return false;
  }
  m.fresh = (b.flags & kFlagFresh) != 0;
  m.rebuilding = (b.flags & kFlagRebuilding) != 0;
  m.volume_uuid = b.volume_uuid;
  m.generation = b.generation;
  std::copy(std::begin(b.history), std::end(b.history), m.history.begin());
  m.bitmap_base = b.bitmap_base;
  m.rebuild_generation = b.rebuild_generation;
  m.rebuild_watermark = b.rebuild_watermark;
  if (!v1) {
    m.replica_id = b.replica_id;
    std::copy(std::begin(b.in_sync), std::end(b.in_sync), m.in_sync.begin());
  }
  return true;
}

dbs::StoreOp store_op(ReplicaOp op) {
  switch (op) {
    case ReplicaOp::kRead:
      return dbs::StoreOp::kRead;
    case ReplicaOp::kWrite:
      return dbs::StoreOp::kWrite;
    case ReplicaOp::kFlush:
      return dbs::StoreOp::kFlush;
    case ReplicaOp::kDiscard:
      return dbs::StoreOp::kDiscard;
    case ReplicaOp::kWriteZeroes:
      return dbs::StoreOp::kWriteZeroes;
  }
  return dbs::StoreOp::kRead;
}

static_assert(sizeof(dbs::StoreIo) <= kReplicaIoStoreScratchBytes);

dbs::StoreIo& store_io(ReplicaIo& io) {
  return *std::launder(reinterpret_cast<dbs::StoreIo*>(io.store_scratch));
}

using detail::IoList;

}  // namespace

struct DbsReplicaStore::Impl {
  dbs::Store* store = nullptr;
  std::string name;
  std::string display;
  dbs::VolumeId volume = 0;
  dbs::VolumeId meta_volume = 0;
  uint64_t size = 0;
  uint64_t region = 0;
  ReplicaMeta meta;
  unsigned in_flight = 0;
  // Bits set in DBS memory; committed[r] once a commit made them durable.
  std::vector<uint8_t> marked;
  std::vector<uint8_t> committed;
  // Group commit of dirty bits through a FLUSH StoreIo.
  dbs::StoreIo commit_io;
  bool commit_in_flight = false;
  std::vector<uint64_t> in_commit;    // regions the flush in flight commits
  std::vector<uint64_t> next_commit;  // regions the next flush commits
  IoList waiting_this;
  IoList waiting_next;
  IoList local_done;

  static void on_data_complete(dbs::StoreIo& sio, int result) {
    auto& io = *static_cast<ReplicaIo*>(sio.user_data);
    auto* self = reinterpret_cast<Impl*>(io.store_next);
    io.store_next = nullptr;
    io.result = result;
    --self->in_flight;
    io.on_complete(io, result);
  }

  void issue(ReplicaIo& io) {
    io.store_next = reinterpret_cast<ReplicaIo*>(this);
    store->submit(store_io(io));
  }

  // True if every region of the range is durably marked; otherwise marks the
  // new ones and returns false (the caller waits for a commit).
  bool ensure_marked(ReplicaIo& io, bool& needs_this_commit) {
    uint64_t first = io.offset / region;
    uint64_t last = (io.offset + io.length - 1) / region;
    bool durable = true;
    needs_this_commit = true;
    for (uint64_t r = first; r <= last; ++r) {
      if (committed[r] != 0) {
        continue;
      }
      durable = false;
      if (marked[r] == 0) {
        marked[r] = 1;
        (void)store->mark_dirty(volume, r * region, region);
        next_commit.push_back(r);
        needs_this_commit = false;
      } else if (std::find(in_commit.begin(), in_commit.end(), r) == in_commit.end()) {
        needs_this_commit = false;  // marked, waiting for the next commit
      }
    }
    return durable;
  }

  void start_commit() {
    if (commit_in_flight || waiting_next.empty()) {
      return;
    }
    waiting_this = waiting_next;
    waiting_next = {};
    in_commit.swap(next_commit);
    next_commit.clear();
    commit_io = dbs::StoreIo{};
    commit_io.op = dbs::StoreOp::kFlush;
    commit_io.volume = volume;
    commit_io.user_data = this;
    commit_io.on_complete = &Impl::on_commit_complete;
    commit_in_flight = true;
    store->submit(commit_io);
  }

  static void on_commit_complete(dbs::StoreIo& sio, int result) {
    auto* self = static_cast<Impl*>(sio.user_data);
    self->commit_in_flight = false;
    if (result >= 0) {
      for (uint64_t r : self->in_commit) {
        self->committed[r] = 1;
      }
    } else {
      // Not durable: the next commit retries them.
      self->next_commit.insert(self->next_commit.end(), self->in_commit.begin(),
                               self->in_commit.end());
    }
    self->in_commit.clear();
    ReplicaIo* io = self->waiting_this.take_all();
    while (io != nullptr) {
      ReplicaIo* next = io->store_next;
      if (result < 0) {
        io->result = result;
        self->local_done.push(*io);
      } else {
        self->issue(*io);
      }
      io = next;
    }
    self->start_commit();
  }

  Status load_meta() {
    AlignedBytes block = aligned_block();
    UBLKVOL_TRY(store->read(meta_volume, 0, {block.get(), kBlock}));
    if (!decode(block.get(), meta)) {
      return Error(EUCLEAN, display + ": replica metadata block is corrupt");
    }
    return ok_status();
  }
};

Status create_dbs_replica(dbs::Store& store, const std::string& name, uint64_t size_bytes) {
  auto volume = store.create_volume(name, size_bytes);
  if (!volume.ok()) {
    return volume.error().with_context("creating replica " + name);
  }
  auto meta_volume = store.create_volume(meta_volume_name(name), kBlock);
  if (!meta_volume.ok()) {
    return meta_volume.error().with_context("creating replica " + name);
  }
  AlignedBytes block = aligned_block();
  encode(ReplicaMeta{}, block.get());
  UBLKVOL_TRY(store.write(*meta_volume, 0, {block.get(), kBlock}));
  return store.commit();
}

Result<std::unique_ptr<DbsReplicaStore>> open_dbs_replica(dbs::Store& store,
                                                          const std::string& name) {
  auto impl = std::make_unique<DbsReplicaStore::Impl>();
  impl->store = &store;
  impl->name = name;
  impl->display = "dbs(" + name + ")";
  auto volume = store.find_volume(name);
  if (!volume.ok()) {
    return volume.error().with_context("opening replica " + name);
  }
  auto meta_volume = store.find_volume(meta_volume_name(name));
  if (!meta_volume.ok()) {
    return meta_volume.error().with_context("opening replica " + name + " (no metadata volume)");
  }
  impl->volume = *volume;
  impl->meta_volume = *meta_volume;
  auto info = store.volume_info(*volume);
  if (!info.ok()) {
    return info.error();
  }
  impl->size = info->size_bytes;
  auto region = store.dirty_region_bytes(*volume);
  if (!region.ok()) {
    return region.error();
  }
  impl->region = *region;
  UBLKVOL_TRY(impl->load_meta());
  uint64_t regions = (impl->size + impl->region - 1) / impl->region;
  impl->marked.assign(regions, 0);
  auto bits = store.dirty_bitmap(*volume);
  if (!bits.ok()) {
    return bits.error();
  }
  for (uint64_t r = 0; r < regions; ++r) {
    impl->marked[r] = static_cast<uint8_t>(((*bits)[r / 64] >> (r % 64)) & 1U);
  }
  // Bits present at open were committed (that is what open recovered).
  impl->committed = impl->marked;
  return std::unique_ptr<DbsReplicaStore>(new DbsReplicaStore(std::move(impl)));
}

DbsReplicaStore::DbsReplicaStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DbsReplicaStore::~DbsReplicaStore() = default;

std::string_view DbsReplicaStore::name() const { return impl_->display; }
uint64_t DbsReplicaStore::size_bytes() const { return impl_->size; }
unsigned DbsReplicaStore::in_flight() const { return impl_->in_flight; }
int DbsReplicaStore::completion_fd() const { return impl_->store->completion_fd(); }
const ReplicaMeta& DbsReplicaStore::meta() const { return impl_->meta; }
uint64_t DbsReplicaStore::region_bytes() const { return impl_->region; }
void DbsReplicaStore::kick() { impl_->store->kick(); }

void DbsReplicaStore::submit(ReplicaIo& io) {
  Impl& s = *impl_;
  ++s.in_flight;
  auto* sio = ::new (static_cast<void*>(io.store_scratch)) dbs::StoreIo{};
  sio->op = store_op(io.op);
  sio->fua = io.fua;
  sio->volume = s.volume;
  sio->offset = io.offset;
  sio->length = io.length;
  sio->buffer = io.buffer;
  sio->user_data = &io;
  sio->on_complete = &Impl::on_data_complete;
  if (detail::is_mutating(io.op) && !io.untracked && io.length > 0 &&
      io.offset + io.length <= s.size) {
    bool this_commit = false;
    if (!s.ensure_marked(io, this_commit)) {
      if (this_commit && s.commit_in_flight) {
        s.waiting_this.push(io);
      } else {
        s.waiting_next.push(io);
        s.start_commit();
      }
      return;
    }
  }
  s.issue(io);
}

unsigned DbsReplicaStore::poll(bool wait) {
  Impl& s = *impl_;
  return detail::complete_local_then_poll(s.local_done, s.in_flight, wait,
                                          [&](bool w) { s.store->poll(w); });
}

Status DbsReplicaStore::write_meta(const ReplicaMeta& meta) {
  Impl& s = *impl_;
  AlignedBytes block = aligned_block();
  encode(meta, block.get());
  UBLKVOL_TRY(s.store->write(s.meta_volume, 0, {block.get(), kBlock}));
  UBLKVOL_TRY(s.store->set_generation(s.volume, meta.generation));
  Status st = s.store->commit();
  if (!st.ok()) {
    return st.error().with_context(s.display + ": writing replica metadata");
  }
  s.meta = meta;
  return ok_status();
}

std::vector<uint8_t> DbsReplicaStore::dirty_regions() const { return impl_->marked; }

Status DbsReplicaStore::clear_dirty() {
  Impl& s = *impl_;
  while (s.commit_in_flight) {
    s.store->poll(true);
  }
  UBLKVOL_TRY(s.store->clear_dirty(s.volume, 0, s.size));
  ReplicaMeta m = s.meta;
  m.bitmap_base = m.generation;
  // One commit makes the cleared bits and the new base durable together.
  UBLKVOL_TRY(write_meta(m));
  std::fill(s.marked.begin(), s.marked.end(), 0);
  std::fill(s.committed.begin(), s.committed.end(), 0);
  return ok_status();
}

Status DbsReplicaStore::create_snapshot(std::string_view snapshot) {
  auto id = impl_->store->create_snapshot(impl_->volume, snapshot);
  if (!id.ok()) {
    return id.error();
  }
  return ok_status();
}

Status DbsReplicaStore::delete_snapshot(std::string_view snapshot) {
  auto id = impl_->store->find_snapshot(impl_->volume, snapshot);
  if (!id.ok()) {
    return id.error();
  }
  return impl_->store->delete_snapshot(*id);
}

Status DbsReplicaStore::clone_snapshot(std::string_view snapshot, std::string_view clone,
                                       const ReplicaMeta& clone_meta) {
  dbs::Store& store = *impl_->store;
  auto id = store.find_snapshot(impl_->volume, snapshot);
  if (!id.ok()) {
    return id.error();
  }
  std::string clone_name(clone);
  auto volume = store.clone_snapshot(*id, clone_name);
  if (!volume.ok()) {
    return volume.error().with_context(impl_->display + ": cloning " + std::string(snapshot));
  }
  auto meta_volume = store.create_volume(meta_volume_name(clone_name), kBlock);
  if (!meta_volume.ok()) {
    return meta_volume.error().with_context(impl_->display + ": clone " + clone_name);
  }
  AlignedBytes block = aligned_block();
  encode(clone_meta, block.get());
  UBLKVOL_TRY(store.write(*meta_volume, 0, {block.get(), kBlock}));
  UBLKVOL_TRY(store.set_generation(*volume, clone_meta.generation));
  return store.commit();
}

Status DbsReplicaStore::revert_snapshot(std::string_view snapshot) {
  auto id = impl_->store->find_snapshot(impl_->volume, snapshot);
  if (!id.ok()) {
    return id.error();
  }
  return impl_->store->revert_volume(impl_->volume, *id);
}

std::vector<std::string> DbsReplicaStore::list_snapshots() const {
  std::vector<std::string> names;
  for (const dbs::SnapshotInfo& s : impl_->store->list_snapshots(impl_->volume)) {
    names.push_back(s.name);
  }
  return names;
}

Status DbsReplicaStore::delete_clone(std::string_view clone) {
  dbs::Store& store = *impl_->store;
  std::string clone_name(clone);
  Status result = ok_status();
  for (const std::string& n : {clone_name, meta_volume_name(clone_name)}) {
    auto id = store.find_volume(n);
    if (!id.ok()) {
      continue;  // not made (or already deleted)
    }
    Status st = store.delete_volume(*id);
    if (!st.ok() && result.ok()) {
      result = st.error().with_context(impl_->display + ": deleting clone " + n);
    }
  }
  return result;
}

Status DbsReplicaStore::mark_all_dirty() {
  Impl& s = *impl_;
  while (s.commit_in_flight) {
    s.store->poll(true);
  }
  UBLKVOL_TRY(s.store->mark_dirty(s.volume, 0, s.size));
  Status st = s.store->commit();
  if (!st.ok()) {
    return st.error().with_context(s.display + ": marking every region dirty");
  }
  std::fill(s.marked.begin(), s.marked.end(), 1);
  std::fill(s.committed.begin(), s.committed.end(), 1);
  return ok_status();
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> DbsReplicaStore::mapped_ranges() const {
  return impl_->store->mapped_ranges(impl_->volume);
}

Result<ReplicaStore::Space> DbsReplicaStore::space() const {
  dbs::StoreStats st = impl_->store->stats();
  Space sp;
  // Extents freed but not yet committed become allocatable at the next
  // commit, long before a rebuild could need them.
  sp.free_bytes = (st.free_extents + st.pending_free_extents) * st.extent_bytes;
  sp.unit_bytes = st.extent_bytes;
  return sp;
}

}  // namespace ublkvol::engine
