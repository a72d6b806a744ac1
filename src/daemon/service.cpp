#include "ublkvol/daemon/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <spdlog/spdlog.h>
#include <string_view>
#include <thread>
#include <utility>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/common/version.h"
#include "ublkvol/daemon/methods.h"
#include "ublkvol/dbs/device_users.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/device.h"
#include "ublkvol/ublk/features.h"

#include "device_in_use.h"
#include "frontend_volume.h"
#include "handlers.h"
#include "intent_log.h"
#include "recovery.h"
#include "registry.h"
#include "render.h"
#include "scrub.h"
#include "store_identity.h"
#include "store_paths.h"

namespace ublkvol::daemon {

Result<std::pair<VolumeEntry*, unsigned>> volume_and_index(Registry& r, Params& p) {
  auto volume = p.name("volume");
  auto index = p.uint("index");
  if (!volume.ok()) {
    return volume.error();
  }
  if (!index.ok()) {
    return index.error();
  }
  auto v = r.open_volume_named(*volume);
  if (!v.ok()) {
    return v.error();
  }
  if (*index >= engine::kMaxReplicas || (*v)->slots[*index].store == nullptr) {
    return Error(ENOENT, "volume " + named(*volume) + " has no replica " + std::to_string(*index));
  }
  return std::make_pair(*v, static_cast<unsigned>(*index));
}

Result<Json> replica_list(Registry& r, Params& p) {
  auto volume = p.name("volume");
  UBLKVOL_TRY(p.finish());
  if (!volume.ok()) {
    return volume.error();
  }
  auto v = r.volume_named(*volume);
  if (!v.ok()) {
    return v.error();
  }
  return Json{{"replicas", volume_json(r, **v)["replicas"]}};
}

Result<Json> replica_add(Registry& r, Params& p) {
  auto volume = p.name("volume");
  auto store = p.name("store");
  if (!volume.ok()) {
    return volume.error();
  }
  if (!store.ok()) {
    return store.error();
  }
  UBLKVOL_TRY(p.finish());
  auto v = r.open_volume_named(*volume);
  if (!v.ok()) {
    return v.error();
  }
  auto s = r.store_named(*store);
  if (!s.ok()) {
    return s.error();
  }
  VolumeEntry& vol = **v;
  for (const auto& slot : vol.slots) {
    if (slot.store == *s) {
      return invalid("store " + named(*store) + " already holds a replica of volume " +
                     named(*volume));
    }
  }
  if (!(*s)->online()) {
    return invalid("store " + named(*store) + " is failed: " + (*s)->error);
  }
  // A free slot must exist (the engine reuses the lowest free index).
  if (std::none_of(vol.slots.begin(), vol.slots.end(),
                   [](const ReplicaSlot& slot) { return slot.store == nullptr; })) {
    return invalid("volume " + named(*volume) + " already has " +
                   std::to_string(engine::kMaxReplicas) + " replicas");
  }
  // Leftovers of an earlier replica of this volume are replaced.
  UBLKVOL_TRY(r.delete_replica_data(**s, *volume));
  Status made = (*s)->run(
      [&](dbs::Store& st) { return engine::create_dbs_replica(st, *volume, vol.size_bytes); });
  if (!made.ok()) {
    return made.error().with_context("creating a replica of " + named(*volume) + " on " +
                                     named(*store));
  }
  ReplicaSlot slot;
  slot.store = *s;
  Status opened = r.open_slot(vol, slot, *volume);
  if (!opened.ok()) {
    (void)r.delete_replica_data(**s, *volume);
    return opened.error();
  }
  auto index = vol.engine->add_replica({slot.replica.get(), (*s)->thread.get()});
  if (!index.ok()) {
    r.close_slot(slot);
    (void)r.delete_replica_data(**s, *volume);
    return index.error();
  }
  vol.slots[*index] = std::move(slot);
  spdlog::info("volume '{}': replica {} added on store '{}' (rebuilding)", *volume, *index, *store);
  UBLKVOL_TRY(r.save());
  return Json{{"index", *index}};
}

Result<Json> replica_remove(Registry& r, Params& p) {
  auto target = volume_and_index(r, p);
  UBLKVOL_TRY(p.finish());
  if (!target.ok()) {
    return target.error();
  }
  auto [v, index] = *target;
  UBLKVOL_TRY(v->engine->remove_replica(index));
  ReplicaSlot& slot = v->slots[index];
  StoreEntry* store = slot.store;
  r.close_slot(slot);
  slot.store = nullptr;
  Status deleted = r.delete_replica_data(*store, v->name);
  spdlog::info("volume '{}': replica {} on store '{}' removed", v->name, index, store->name);
  UBLKVOL_TRY(r.save());
  if (!deleted.ok()) {
    return Error(EIO, "replica removed, but deleting its data on store " + named(store->name) +
                          " failed: " + deleted.error().message());
  }
  return Json::object();
}

Result<Json> replica_rebuild(Registry& r, Params& p) {
  auto target = volume_and_index(r, p);
  UBLKVOL_TRY(p.finish());
  if (!target.ok()) {
    return target.error();
  }
  auto [v, index] = *target;
  UBLKVOL_TRY(v->engine->start_rebuild(index));
  spdlog::info("volume '{}': rebuild of replica {} started", v->name, index);
  return Json::object();
}

// Starts a background verify (issue 12 item 7); progress and result in
// volume.show's "verify".
Result<Json> replica_verify(Registry& r, Params& p) {
  auto volume = p.name("volume");
  auto repair = p.optional_bool("repair");
  auto rate = p.optional_uint("rate");  // MiB/s, 0 = unthrottled
  UBLKVOL_TRY(p.finish());
  for (const Status& s : {volume.ok() ? ok_status() : Status(volume.error()),
                          repair.ok() ? ok_status() : Status(repair.error()),
                          rate.ok() ? ok_status() : Status(rate.error())}) {
    UBLKVOL_TRY(s);
  }
  if (rate->value_or(0) > (uint64_t{1} << 30)) {
    return invalid("field 'rate' is above 1073741824 MiB/s");
  }
  auto v = r.open_volume_named(*volume);
  if (!v.ok()) {
    return v.error();
  }
  engine::VerifyOptions options;
  options.repair = repair->value_or(false);
  options.bytes_per_second = rate->value_or(r.config.scrub_mb_per_s) << 20U;
  UBLKVOL_TRY((*v)->engine->start_verify(options));
  spdlog::info("volume '{}': verify{} started", *volume, options.repair ? " + repair" : "");
  return Json{{"verify", verify_json((*v)->engine->status().verify)}};
}

Result<Json> replica_fail(Registry& r, Params& p) {
  auto target = volume_and_index(r, p);
  auto reason = p.optional_string("reason");
  auto force = p.optional_bool("force");  // fail even below min_replicas
  UBLKVOL_TRY(p.finish());
  if (!target.ok()) {
    return target.error();
  }
  if (!reason.ok()) {
    return reason.error();
  }
  if (!force.ok()) {
    return force.error();
  }
  auto [v, index] = *target;
  const std::string why = reason->value_or("failed by the operator");
  if (why.size() > 1024) {
    return invalid("field 'reason' is longer than 1024 bytes");
  }
  UBLKVOL_TRY(v->engine->fail_replica(index, why, force->value_or(false)));
  spdlog::warn("volume '{}': replica {} failed by the operator: {}", v->name, index, why);
  return Json::object();
}

Result<Json> stats(Registry& r, Params& p) {
  auto only = p.optional_name("volume");
  UBLKVOL_TRY(p.finish());
  if (!only.ok()) {
    return only.error();
  }
  if (only->has_value() && r.find_volume(**only) == nullptr) {
    return Error(ENOENT, "volume " + named(**only) + " does not exist");
  }
  Json bounds = Json::array();
  for (unsigned i = 0; i < ublk::kLatencyBuckets; ++i) {
    bounds.push_back(ublk::latency_bucket_upper_ns(i));
  }
  Json list = Json::array();
  for (auto& v : r.volumes) {
    if (only->has_value() && v->name != **only) {
      continue;
    }
    const ublk::DeviceStats s = v->device ? v->device->stats() : ublk::DeviceStats{};
    list.push_back(
        {{"name", v->name},
         {"exposed", v->device != nullptr},
         {"reads", s.reads},
         {"writes", s.writes},
         {"flushes", s.flushes},
         {"discards", s.discards},
         {"write_zeroes", s.write_zeroes},
         {"bytes_read", s.bytes_read},
         {"bytes_written", s.bytes_written},
         {"errors", s.errors},
         {"read_latency_ns", histogram_json(s.read_latency)},
         {"write_latency_ns", histogram_json(s.write_latency)},
         {"verify", verify_json(v->engine ? v->engine->status().verify : engine::VerifyStatus{})}});
  }
  return Json{{"time_ns", monotonic_ns()}, {"latency_bucket_upper_ns", bounds}, {"volumes", list}};
}

Result<Json> daemon_status(Registry& r, Params& p) {
  UBLKVOL_TRY(p.finish());
  const Status ublk_ok = r.probe_ublk();
  Json orphan_list = Json::array();
  for (const auto& [store, o] : r.orphans()) {
    orphan_list.push_back(orphan_json(store, o));
  }
  const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
      std::chrono::steady_clock::now() - r.started);
  return Json{
      {"version", version_string()},
      {"pid", ::getpid()},
      {"uptime_seconds", uptime.count()},
      {"state_dir", r.config.state_dir},
      {"ublk",
       {{"available", ublk_ok.ok()},
        {"message", ublk_ok.ok() ? std::string("ublk_drv is loaded") : ublk_ok.error().message()}}},
      {"stores", r.stores.size()},
      {"volumes", r.volumes.size()},
      {"exposed", r.exposed_count()},
      {"orphans", orphan_list},
      {"pending_intents", r.intents.pending().size()}};
}

