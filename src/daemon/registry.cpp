#include "registry.h"

#include <sys/utsname.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/features.h"

#include "render.h"

namespace ublkvol::daemon {
namespace {

using engine::ReplicaState;

Error invalid(std::string message) { return Error(EINVAL, std::move(message)); }

}  // namespace

std::string named(const std::string& name) { return "'" + name + "'"; }

std::string list_names(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& n : names) {
    list += (list.empty() ? "" : ", ") + named(n);
  }
  return list;
}

// ---- entries ----------------------------------------------------------------

std::optional<FileIdentity> StoreEntry::identity() const {
  if (watch.valid()) {
    return watch.identity();
  }
  auto id = identity_of_path(path);
  return id.ok() ? std::optional<FileIdentity>(*id) : std::nullopt;
}

// NOLINTNEXTLINE(readability-make-member-function-const): hands the store it owns to fn
Status StoreEntry::run(const std::function<Status(dbs::Store&)>& fn) {
  if (!online()) {
    return Error(EIO, "store " + named(name) + " is failed: " + error);
  }
  return thread->call([&]() { return fn(*store); });
}

void StoreEntry::close() {
  if (thread) {
    if (store && error.empty()) {
      Status committed = thread->call([&]() { return store->commit(); });
      if (!committed.ok()) {
        spdlog::error("store '{}': final commit failed: {}", name, committed.error().message());
      }
    }
    thread->stop();
    thread.reset();
  }
  store.reset();
  device.reset();
}

std::vector<std::string> VolumeEntry::replica_stores() const {
  std::vector<std::string> names;
  for (const auto& slot : slots) {
    if (slot.store != nullptr) {
      names.push_back(slot.store->name);
    }
  }
  return names;
}

// ---- lookup -------------------------------------------------------------------

Result<StoreEntry*> Registry::online_store_named(const std::string& name) {
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, store_named(name));
  if (!s->online()) {
    return invalid("store " + named(name) + " is failed: " + s->error);
  }
  return s;
}

StoreEntry* Registry::find_store(const std::string& name) {
  for (auto& s : stores) {
    if (s->name == name) {
      return s.get();
    }
  }
  return nullptr;
}

VolumeEntry* Registry::find_volume(const std::string& name) {
  for (auto& v : volumes) {
    if (v->name == name) {
      return v.get();
    }
  }
  return nullptr;
}

Result<StoreEntry*> Registry::store_named(const std::string& name) {
  StoreEntry* s = find_store(name);
  if (s == nullptr) {
    return Error(ENOENT, "store " + named(name) + " does not exist");
  }
  return s;
}

Result<VolumeEntry*> Registry::volume_named(const std::string& name) {
  VolumeEntry* v = find_volume(name);
  if (v == nullptr) {
    return Error(ENOENT, "volume " + named(name) + " does not exist");
  }
  return v;
}

Result<VolumeEntry*> Registry::open_volume_named(const std::string& name) {
  auto v = volume_named(name);
  if (!v.ok()) {
    return v;
  }
  if (!(*v)->engine) {
    return Error(EIO, "volume " + named(name) + " is not open: " + (*v)->error);
  }
  // Nothing may expose, export, snapshot or change a volume a restore is
  // still writing (backup_jobs.h).
  if (auto why = backup_jobs.restoring(name)) {
    return Error(EBUSY,
                 "volume " + named(name) + " is " + *why + ": usable once the restore is done");
  }
  return v;
}

Status Registry::check_new_volume_name(const std::string& name) {
  if (name.size() > std::strlen(kMetaSuffix) &&
      name.compare(name.size() - std::strlen(kMetaSuffix), std::string::npos, kMetaSuffix) == 0) {
    return invalid("volume names ending in '" + std::string(kMetaSuffix) + "' are reserved");
  }
  if (find_volume(name) != nullptr) {
    return Error(EEXIST, "volume " + named(name) + " already exists");
  }
  return ok_status();
}

