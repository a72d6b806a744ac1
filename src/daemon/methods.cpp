#include "ublkvol/daemon/methods.h"

#include <array>

#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {
namespace {

using K = ParamKind;

constexpr ParamSpec kName[] = {{"name", K::kName, true}};
constexpr ParamSpec kVolume[] = {{"volume", K::kName, true}};
constexpr ParamSpec kStoreAdd[] = {{"name", K::kName, true},         {"path", K::kString, true},
                                   {"format", K::kBool, false},      {"size", K::kSize, false},
                                   {"extent_size", K::kSize, false}, {"force", K::kBool, false}};
constexpr ParamSpec kStoreGc[] = {{"name", K::kName, true}, {"dry_run", K::kBool, false}};
constexpr ParamSpec kVolumeCreate[] = {{"name", K::kName, true, kMaxVolumeNameLength},
                                       {"size", K::kSize, true},
                                       {"stores", K::kNameList, true},
                                       {"min_replicas", K::kUint, false},
                                       {"remote", K::kString, false},
                                       {"tls_psk", K::kString, false},
                                       {"insecure_plain", K::kBool, false}};
constexpr ParamSpec kVolumeImport[] = {
    {"name", K::kName, true}, {"stores", K::kNameList, true}, {"min_replicas", K::kUint, false}};
constexpr ParamSpec kVolumeExpose[] = {
    {"name", K::kName, true}, {"queues", K::kUint, false}, {"queue_depth", K::kUint, false}};
constexpr ParamSpec kVolumeExport[] = {{"name", K::kName, true},
                                       {"listen", K::kString, true},
                                       {"tls_psk", K::kString, false},
                                       {"tls_cert", K::kString, false},
                                       {"tls_key", K::kString, false},
                                       {"tls_ca", K::kString, false},
                                       {"insecure_plain", K::kBool, false},
                                       {"max_connections", K::kUint, false}};
constexpr ParamSpec kVolumeResize[] = {{"name", K::kName, true}, {"size", K::kSize, true}};
constexpr ParamSpec kSnapshotCreate[] = {{"volume", K::kName, true},
                                         {"name", K::kName, true, kMaxSnapshotNameLength}};
constexpr ParamSpec kSnapshot[] = {{"volume", K::kName, true}, {"name", K::kName, true}};
constexpr ParamSpec kSnapshotClone[] = {{"volume", K::kName, true},
                                        {"snapshot", K::kName, true},
                                        {"clone", K::kName, true, kMaxVolumeNameLength}};
constexpr ParamSpec kReplicaAdd[] = {{"volume", K::kName, true},
                                     {"store", K::kName, false},
                                     {"uri", K::kString, false},
                                     {"tls_psk", K::kString, false},
                                     {"insecure_plain", K::kBool, false}};
constexpr ParamSpec kReplicaReplace[] = {{"volume", K::kName, true},
                                         {"index", K::kUint, true},
                                         {"uri", K::kString, true},
                                         {"tls_psk", K::kString, false},
                                         {"insecure_plain", K::kBool, false}};
constexpr ParamSpec kReplica[] = {{"volume", K::kName, true}, {"index", K::kUint, true}};
constexpr ParamSpec kReplicaFail[] = {{"volume", K::kName, true},
                                      {"index", K::kUint, true},
                                      {"reason", K::kString, false},
                                      {"force", K::kBool, false}};
constexpr ParamSpec kReplicaVerify[] = {
    {"volume", K::kName, true}, {"repair", K::kBool, false}, {"rate", K::kUint, false}};
constexpr ParamSpec kVolumeOpen[] = {{"name", K::kName, true},
                                     {"accept_data_loss", K::kBool, false}};
constexpr ParamSpec kStats[] = {{"volume", K::kName, false}};
constexpr ParamSpec kBackupCreate[] = {{"volume", K::kName, true},   {"snapshot", K::kName, true},
                                       {"target", K::kString, true}, {"name", K::kName, false},
                                       {"parent", K::kName, false},  {"rate", K::kUint, false}};
constexpr ParamSpec kBackupTarget[] = {{"target", K::kString, true}};
constexpr ParamSpec kBackupRestore[] = {{"target", K::kString, true},
                                        {"name", K::kName, true},
                                        {"volume", K::kName, true, kMaxVolumeNameLength},
                                        {"stores", K::kNameList, false},
                                        {"snapshot", K::kName, false, kMaxSnapshotNameLength},
                                        {"min_replicas", K::kUint, false},
                                        {"rate", K::kUint, false}};
constexpr ParamSpec kBackupNamed[] = {{"target", K::kString, true}, {"name", K::kName, true}};
constexpr ParamSpec kBackupDelete[] = {
    {"target", K::kString, true}, {"name", K::kName, true}, {"rate", K::kUint, false}};

constexpr std::span<const ParamSpec> kNoParams{};

// The summaries are the CLI's command descriptions (ublk-volume ... --help).
constexpr std::array<MethodInfo, kMethodCount> kMethods = {{
    {Method::kDaemonStatus, "daemon.status",
     "Daemon status: version, uptime, ublk availability, counts", kNoParams},
    {Method::kStats, "stats", "I/O rates and latency per exposed volume (iostat-like)", kStats},
    {Method::kStoreAdd, "store.add", "Add a store (open an existing one, or --format a new one)",
     kStoreAdd},
    {Method::kStoreList, "store.list", "List stores with size, usage and state", kNoParams},
    {Method::kStoreShow, "store.show", "Show one store and the replicas it holds", kName},
    {Method::kStoreRemove, "store.remove",
     "Remove a store from the daemon (its data stays on disk)", kName},
    {Method::kStoreCheck, "store.check",
     "Check a store's metadata (exit status 1 if problems are found)", kName},
    {Method::kStoreGc, "store.gc",
     "Delete orphan volumes: DBS volumes on the store that no volume owns (left by an "
     "interrupted operation or another daemon)",
     kStoreGc},
    {Method::kVolumeCreate, "volume.create",
     "Create a thin-provisioned volume with one replica per store", kVolumeCreate},
    {Method::kVolumeImport, "volume.import",
     "Adopt orphan replicas (DBS volumes of this name that no volume owns, see "
     "'ublk-volume status') as a volume",
     kVolumeImport},
    {Method::kVolumeList, "volume.list", "List volumes with state, replicas and device", kNoParams},
    {Method::kVolumeShow, "volume.show",
     "Show a volume: replicas, rebuild progress, device, events", kName},
    {Method::kVolumeDelete, "volume.delete",
     "Delete a volume, its snapshots and its replicas' data", kName},
    {Method::kVolumeExpose, "volume.expose", "Expose a volume as a block device /dev/ublkbN",
     kVolumeExpose},
    {Method::kVolumeUnexpose, "volume.unexpose",
     "Remove a volume's block device (refused while it is in use)", kName},
    {Method::kVolumeResize, "volume.resize", "Grow a volume (shrinking is refused)", kVolumeResize},
    {Method::kVolumeExport, "volume.export",
     "Serve a volume over NBD (TLS required on TCP; re-exported after a restart)", kVolumeExport},
    {Method::kVolumeUnexport, "volume.unexport",
     "Stop a volume's NBD export (new clients refused, connections closed)", kName},
    {Method::kVolumeOpen, "volume.open",
     "Open a volume that could not be opened (e.g. held back for a missing replica that may "
     "hold newer writes) with the replicas available now",
     kVolumeOpen},
    {Method::kSnapshotCreate, "snapshot.create", "Take a snapshot (O(1), the volume stays online)",
     kSnapshotCreate},
    {Method::kSnapshotList, "snapshot.list", "List a volume's snapshots", kVolume},
    {Method::kSnapshotDelete, "snapshot.delete",
     "Delete a snapshot (its data merges into the next layer)", kSnapshot},
    {Method::kSnapshotRevert, "snapshot.revert",
     "Revert a volume to a snapshot (discards later writes; the volume must not be exposed)",
     kSnapshot},
    {Method::kSnapshotClone, "snapshot.clone",
     "Create a new volume from a snapshot (thin: shares its data)", kSnapshotClone},
    {Method::kReplicaList, "replica.list", "List a volume's replicas and their states", kVolume},
    {Method::kReplicaAdd, "replica.add",
     "Add a replica on a store or an NBD export (--uri); it rebuilds online", kReplicaAdd},
    {Method::kReplicaRemove, "replica.remove", "Remove a replica from a volume", kReplica},
    {Method::kReplicaReplace, "replica.replace",
     "Replace a replica by one on an NBD export (full online rebuild)", kReplicaReplace},
    {Method::kReplicaRebuild, "replica.rebuild",
     "Resync a failed or stale replica (only what changed)", kReplica},
    {Method::kReplicaFail, "replica.fail",
     "Take a replica out of service (e.g. before replacing its disk)", kReplicaFail},
    {Method::kReplicaVerify, "replica.verify",
     "Compare the replicas online (ordered against writes); --repair rewrites differences from "
     "the majority",
     kReplicaVerify},
    {Method::kBackupCreate, "backup.create",
     "Back up a snapshot to a target in the background (incremental with a parent backup)",
     kBackupCreate},
    {Method::kBackupList, "backup.list", "List the backups on a target and the backup jobs",
     kBackupTarget},
    {Method::kBackupShow, "backup.show", "Show one backup and its job's progress", kBackupNamed},
    {Method::kBackupVerify, "backup.verify",
     "Read and check every chunk of a backup (exit status 1 if problems are found)", kBackupNamed},
    {Method::kBackupDelete, "backup.delete",
     "Delete a backup and the chunks no other backup needs, in the background", kBackupDelete},
    {Method::kBackupRestore, "backup.restore",
     "Restore a backup into a new volume, or as a new snapshot of an existing one, in the "
     "background (every chunk checked before it is written; a new volume is usable once it is "
     "done)",
     kBackupRestore},
}};

// The table is indexed by Method: a row out of place is a compile error.
constexpr bool in_method_order() {
  for (size_t i = 0; i < kMethods.size(); ++i) {
    if (static_cast<size_t>(kMethods[i].method) != i) {
      return false;
    }
  }
  return true;
}
static_assert(in_method_order(), "kMethods must list the methods in Method order");

}  // namespace

std::span<const MethodInfo> all_methods() { return kMethods; }

const MethodInfo& method_info(Method method) { return kMethods.at(static_cast<size_t>(method)); }

std::string_view method_name(Method method) { return method_info(method).name; }

const MethodInfo* find_method(std::string_view name) {
  for (const MethodInfo& m : kMethods) {
    if (m.name == name) {
      return &m;
    }
  }
  return nullptr;
}

std::string_view to_string(ParamKind kind) {
  switch (kind) {
    case ParamKind::kName:
      return "name";
    case ParamKind::kString:
      return "string";
    case ParamKind::kUint:
      return "unsigned integer";
    case ParamKind::kSize:
      return "size";
    case ParamKind::kBool:
      return "boolean";
    case ParamKind::kNameList:
      return "list of names";
  }
  return "?";
}

}  // namespace ublkvol::daemon
