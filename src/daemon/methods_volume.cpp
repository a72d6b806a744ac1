// volume.create / import / list / show / delete / expose / unexpose / resize
// (docs/control-protocol.md).
#include <algorithm>
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>

#include "ublkvol/dbs/device_users.h"
#include "ublkvol/ublk/uapi.h"

#include "device_in_use.h"
#include "handlers.h"
#include "render.h"
#include "resize.h"

namespace ublkvol::daemon {
namespace {

// volume.create and volume.import: a new volume's name, stores and
// min_replicas (default: the config's, capped at the replica count).
struct NewVolumeArgs {
  std::string name;
  uint64_t size = 0;  // volume.create only
  std::vector<std::string> stores;
  unsigned min_replicas = 1;
  std::vector<StoreEntry*> chosen;           // the stores, online
  std::vector<RemoteReplicaRecord> remotes;  // volume.create only (remote_replicas.h)
};

Result<NewVolumeArgs> parse_new_volume(Registry& r, Params& p, bool with_size) {
  NewVolumeArgs a;
  UBLKVOL_ASSIGN_OR_RETURN(a.name, p.name("name"));
  if (with_size) {
    UBLKVOL_ASSIGN_OR_RETURN(a.size, p.size("size"));
    UBLKVOL_ASSIGN_OR_RETURN(auto remote, parse_remote_params(p, "remote", /*required=*/false));
    if (remote) {
      a.remotes.push_back(std::move(*remote));
    }
  }
  UBLKVOL_ASSIGN_OR_RETURN(a.stores, p.name_list("stores", 1, engine::kMaxReplicas));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<uint64_t> min, p.optional_uint("min_replicas"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(r.check_new_volume_name(a.name));
  for (const auto& remote : a.remotes) {
    UBLKVOL_TRY(check_remote_params(remote, p));
    UBLKVOL_TRY(check_uri_unused(r, remote.uri));
  }
  if (a.stores.size() + a.remotes.size() > engine::kMaxReplicas) {
    return invalid("volume " + named(a.name) + ": at most " + std::to_string(engine::kMaxReplicas) +
                   " replicas (stores and remote)");
  }
  const auto count = static_cast<unsigned>(a.stores.size() + a.remotes.size());
  if (min && (*min < 1 || *min > count)) {
    return invalid("field 'min_replicas' " + std::to_string(*min) +
                   " must be between 1 and the replica count " + std::to_string(count));
  }
  a.min_replicas = min ? static_cast<unsigned>(*min) : std::min(r.config.min_replicas, count);
  for (const auto& store_name : a.stores) {
    UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.online_store_named(store_name));
    a.chosen.push_back(s);
  }
  return a;
}

}  // namespace

// Grows a volume that has no device: closes its engine and replicas, grows
// every replica's DBS volume (new range reads as zeros, the dirty bitmap is
// resized by DBS), reopens. DbsReplicaStore and the engine take the size
// (and dirty-region size) from the DBS volume when they open, so nothing of
// theirs needs changing. Each grow commits in DBS before the next; the
// state file gets the new size once all replicas have it. If a grow fails
// part-way, the grown replicas stay grown (DBS never shrinks) and the
// engine cannot open replicas of different dirty-region sizes: the error
// says so, and repeating the resize grows the rest (growing a replica to
// its current size changes nothing).
Result<Json> grow_volume(Registry& r, VolumeEntry& volume, uint64_t new_size) {
  const uint64_t old_size = volume.size_bytes;
  Registry::close_volume(volume);
  std::optional<Error> failed;
  for (auto& slot : volume.slots) {
    if (slot.store == nullptr) {
      continue;
    }
    Status grown = slot.store->run([&](dbs::Store& store) -> Status {
      UBLKVOL_ASSIGN_OR_RETURN(auto id, store.find_volume(volume.name));
      UBLKVOL_ASSIGN_OR_RETURN(auto info, store.volume_info(id));
      if (info.size_bytes == new_size) {
        return ok_status();  // grown by an earlier, interrupted resize
      }
      return store.grow_volume(id, new_size);
    });
    if (!grown.ok()) {
      failed = grown.error().with_context("growing volume " + named(volume.name) + " on store " +
                                          named(slot.store->name));
      break;
    }
  }
  if (!failed) {
    volume.size_bytes = new_size;
  }
  Status reopened = r.reopen_volume(volume);
  if (failed) {
    spdlog::error("volume '{}': resize to {} bytes failed: {}", volume.name, new_size,
                  failed->message());
    return Error(failed->errno_value(),
                 failed->message() +
                     (reopened.ok() ? ""
                                    : "; the volume is now closed (" + reopened.error().message() +
                                          "): repeat the resize"));
  }
  if (!reopened.ok()) {
    return reopened.error().with_context("volume " + named(volume.name) + " grown to " +
                                         std::to_string(new_size) +
                                         " bytes but could not be reopened");
  }
  const uint64_t engine_size = volume.engine->info().size_bytes;
  if (engine_size != new_size) {
    return Error(EIO, "volume " + named(volume.name) + " grown to " + std::to_string(new_size) +
                          " bytes but its engine opened with " + std::to_string(engine_size));
  }
  UBLKVOL_TRY(r.save());
  spdlog::info("volume '{}' grown from {} to {} bytes", volume.name, old_size, new_size);
  return volume_json(r, volume);
}

Result<Json> volume_create(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const NewVolumeArgs a, parse_new_volume(r, p, /*with_size=*/true));
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t intent,
                           r.begin(IntentOp::kVolumeCreate, a.name, a.stores));
  IntentGuard guard(r.intents, intent);
  // Create the replica volumes; undo them all if one fails.
  std::vector<StoreEntry*> created;
  auto undo = [&]() {
    for (StoreEntry* s : created) {
      (void)Registry::delete_replica_data(*s, a.name);
    }
  };
  for (StoreEntry* s : a.chosen) {
    Status made = s->run([&](dbs::Store& store) {
      if (store.find_volume(a.name).ok() || store.find_volume(a.name + kMetaSuffix).ok()) {
        return Status(Error(EEXIST, "store " + named(s->name) + " already holds a volume " +
                                        named(a.name) +
                                        " that no volume owns (an orphan: adopt it with "
                                        "volume.import or delete it with store.gc)"));
      }
      return engine::create_dbs_replica(store, a.name, a.size);
    });
    if (!made.ok()) {
      undo();
      const int err = made.error().errno_value();
      return Error(
          err == ENOSPC ? EINVAL : err,
          made.error()
              .with_context("creating volume " + named(a.name) + " on store " + named(s->name))
              .message());
    }
    created.push_back(s);
    r.crash.step("volume.create: replica created");
  }
  auto v = r.open_new_volume(a.name, a.size, a.min_replicas, a.chosen, a.remotes);
  if (!v.ok()) {
    undo();
    return v.error();
  }
  r.crash.step("volume.create: volume opened");
  spdlog::info("volume '{}' created: {} bytes, {} replicas ({} remote), min_replicas {}", a.name,
               a.size, a.chosen.size() + a.remotes.size(), a.remotes.size(), a.min_replicas);
  UBLKVOL_TRY(r.saved_or_kept(guard));
  r.crash.step("volume.create: state saved");
  return volume_json(r, **v);
}

