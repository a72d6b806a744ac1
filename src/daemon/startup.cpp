// Start and stop of the registry: state.json and intents.json are read,
// stores and volumes opened, interrupted operations resolved (recovery.h),
// exposed volumes re-attached; at shutdown devices are stopped or detached
// and everything is closed (docs/daemon.md "Start-up and recovery",
// "Signals and shutdown").
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <exception>
#include <spdlog/spdlog.h>
#include <string>
#include <thread>

#include "ublkvol/dbs/device_users.h"

#include "device_in_use.h"
#include "registry.h"

namespace ublkvol::daemon {
namespace {

// Within systemd's TimeoutStopSec (90 s) with room for the volumes' close.
constexpr std::chrono::seconds kHandOverQuiesceTimeout{10};

// Leaves a device in use to the next daemon. With UBLK_F_QUIESCE (6.16+) the
// driver first stops handing out requests and the queues finish the ones
// they hold, so the next process has nothing to re-issue; otherwise, or if
// the quiesce fails, a plain detach (the requests held are re-issued after
// the next process's recovery, as after a kill). Returns " (quiesced)" or "".
std::string hand_over(VolumeEntry& v) {
  ublk::UblkDevice& device = *v.device;
  if (device.quiescable()) {
    Status quiesced = device.quiesce_and_detach(kHandOverQuiesceTimeout);
    if (quiesced.ok()) {
      return " (quiesced)";
    }
    spdlog::warn("volume '{}': {}; detaching without quiescing", v.name,
                 quiesced.error().message());
  }
  Status detached = device.detach();
  if (!detached.ok()) {
    spdlog::error("volume '{}': detach failed: {}", v.name, detached.error().message());
  }
  return "";
}

}  // namespace

Result<std::unique_ptr<Registry>> Registry::start(const DaemonConfig& config) {
  UBLKVOL_TRY(validate_config(config));
  UBLKVOL_ASSIGN_OR_RETURN(DaemonState state, load_state(config.state_dir));
  std::unique_ptr<Registry> registry(new Registry());
  registry->config = config;
  // Said once, from the options every store is opened with.
  const dbs::OpenOptions open_options = registry->store_open_options();
  spdlog::info(
      "stores: the data of new mappings is made durable before their journal record by {}; "
      "device submit batch {}",
      open_options.mapping_data_order == dbs::OpenOptions::MappingDataOrder::kFuaData
          ? "FUA data writes (store_data_order fua)"
          : "one device flush per commit (store_data_order flush)",
      registry->device_options().submit_batch);
  if (config.reactors) {
    reactor::ReactorSetOptions reactor_options;
    reactor_options.count = *config.reactors;
    reactor_options.pin = true;
    reactor_options.io_flusher = true;
    UBLKVOL_ASSIGN_OR_RETURN(const std::vector<int> cpus, reactor::affinity_cpus());
    reactor_options.poll_in_flight = reactor_poll_in_flight(config, cpus.size());
    reactor_options.poll_max_percent = config.reactor_poll_max_percent;
    UBLKVOL_ASSIGN_OR_RETURN(registry->reactors, stack::start_reactors(reactor_options));
    registry->queue_host = std::make_unique<stack::ReactorQueueHost>(*registry->reactors);
    if (registry->config.queues == 0) {
      registry->config.queues = std::min(59U, static_cast<unsigned>(registry->reactors->size()));
    }
    spdlog::info(
        "{} reactors: store i on reactor i mod {}, a volume's ublk queues on its replicas' "
        "reactors; adaptive polling {}",
        registry->reactors->size(), registry->reactors->size(),
        reactor_options.poll_in_flight.count() > 0
            ? std::to_string(reactor_options.poll_in_flight.count()) + " us (at most " +
                  std::to_string(reactor_options.poll_max_percent) + "% of each reactor)"
            : std::string("off"));
  }
  const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
  // The engine takes at most 60 queues; the last is reserved for NBD exports.
  registry->engine_queues = std::min(59U, std::max(registry->config.queues, cpus));
  registry->read_kernel();
  UBLKVOL_ASSIGN_OR_RETURN(registry->intents, IntentLog::open(config.state_dir));
  registry->load(std::move(state));
  // Backups a stop or crash interrupted go on (backup_jobs.h).
  UBLKVOL_TRY(registry->backup_jobs.persist_in(config.state_dir));
  resume_backup_jobs(*registry);
  return registry;
}

Registry::~Registry() {
  // A destructor must not throw (that would be std::terminate): an exception
  // from shutdown is reported instead, and the members are destroyed as usual.
  try {
    (void)shutdown();
  } catch (const std::exception& e) {
    (void)std::fprintf(stderr, "ublk-volumed: error: shutdown: %s\n", e.what());
  }
}

// Finishes or undoes every pending intent on the stores that are online
// (recovery.h has the rule per operation); a volume.delete drops the
// volume from `state`. What is left on a store that is not online shows up
// as an orphan when it returns. Returns the intents resolved (cleared once
// `state` is saved).
std::vector<uint64_t> Registry::recover_intents(DaemonState& state) {
  std::vector<uint64_t> resolved;
  for (const Intent& intent : intents.pending()) {
    auto known = std::find_if(state.volumes.begin(), state.volumes.end(),
                              [&](const VolumeRecord& r) { return r.name == intent.volume; });
    const bool in_state = known != state.volumes.end();
    bool everywhere = true;
    if (intent.op == IntentOp::kSnapshotCreate) {
      for (const auto& store_name : intent.stores) {
        StoreEntry* s = find_store(store_name);
        everywhere = everywhere && s != nullptr && s->online() &&
                     s->run([&](dbs::Store& store) {
                        return has_snapshot_or_no_volume(store, intent.volume, intent.snapshot)
                                   ? ok_status()
                                   : Status(Error(ENOENT, "no snapshot"));
                      }).ok();
      }
    }
    spdlog::warn("recovering the interrupted {}", describe(intent));
    for (const auto& store_name : intent.stores) {
      StoreEntry* s = find_store(store_name);
      if (s == nullptr || !s->online()) {
        spdlog::warn(
            "  store '{}' is not available: what the operation left there shows up as "
            "an orphan when it returns",
            store_name);
        continue;
      }
      Status done = s->run(
          [&](dbs::Store& store) { return recover_on_store(store, intent, in_state, everywhere); });
      if (!done.ok()) {
        spdlog::error("  store '{}': {}", store_name, done.error().message());
      }
    }
    if (intent.op == IntentOp::kVolumeDelete && in_state) {
      state.volumes.erase(known);
    }
    resolved.push_back(intent.id);
  }
  return resolved;
}

// state.json's size of a just-opened volume against what its replicas
// hold. Larger than the replicas: a state file from elsewhere or edited by
// hand - exposing it would promise space no replica has, so the volume is
// refused (error set). Smaller: what a daemon killed during volume.resize
// leaves (every replica is grown before state.json), so the resize is
// finished; true if the recorded size changed (the caller saves).
bool Registry::agree_on_size(VolumeEntry& v) {
  const uint64_t replicas = v.engine->info().size_bytes;
  if (replicas == v.size_bytes) {
    return false;
  }
  if (replicas < v.size_bytes) {
    v.error = "state.json gives volume " + named(v.name) + " " + std::to_string(v.size_bytes) +
              " bytes but its replicas hold " + std::to_string(replicas) +
              " bytes; refusing to open it (fix its size_bytes in state.json, or remove it "
              "from state.json and adopt the replicas with `volume import`)";
    return false;
  }
  spdlog::warn(
      "volume '{}': replicas hold {} bytes, state.json {}: finishing an interrupted "
      "resize",
      v.name, replicas, v.size_bytes);
  v.size_bytes = replicas;
  return true;
}

void Registry::load(DaemonState state) {
  bool sizes_adopted = false;  // agree_on_size() changed a volume's recorded size
  bool uuid_changed = false;   // an older state file's random uuid replaced
  for (const auto& record : state.stores) {
    auto entry = std::make_unique<StoreEntry>();
    entry->name = record.name;
    entry->path = record.path;
    entry->uuid = record.uuid;
    Status opened = open_store(*entry);
    if (!opened.ok()) {
      entry->error = opened.error().message();
      spdlog::error("{}", entry->error);
    } else {
      spdlog::info("store '{}' opened and checked: {}", entry->name, entry->path);
    }
    uuid_changed = uuid_changed || entry->uuid != record.uuid;
    stores.push_back(std::move(entry));
  }
  const std::vector<uint64_t> resolved = recover_intents(state);
  for (const auto& record : state.volumes) {
    auto v = std::make_unique<VolumeEntry>();
    v->name = record.name;
    v->size_bytes = record.size_bytes;
    v->min_replicas = record.min_replicas;
    v->exposed = record.exposed;
    v->exported = record.exported;
    size_t next = 0;
    for (const auto& store_name : record.stores) {
      StoreEntry* s = find_store(store_name);
      if (s == nullptr || !s->online() || next >= v->slots.size()) {
        v->missing_stores.push_back(store_name);
        spdlog::error("volume '{}': replica on store '{}' is unavailable{}", v->name, store_name,
                      s == nullptr ? " (no such store)" : ": " + s->error);
        continue;
      }
      v->slots[next].store = s;
      Status opened = open_slot(*v, v->slots[next], v->name);
      if (!opened.ok()) {
        spdlog::error("{}", opened.error().message());
        v->slots[next].store = nullptr;
        v->missing_stores.push_back(store_name);
        continue;
      }
      ++next;
    }
    load_remotes(*v, record.remotes, next);
    if (next == 0) {
      v->error = "no replica of the volume is available";
    } else {
      Status opened = open_engine(*v);
      if (!opened.ok()) {
        v->held.held = opened.error().errno_value() == ENOLINK;
        v->error = opened.error().errno_value() == ENOLINK
                       ? held_back_message(*v, opened.error().message())
                       : opened.error().message();
      } else {
        sizes_adopted = agree_on_size(*v) || sizes_adopted;
      }
    }
    if (!v->error.empty()) {
      spdlog::error("volume '{}' cannot be opened: {}", v->name, v->error);
      close_volume(*v);
    } else {
      const auto status = v->engine->status();
      spdlog::info("volume '{}' opened: {} of {} replicas in sync, generation {:#x}", v->name,
                   status.in_sync, next, status.generation);
    }
    volumes.push_back(std::move(v));
  }
  if ((!resolved.empty() || uuid_changed || sizes_adopted) && save().ok()) {
    for (uint64_t id : resolved) {
      if (Status cleared = intents.clear(id); !cleared.ok()) {
        spdlog::error("{}", cleared.error().message());
      }
    }
  }
  for (const auto& o : orphans()) {
    spdlog::warn(
        "orphan: store '{}' holds volume '{}' ({} bytes) that no volume of state.json "
        "has a replica in (adopt it: ublk-volume volume import; remove it: "
        "ublk-volume store gc)",
        o.first, o.second.volume, o.second.size_bytes);
  }
  start_recorded_exports(*this);  // NBD exports (exports.h)
  // Re-expose: re-attach to devices a previous process left, else create.
  bool any_exposed = false;
  for (auto& v : volumes) {
    any_exposed = any_exposed || (v->exposed && v->engine);
  }
  if (!any_exposed) {
    return;
  }
  const Status ublk_ok = probe_ublk();
  for (auto& v : volumes) {
    if (!v->exposed || !v->engine) {
      continue;
    }
    if (!ublk_ok.ok()) {
      spdlog::error("volume '{}' stays unexposed: {}", v->name, ublk_ok.error().message());
      continue;
    }
    reexpose(*v);
  }
}

void Registry::reexpose(VolumeEntry& v) {
  const ExposeRecord record = *v.exposed;
  ublk::DeviceOptions options = device_base_options(v);
  options.dev_id = static_cast<int32_t>(record.dev_id);
  options.queues = record.queues;
  options.queue_depth = record.queue_depth;
  options.recoverable = true;
  auto recovered = ublk::UblkDevice::recover(*v.frontend, record.dev_id, options);
  if (recovered.ok()) {
    v.device = std::move(*recovered);
    note_queue_places(v, options);
    spdlog::info("volume '{}': re-attached to {} (user recovery)", v.name, v.device->block_path());
    return;
  }
  spdlog::info("volume '{}': no device {} to re-attach ({}); creating one", v.name, record.dev_id,
               recovered.error().message());
  Status created =
      create_device(v, record.queues, record.queue_depth, static_cast<int32_t>(record.dev_id));
  if (!created.ok()) {
    created = create_device(v, record.queues, record.queue_depth, -1);
  }
  if (!created.ok()) {
    spdlog::error("volume '{}' cannot be exposed: {}", v.name, created.error().message());
    return;
  }
  spdlog::info("volume '{}' exposed as {}", v.name, v.device->block_path());
  (void)save();
}

Service::ShutdownReport Registry::shutdown() {
  Service::ShutdownReport report;
  if (shut_down_) {
    return report;
  }
  shut_down_ = true;
  // Backups read from the stores closed below: stop them first (each leaves
  // a partial manifest that the same backup.create resumes).
  backup_jobs.stop_all();
  for (auto& v : volumes) {
    stop_export(*v);  // NBD clients first: no new requests while devices go
  }
  for (auto& v : volumes) {
    if (!v->device) {
      continue;
    }
    const std::string path = v->device->block_path();
    auto in_use = block_device_in_use(path);
    if (in_use.ok() && *in_use) {
      const std::string holder = dbs::describe_device_users(path);
      const std::string how = hand_over(*v);
      std::string line = v->name + " (" + path + ")";
      line += holder.empty() ? ": in use" : ": " + holder;
      line += how;
      spdlog::warn("{} is in use: detached, left for the next ublk-volumed to re-attach", line);
      report.detached.push_back(line);
    } else {
      Status stopped = v->device->stop_and_delete();
      if (!stopped.ok()) {
        spdlog::error("volume '{}': stopping {} failed: {}", v->name, path,
                      stopped.error().message());
      }
      spdlog::info("volume '{}': {} stopped and deleted", v->name, path);
      report.stopped.push_back(v->name);
    }
    v->device.reset();
  }
  for (auto& v : volumes) {
    close_volume(*v);
  }
  for (auto& s : stores) {
    s->close();
  }
  return report;
}

}  // namespace ublkvol::daemon
