// Registry: what ublk-volumed manages - its stores and volumes - found by
// name, persisted to state.json, opened and closed. The method handlers
// (methods_*.cpp, handlers.h) parse a request, act on the registry and
// render the answer (render.h); Service (service.h) owns one registry.
//
// Files:
//   registry.cpp  lookup, persistence (state.json, intents), orphans, store
//                 health, ublk devices
//   assembly.cpp  the stack: opening a store (FileDevice -> dbs::Store ->
//                 check -> StoreThread) and building a volume (replicas ->
//                 ReplicatedVolume -> FrontendVolume), and closing them
//   startup.cpp   start (load, intent recovery, re-expose) and shutdown
//
// One thread (the daemon's event loop) drives it: nothing here is
// thread-safe, and calls may block (store checks, snapshots, device creation).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/service.h"
#include "ublkvol/daemon/state_file.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/nbd/server.h"
#include "ublkvol/reactor/reactor.h"
#include "ublkvol/stack/reactor_queue_host.h"
#include "ublkvol/ublk/device.h"

#include "backup_jobs.h"
#include "exports.h"
#include "frontend_volume.h"
#include "intent_log.h"
#include "peer_control.h"
#include "recovery.h"
#include "remote_replicas.h"
#include "store_identity.h"

namespace ublkvol::daemon {

// The DBS volume holding a replica's engine metadata: "<volume>.engine-meta".
inline constexpr const char* kMetaSuffix = ".engine-meta";

// "'name'", for messages.
std::string named(const std::string& name);
// "'a', 'b'".
std::string list_names(const std::vector<std::string>& names);
struct VolumeEntry;
// The error of a volume the engine refused to open because a replica in sync
// at its newest generation is missing (ENOLINK): the engine's message, what
// is unavailable, and the operator's ways out (held_volume.cpp).
std::string held_back_message(const VolumeEntry& v, const std::string& engine_message);

struct StoreEntry {
  std::string name;
  std::string path;
  std::string uuid;
  // A FileDevice; a MemoryDevice in in-process tests (Registry::add_open_store).
  std::unique_ptr<dbs::BlockDevice> device;
  std::unique_ptr<dbs::Store> store;
  std::unique_ptr<engine::StoreThread> thread;
  // The store's file, held open to tell it apart from other paths to it and
  // to notice its deletion or replacement (store_identity.h). Not valid for
  // a store on a memory device.
  StoreWatch watch;
  // Why the store is not usable ("" = online).
  std::string error;
  // What happened to the store while open: (RFC 3339 time, message).
  std::vector<std::pair<std::string, std::string>> events;

  // The file the store is on: the watched one, else what its path names now.
  [[nodiscard]] std::optional<FileIdentity> identity() const;
  [[nodiscard]] bool online() const { return store && thread && error.empty(); }
  // replica `replica` of this store as the engine binds it; fixed_buffer_io
  // (zero copy) when the store is on a FileDevice (assembly.cpp).
  [[nodiscard]] engine::ReplicaBinding binding(engine::ReplicaStore* replica) const;
  // Runs `fn(store)` on the store thread; EIO if the store is failed.
  Status run(const std::function<Status(dbs::Store&)>& fn);
  // Commits (if healthy) and stops the thread; closes store and device.
  void close();
};

struct ReplicaSlot {
  StoreEntry* store = nullptr;  // nullptr: no local replica at this engine index
  std::unique_ptr<engine::DbsReplicaStore> replica;
  // A replica on an NBD export instead (remote_replicas.h); store stays nullptr.
  std::unique_ptr<RemoteSlot> remote;
  // A replica (local or remote) is at this index.
  [[nodiscard]] bool used() const { return store != nullptr || remote != nullptr; }
  // Set while an NBD export reads this replica's mappings (exports.h).
  std::shared_ptr<ExportAllocation> export_allocation;
};

// A held-back volume's automatic open (held_volume.cpp).
struct HeldRetry {
  bool held = false;
  std::chrono::steady_clock::time_point next{};
  std::chrono::milliseconds delay{1000};
};

struct VolumeEntry {
  std::string name;
  uint64_t size_bytes = 0;
  unsigned min_replicas = 1;
  // By engine replica index.
  std::array<ReplicaSlot, engine::kMaxReplicas> slots;
  // Replicas on stores that were not online at start: kept in the state file
  // so that nothing is forgotten, reported by volume.show.
  std::vector<std::string> missing_stores;
  // Remote replicas that could not be reached at start: kept in the state
  // file, retried, and joined (full rebuild) once they answer.
  std::vector<std::unique_ptr<PendingRemote>> pending_remotes;
  std::unique_ptr<engine::ReplicatedVolume> engine;
  std::unique_ptr<FrontendVolume> frontend;
  std::unique_ptr<ublk::UblkDevice> device;
  // With reactors: the reactor (index) of each of `device`'s queues, as
  // attached (note_queue_places; status lists them per reactor).
  std::vector<unsigned> queue_reactors;
  // Persisted intent: exposed as this device (also while the device is not
  // there because ublk is unavailable).
  std::optional<ExposeRecord> exposed;
  // Persisted intent: exported over NBD (exports.h); the running export,
  // declared after the engine so that it stops first.
  std::optional<ExportRecord> exported;
  std::unique_ptr<nbd::NbdExport> nbd_export;
  // The export's peer control channel (peer_control.h), stopped before it.
  std::unique_ptr<PeerControl> peer_control;
  std::string error;  // the volume could not be opened
  // The next open_engine() passes the engine's accept_missing_in_sync
  // (volume.open --accept-data-loss, held_volume.cpp).
  bool accept_missing_in_sync = false;
  // Held back (ENOLINK): opened by itself once a missing replica is back
  // (auto_open_held_volumes, held_volume.cpp), retried with a backoff.
  HeldRetry held;

