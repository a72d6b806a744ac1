// parse -> registry -> render: the method table (methods.h) maps a request's
// method to its handler (handlers.h), which reads its params, acts on the
// registry and renders the answer.
#include <array>
#include <cerrno>
#include <utility>

#include "ublkvol/daemon/methods.h"

#include "handlers.h"

namespace ublkvol::daemon {

Result<std::string> sole_name(Params& p, const std::string& key) {
  auto name = p.name(key);
  UBLKVOL_TRY(p.finish());
  return name;
}

Result<Json> dispatch(Registry& r, const Request& request) {
  // The handler of every method of the table (methods.h), by Method.
  using Handler = Result<Json> (*)(Registry&, Params&);
  static constexpr std::array<std::pair<Method, Handler>, kMethodCount> kHandlers = {{
      {Method::kDaemonStatus, &daemon_status},
      {Method::kStats, &stats},
      {Method::kStoreAdd, &store_add},
      {Method::kStoreList, &store_list},
      {Method::kStoreShow, &store_show},
      {Method::kStoreRemove, &store_remove},
      {Method::kStoreCheck, &store_check},
      {Method::kStoreGc, &store_gc},
      {Method::kVolumeCreate, &volume_create},
      {Method::kVolumeImport, &volume_import},
      {Method::kVolumeList, &volume_list},
      {Method::kVolumeShow, &volume_show},
      {Method::kVolumeDelete, &volume_delete},
      {Method::kVolumeExpose, &volume_expose},
      {Method::kVolumeUnexpose, &volume_unexpose},
      {Method::kVolumeResize, &volume_resize},
      {Method::kVolumeExport, &volume_export},
      {Method::kVolumeUnexport, &volume_unexport},
      {Method::kVolumeOpen, &volume_open},
      {Method::kSnapshotCreate, &snapshot_create},
      {Method::kSnapshotList, &snapshot_list},
      {Method::kSnapshotDelete, &snapshot_delete},
      {Method::kSnapshotRevert, &snapshot_revert},
      {Method::kSnapshotClone, &snapshot_clone},
      {Method::kReplicaList, &replica_list},
      {Method::kReplicaAdd, &replica_add},
      {Method::kReplicaRemove, &replica_remove},
      {Method::kReplicaReplace, &replica_replace},  // methods_remote_replica.cpp
      {Method::kReplicaRebuild, &replica_rebuild},
      {Method::kReplicaFail, &replica_fail},
      {Method::kReplicaVerify, &replica_verify},
      {Method::kBackupCreate, &backup_create},
      {Method::kBackupList, &backup_list},
      {Method::kBackupShow, &backup_show},
      {Method::kBackupVerify, &backup_verify},
      {Method::kBackupDelete, &backup_delete},
      {Method::kBackupRestore, &backup_restore},
  }};
  const MethodInfo* method = find_method(request.method);
  if (method == nullptr) {
    return unknown_method_error(request.method);
  }
  Params p(request.params, request.peer);
  UBLKVOL_TRY(validate_dbs_names(request.method, request.params));
  static_assert(
      [] {
        for (size_t i = 0; i < kHandlers.size(); ++i) {
          if (static_cast<size_t>(kHandlers[i].first) != i) {
            return false;
          }
        }
        return true;
      }(),
      "kHandlers must list every method in Method order");
  return kHandlers[static_cast<size_t>(method->method)].second(r, p);
}

}  // namespace ublkvol::daemon