// volume.import: adopts orphan replicas (one per store, all of one name)
// as a volume; the engine opens them as it opens any volume (newest
// generation wins, stale replicas rebuild).
Result<Json> volume_import(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(NewVolumeArgs a, parse_new_volume(r, p, /*with_size=*/false));
  for (StoreEntry* s : a.chosen) {
    const auto found = r.orphans_on(*s);
    auto it = std::find_if(found.begin(), found.end(),
                           [&](const Orphan& o) { return o.volume == a.name; });
    if (it == found.end() || !it->complete) {
      return Error(ENOENT, "store " + named(s->name) + " holds no " +
                               (it == found.end() ? "orphan" : "complete orphan") + " replica " +
                               named(a.name) +
                               (it == found.end() ? "" : " (its meta or data volume is missing)"));
    }
    a.size = std::max(a.size, it->size_bytes);
  }
  auto v = r.open_new_volume(a.name, a.size, a.min_replicas, a.chosen);
  if (!v.ok()) {
    return v.error().with_context("importing volume " + named(a.name));
  }
  spdlog::info("volume '{}' imported from orphan replicas on {}", a.name, list_names(a.stores));
  UBLKVOL_TRY(r.save());
  return volume_json(r, **v);
}

Result<Json> volume_list(Registry& r, Params& p) {
  UBLKVOL_TRY(p.finish());
  Json list = Json::array();
  for (auto& v : r.volumes) {
    list.push_back(volume_json(r, *v));
  }
  return Json{{"volumes", list}};
}

Result<Json> volume_show(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.volume_named(name));
  return volume_json(r, *v);
}

Result<Json> volume_delete(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.volume_named(name));
  if (volume->device || volume->exposed) {
    return Error(EBUSY, "volume " + named(name) + " is exposed (unexpose it first)");
  }
  if (volume->exported) {
    return Error(EBUSY, "volume " + named(name) + " is exported over NBD on " +
                            volume->exported->listen + " (volume unexport it first)");
  }
  // Deleting a volume a restore writes stops the restore (backup_jobs.h).
  r.backup_jobs.forget_restore(name);
  std::vector<StoreEntry*> holders;
  for (auto& slot : volume->slots) {
    if (slot.store != nullptr) {
      holders.push_back(slot.store);
    }
  }
  // Rolled forward at start-up once recorded (recovery.h).
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t intent,
                           r.begin(IntentOp::kVolumeDelete, name, volume->replica_stores()));
  IntentGuard guard(r.intents, intent);
  Registry::close_volume(*volume);
  std::string problems;
  for (StoreEntry* s : holders) {
    Status deleted = Registry::delete_replica_data(*s, name);
    if (!deleted.ok()) {
      problems += (problems.empty() ? "" : "; ") + deleted.error().message();
    }
    r.crash.step("volume.delete: replica deleted");
  }
  std::erase_if(r.volumes, [&](const auto& e) { return e.get() == volume; });
  spdlog::info("volume '{}' deleted", name);
  UBLKVOL_TRY(r.saved_or_kept(guard));
  r.crash.step("volume.delete: state saved");
  if (!problems.empty()) {
    return Error(EIO, "volume " + named(name) +
                          " was removed, but deleting its data failed on: " + problems);
  }
  return Json::object();
}