  // The names of the stores holding its (open) replicas, by index.
  [[nodiscard]] std::vector<std::string> replica_stores() const;
};

class Registry {
 public:
  // Validates `config`, reads state.json and intents.json, opens every store
  // and volume, resolves pending intents and re-exposes the volumes that
  // were exposed (startup.cpp). Problems of single stores or volumes are
  // recorded in them (state "failed"); only an unreadable state file or
  // state dir is an error.
  static Result<std::unique_ptr<Registry>> start(const DaemonConfig& config);
  // Runs shutdown() if it has not run.
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // ---- lookup (registry.cpp) ----------------------------------------------
  StoreEntry* find_store(const std::string& name);
  VolumeEntry* find_volume(const std::string& name);
  // ENOENT "store 'x' does not exist".
  Result<StoreEntry*> store_named(const std::string& name);
  Result<VolumeEntry*> volume_named(const std::string& name);
  // Also EIO if the volume is not open (its engine could not be opened).
  Result<VolumeEntry*> open_volume_named(const std::string& name);
  // Also EINVAL if the store is failed.
  Result<StoreEntry*> online_store_named(const std::string& name);
  // EINVAL for a reserved name (".engine-meta"), EEXIST for a taken one.
  Status check_new_volume_name(const std::string& name);
  // The volumes state.json has a replica of on `s`.
  [[nodiscard]] std::set<std::string> replicas_on(const StoreEntry& s) const;
  // The snapshot names, read from the first in-sync replica's store.
  Result<std::vector<std::string>> list_snapshots(VolumeEntry& v);
  [[nodiscard]] unsigned exposed_count() const;

  // ---- persistence (registry.cpp) -------------------------------------------
  [[nodiscard]] DaemonState snapshot_state() const;
  // Writes state.json (EIO naming the problem if it cannot).
  [[nodiscard]] Status save() const;
  // save(); if it fails the intent stays and start-up recovery decides.
  Status saved_or_kept(IntentGuard& guard) const;
  // Records the intent of a multi-step operation before its first step.
  Result<uint64_t> begin(IntentOp op, const std::string& volume, std::vector<std::string> on,
                         const std::string& snapshot = "", const std::string& origin = "");

  // ---- orphans (registry.cpp, recovery.h) ------------------------------------
  std::vector<Orphan> orphans_on(StoreEntry& s) const;
  [[nodiscard]] std::vector<std::pair<std::string, Orphan>> orphans() const;
  // Deletes the DBS volumes of replica `name` from a store (if present).
  static Status delete_replica_data(StoreEntry& s, const std::string& name);

  // ---- ublk (registry.cpp) ---------------------------------------------------
  // OK if ublk devices can be created; else ENODEV with the reason.
  [[nodiscard]] Status probe_ublk() const;
  // The running kernel and its ublk driver: read once at start (logged, with
  // a warning for a known-bad kernel), shown by daemon.status.
  struct KernelInfo {
    std::string release;               // uname -r
    std::optional<uint64_t> features;  // GET_FEATURES; none while ublk_drv is not loaded
    uint64_t turned_off = 0;           // config ublk_features_off, as a mask
    std::string warning;               // ublk::known_bad_kernel_warning()
  };
  void read_kernel();
  // The driver's features: those read at start, or (when ublk_drv was not
  // loaded then) read now; ENODEV naming the cause if there is no driver.
  Result<uint64_t> ublk_features();
  // Whether an optional feature (ublk::optional_features()) is in use; else
  // an EOPNOTSUPP error naming what is missing: the kernel feature (and
  // the kernel) or the config key that turned it off.
  Status require_optional_feature(uint64_t flag);
  Status create_device(VolumeEntry& v, unsigned queues, unsigned depth, int32_t dev_id);
  // Options every device of `v` starts from: its queues on the reactors if
  // any, each on a reactor that serves one of v's replicas (queue_places).
  [[nodiscard]] ublk::DeviceOptions device_base_options(const VolumeEntry& v) const;
  // The reactors (indexes) serving v's local replicas, each once, in replica
  // order; empty without reactors or local replicas.
  [[nodiscard]] std::vector<unsigned> replica_reactors(const VolumeEntry& v) const;
  // After v.device was attached with `options`: records v.queue_reactors.
  void note_queue_places(VolumeEntry& v, const ublk::DeviceOptions& options) const;

