// The control protocol's methods: one table of names, parameters and help
// that the daemon's dispatcher (src/daemon/dispatch.cpp), its up-front name
// checks (validate_dbs_names) and the CLI (src/cli) all read, so a method's
// name is written once (docs/control-protocol.md describes each in full).
//
//   daemon:  const MethodInfo* m = find_method(request.method);  // nullptr: unknown_method
//   CLI:     client.call(method_name(Method::kVolumeShow), {{"name", "vol0"}});
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace ublkvol::daemon {

enum class Method {
  kDaemonStatus,
  kStats,
  kStoreAdd,
  kStoreList,
  kStoreShow,
  kStoreRemove,
  kStoreCheck,
  kStoreGc,
  kVolumeCreate,
  kVolumeImport,
  kVolumeList,
  kVolumeShow,
  kVolumeDelete,
  kVolumeExpose,
  kVolumeUnexpose,
  kVolumeResize,
  kVolumeExport,
  kVolumeUnexport,
  kVolumeOpen,
  kSnapshotCreate,
  kSnapshotList,
  kSnapshotDelete,
  kSnapshotRevert,
  kSnapshotClone,
  kReplicaList,
  kReplicaAdd,
  kReplicaRemove,
  kReplicaReplace,
  kReplicaRebuild,
  kReplicaFail,
  kReplicaVerify,
  kBackupCreate,
  kBackupList,
  kBackupShow,
  kBackupVerify,
  kBackupDelete,
  kBackupRestore,
};
inline constexpr size_t kMethodCount = static_cast<size_t>(Method::kBackupRestore) + 1;

// The JSON type and the check a parameter gets (Params' accessors).
enum class ParamKind {
  kName,      // string, validate_name()
  kString,    // any string
  kUint,      // unsigned integer
  kSize,      // unsigned integer, > 0, multiple of kSizeAlignment
  kBool,      // true / false
  kNameList,  // array of distinct names
};

struct ParamSpec {
  std::string_view key;
  ParamKind kind;
  bool required;
  // For a name the method creates in DBS (a volume or snapshot name): its
  // longest allowed length (protocol.h kMaxVolumeNameLength ...), checked
  // before the method runs; 0 for any other field.
  size_t dbs_name_max = 0;
};

struct MethodInfo {
  Method method;
  std::string_view name;     // on the wire: "volume.create"
  std::string_view summary;  // one line of help (the CLI's command description)
  std::span<const ParamSpec> params;
};

// Every method, in Method order.
std::span<const MethodInfo> all_methods();
const MethodInfo& method_info(Method method);
std::string_view method_name(Method method);
// nullptr if `name` is no method.
const MethodInfo* find_method(std::string_view name);
// "name", "string", "unsigned integer", ...: for messages and tests.
std::string_view to_string(ParamKind kind);

}  // namespace ublkvol::daemon
