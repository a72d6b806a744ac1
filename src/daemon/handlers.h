// The control protocol's method handlers, one file per family:
//
//   methods_store.cpp     store.add/list/show/remove/check/gc
//   methods_volume.cpp    volume.create/import/list/show/delete/expose/unexpose/resize
//   methods_snapshot.cpp  snapshot.create/list/delete/revert/clone
//   methods_replica.cpp   replica.list/add/remove/rebuild/fail/verify
//   methods_status.cpp    daemon.status, stats
//   methods_backup.cpp    backup.create/list/show/verify/delete
//
// Each reads its params (Params: types, names, unknown fields), acts on the
// registry and renders the answer (render.h). dispatch() (dispatch.cpp) picks
// the handler by the method table (methods.h). The handlers run on the
// daemon's control thread, one request at a time, and may block.
#pragma once

#include <cerrno>
#include <string>
#include <utility>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/protocol.h"

#include "registry.h"

namespace ublkvol::daemon {

// The result object of `request`, or the Error its response carries.
Result<Json> dispatch(Registry& r, const Request& request);

// EINVAL (-> invalid_argument) with `message`.
inline Error invalid(std::string message) { return Error(EINVAL, std::move(message)); }
// The params of a method that takes one name: reads `key`, refuses any
// other field (that refusal first, as every handler reads all its fields
// before it reports one).
Result<std::string> sole_name(Params& p, const std::string& key);

Result<Json> store_add(Registry& r, Params& p);
Result<Json> store_list(Registry& r, Params& p);
Result<Json> store_show(Registry& r, Params& p);
Result<Json> store_remove(Registry& r, Params& p);
Result<Json> store_check(Registry& r, Params& p);
Result<Json> store_gc(Registry& r, Params& p);

Result<Json> volume_create(Registry& r, Params& p);
Result<Json> volume_import(Registry& r, Params& p);
Result<Json> volume_list(Registry& r, Params& p);
Result<Json> volume_show(Registry& r, Params& p);
Result<Json> volume_delete(Registry& r, Params& p);
Result<Json> volume_expose(Registry& r, Params& p);
Result<Json> volume_unexpose(Registry& r, Params& p);
Result<Json> volume_resize(Registry& r, Params& p);
Result<Json> volume_export(Registry& r, Params& p);  // methods_export.cpp
Result<Json> volume_unexport(Registry& r, Params& p);
Result<Json> volume_open(Registry& r, Params& p);  // held_volume.cpp
// Opens held-back volumes whose missing replica is back (each store check).
void auto_open_held_volumes(Registry& r);

Result<Json> snapshot_create(Registry& r, Params& p);
Result<Json> snapshot_list(Registry& r, Params& p);
Result<Json> snapshot_delete(Registry& r, Params& p);
Result<Json> snapshot_revert(Registry& r, Params& p);
Result<Json> snapshot_clone(Registry& r, Params& p);

Result<Json> replica_list(Registry& r, Params& p);
Result<Json> replica_add(Registry& r, Params& p);
Result<Json> replica_remove(Registry& r, Params& p);
Result<Json> replica_replace(Registry& r, Params& p);  // methods_remote_replica.cpp
Result<Json> replica_rebuild(Registry& r, Params& p);
Result<Json> replica_fail(Registry& r, Params& p);
Result<Json> replica_verify(Registry& r, Params& p);

Result<Json> backup_create(Registry& r, Params& p);  // methods_backup.cpp
Result<Json> backup_list(Registry& r, Params& p);
Result<Json> backup_show(Registry& r, Params& p);
Result<Json> backup_verify(Registry& r, Params& p);
Result<Json> backup_delete(Registry& r, Params& p);
Result<Json> backup_restore(Registry& r, Params& p);
// Starts (or, at start-up, resumes) the restore job `spec` into every
// replica of `v` (methods_backup.cpp).
Status start_restore_job(Registry& r, VolumeEntry& v, const BackupJobSpec& spec, bool resumed);
// backup.restore with `snapshot` (methods_restore_snapshot.cpp): checks
// the volume, its replicas and the backup, and starts the restore as the new
// snapshot spec.snapshot of volume spec.volume (params parsed into `spec`).
Result<Json> restore_as_snapshot(Registry& r, BackupJobSpec spec);
// Starts (or resumes) it on the stores of spec.stores.
Status start_restore_snapshot_job(Registry& r, const BackupJobSpec& spec, bool resumed);
// Before a restore starts: every online store of `stores` must have room
// for the backup's data (`data_bytes`, written to each replica), else
// ENOSPC naming the store, its free space and the need - the restore would
// fail part-way otherwise (methods_restore_snapshot.cpp).
Status check_restore_space(Registry& r, const std::vector<std::string>& stores,
                           const std::string& backup, uint64_t data_bytes);

Result<Json> daemon_status(Registry& r, Params& p);
Result<Json> stats(Registry& r, Params& p);

}  // namespace ublkvol::daemon
