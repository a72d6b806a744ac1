// Volumes held back because a replica in sync at their newest generation is
// missing (docs/engine.md "In-sync sets", docs/operations.md "A volume held
// back for a missing replica"): the error that names the ways out, and
// volume.open, which takes them.
#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <string>

#include "exports.h"
#include "handlers.h"
#include "registry.h"
#include "remote_replicas.h"
#include "render.h"

namespace ublkvol::daemon {

std::string held_back_message(const VolumeEntry& v, const std::string& engine_message) {
  std::string unavailable;
  auto add = [&](const std::string& what) {
    unavailable += (unavailable.empty() ? "" : ", ") + what;
  };
  for (const auto& store : v.missing_stores) {
    add("the replica on store " + named(store));
  }
  for (const auto& pending : v.pending_remotes) {
    add("the remote replica " + pending->record.uri);
  }
  return engine_message +
         " - unavailable now: " + (unavailable.empty() ? std::string("none") : unavailable) +
         ". The volume stays closed and is not exposed. Either bring them back (then restart the "
         "daemon, or run `ublk-volume volume open " +
         v.name +
         "`: the volume opens and resyncs), or open it without them, losing the writes only "
         "they hold: `ublk-volume volume open " +
         v.name +
         " --accept-data-loss` (they leave the volume; their data stays on their stores as "
         "orphans)";
}

namespace {

// Replicas that were unavailable when the volume was loaded and are there
// now take free slots: stores that are online, remote replicas whose
// reconnection succeeded meanwhile. Remote slots whose connection was
// closed with the volume are connected again or become pending.
void gather_replicas(Registry& r, VolumeEntry& v) {
  auto free_slot = [&]() -> ReplicaSlot* {
    for (auto& slot : v.slots) {
      if (!slot.used()) {
        return &slot;
      }
    }
    return nullptr;
  };
  for (auto it = v.missing_stores.begin(); it != v.missing_stores.end();) {
    StoreEntry* s = r.find_store(*it);
    ReplicaSlot* slot = s != nullptr && s->online() ? free_slot() : nullptr;
    if (slot == nullptr) {
      ++it;
      continue;
    }
    slot->store = s;
    it = v.missing_stores.erase(it);
  }
  for (auto& slot : v.slots) {
    if (slot.remote && !slot.remote->opened) {
      auto replica = open_remote_replica(slot.remote->record, v.name);
      if (replica.ok()) {
        slot.remote->opened = std::move(*replica);
      } else {
        v.pending_remotes.push_back(std::make_unique<PendingRemote>(slot.remote->record, v.name,
                                                                    replica.error().message()));
        slot.remote.reset();
      }
    }
  }
  for (auto it = v.pending_remotes.begin(); it != v.pending_remotes.end();) {
    ReplicaSlot* slot = free_slot();
    auto replica = slot != nullptr ? (*it)->take() : nullptr;
    if (!replica) {
      ++it;
      continue;
    }
    slot->remote = std::make_unique<RemoteSlot>();
    slot->remote->record = (*it)->record;
    slot->remote->opened = std::move(replica);
    it = v.pending_remotes.erase(it);
  }
}

}  // namespace

Status Registry::open_held_volume(VolumeEntry& v, bool accept_data_loss) {
  if (v.engine) {
    return ok_status();  // open already: nothing to do
  }
  gather_replicas(*this, v);
  if (std::none_of(v.slots.begin(), v.slots.end(), [](const auto& s) { return s.used(); })) {
    v.error = "no replica of the volume is available";
    return Error(ENODEV, "volume " + named(v.name) + ": " + v.error);
  }
  Status opened = reopen_volume(v);
  if (!opened.ok() && opened.error().errno_value() == ENOLINK) {
    if (!accept_data_loss) {
      v.held.held = true;
      v.error = held_back_message(v, opened.error().message());
      return Error(ErrorKind::kUnavailable, ENOLINK, v.error);
    }
    gather_replicas(*this, v);  // the failed open closed the remote connections
    v.accept_missing_in_sync = true;
    opened = reopen_volume(v);
    v.accept_missing_in_sync = false;
    if (opened.ok()) {
      // The present replicas moved to a new generation: the missing ones
      // would come back as a split. They leave the volume; a local one's
      // DBS volumes stay on its store (an orphan: volume.import / store.gc).
      spdlog::warn(
          "volume '{}' opened without replica(s) that may hold newer writes (accepted data "
          "loss); dropped from the volume: stores [{}], remote replicas [{}]",
          v.name, list_names(v.missing_stores), v.pending_remotes.size());
      v.missing_stores.clear();
      v.pending_remotes.clear();
    }
  }
  if (!opened.ok()) {
    return opened;
  }
  v.held = HeldRetry{};
  spdlog::info("volume '{}' opened: {} replica(s) in sync, generation {:#x}", v.name,
               v.engine->status().in_sync, v.engine->status().generation);
  UBLKVOL_TRY(save());
  if (v.exported) {
    Status exported = start_export(*this, v, *v.exported);
    if (!exported.ok()) {
      spdlog::error("volume '{}': export not restarted: {}", v.name, exported.error().message());
    }
  }
  if (v.exposed) {
    const Status ublk_ok = probe_ublk();
    if (ublk_ok.ok()) {
      reexpose(v);
    } else {
      spdlog::error("volume '{}' stays unexposed: {}", v.name, ublk_ok.error().message());
    }
  }
  return ok_status();
}

void auto_open_held_volumes(Registry& r) {
  const auto now = std::chrono::steady_clock::now();
  for (auto& v : r.volumes) {
    if (v->engine || !v->held.held || now < v->held.next || r.backup_jobs.restoring(v->name)) {
      continue;
    }
    // Something that was missing is back: a store online again, a remote
    // replica whose peer answered (its PendingRemote connected). Nothing
    // back, no attempt: the checks above cost no I/O.
    std::string back;
    for (const auto& name : v->missing_stores) {
      const StoreEntry* s = r.find_store(name);
      if (s != nullptr && s->online()) {
        back += (back.empty() ? "" : ", ") + ("store " + named(name));
      }
    }
    for (const auto& pending : v->pending_remotes) {
      if (pending->connected()) {
        back += (back.empty() ? "" : ", ") + ("remote replica " + pending->record.uri);
      }
    }
    if (back.empty()) {
      continue;
    }
    spdlog::info("volume '{}' is held back and {} is back: opening it", v->name, back);
    const Status opened = r.open_held_volume(*v, false);
    if (opened.ok()) {
      spdlog::info("volume '{}' opened by itself (no `volume open` needed)", v->name);
      continue;
    }
    // Still missing something (or another error): try again after a
    // growing delay, or at once when something else comes back.
    v->held.delay = std::min(v->held.delay * 2, std::chrono::milliseconds(30000));
    v->held.next = now + v->held.delay;
    spdlog::warn("volume '{}' stays closed: {} (next automatic try in {} ms at the earliest)",
                 v->name, opened.error().message(), v->held.delay.count());
  }
}

Result<Json> volume_open(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<bool> accept, p.optional_bool("accept_data_loss"));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.volume_named(name));
  if (auto why = r.backup_jobs.restoring(name)) {
    return Error(EBUSY, "volume " + named(name) + " is " + *why);
  }
  UBLKVOL_TRY(r.open_held_volume(*v, accept.value_or(false)));
  return volume_json(r, *v);
}

}  // namespace ublkvol::daemon
