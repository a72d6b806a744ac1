// Start-up recovery of pending intents and orphan DBS volumes, at the level
// of one dbs::Store (the Service runs each call on the store's thread). See
// docs/daemon.md "Intents and start-up recovery" and "Orphans".
//
// A replica of volume V on a store is two DBS volumes: V and
// V.engine-meta (engine/dbs_replica_store.h).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/store.h"

#include "intent_log.h"

namespace ublkvol::daemon {

inline constexpr const char* kReplicaMetaSuffix = ".engine-meta";

// Deletes the DBS volumes of replica `name` (data and meta), those present.
Status delete_replica_volumes(dbs::Store& store, const std::string& name);

// Finishes or undoes `intent` on one of its stores. `in_state`: state.json
// lists the intent's volume. The rules:
//   volume.create, snapshot.clone: state.json is the commit point - if the
//     volume is there the operation completed (nothing to do), else its
//     replicas are deleted (undo).
//   volume.delete: finished - the replica is deleted (the caller drops the
//     volume from state.json).
//   snapshot.create: kept where every store holding the volume has the
//     snapshot (`everywhere`), else deleted where it was made (undo).
//   snapshot.delete: finished - deleted where it is left.
//   snapshot.revert: finished - every replica that has the snapshot is
//     reverted to it again (reverting twice drops nothing more: the volume
//     was not exposed, so nothing was written since).
// Every rule is idempotent, so a crash during recovery is recovered by the
// next start.
Status recover_on_store(dbs::Store& store, const Intent& intent, bool in_state, bool everywhere);

// snapshot.create: whether this store's replica of `volume` has `snapshot`
// (true if the store holds no replica of it: it does not count).
bool has_snapshot_or_no_volume(const dbs::Store& store, const std::string& volume,
                               const std::string& snapshot);

// A DBS volume pair on a store that no volume of state.json has a replica in.
struct Orphan {
  std::string volume;       // the replica's name (without .engine-meta)
  uint64_t size_bytes = 0;  // of the data volume (0 if only the meta is left)
  bool complete = false;    // data and meta volume both present (importable)
};

// The orphans on `store`: replica names not in `known` (the volumes that
// have a replica on this store, per state.json).
std::vector<Orphan> find_orphans(const dbs::Store& store, const std::set<std::string>& known);

}  // namespace ublkvol::daemon
