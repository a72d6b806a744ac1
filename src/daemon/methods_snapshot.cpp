// snapshot.create / list / delete / revert / clone (docs/control-protocol.md).
// The engine makes each all-or-nothing across the replicas while the process
// lives; the intent (intent_log.h) covers a crash between replicas.
#include <algorithm>
#include <cerrno>
#include <functional>
#include <spdlog/spdlog.h>

#include "handlers.h"
#include "remote_replicas.h"
#include "render.h"

namespace ublkvol::daemon {
namespace {

struct SnapshotArgs {
  std::string volume;
  std::string name;
};

// "volume" and the snapshot's name under `key`; the caller finishes p.
Result<SnapshotArgs> parse_snapshot(Params& p, const std::string& key) {
  SnapshotArgs a;
  UBLKVOL_ASSIGN_OR_RETURN(a.volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(a.name, p.name(key));
  return a;
}

bool has_snapshot(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The open volume `a.volume`, which must have the snapshot `a.name`.
Result<VolumeEntry*> volume_with_snapshot(Registry& r, const SnapshotArgs& a) {
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(a.volume));
  UBLKVOL_ASSIGN_OR_RETURN(const std::vector<std::string> names, r.list_snapshots(*v));
  if (!has_snapshot(names, a.name)) {
    return Error(ENOENT, "volume " + named(a.volume) + " has no snapshot " + named(a.name));
  }
  return v;
}

// Revert and clone run on every replica's store; a remote replica's peer
// only takes, deletes and lists snapshots (docs/nbd.md).
Status refuse_with_remote(const VolumeEntry& v, const std::string& what) {
  for (const auto& slot : v.slots) {
    if (slot.remote != nullptr) {
      return Error(ENOTSUP, what + " of volume " + named(v.name) +
                                " refused, nothing changed: its replica on " +
                                slot.remote->record.uri +
                                " is remote (a remote replica supports snapshot create, delete and "
                                "list only; remove it first, and add it again after)");
    }
  }
  return ok_status();
}

// A snapshot operation of the engine (all replicas or none, but not across
// a crash) inside an intent.
Status snapshot_op(Registry& r, IntentOp op, VolumeEntry& v, const std::string& snapshot,
                   const std::function<Status()>& run) {
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t intent,
                           r.begin(op, v.name, v.replica_stores(), snapshot));
  IntentGuard guard(r.intents, intent);
  Status done = run();
  save_owed_snapshot_deletes(r);  // a remote peer that could not be reached
  if (!done.ok()) {
    return done;
  }
  r.crash.step("snapshot operation done");
  return ok_status();
}

}  // namespace

Result<Json> snapshot_create(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const SnapshotArgs a, parse_snapshot(p, "name"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(a.volume));
  auto existing = r.list_snapshots(*v);
  if (existing.ok() && has_snapshot(*existing, a.name)) {
    return Error(EEXIST, "volume " + named(a.volume) + " already has a snapshot " + named(a.name));
  }
  if (r.backup_jobs.restoring_snapshot(a.volume) == a.name) {
    return Error(EBUSY, "a backup is being restored as snapshot " + named(a.name) + " of volume " +
                            named(a.volume));
  }
  UBLKVOL_TRY(snapshot_op(r, IntentOp::kSnapshotCreate, *v, a.name,
                          [&] { return v->engine->create_snapshot(a.name); }));
  spdlog::info("volume '{}': snapshot '{}' created", a.volume, a.name);
  return Json::object();
}

Result<Json> snapshot_list(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string volume, sole_name(p, "volume"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(volume));
  UBLKVOL_ASSIGN_OR_RETURN(const std::vector<std::string> names, r.list_snapshots(*v));
  Json list = Json::array();
  for (const auto& n : names) {
    list.push_back({{"name", n}});
  }
  return Json{{"snapshots", list}};
}

Result<Json> snapshot_delete(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const SnapshotArgs a, parse_snapshot(p, "name"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, volume_with_snapshot(r, a));
  UBLKVOL_TRY(snapshot_op(r, IntentOp::kSnapshotDelete, *v, a.name,
                          [&] { return v->engine->delete_snapshot(a.name); }));
  spdlog::info("volume '{}': snapshot '{}' deleted", a.volume, a.name);
  return Json::object();
}

Result<Json> snapshot_revert(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const SnapshotArgs a, parse_snapshot(p, "name"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, volume_with_snapshot(r, a));
  UBLKVOL_TRY(refuse_with_remote(*v, "revert to snapshot " + named(a.name)));
  if (v->device) {
    return Error(EBUSY, "volume " + named(a.volume) + " is exposed (unexpose it before reverting)");
  }
  if (v->nbd_export) {
    return Error(EBUSY, "volume " + named(a.volume) + " is exported over NBD on " +
                            v->nbd_export->address() + " (unexport it before reverting)");
  }
  UBLKVOL_TRY(snapshot_op(r, IntentOp::kSnapshotRevert, *v, a.name,
                          [&] { return v->engine->revert_snapshot(a.name); }));
  spdlog::info("volume '{}': reverted to snapshot '{}'", a.volume, a.name);
  return Json::object();
}

Result<Json> snapshot_clone(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string clone, p.name("clone"));
  UBLKVOL_ASSIGN_OR_RETURN(const SnapshotArgs a, parse_snapshot(p, "snapshot"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * origin, volume_with_snapshot(r, a));
  UBLKVOL_TRY(refuse_with_remote(*origin, "clone of snapshot " + named(a.name)));
  UBLKVOL_TRY(r.check_new_volume_name(clone));
  UBLKVOL_ASSIGN_OR_RETURN(
      const uint64_t intent,
      r.begin(IntentOp::kSnapshotClone, clone, origin->replica_stores(), a.name, origin->name));
  IntentGuard guard(r.intents, intent);
  // Undone on every store of the origin if any step fails.
  auto undo = [&]() {
    for (const auto& slot : origin->slots) {
      if (slot.store != nullptr) {
        (void)Registry::delete_replica_data(*slot.store, clone);
      }
    }
  };
  auto mask = origin->engine->clone_snapshot(a.name, clone);
  if (!mask.ok()) {
    undo();
    return mask.error();
  }
  r.crash.step("snapshot.clone: cloned");
  std::vector<StoreEntry*> stores_of_clone;
  for (unsigned i = 0; i < engine::kMaxReplicas; ++i) {
    if ((*mask & (1U << i)) != 0 && origin->slots[i].store != nullptr) {
      stores_of_clone.push_back(origin->slots[i].store);
    }
  }
  const unsigned min_replicas =
      std::min<unsigned>(origin->min_replicas, static_cast<unsigned>(stores_of_clone.size()));
  auto v = r.open_new_volume(clone, origin->size_bytes, min_replicas, stores_of_clone);
  if (!v.ok()) {
    undo();
    return v.error();
  }
  r.crash.step("snapshot.clone: volume opened");
  spdlog::info("volume '{}': snapshot '{}' cloned into volume '{}'", origin->name, a.name, clone);
  UBLKVOL_TRY(r.saved_or_kept(guard));
  r.crash.step("snapshot.clone: state saved");
  return volume_json(r, **v);
}

}  // namespace ublkvol::daemon