// The volumes state.json has a replica of on `s`.
std::set<std::string> Registry::replicas_on(const StoreEntry& s) const {
  std::set<std::string> known;
  for (const auto& v : volumes) {
    bool uses = std::find(v->missing_stores.begin(), v->missing_stores.end(), s.name) !=
                v->missing_stores.end();
    for (const auto& slot : v->slots) {
      uses = uses || slot.store == &s;
    }
    if (uses) {
      known.insert(v->name);
    }
  }
  return known;
}

// The snapshot names, read from the first in-sync replica's store.
Result<std::vector<std::string>> Registry::list_snapshots(VolumeEntry& v) {
  const engine::VolumeStatus status = v.engine->status();
  for (size_t i = 0; i < status.replicas.size() && i < v.slots.size(); ++i) {
    ReplicaSlot& slot = v.slots[i];
    if (status.replicas[i].state != ReplicaState::kInSync || !slot.replica ||
        slot.store == nullptr || !slot.store->thread) {
      continue;
    }
    std::vector<std::string> names;
    Status called = slot.store->thread->call([&]() {
      names = slot.replica->list_snapshots();
      return ok_status();
    });
    if (called.ok()) {
      return names;
    }
  }
  return Error(EIO, "volume " + named(v.name) + " has no in-sync replica to list snapshots");
}

unsigned Registry::exposed_count() const {
  return static_cast<unsigned>(std::count_if(volumes.begin(), volumes.end(),
                                             [](const auto& v) { return v->device != nullptr; }));
}

DaemonState Registry::snapshot_state() const {
  DaemonState state;
  for (const auto& s : stores) {
    state.stores.push_back({s->name, s->path, s->uuid});
  }
  for (const auto& v : volumes) {
    VolumeRecord record;
    record.name = v->name;
    record.size_bytes = v->size_bytes;
    record.min_replicas = v->min_replicas;
    for (const auto& slot : v->slots) {
      if (slot.store != nullptr) {
        record.stores.push_back(slot.store->name);
      }
    }
    for (const auto& missing : v->missing_stores) {
      record.stores.push_back(missing);
    }
    for (const auto& slot : v->slots) {
      if (slot.remote) {
        record.remotes.push_back(slot.remote->record);
        record.remotes.back().owed_snapshot_deletes = slot.remote->owed_snapshot_deletes();
      }
    }
    for (const auto& pending : v->pending_remotes) {
      record.remotes.push_back(pending->record);
    }
    record.exposed = v->exposed;
    record.exported = v->exported;
    state.volumes.push_back(std::move(record));
  }
  return state;
}

Status Registry::save() const {
  Status saved = save_state(config.state_dir, snapshot_state(), save_hook);
  if (!saved.ok()) {
    spdlog::error("saving the state failed: {}", saved.error().message());
    return Error(EIO, "the change was made but the state file could not be saved: " +
                          saved.error().message());
  }
  return ok_status();
}

// save(); if it fails, start-up recovery decides the operation (the
// intent stays).
Status Registry::saved_or_kept(IntentGuard& guard) const {
  Status saved = save();
  if (!saved.ok()) {
    guard.keep();
  }
  return saved;
}

// Records the intent of a multi-step operation before its first step.
Result<uint64_t> Registry::begin(IntentOp op, const std::string& volume,
                                 std::vector<std::string> on, const std::string& snapshot,
                                 const std::string& origin) {
  Intent intent;
  intent.op = op;
  intent.volume = volume;
  intent.stores = std::move(on);
  intent.snapshot = snapshot;
  intent.origin = origin;
  auto id = intents.record(std::move(intent));
  if (!id.ok()) {
    return Error(EIO, id.error().message());
  }
  crash.step(to_string(op));
  return id;
}

std::vector<Orphan> Registry::orphans_on(StoreEntry& s) const {
  std::vector<Orphan> found;
  if (s.online()) {
    std::set<std::string> known = replicas_on(s);
    known.merge(backup_jobs.staging_volumes());  // restores as snapshots still filling them
    (void)s.run([&](dbs::Store& store) {
      found = find_orphans(store, known);
      return ok_status();
    });
  }
  return found;
}