// ---------------------------------------------------------------------------

struct Service::Impl {
  std::unique_ptr<Registry> registry;
};

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() = default;

Result<std::unique_ptr<Service>> Service::start(const DaemonConfig& config) {
  auto impl = std::make_unique<Impl>();
  UBLKVOL_ASSIGN_OR_RETURN(impl->registry, Registry::start(config));
  return std::unique_ptr<Service>(new Service(std::move(impl)));
}

Json Service::handle(const Request& request) {
  try {
    auto result = dispatch(*impl_->registry, request);
    if (!result.ok()) {
      return make_error_response(request.id, result.error());
    }
    return make_ok_response(request.id, std::move(*result));
  } catch (const std::exception& e) {
    spdlog::error("request '{}' failed with an exception: {}", request.method, e.what());
    return make_error_response(request.id, ErrorCode::kInternal,
                               std::string("internal error: ") + e.what());
  }
}

Service::ShutdownReport Service::shutdown() { return impl_->registry->shutdown(); }

std::string Service::status_line() const {
  const Registry& r = *impl_->registry;
  return std::to_string(r.stores.size()) + " stores, " + std::to_string(r.volumes.size()) +
         " volumes, " + std::to_string(r.exposed_count()) + " exposed";
}

void Service::set_save_hook(SaveHook hook) { impl_->registry->save_hook = std::move(hook); }

void Service::check_stores() { impl_->registry->check_stores(); }

}  // namespace ublkvol::daemon
