#include "render.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>

#include "ublkvol/common/version.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/ublk/features.h"

#include "scrub.h"

namespace ublkvol::daemon {
namespace {

using engine::ReplicaState;

// The protocol spells states with underscores (docs/control-protocol.md); only
// "in-sync" differs from the engine's own names.
const char* state_name(ReplicaState state) {
  return state == ReplicaState::kInSync ? "in_sync" : engine::to_string(state);
}

}  // namespace

uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

std::string rfc3339(std::chrono::system_clock::time_point when) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  // 21 bytes for any year up to 9999: the count returned cannot be 0.
  (void)std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

Json orphan_json(const std::string& store, const Orphan& o) {
  return {{"store", store},
          {"volume", o.volume},
          {"size_bytes", o.size_bytes},
          {"complete", o.complete}};
}

Json histogram_json(const ublk::LatencyHistogram& h) {
  return {{"buckets", h.buckets}, {"sum_ns", h.sum_ns}};
}

namespace {
// The kernel, its ublk features and the optional ones enabled (null when
// ublk_drv was not loaded), the config's turned-off ones, a known-bad warning.
Json kernel_json(const Registry::KernelInfo& k) {
  Json j{{"release", k.release},
         {"ublk_features", nullptr},
         {"features_enabled", nullptr},
         {"features_off", ublk::describe_features(k.turned_off)},
         {"warning", k.warning}};
  if (k.features) {
    char hex[24];
    (void)std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(*k.features));
    j["ublk_features"] = hex;
    j["ublk_feature_names"] = ublk::describe_features(*k.features);
    j["features_enabled"] =
        ublk::describe_features(ublk::optional_features_enabled(*k.features, k.turned_off));
  }
  return j;
}
}  // namespace

// Each reactor, its CPU (null: not pinned), the stores it serves, its load:
// busy_percent and messages_per_second over the last sampling interval (the
// store check, every second; the first covers the time since start) and the
// cumulative counters. [] with `"reactors": null` (a thread per store and
// queue).
Json reactors_json(const Registry& registry) {
  Json list = Json::array();
  if (!registry.reactors) {
    return list;
  }
  for (size_t i = 0; i < registry.reactors->size(); ++i) {
    const reactor::Reactor& r = registry.reactors->at(i);
    Json stores = Json::array();
    for (const auto& s : registry.stores) {
      if (s->thread && s->thread->home_reactor() == &r) {
        stores.push_back(s->name);
      }
    }
    // "VOLUME:Q" for each exposed device's queue Q this reactor runs.
    Json queues = Json::array();
    for (const auto& v : registry.volumes) {
      for (size_t q = 0; v->device && q < v->queue_reactors.size(); ++q) {
        if (v->queue_reactors[q] == i) {
          queues.push_back(v->name + ":" + std::to_string(q));
        }
      }
    }
    const reactor::ReactorCounters now = r.counters();
    Registry::ReactorSamples window{{}, now};
    if (i < registry.reactor_samples.size()) {
      window = registry.reactor_samples[i];
    }
    const double seconds =
        std::chrono::duration<double>(window.last.uptime - window.previous.uptime).count();
    const double busy =
        std::chrono::duration<double>(window.last.busy - window.previous.busy).count();
    const auto messages =
        static_cast<double>(window.last.messages_sent - window.previous.messages_sent);
    list.push_back({{"index", i},
                    {"name", std::string(r.name())},
                    {"cpu", r.cpu() >= 0 ? Json(r.cpu()) : Json(nullptr)},
                    {"stores", stores},
                    {"queues", queues},
                    {"busy_percent", seconds > 0 ? std::min(100.0, 100.0 * busy / seconds) : 0.0},
                    {"messages_per_second", seconds > 0 ? messages / seconds : 0.0},
                    {"busy_seconds", std::chrono::duration<double>(now.busy).count()},
                    {"uptime_seconds", std::chrono::duration<double>(now.uptime).count()},
                    {"messages_sent", now.messages_sent},
                    {"sleeps", now.sleeps}});
  }
  return list;
}

