// The one place that assembles the storage stack under a replicated volume,
// so that every program opens stores and builds volumes the same way (with
// the store check on every path):
//
//   store file   dbs::FileDevice (O_DIRECT, io_uring); created and formatted
//                only when StoreOptions::format says so
//     [wrapper]  an optional dbs::BlockDevice around it (ublkvol-serve counts
//                what reaches the file)
//     dbs::Store opened (recovering its last commit), then Store::check():
//                a store with problems is refused (kind corruption)
//     engine::StoreThread  started last; from then on it owns the store and
//                every call into it goes through StoreThread::call
//   per volume, on each store's thread:
//     engine::DbsReplicaStore  the replica = DBS volume `name` (open_replica)
//       [wrapper] an optional engine::ReplicaStore around it
//       attached to the store's thread
//   engine::ReplicatedVolume over the bindings (open_volume).
//
// Users: ublkvol-serve (tools/serve_main.cpp, via src/ublk/replicated_backend.cpp)
// takes the whole StoreStack. The daemon's registry (src/daemon/assembly.cpp)
// keeps the pieces in its StoreEntry because it checks the file's identity
// and the store's uuid between opening the file and starting the thread; it
// opens every store with open_checked_store(), every replica with
// open_replica(thread, store, name) and every volume with open_volume().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"

namespace ublkvol::stack {

struct StoreOptions {
  // device.create_size != 0 creates a missing file of that size.
  dbs::FileDeviceOptions device;
  dbs::OpenOptions open;
  engine::StoreThreadOptions thread;
  // Formats the device before opening it (a new store). Never set for a
  // file that may hold a store: formatting loses what it held.
  bool format = false;
  dbs::FormatOptions format_options;
  // How errors name the store ("store 'a' (/dev/sdb)"); empty: "store PATH".
  std::string what;
  // Wraps the file device before the store sees it (empty: no wrapper).
  std::function<std::unique_ptr<dbs::BlockDevice>(dbs::BlockDevice&)> wrap_device;
};

// One open store: its file, the optional wrapper, the store and the thread
// that owns it. Destruction (or close()) stops the thread first, then
// destroys the store, the wrapper and the file, in that order. Replicas of
// the store must be gone (or detached and destroyed) before.
class StoreStack {
 public:
  StoreStack() = default;
  ~StoreStack() { close(); }
  StoreStack(StoreStack&&) noexcept = default;
  StoreStack& operator=(StoreStack&& other) noexcept;
  StoreStack(const StoreStack&) = delete;
  StoreStack& operator=(const StoreStack&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] dbs::FileDevice& file() const { return *file_; }
  // What the store runs on: the wrapper if there is one, else the file.
  [[nodiscard]] dbs::BlockDevice& device() const;
  [[nodiscard]] dbs::Store& store() const { return *store_; }
  [[nodiscard]] engine::StoreThread& thread() const { return *thread_; }
  [[nodiscard]] bool is_open() const { return thread_ != nullptr; }

  // Runs fn(store) on the store's thread (ESHUTDOWN if it stopped).
  Status run(const std::function<Status(dbs::Store&)>& fn) const;

  // Stops the thread (requests in flight are abandoned: close the volumes
  // first) and releases everything. Idempotent.
  void close();

 private:
  friend Result<StoreStack> open_store(std::unique_ptr<dbs::FileDevice> file,
                                       const StoreOptions& options);
  std::string path_;
  std::unique_ptr<dbs::FileDevice> file_;
  std::unique_ptr<dbs::BlockDevice> wrapper_;
  std::unique_ptr<dbs::Store> store_;
  std::unique_ptr<engine::StoreThread> thread_;
};

// Store::open on `device`, then Store::check(). A store with problems is
// refused: Error kind corruption (EUCLEAN) "<what> failed its check: <first
// problem> (and N more problems)". Open errors get "<what> is not a usable
// DBS store: " in front and keep their kind (a bad checksum is corruption, a
// foreign file is not).
Result<std::unique_ptr<dbs::Store>> open_checked_store(dbs::BlockDevice& device,
                                                       const dbs::OpenOptions& options,
                                                       std::string_view what);

// Opens (creates, formats) the file at `path` and the checked store on it,
// then starts its thread.
Result<StoreStack> open_store(const std::string& path, const StoreOptions& options);
// The same for a file the caller opened already (the daemon opens it, then
// checks what it opened before the store is read). options.device is unused.
Result<StoreStack> open_store(std::unique_ptr<dbs::FileDevice> file, const StoreOptions& options);

// Opens replica `name` of a store (engine::open_dbs_replica) on the store's
// thread, where every access to the store happens once the thread runs. Not
// attached: attach it (or a wrapper around it) with thread().attach().
Result<std::unique_ptr<engine::DbsReplicaStore>> open_replica(StoreStack& store,
                                                              const std::string& name);
// The same for a store whose thread the caller keeps itself (the daemon's
// registry); errors are left for the caller to name.
Result<std::unique_ptr<engine::DbsReplicaStore>> open_replica(engine::StoreThread& thread,
                                                              dbs::Store& store,
                                                              const std::string& name);
// Creates replica `name` of `size_bytes` in a store that lacks it
// (engine::create_dbs_replica), on the store's thread.
Status create_replica(StoreStack& store, const std::string& name, uint64_t size_bytes);

// The engine over attached replicas; errors name the volume.
Result<std::unique_ptr<engine::ReplicatedVolume>> open_volume(
    const engine::ReplicatedVolumeOptions& options, std::vector<engine::ReplicaBinding> bindings);

}  // namespace ublkvol::stack