  // ---- store health (registry.cpp) -------------------------------------------
  void check_stores();

  // ---- the stack (assembly.cpp) ----------------------------------------------
  [[nodiscard]] dbs::FileDeviceOptions device_options() const;
  [[nodiscard]] dbs::OpenOptions store_open_options() const;
  // How the thread of `entry` (or of a store about to be added, nullptr)
  // is started: named after it, on reactor for_store(its index) if any.
  [[nodiscard]] engine::StoreThreadOptions store_thread_options(const std::string& name,
                                                                const StoreEntry* entry) const;
  // Opens `entry.path` (or takes `opened`, a device store.add just
  // formatted), opens and checks the DBS store, starts its thread.
  Status open_store(StoreEntry& entry, std::unique_ptr<dbs::FileDevice> opened = nullptr) const;
  // Adds a store on a device that is already open and holds a DBS store
  // (in-process tests: a MemoryDevice; no file to watch). Saves the state.
  Result<StoreEntry*> add_open_store(const std::string& name, const std::string& path,
                                     std::unique_ptr<dbs::BlockDevice> device);
  // The store (other than `self`) that is the same file or the same DBS
  // store (superblock uuid), with the reason; "" if none.
  [[nodiscard]] std::string same_store(const std::optional<FileIdentity>& identity,
                                       const std::string& uuid, const StoreEntry* self) const;
  // Opens a volume whose replicas exist on `slot_stores` (by index) and adds
  // it; `remotes` are formatted for it and follow the local replicas.
  Result<VolumeEntry*> open_new_volume(const std::string& name, uint64_t size,
                                       unsigned min_replicas,
                                       const std::vector<StoreEntry*>& slot_stores,
                                       const std::vector<RemoteReplicaRecord>& remotes = {});
  // Opens the replicas and the engine of a closed volume (its slots keep
  // their stores). On failure the volume stays closed with `error` set.
  Status reopen_volume(VolumeEntry& volume);
  // volume.open (held_volume.cpp): opens a volume that is not open - one
  // held back because a replica in sync at its newest generation is missing
  // (docs/operations.md, "A volume held back for a missing replica") or one
  // whose replicas failed to open - with the replicas available now; with
  // `accept_data_loss`, without the missing ones (dropped from the volume).
  // Re-exposes and re-exports it as recorded.
  Status open_held_volume(VolumeEntry& volume, bool accept_data_loss);
  // Opens the replica `replica_name` in the slot's store and attaches it.
  Status open_slot(VolumeEntry& v, ReplicaSlot& slot, const std::string& replica_name);
  // Detaches the slot's replica from its thread and destroys it there.
  static void close_slot(ReplicaSlot& slot);
  // The dirty-region size of the volume's first open local replica (what a
  // remote replica is formatted with: the engine wants them equal).
  static Result<uint64_t> local_region_bytes(VolumeEntry& v);
  Status open_engine(VolumeEntry& v);
  static void close_volume(VolumeEntry& v);

  // ---- start / stop (startup.cpp) --------------------------------------------
  Service::ShutdownReport shutdown();

  DaemonConfig config;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  // config.reactors: the set the stores and the devices' queues run on, and
  // the queue host over it (null: a thread each). Declared before stores and
  // volumes so that they are destroyed after them.
  std::unique_ptr<reactor::ReactorSet> reactors;
  std::unique_ptr<stack::ReactorQueueHost> queue_host;
  // Each reactor's counters at the last two samples (sample_reactors(), every
  // store check): daemon.status shows the busy share and messages per second
  // of the last interval without waiting for one. `previous` starts at zero
  // (the reactor's start).
  struct ReactorSamples {
    reactor::ReactorCounters previous;
    reactor::ReactorCounters last;
  };
  std::vector<ReactorSamples> reactor_samples;
  void sample_reactors();
  std::vector<std::unique_ptr<StoreEntry>> stores;
  std::vector<std::unique_ptr<VolumeEntry>> volumes;
  SaveHook save_hook;
  // Multi-step operations record their intent here first (intent_log.h).
  IntentLog intents;
  CrashPoints crash;
  // Queues of every engine: max(config.queues, CPUs), at most 60.
  unsigned engine_queues = 1;
  KernelInfo kernel;
  // Running backups (backup.create); stopped first at shutdown.
  BackupJobs backup_jobs;

 private:
  Registry() = default;
  [[nodiscard]] engine::ReplicatedVolumeOptions engine_options(const VolumeEntry& v) const;
  void fail_replicas_on(const StoreEntry& s);
  void load(DaemonState state);
  std::vector<uint64_t> recover_intents(DaemonState& state);
  bool agree_on_size(VolumeEntry& v);
  // Opens the remote replicas of a volume being loaded into the slots from
  // `next` on (advancing it); unreachable ones go to pending_remotes.
  static void load_remotes(VolumeEntry& v, const std::vector<RemoteReplicaRecord>& remotes,
                           size_t& next);
  void reexpose(VolumeEntry& v);

  bool shut_down_ = false;
};

}  // namespace ublkvol::daemon