Json daemon_status_json(Registry& registry, const Status& ublk) {
  Json orphan_list = Json::array();
  for (const auto& [store, o] : registry.orphans()) {
    orphan_list.push_back(orphan_json(store, o));
  }
  const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
      std::chrono::steady_clock::now() - registry.started);
  return Json{
      {"version", version_string()},
      {"pid", ::getpid()},
      {"uptime_seconds", uptime.count()},
      {"state_dir", registry.config.state_dir},
      {"ublk",
       {{"available", ublk.ok()},
        {"message", ublk.ok() ? std::string("ublk_drv is loaded") : ublk.error().message()}}},
      {"kernel", kernel_json(registry.kernel)},
      {"stores", registry.stores.size()},
      {"volumes", registry.volumes.size()},
      {"exposed", registry.exposed_count()},
      {"exported", std::count_if(registry.volumes.begin(), registry.volumes.end(),
                                 [](const auto& v) { return v->nbd_export != nullptr; })},
      {"orphans", orphan_list},
      {"pending_intents", registry.intents.pending().size()},
      {"reactors", reactors_json(registry)}};
}

Json volume_stats_json(const VolumeEntry& v) {
  const ublk::DeviceStats s = v.device ? v.device->stats() : ublk::DeviceStats{};
  return {{"name", v.name},
          {"exposed", v.device != nullptr},
          {"reads", s.reads},
          {"writes", s.writes},
          {"flushes", s.flushes},
          {"discards", s.discards},
          {"write_zeroes", s.write_zeroes},
          {"bytes_read", s.bytes_read},
          {"bytes_written", s.bytes_written},
          {"errors", s.errors},
          // Zero copy (docs/zero-copy.md): the device was created for it;
          // data requests served on their own pages / served by copy.
          {"zero_copy", v.device != nullptr && v.device->zero_copy()},
          {"zero_copy_ios", s.zero_copy_ios},
          {"copied_ios", s.copied_ios},
          {"read_latency_ns", histogram_json(s.read_latency)},
          {"write_latency_ns", histogram_json(s.write_latency)},
          {"verify", verify_json(v.engine ? v.engine->status().verify : engine::VerifyStatus{})}};
}

Json stats_json(Json volumes, Json reactors) {
  Json bounds = Json::array();
  for (unsigned i = 0; i < ublk::kLatencyBuckets; ++i) {
    bounds.push_back(ublk::latency_bucket_upper_ns(i));
  }
  return Json{{"time_ns", monotonic_ns()},
              {"latency_bucket_upper_ns", bounds},
              {"volumes", std::move(volumes)},
              {"reactors", std::move(reactors)}};
}

Json store_json(Registry& registry, StoreEntry& s) {
  Json out = {{"name", s.name},   {"path", s.path},    {"uuid", s.uuid},
              {"size_bytes", 0},  {"extent_size", 0},  {"used_bytes", 0},
              {"free_bytes", 0},  {"state", "online"}, {"error", nullptr},
              {"read_errors", 0}, {"write_errors", 0}, {"replicas", Json::array()}};
  // Counters are read while the store object exists, also after the
  // daemon marked it failed: the errors that failed it are the point.
  if (s.store && s.thread) {
    dbs::StoreStats stats;
    Status got = s.thread->call([&] {
      stats = s.store->stats();
      return s.store->health();
    });
    out["size_bytes"] = s.device->size_bytes();
    out["extent_size"] = stats.extent_bytes;
    out["used_bytes"] = (stats.total_extents - stats.free_extents) * stats.extent_bytes;
    out["free_bytes"] = stats.free_extents * stats.extent_bytes;
    // Data-path device errors since the store was opened (the store stays
    // usable; the engine fails the replicas that saw them).
    out["read_errors"] = stats.read_errors;
    out["write_errors"] = stats.write_errors;
    if (!s.error.empty()) {
      out["state"] = "failed";
      out["error"] = s.error;
    } else if (!got.ok()) {
      out["state"] = "failed";
      out["error"] = got.error().message();
    }
  } else {
    out["state"] = "failed";
    out["error"] = s.error;
  }
  out["events"] = Json::array();
  for (const auto& [when, message] : s.events) {
    out["events"].push_back({{"time", when}, {"message", message}});
  }
  out["orphans"] = Json::array();
  for (const Orphan& o : registry.orphans_on(s)) {
    out["orphans"].push_back(orphan_json(s.name, o));
  }
  for (const auto& v : registry.volumes) {
    for (size_t i = 0; i < v->slots.size(); ++i) {
      if (v->slots[i].store == &s) {
        out["replicas"].push_back({{"volume", v->name}, {"replica", i}});
      }
    }
    for (const auto& missing : v->missing_stores) {
      if (missing == s.name) {
        out["replicas"].push_back({{"volume", v->name}, {"replica", nullptr}});
      }
    }
  }
  return out;
}