Result<Json> volume_expose(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<uint64_t> queues, p.optional_uint("queues"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<uint64_t> depth, p.optional_uint("queue_depth"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.open_volume_named(name));
  const uint64_t q = queues.value_or(r.config.queues);
  const uint64_t d = depth.value_or(r.config.queue_depth);
  if (q < 1 || q > r.engine_queues) {
    return invalid("field 'queues' " + std::to_string(q) + " is out of range 1.." +
                   std::to_string(r.engine_queues));
  }
  if (d < 4 || d > 4096) {
    return invalid("field 'queue_depth' " + std::to_string(d) + " is out of range 4..4096");
  }
  if (volume->device) {
    return Error(
        EBUSY, "volume " + named(name) + " is already exposed as " + volume->device->block_path());
  }
  UBLKVOL_TRY(r.probe_ublk());
  UBLKVOL_TRY(r.create_device(*volume, static_cast<unsigned>(q), static_cast<unsigned>(d), -1));
  spdlog::info("volume '{}' exposed as {}", name, volume->device->block_path());
  UBLKVOL_TRY(r.save());
  return volume_json(r, *volume);
}

Result<Json> volume_unexpose(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.volume_named(name));
  if (!volume->device && !volume->exposed) {
    return invalid("volume " + named(name) + " is not exposed");
  }
  if (volume->device) {
    const std::string path = volume->device->block_path();
    UBLKVOL_ASSIGN_OR_RETURN(const bool in_use, block_device_in_use(path));
    if (in_use) {
      const std::string holder = dbs::describe_device_users(path);
      return Error(EBUSY, path + " (volume " + named(name) + ") is in use" +
                              (holder.empty() ? "" : ": " + holder));
    }
    Status stopped = volume->device->stop_and_delete();
    if (!stopped.ok()) {
      return stopped.error().with_context("stopping " + path);
    }
    volume->device.reset();
    spdlog::info("volume '{}' unexposed ({} deleted)", name, path);
  }
  volume->exposed.reset();
  UBLKVOL_TRY(r.save());
  return Json::object();
}

Result<Json> volume_resize(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t size, p.size("size"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.volume_named(name));
  if (size < volume->size_bytes) {
    return invalid("volume " + named(name) + " is " + std::to_string(volume->size_bytes) +
                   " bytes; shrinking to " + std::to_string(size) + " is not supported");
  }
  if (size == volume->size_bytes) {
    return volume_json(r, *volume);
  }
  if (auto why = r.backup_jobs.restoring(name)) {
    return Error(EBUSY, "volume " + named(name) + " is " + *why + ": resize it once it is done");
  }
  if (auto snapshot = r.backup_jobs.restoring_snapshot(name)) {
    // The snapshot must have the volume's size (dbs adopt_as_snapshot).
    return Error(EBUSY, "a backup is being restored as snapshot " + named(*snapshot) +
                            " of volume " + named(name) + ": resize it once it is done");
  }
  const bool exposed = volume->exposed || volume->device;
  if (exposed) {
    // Needs UPDATE_SIZE and QUIESCE: the refusal names what is missing.
    UBLKVOL_TRY(check_online_resize(r, *volume));
  }
  // A volume left closed (a resize that failed or crashed part-way leaves
  // replicas of different sizes, which the engine refuses to open) may be
  // resized again: that grows the remaining replicas and reopens it.
  if (!volume->engine && volume->replica_stores().empty()) {
    return Error(EIO, "volume " + named(name) + " is not open: " + volume->error);
  }
  if (std::any_of(volume->slots.begin(), volume->slots.end(),
                  [](const ReplicaSlot& slot) { return slot.remote != nullptr; }) ||
      !volume->pending_remotes.empty()) {
    // A remote replica's export is another host's volume: growing it is
    // that host's step, not ours (remote_replicas.h).
    return Error(ENOTSUP, "volume " + named(name) +
                              " has a remote replica; remove it (replica remove), resize, then "
                              "add it again on an export grown on its host");
  }
  if (!volume->missing_stores.empty()) {
    // Their replicas would keep the old size (and a different dirty-region
    // size), so the engine could not open them with the others later.
    return Error(ENODEV, "volume " + named(name) + " has replicas on unavailable store(s) " +
                             list_names(volume->missing_stores) +
                             "; bring them back or remove those replicas before resizing");
  }
  if (volume->engine && volume->engine->status().rebuild.active) {
    return Error(EBUSY, "volume " + named(name) +
                            " is rebuilding a replica; resize after the rebuild completes");
  }
  return exposed ? grow_exposed_volume(r, *volume, size) : grow_volume(r, *volume, size);
}

}  // namespace ublkvol::daemon
