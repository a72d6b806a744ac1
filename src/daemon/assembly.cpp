// The stack the daemon runs, assembled in one place: a store is a device
// (FileDevice, O_DIRECT io_uring) -> dbs::Store (checked) -> StoreThread; a
// volume is one DbsReplicaStore per replica -> engine::ReplicatedVolume ->
// FrontendVolume (-> ublk::UblkDevice when exposed, registry.cpp). Opening a
// store is open_store(), building a volume open_slot() + open_engine().
#include <algorithm>
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>

#include "ublkvol/stack/store_stack.h"

#include "registry.h"
#include "scrub.h"

namespace ublkvol::daemon {

// Opens the device and the store on this thread, checks it, then hands it
// to a new store thread.
// `opened`: the device if the caller has it open already (store.add just
// formatted it). Block devices are opened O_EXCL, and the kernel drops that
// claim only when the io_uring that registered the fd is torn down -
// asynchronously - so a close and re-open right after can fail with EBUSY.
dbs::FileDeviceOptions Registry::device_options() const {
  dbs::FileDeviceOptions options;
  options.queue_depth = 256;
  options.submit_batch = config.store_submit_batch;
  return options;
}

dbs::OpenOptions Registry::store_open_options() const {
  dbs::OpenOptions options;
  options.mapping_data_order = config.store_data_order == "fua"
                                   ? dbs::OpenOptions::MappingDataOrder::kFuaData
                                   : dbs::OpenOptions::MappingDataOrder::kFlushBeforeRecord;
  return options;
}

// The store (other than `self`) that `entry` is the same file or the same
// DBS store (superblock uuid) as, with the reason; "" if none.
std::string Registry::same_store(const std::optional<FileIdentity>& identity,
                                 const std::string& uuid, const StoreEntry* self) const {
  for (const auto& s : stores) {
    if (s.get() == self) {
      continue;
    }
    if (identity && s->identity() == identity) {
      return "is the same file as store " + named(s->name) + " (" + s->path + ")";
    }
    if (!uuid.empty() && s->uuid == uuid) {
      return "holds DBS store uuid " + uuid + ", the same as store " + named(s->name) + " (" +
             s->path + "): a copy of that store's image";
    }
  }
  return "";
}

Status Registry::open_store(StoreEntry& entry, std::unique_ptr<dbs::FileDevice> opened) const {
  // The watch fd is opened before the device and compared after, so both
  // name one file even if the path is swapped meanwhile.
  auto watch = StoreWatch::open(entry.path);
  if (!watch.ok()) {
    return watch.error().with_context("store " + named(entry.name));
  }
  Result<std::unique_ptr<dbs::FileDevice>> device =
      opened ? Result<std::unique_ptr<dbs::FileDevice>>(std::move(opened))
             : dbs::FileDevice::open(entry.path, device_options());
  if (!device.ok()) {
    return device.error().with_context("store " + named(entry.name));
  }
  if (std::string moved = watch->check(entry.path); !moved.empty()) {
    return Error(EBUSY, "store " + named(entry.name) + ": " + moved);
  }
  UBLKVOL_ASSIGN_OR_RETURN(auto store, stack::open_checked_store(
                                           **device, store_open_options(),
                                           "store " + named(entry.name) + " (" + entry.path + ")"));
  auto uuid = read_store_uuid(**device);
  if (!uuid.ok()) {
    return uuid.error().with_context("store " + named(entry.name));
  }
  if (!entry.uuid.empty() && entry.uuid != *uuid) {
    // State files before store identity kept a random id here.
    spdlog::warn("store '{}': state.json recorded uuid {}, its superblock says {}; using {}",
                 entry.name, entry.uuid, *uuid, *uuid);
  }
  entry.uuid = *uuid;
  if (std::string same = same_store(watch->identity(), entry.uuid, &entry); !same.empty()) {
    return Error(EEXIST, "store " + named(entry.name) + " (" + entry.path + ") " + same);
  }
  UBLKVOL_ASSIGN_OR_RETURN(entry.thread,
                           engine::StoreThread::start(store_thread_options(entry.name, &entry)));
  entry.watch = std::move(*watch);
  entry.device = std::move(*device);
  entry.store = std::move(store);
  entry.error.clear();
  return ok_status();
}

engine::StoreThreadOptions Registry::store_thread_options(const std::string& name,
                                                          const StoreEntry* entry) const {
  engine::StoreThreadOptions options;
  options.name = "store-" + name.substr(0, 8);
  if (reactors) {
    // Store i (its place in the registry; a new one goes last) on reactor
    // i mod N: stores spread evenly over the reactors.
    auto it =
        std::find_if(stores.begin(), stores.end(),
                     [entry](const std::unique_ptr<StoreEntry>& s) { return s.get() == entry; });
    const auto index = static_cast<unsigned>(it - stores.begin());
    options.reactor = &reactors->for_store(index);
  }
  return options;
}

engine::ReplicatedVolumeOptions Registry::engine_options(const VolumeEntry& v) const {
  engine::ReplicatedVolumeOptions options;
  options.name = v.name;
  // Queues 0..engine_queues-1 serve a ublk device; the last one an NBD
  // export (exports.cpp), which no device ever uses.
  options.queues = engine_queues + 1;
  options.queue_depth = config.queue_depth;
  options.min_replicas = v.min_replicas;
  options.io_deadline = std::chrono::milliseconds(config.io_deadline_ms);
  options.rebuild_bytes_per_second = config.rebuild_mb_per_s << 20U;
  options.rebuild_busy_percent = config.rebuild_busy_percent;
  apply_scrub_config(config, options);
  return options;
}

// Opens the replica `v.name` in the slot's store and attaches it.
Status Registry::open_slot(VolumeEntry& v, ReplicaSlot& slot, const std::string& replica_name) {
  StoreEntry& s = *slot.store;
  auto replica = stack::open_replica(*s.thread, *s.store, replica_name);
  if (!replica.ok()) {
    return replica.error().with_context("volume " + named(v.name) + " on store " + named(s.name));
  }
  slot.replica = std::move(*replica);
  Status attached = s.thread->attach(*slot.replica);
  if (!attached.ok()) {
    close_slot(slot);
    return attached.error();
  }
  return ok_status();
}

// Detaches the slot's replica from its thread and destroys it there.
void Registry::close_slot(ReplicaSlot& slot) {
  if (slot.export_allocation) {
    slot.export_allocation->invalidate();  // waits for a BLOCK_STATUS query on it
    slot.export_allocation.reset();
  }
  if (slot.replica && slot.store != nullptr && slot.store->thread) {
    (void)slot.store->thread->detach(*slot.replica);
    (void)slot.store->thread->call([&]() {
      slot.replica.reset();
      return ok_status();
    });
  }
  slot.replica.reset();
  if (slot.remote) {
    slot.remote->release();  // the record stays: see replica.remove for dropping it
  }
}

engine::ReplicaBinding StoreEntry::binding(engine::ReplicaStore* replica) const {
  // A DBS store on a FileDevice turns window addresses of its thread into
  // READ_FIXED / WRITE_FIXED (docs/zero-copy.md); a MemoryDevice would not.
  const bool fixed = dynamic_cast<const dbs::FileDevice*>(device.get()) != nullptr;
  return {replica, thread.get(), fixed};
}

Status Registry::open_engine(VolumeEntry& v) {
  // The engine numbers its replicas by binding order: close the gaps a
  // removed replica left, so a slot's index is the engine's index again
  // (else, after a reopen - resize, volume open - index-based commands and
  // volume show would act on the next replica).
  size_t next = 0;
  for (size_t i = 0; i < v.slots.size(); ++i) {
    if (!v.slots[i].used()) {
      continue;
    }
    if (i != next) {
      v.slots[next] = std::move(v.slots[i]);
      v.slots[i] = ReplicaSlot{};
    }
    ++next;
  }
  std::vector<engine::ReplicaBinding> bindings;
  for (auto& slot : v.slots) {
    if (slot.store != nullptr) {
      bindings.push_back(slot.store->binding(slot.replica.get()));
    } else if (slot.remote) {
      bindings.push_back(slot.remote->binding());
    }
  }
  engine::ReplicatedVolumeOptions options = engine_options(v);
  options.min_replicas = std::min<unsigned>(v.min_replicas, bindings.size());
  options.accept_missing_in_sync = v.accept_missing_in_sync;
  UBLKVOL_ASSIGN_OR_RETURN(v.engine, stack::open_volume(options, std::move(bindings)));
  v.frontend = std::make_unique<FrontendVolume>(*v.engine, config.write_through);
  // Remote replicas: from now on their keepers reconnect them (remote_replicas.h).
  for (unsigned i = 0; i < v.slots.size(); ++i) {
    if (v.slots[i].remote) {
      start_keeper(*v.slots[i].remote, *v.engine, i);
    }
  }
  v.error.clear();
  return ok_status();
}

void Registry::close_volume(VolumeEntry& v) {
  stop_export(v);  // its thread has a queue of the engine
  for (auto& slot : v.slots) {
    if (slot.remote) {
      slot.remote->stop();  // no reconnect into an engine that closes
    }
  }
  if (v.engine) {
    Status closed = v.engine->close();
    if (!closed.ok()) {
      spdlog::error("volume '{}': close: {}", v.name, closed.error().message());
    }
  }
  v.frontend.reset();
  v.engine.reset();
  for (auto& slot : v.slots) {
    close_slot(slot);
  }
}

// Opens a volume whose replicas exist in `slot_stores` (by index), adds it.
Result<VolumeEntry*> Registry::open_new_volume(const std::string& name, uint64_t size,
                                               unsigned min_replicas,
                                               const std::vector<StoreEntry*>& slot_stores,
                                               const std::vector<RemoteReplicaRecord>& remotes) {
  auto v = std::make_unique<VolumeEntry>();
  v->name = name;
  v->size_bytes = size;
  v->min_replicas = min_replicas;
  for (size_t i = 0; i < slot_stores.size(); ++i) {
    v->slots[i].store = slot_stores[i];
    Status opened = open_slot(*v, v->slots[i], name);
    if (!opened.ok()) {
      close_volume(*v);
      return opened.error();
    }
  }
  for (size_t i = 0; i < remotes.size(); ++i) {
    ReplicaSlot& slot = v->slots[slot_stores.size() + i];
    auto region = local_region_bytes(*v);
    auto replica = region.ok() ? create_remote_replica(remotes[i], name, size, *region)
                               : Result<std::unique_ptr<nbd::RemoteReplica>>(region.error());
    if (!replica.ok()) {
      close_volume(*v);
      return replica.error();
    }
    slot.remote = std::make_unique<RemoteSlot>();
    slot.remote->record = remotes[i];
    slot.remote->opened = std::move(*replica);
  }
  Status opened = open_engine(*v);  // its errors name the volume (stack::open_volume)
  if (!opened.ok()) {
    close_volume(*v);
    return opened.error();
  }
  VolumeEntry* added = v.get();
  volumes.push_back(std::move(v));
  return added;
}

// Opens the replicas and the engine of a closed volume (its slots keep
// their stores). On failure the volume stays closed with `error` set.
Status Registry::reopen_volume(VolumeEntry& volume) {
  Status opened = ok_status();
  for (auto& slot : volume.slots) {
    if (slot.store != nullptr && opened.ok()) {
      opened = open_slot(volume, slot, volume.name);
    }
  }
  if (opened.ok()) {
    opened = open_engine(volume);
  }
  if (!opened.ok()) {
    close_volume(volume);
    volume.error = opened.error().message();
    spdlog::error("volume '{}' cannot be reopened: {}", volume.name, volume.error);
  }
  return opened;
}

Result<uint64_t> Registry::local_region_bytes(VolumeEntry& v) {
  for (auto& slot : v.slots) {
    if (slot.store != nullptr && slot.replica && slot.store->thread) {
      uint64_t region = 0;
      UBLKVOL_TRY(slot.store->thread->call([&]() {
        region = slot.replica->region_bytes();
        return ok_status();
      }));
      return region;
    }
  }
  return Error(EINVAL, "volume " + named(v.name) +
                           " has no open local replica to take the dirty-region size from; a "
                           "remote replica needs one");
}

Result<StoreEntry*> Registry::add_open_store(const std::string& name, const std::string& path,
                                             std::unique_ptr<dbs::BlockDevice> device) {
  if (find_store(name) != nullptr) {
    return Error(EEXIST, "store " + named(name) + " already exists");
  }
  auto entry = std::make_unique<StoreEntry>();
  entry->name = name;
  entry->path = path;
  UBLKVOL_ASSIGN_OR_RETURN(
      auto store, stack::open_checked_store(*device, store_open_options(), "store " + named(name)));
  UBLKVOL_ASSIGN_OR_RETURN(entry->uuid, read_store_uuid(*device));
  if (std::string same = same_store(std::nullopt, entry->uuid, nullptr); !same.empty()) {
    return Error(EEXIST, "store " + named(name) + " " + same);
  }
  UBLKVOL_ASSIGN_OR_RETURN(entry->thread,
                           engine::StoreThread::start(store_thread_options(name, nullptr)));
  entry->device = std::move(device);
  entry->store = std::move(store);
  StoreEntry* added = entry.get();
  stores.push_back(std::move(entry));
  UBLKVOL_TRY(save());
  return added;
}

}  // namespace ublkvol::daemon