std::vector<std::pair<std::string, Orphan>> Registry::orphans() const {
  std::vector<std::pair<std::string, Orphan>> all;
  for (auto& s : stores) {
    for (auto& o : orphans_on(*s)) {
      all.emplace_back(s->name, std::move(o));
    }
  }
  return all;
}

// Deletes the DBS volumes of replica `name` from a store (if present).
Status Registry::delete_replica_data(StoreEntry& s, const std::string& name) {
  return s.run([&](dbs::Store& store) { return delete_replica_volumes(store, name); });
}

// OK if ublk devices can be created; else an ENODEV error with the
// frontend's message (module not loaded, features missing).
Status Registry::probe_ublk() const {
  auto control = ublk::ControlDevice::open();
  if (!control.ok()) {
    return Error(ENODEV, control.error().message());
  }
  auto features = control->get_features();
  if (!features.ok()) {
    return Error(ENODEV, features.error().message());
  }
  Status needed = ublk::require_features(*features, ublk::kRequiredFeatures, "ublk-volumed");
  if (needed.ok() && config.recoverable_devices) {
    needed = ublk::require_features(*features, ublk::kRecoveryFeatures,
                                    "transparent daemon restart (recoverable_devices)");
  }
  if (!needed.ok()) {
    return Error(ENODEV, needed.error().message());
  }
  return ok_status();
}

void Registry::read_kernel() {
  utsname uts{};
  kernel.release = ::uname(&uts) == 0 ? uts.release : "unknown";
  // Validated with the config: the names are known.
  auto off = ublk::optional_features_mask(config.ublk_features_off);
  kernel.turned_off = off.ok() ? *off : 0;
  kernel.warning = ublk::known_bad_kernel_warning(kernel.release);
  if (!kernel.warning.empty()) {
    spdlog::warn("kernel: {}", kernel.warning);
  }
  auto control = ublk::ControlDevice::open();
  auto features = control.ok() ? control->get_features() : Result<uint64_t>(control.error());
  if (!features.ok()) {
    spdlog::info("kernel {}: ublk features unknown ({})", kernel.release,
                 features.error().message());
    return;
  }
  kernel.features = *features;
  spdlog::info(
      "kernel {}: ublk_drv features 0x{:x} ({}); optional features enabled: {}", kernel.release,
      *features, ublk::describe_features(*features),
      ublk::describe_features(ublk::optional_features_enabled(*features, kernel.turned_off)));
}

Result<uint64_t> Registry::ublk_features() {
  if (!kernel.features) {
    auto control = ublk::ControlDevice::open();
    if (!control.ok()) {
      return Error(ENODEV, control.error().message());
    }
    auto features = control->get_features();
    if (!features.ok()) {
      return Error(ENODEV, features.error().message());
    }
    kernel.features = *features;
  }
  return *kernel.features;
}

Status Registry::require_optional_feature(uint64_t flag) {
  UBLKVOL_ASSIGN_OR_RETURN(const uint64_t available, ublk_features());
  const std::string refusal =
      ublk::optional_feature_refusal(flag, available, kernel.turned_off, kernel.release);
  if (!refusal.empty()) {
    return Error(EOPNOTSUPP, refusal);
  }
  return ok_status();
}

std::vector<unsigned> Registry::replica_reactors(const VolumeEntry& v) const {
  std::vector<unsigned> places;
  if (!reactors) {
    return places;
  }
  for (const ReplicaSlot& slot : v.slots) {
    if (slot.store == nullptr || !slot.store->thread) {
      continue;
    }
    const reactor::Reactor* home = slot.store->thread->home_reactor();
    for (unsigned i = 0; i < reactors->size(); ++i) {
      if (&reactors->at(i) == home && std::find(places.begin(), places.end(), i) == places.end()) {
        places.push_back(i);
      }
    }
  }
  return places;
}

void Registry::note_queue_places(VolumeEntry& v, const ublk::DeviceOptions& options) const {
  v.queue_reactors.clear();
  if (!queue_host || !v.device || options.queue_host == nullptr) {
    return;
  }
  for (unsigned q = 0; q < v.device->info().nr_hw_queues; ++q) {
    // Where the host runs it (ReactorQueueHost::index_of), not a second rule.
    v.queue_reactors.push_back(
        static_cast<unsigned>(queue_host->index_of(options.queue_ref(v.device->id(), q))));
  }
}

