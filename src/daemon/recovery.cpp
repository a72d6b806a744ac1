#include "recovery.h"

#include <cstring>
#include <map>

namespace ublkvol::daemon {
namespace {

bool is_meta_name(const std::string& name) {
  const size_t n = std::strlen(kReplicaMetaSuffix);
  return name.size() > n && name.compare(name.size() - n, n, kReplicaMetaSuffix) == 0;
}

}  // namespace

Status delete_replica_volumes(dbs::Store& store, const std::string& name) {
  for (const std::string& n : {name, name + kReplicaMetaSuffix}) {
    auto id = store.find_volume(n);
    if (id.ok()) {
      UBLKVOL_TRY(store.delete_volume(*id));
    }
  }
  return ok_status();
}

bool has_snapshot_or_no_volume(const dbs::Store& store, const std::string& volume,
                               const std::string& snapshot) {
  auto id = store.find_volume(volume);
  if (!id.ok()) {
    return true;
  }
  return store.find_snapshot(*id, snapshot).ok();
}

Status recover_on_store(dbs::Store& store, const Intent& intent, bool in_state, bool everywhere) {
  switch (intent.op) {
    case IntentOp::kVolumeCreate:
    case IntentOp::kSnapshotClone:
      return in_state ? ok_status() : delete_replica_volumes(store, intent.volume);
    case IntentOp::kVolumeDelete:
      return delete_replica_volumes(store, intent.volume);
    case IntentOp::kSnapshotCreate:
    case IntentOp::kSnapshotDelete:
    case IntentOp::kSnapshotRevert: {
      auto volume = store.find_volume(intent.volume);
      if (!volume.ok()) {
        return ok_status();  // no replica here (any more)
      }
      auto snapshot = store.find_snapshot(*volume, intent.snapshot);
      if (!snapshot.ok()) {
        return ok_status();
      }
      if (intent.op == IntentOp::kSnapshotRevert) {
        return store.revert_volume(*volume, *snapshot);
      }
      if (intent.op == IntentOp::kSnapshotCreate && everywhere) {
        return ok_status();
      }
      return store.delete_snapshot(*snapshot);
    }
  }
  return ok_status();
}

std::vector<Orphan> find_orphans(const dbs::Store& store, const std::set<std::string>& known) {
  std::map<std::string, Orphan> found;
  for (const dbs::VolumeInfo& info : store.list_volumes()) {
    const bool meta = is_meta_name(info.name);
    const std::string replica =
        meta ? info.name.substr(0, info.name.size() - std::strlen(kReplicaMetaSuffix)) : info.name;
    if (known.contains(replica)) {
      continue;
    }
    Orphan& orphan = found[replica];
    orphan.volume = replica;
    if (!meta) {
      orphan.size_bytes = info.size_bytes;
    }
  }
  std::vector<Orphan> out;
  for (auto& [name, orphan] : found) {
    orphan.complete =
        store.find_volume(name).ok() && store.find_volume(name + kReplicaMetaSuffix).ok();
    out.push_back(std::move(orphan));
  }
  return out;
}

}  // namespace ublkvol::daemon
