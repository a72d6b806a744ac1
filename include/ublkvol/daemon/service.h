// Service: what ublk-volumed manages - stores, volumes, their replicas and
// ublk devices - and the control protocol's methods on them
// (docs/control-protocol.md, docs/daemon.md).
//
// Composition (one of each per store / volume):
//
//   store  = FileDevice (O_DIRECT, io_uring) -> dbs::Store -> StoreThread
//            (the thread owns the store; every control operation on it runs
//            there through StoreThread::call)
//   volume = one DbsReplicaStore per replica (a DBS volume named like the
//            volume, in each of its stores) -> engine::ReplicatedVolume ->
//            write-through wrapper -> ublk::UblkDevice when exposed
//
// The data path is the engine's and the frontend's (shared-nothing, lock
// free); the Service is control path only. It is driven by one thread (the
// daemon's event loop): no method is thread-safe, and methods may block
// (store checks, snapshots, device creation).
//
// Persistent state (state_file.h) is saved after every change, before the
// response is sent.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {

class Service {
 public:
  // Loads <state_dir>/state.json, opens and checks every store, opens every
  // volume (the engine resyncs replicas as needed), and re-exposes the
  // volumes that were exposed: re-attaches (ublk user recovery) to a device a
  // previous process left, else creates one. Problems with single stores or
  // volumes are logged and reported by the methods (state "failed");
  // only an unreadable state file or state dir fails start().
  static Result<std::unique_ptr<Service>> start(const DaemonConfig& config);

  // Runs shutdown() if it has not run.
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Executes one request; returns the full response object. Never throws;
  // an unexpected exception becomes an `internal` error response.
  Json handle(const Request& request);

  // SIGTERM: for every exposed volume, stops and deletes its device if the
  // block device is not in use, else detaches it (a recoverable device stays
  // for the next daemon to re-attach) and logs it; then closes the volumes
  // (engine checkpoint), commits and closes the stores. The exposed flags stay
  // in the state file, so the next start re-exposes. Idempotent.
  struct ShutdownReport {
    std::vector<std::string> stopped;   // volume names whose device was deleted
    std::vector<std::string> detached;  // "vol0 (/dev/ublkb0): mounted on /mnt"
  };
  ShutdownReport shutdown();

  // Periodic store check (daemon_main runs it every kStoreCheckInterval): a
  // store whose file was deleted or replaced while open, or whose DBS store
  // failed, is reported failed (state, reason, event, log line) and its
  // replicas are failed in their volumes' engines (docs/daemon.md "Store
  // health").
  void check_stores();
  static constexpr int kStoreCheckIntervalMs = 1000;

  // One line for sd_notify STATUS= ("3 stores, 2 volumes, 1 exposed").
  [[nodiscard]] std::string status_line() const;

  // For tests: the hook save_state() gets (crash injection).
  void set_save_hook(SaveHook hook);

  struct Impl;

 private:
  explicit Service(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::daemon