Json volume_json(Registry& registry, VolumeEntry& v) {
  Json out = {{"name", v.name},
              {"size_bytes", v.size_bytes},
              {"generation", 0},
              {"min_replicas", v.min_replicas},
              {"in_sync", 0},
              {"online", false},
              {"device", nullptr},
              {"export", export_json(v)},
              {"replicas", Json::array()},
              {"rebuild",
               {{"active", false},
                {"percent", 0},
                {"bytes_per_second", 0},
                {"eta_seconds", 0},
                {"done_bytes", 0},
                {"total_bytes", 0},
                {"pieces", 0},
                {"yields", 0},
                {"yielded_seconds", 0},
                {"full_from", 0},
                {"completed", 0},
                {"last_error", ""}}},
              {"events", Json::array()},
              {"verify", verify_json({})},
              {"snapshots", Json::array()},
              {"missing_stores", v.missing_stores},
              {"pending_remotes", pending_remotes_json(v)},
              {"error", v.error.empty() ? Json(nullptr) : Json(v.error)}};
  if (auto why = registry.backup_jobs.restoring(v.name)) {
    out["restoring"] = *why;  // not usable until the restore is done
  }
  if (v.device) {
    const auto& info = v.device->info();
    out["device"] = {{"path", v.device->block_path()},
                     {"dev_id", v.device->id()},
                     {"queues", info.nr_hw_queues},
                     {"queue_depth", info.queue_depth}};
  }
  if (!v.engine) {
    return out;
  }
  const engine::VolumeStatus status = v.engine->status();
  out["generation"] = status.generation;
  unsigned in_sync = status.in_sync;
  for (size_t i = 0; i < status.replicas.size() && i < v.slots.size(); ++i) {
    const auto& r = status.replicas[i];
    if (r.state == ReplicaState::kRemoved || !v.slots[i].used()) {
      continue;
    }
    if (v.slots[i].remote) {
      out["replicas"].push_back({{"index", i},
                                 {"store", nullptr},
                                 {"remote", remote_json(*v.slots[i].remote, r.state)},
                                 {"state", state_name(r.state)},
                                 {"generation", r.generation},
                                 {"last_error", r.last_error}});
      continue;
    }
    // A replica on a failed store is never reported in sync, even while
    // the engine refuses to fail it (the last one in sync).
    const StoreEntry& on = *v.slots[i].store;
    const bool store_failed = !on.error.empty() && r.state == ReplicaState::kInSync;
    in_sync -= store_failed ? 1 : 0;
    out["replicas"].push_back(
        {{"index", i},
         {"store", on.name},
         {"state", store_failed ? "failed" : state_name(r.state)},
         {"generation", r.generation},
         {"last_error",
          store_failed ? "store " + named(on.name) + " failed: " + on.error : r.last_error}});
  }
  out["in_sync"] = in_sync;
  out["online"] = status.online && in_sync >= status.min_replicas;
  const auto& rb = status.rebuild;
  out["rebuild"] = {{"active", rb.active},
                    {"percent", rb.percent},
                    {"bytes_per_second", rb.bytes_per_second},
                    {"eta_seconds", rb.eta_seconds},
                    {"done_bytes", rb.done_bytes},
                    {"total_bytes", rb.total_bytes},
                    {"pieces", rb.pieces},
                    {"yields", rb.yields},
                    {"yielded_seconds", rb.yielded_seconds},
                    // full_from == size: dirty regions only (a resync)
                    {"full_from", rb.full_from},
                    {"completed", rb.completed},
                    {"last_error", rb.last_error}};
  out["verify"] = verify_json(status.verify);
  for (const auto& e : status.events) {
    out["events"].push_back(
        {{"time", rfc3339(e.when)}, {"replica", e.replica}, {"message", e.message}});
  }
  auto snapshots = registry.list_snapshots(v);
  if (snapshots.ok()) {
    out["snapshots"] = *snapshots;
  }
  return out;
}

}  // namespace ublkvol::daemon
