// replica.add with a URI: a replica on an NBD export joins a running volume
// (remote_replicas.h, docs/control-protocol.md).
#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>

#include "handlers.h"
#include "remote_replicas.h"

namespace ublkvol::daemon {

Result<Json> add_remote_replica(Registry& r, const std::string& volume,
                                const RemoteReplicaRecord& record) {
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(volume));
  UBLKVOL_TRY(check_uri_unused(r, record.uri));
  if (std::all_of(v->slots.begin(), v->slots.end(),
                  [](const ReplicaSlot& slot) { return slot.used(); })) {
    return invalid("volume " + named(volume) + " already has " +
                   std::to_string(engine::kMaxReplicas) + " replicas");
  }
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t region, Registry::local_region_bytes(*v));
  // Formats the export: whatever it held is replaced by a fresh replica,
  // which the engine then rebuilds in full.
  UBLKVOL_ASSIGN_OR_RETURN(
      auto replica, create_remote_replica(record, volume, v->engine->info().size_bytes, region));
  ReplicaSlot slot;
  slot.remote = std::make_unique<RemoteSlot>();
  slot.remote->record = record;
  slot.remote->opened = std::move(replica);
  auto index = v->engine->add_replica(slot.remote->binding());
  if (!index.ok()) {
    return index.error();  // `slot` closes the replica
  }
  start_keeper(*slot.remote, *v->engine, *index);
  // A running export's BLOCK_STATUS read the local replicas' mappings only:
  // from now on it reports everything as data (exports.h).
  for (auto& other : v->slots) {
    if (other.export_allocation) {
      other.export_allocation->invalidate();
    }
  }
  v->slots[*index] = std::move(slot);
  spdlog::info("volume '{}': replica {} added on remote {} (rebuilding)", volume, *index,
               record.uri);
  UBLKVOL_TRY(r.save());
  return Json{{"index", *index}};
}

}  // namespace ublkvol::daemon

namespace ublkvol::daemon {

// replica.replace: replica `index` gives way to a new one on an NBD export.
// Everything that can be refused (URI, reachability, size) is checked and
// the export formatted before the old replica leaves; the engine's
// remove_replica() refuses (busy) when too few in-sync replicas would stay.
Result<Json> replica_replace(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t index, p.uint("index"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto remote, parse_remote_params(p, "uri", /*required=*/true));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(check_remote_params(*remote, p));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(volume));
  if (index >= engine::kMaxReplicas || !v->slots[index].used()) {
    return Error(ENOENT, "volume " + named(volume) + " has no replica " + std::to_string(index));
  }
  UBLKVOL_TRY(check_uri_unused(r, remote->uri));
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t region, Registry::local_region_bytes(*v));
  UBLKVOL_ASSIGN_OR_RETURN(
      auto replica, create_remote_replica(*remote, volume, v->engine->info().size_bytes, region));
  const auto old_index = static_cast<unsigned>(index);
  UBLKVOL_TRY(v->engine->remove_replica(old_index));
  ReplicaSlot& old = v->slots[old_index];
  StoreEntry* old_store = old.store;
  const std::string old_name =
      old_store != nullptr ? "store " + named(old_store->name) : "remote " + old.remote->record.uri;
  Registry::close_slot(old);
  old.store = nullptr;
  old.remote.reset();
  Status deleted =
      old_store != nullptr ? Registry::delete_replica_data(*old_store, volume) : ok_status();
  ReplicaSlot slot;
  slot.remote = std::make_unique<RemoteSlot>();
  slot.remote->record = *remote;
  slot.remote->opened = std::move(replica);
  auto added = v->engine->add_replica(slot.remote->binding());
  if (!added.ok()) {
    (void)r.save();
    return added.error().with_context("volume " + named(volume) + ": replica " +
                                      std::to_string(index) + " (" + old_name +
                                      ") was removed, but adding " + remote->uri + " failed");
  }
  start_keeper(*slot.remote, *v->engine, *added);
  for (auto& other : v->slots) {
    if (other.export_allocation) {
      other.export_allocation->invalidate();  // see add_remote_replica
    }
  }
  v->slots[*added] = std::move(slot);
  spdlog::info("volume '{}': replica {} ({}) replaced by remote {} as replica {} (rebuilding)",
               volume, index, old_name, remote->uri, *added);
  UBLKVOL_TRY(r.save());
  if (!deleted.ok()) {
    return Error(EIO, "replica replaced, but deleting the old replica's data on " + old_name +
                          " failed: " + deleted.error().message());
  }
  return Json{{"index", *added}};
}

}  // namespace ublkvol::daemon
