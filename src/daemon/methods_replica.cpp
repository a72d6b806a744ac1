// replica.list / add / remove / rebuild / fail / verify
// (docs/control-protocol.md). Replica indices are the engine's.
#include <algorithm>
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>

#include "handlers.h"
#include "remote_replicas.h"
#include "render.h"
#include "scrub.h"

namespace ublkvol::daemon {
namespace {

struct ReplicaArgs {
  std::string volume;
  uint64_t index = 0;
};

// "volume" and "index"; the caller finishes p.
Result<ReplicaArgs> parse_replica(Params& p) {
  ReplicaArgs a;
  UBLKVOL_ASSIGN_OR_RETURN(a.volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(a.index, p.uint("index"));
  return a;
}

// The open volume `a.volume`, which must have a replica at `a.index`.
Result<VolumeEntry*> volume_with_replica(Registry& r, const ReplicaArgs& a) {
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(a.volume));
  if (a.index >= engine::kMaxReplicas || !v->slots[a.index].used()) {
    return Error(ENOENT,
                 "volume " + named(a.volume) + " has no replica " + std::to_string(a.index));
  }
  return v;
}

}  // namespace

Result<Json> replica_list(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string volume, sole_name(p, "volume"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.volume_named(volume));
  return Json{{"replicas", volume_json(r, *v)["replicas"]}};
}

Result<Json> replica_add(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<std::string> store_given, p.optional_name("store"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto remote, parse_remote_params(p, "uri", /*required=*/false));
  UBLKVOL_TRY(p.finish());
  if (store_given.has_value() == remote.has_value()) {
    return invalid("give either 'store' (a local replica) or 'uri' (a replica on an NBD export)");
  }
  if (remote) {
    UBLKVOL_TRY(check_remote_params(*remote, p));
    return add_remote_replica(r, volume, *remote);
  }
  const std::string& store = *store_given;
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(volume));
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.store_named(store));
  for (const auto& slot : v->slots) {
    if (slot.store == s) {
      return invalid("store " + named(store) + " already holds a replica of volume " +
                     named(volume));
    }
  }
  if (!s->online()) {
    return invalid("store " + named(store) + " is failed: " + s->error);
  }
  // A free slot must exist (the engine reuses the lowest free index).
  if (std::all_of(v->slots.begin(), v->slots.end(),
                  [](const ReplicaSlot& slot) { return slot.used(); })) {
    return invalid("volume " + named(volume) + " already has " +
                   std::to_string(engine::kMaxReplicas) + " replicas");
  }
  // Leftovers of an earlier replica of this volume are replaced.
  UBLKVOL_TRY(Registry::delete_replica_data(*s, volume));
  Status made =
      s->run([&](dbs::Store& st) { return engine::create_dbs_replica(st, volume, v->size_bytes); });
  if (!made.ok()) {
    return made.error().with_context("creating a replica of " + named(volume) + " on " +
                                     named(store));
  }
  ReplicaSlot slot;
  slot.store = s;
  Status opened = r.open_slot(*v, slot, volume);
  if (!opened.ok()) {
    (void)Registry::delete_replica_data(*s, volume);
    return opened.error();
  }
  auto index = v->engine->add_replica(s->binding(slot.replica.get()));
  if (!index.ok()) {
    Registry::close_slot(slot);
    (void)Registry::delete_replica_data(*s, volume);
    return index.error();
  }
  v->slots[*index] = std::move(slot);
  spdlog::info("volume '{}': replica {} added on store '{}' (rebuilding)", volume, *index, store);
  UBLKVOL_TRY(r.save());
  return Json{{"index", *index}};
}

Result<Json> replica_remove(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const ReplicaArgs a, parse_replica(p));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, volume_with_replica(r, a));
  const auto index = static_cast<unsigned>(a.index);
  UBLKVOL_TRY(v->engine->remove_replica(index));
  ReplicaSlot& slot = v->slots[index];
  if (slot.remote) {
    // The engine no longer uses it; its keeper sees it removed and stops
    // reconnecting. The export keeps its data (another host's business).
    const std::string uri = slot.remote->record.uri;
    Registry::close_slot(slot);
    slot.remote.reset();
    spdlog::info("volume '{}': remote replica {} ({}) removed", v->name, index, uri);
    UBLKVOL_TRY(r.save());
    return Json::object();
  }
  StoreEntry* store = slot.store;
  Registry::close_slot(slot);
  slot.store = nullptr;
  Status deleted = Registry::delete_replica_data(*store, v->name);
  spdlog::info("volume '{}': replica {} on store '{}' removed", v->name, index, store->name);
  UBLKVOL_TRY(r.save());
  if (!deleted.ok()) {
    return Error(EIO, "replica removed, but deleting its data on store " + named(store->name) +
                          " failed: " + deleted.error().message());
  }
  return Json::object();
}

Result<Json> replica_rebuild(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const ReplicaArgs a, parse_replica(p));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, volume_with_replica(r, a));
  if (resume_remote_replica(*v, static_cast<unsigned>(a.index))) {
    return Json::object();  // its keeper reconnects it and resyncs (remote_replicas.h)
  }
  UBLKVOL_TRY(v->engine->start_rebuild(static_cast<unsigned>(a.index)));
  spdlog::info("volume '{}': rebuild of replica {} started", v->name, a.index);
  return Json::object();
}

Result<Json> replica_fail(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const ReplicaArgs a, parse_replica(p));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<std::string> reason, p.optional_string("reason"));
  // Fail it even below min_replicas.
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<bool> force, p.optional_bool("force"));
  UBLKVOL_TRY(p.finish());
  const std::string why = reason.value_or("failed by the operator");
  if (why.size() > 1024) {
    return invalid("field 'reason' is longer than 1024 bytes");
  }
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, volume_with_replica(r, a));
  const bool held_now = hold_remote_replica(*v, static_cast<unsigned>(a.index));
  Status failed =
      v->engine->fail_replica(static_cast<unsigned>(a.index), why, force.value_or(false));
  if (!failed.ok()) {
    if (held_now) {
      (void)resume_remote_replica(*v, static_cast<unsigned>(a.index));
    }
    return failed.error();
  }
  spdlog::warn("volume '{}': replica {} failed by the operator: {}", v->name, a.index, why);
  return Json::object();
}

// Starts a background verify (issue 12 item 7); progress and result in
// volume.show's "verify".
Result<Json> replica_verify(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<bool> repair, p.optional_bool("repair"));
  // MiB/s, 0 = unthrottled.
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<uint64_t> rate, p.optional_uint("rate"));
  UBLKVOL_TRY(p.finish());
  if (rate.value_or(0) > (uint64_t{1} << 30)) {
    return invalid("field 'rate' is above 1073741824 MiB/s");
  }
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(volume));
  engine::VerifyOptions options;
  options.repair = repair.value_or(false);
  options.bytes_per_second = rate.value_or(r.config.scrub_mb_per_s) << 20U;
  UBLKVOL_TRY(v->engine->start_verify(options));
  spdlog::info("volume '{}': verify{} started", volume, options.repair ? " + repair" : "");
  return Json{{"verify", verify_json(v->engine->status().verify)}};
}

}  // namespace ublkvol::daemon