ublk::DeviceOptions Registry::device_base_options(const VolumeEntry& v) const {
  ublk::DeviceOptions options;
  if (queue_host) {
    // Queue q on a reactor that serves one of v's replicas, cycling over
    // them: a queue on any other reactor would send each request there and
    // back. No local replica: queue q on reactor q mod N.
    options.queue_loop = ublk::QueueLoop::kExternal;
    options.queue_host = queue_host.get();
    options.queue_places = replica_reactors(v);
    // Zero copy needs the queue and the stores on one reactor's ring; the
    // engine answers per request (docs/zero-copy.md). Ignored by a kernel
    // without AUTO_BUF_REG; a recovered device keeps its creation flags.
    options.zero_copy = config.zero_copy;
    options.zero_copy_direct = config.zero_copy;
  }
  return options;
}

// NOLINTNEXTLINE(readability-make-member-function-const): exposes a volume this service owns
Status Registry::create_device(VolumeEntry& v, unsigned queues, unsigned depth, int32_t dev_id) {
  ublk::DeviceOptions options = device_base_options(v);
  options.dev_id = dev_id;
  options.queues = queues;
  options.queue_depth = depth;
  options.recoverable = config.recoverable_devices;
  // QUIESCE where the kernel has it and the config leaves it on: online
  // resize and quiesced restarts (docs/operations.md "Kernels").
  options.quiesce =
      kernel.features && (ublk::optional_features_enabled(*kernel.features, kernel.turned_off) &
                          ublk::uapi::kFQuiesce) != 0;
  UBLKVOL_ASSIGN_OR_RETURN(v.device, ublk::UblkDevice::create(*v.frontend, options));
  note_queue_places(v, options);
  const auto& info = v.device->info();
  v.exposed = ExposeRecord{v.device->id(), info.nr_hw_queues, info.queue_depth};
  return ok_status();
}

void Registry::sample_reactors() {
  if (!reactors) {
    return;
  }
  reactor_samples.resize(reactors->size());
  for (size_t i = 0; i < reactors->size(); ++i) {
    reactor_samples[i].previous = reactor_samples[i].last;
    reactor_samples[i].last = reactors->at(i).counters();
  }
}

// Run periodically (daemon_main's timer): a store whose file was deleted or
// replaced under it, or whose DBS store failed (a metadata write or flush
// failed: I/O error, ENOSPC), is marked failed - state, reason, an event,
// a log line - and its replicas are failed in their engines (retried on
// every check while an engine refuses: the last replica in sync).
void Registry::check_stores() {
  for (auto& s : stores) {
    if (!s->store || !s->thread) {
      continue;  // never opened: already failed
    }
    if (s->error.empty()) {
      std::string reason = s->watch.check(s->path);
      if (reason.empty()) {
        Status healthy = s->thread->call([&] { return s->store->health(); });
        reason = healthy.ok() ? "" : healthy.error().message();
      }
      if (reason.empty()) {
        continue;
      }
      s->error = reason;
      s->events.emplace_back(rfc3339(std::chrono::system_clock::now()), "failed: " + reason);
      spdlog::error("store '{}' failed: {}", s->name, reason);
    }
    fail_replicas_on(*s);
  }
}

void Registry::fail_replicas_on(const StoreEntry& s) {
  for (auto& v : volumes) {
    if (!v->engine) {
      continue;
    }
    const engine::VolumeStatus status = v->engine->status();
    for (unsigned i = 0; i < status.replicas.size() && i < v->slots.size(); ++i) {
      const ReplicaState state = status.replicas[i].state;
      if (v->slots[i].store != &s ||
          (state != ReplicaState::kInSync && state != ReplicaState::kRebuilding)) {
        continue;
      }
      Status failed = v->engine->fail_replica(i, "store '" + s.name + "' failed: " + s.error);
      if (failed.ok()) {
        spdlog::warn("volume '{}': replica {} failed with its store '{}'", v->name, i, s.name);
      }
    }
  }
}

}  // namespace ublkvol::daemon
