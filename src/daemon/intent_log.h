// IntentLog: crash safety of the daemon's multi-step control operations
// (docs/daemon.md "Intents and start-up recovery").
//
// volume.create, snapshot.clone and volume.delete change several stores and
// then state.json; snapshot.create/delete/revert change several stores. A
// daemon killed between two of those steps would leave DBS volumes that
// state.json does not know, or a volume present on some of its stores only.
// So each such operation first records an *intent* here (durably: temporary
// file, fsync, rename, directory fsync) and clears it after its last step;
// at start-up every intent still recorded is finished or undone
// (recovery.h) before any volume is opened.
//
// <state_dir>/intents.json:
//   {"format": "ublk-volumed-intents", "version": 1,
//    "intents": [{"id": 7, "op": "volume.create", "volume": "v",
//                 "stores": ["a", "b"], "snapshot": "", "origin": ""}]}
//
// Test hook: CrashPoints kills the process (SIGKILL) at the N-th step of
// the control operations when UBLKVOL_TEST_CRASH_STEP=N is set.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::daemon {

enum class IntentOp {
  kVolumeCreate,    // undo: delete the partial replicas unless state.json has the volume
  kSnapshotClone,   // undo: as kVolumeCreate, for the clone
  kVolumeDelete,    // finish: delete the rest, drop the volume from state.json
  kSnapshotCreate,  // undo: delete the snapshot wherever it was made
  kSnapshotDelete,  // finish: delete it wherever it is left
  kSnapshotRevert,  // finish: revert every replica that has the snapshot
};

const char* to_string(IntentOp op);
std::optional<IntentOp> intent_op_from_string(const std::string& text);

struct Intent {
  uint64_t id = 0;
  IntentOp op = IntentOp::kVolumeCreate;
  std::string volume;               // the volume created, deleted, cloned into, or snapshotted
  std::vector<std::string> stores;  // the stores the operation changes
  std::string snapshot;             // snapshot ops and clones
  std::string origin;               // clones: the volume the snapshot belongs to
  bool operator==(const Intent&) const = default;
};

// "volume.create of 'v' on 'a', 'b'" - for log lines.
std::string describe(const Intent& intent);

inline constexpr const char* kIntentFileName = "intents.json";

class IntentLog {
 public:
  // Reads <state_dir>/intents.json (missing = none pending). A file that is
  // present but unreadable is an error: forgetting it could leak volumes.
  static Result<IntentLog> open(const std::string& state_dir);

  [[nodiscard]] const std::vector<Intent>& pending() const { return intents_; }

  // Records `intent` (its id is assigned) durably; returns the id.
  Result<uint64_t> record(Intent intent);
  // Removes the intent `id` durably (no-op if it is not recorded).
  Status clear(uint64_t id);

 private:
  Status save() const;

  std::string dir_;
  std::vector<Intent> intents_;
  uint64_t next_id_ = 1;
};

// Test-only crash injection: with UBLKVOL_TEST_CRASH_STEP=N in the
// environment, the N-th call of step() (counted from start-up) logs the step
// and raises SIGKILL. Without it step() only counts.
class CrashPoints {
 public:
  CrashPoints();
  void step(const char* what);

 private:
  uint64_t crash_at_ = 0;  // 0: never
  uint64_t count_ = 0;
};

}  // namespace ublkvol::daemon

namespace ublkvol::daemon {

// Clears the intent when it goes out of scope (the operation finished or
// failed cleanly), unless keep() was called: then start-up recovery decides
// (e.g. the state file could not be saved). A SIGKILL never runs it, which
// is the point.
class IntentGuard {
 public:
  IntentGuard(IntentLog& log, uint64_t id) : log_(&log), id_(id) {}
  ~IntentGuard();
  IntentGuard(const IntentGuard&) = delete;
  IntentGuard& operator=(const IntentGuard&) = delete;
  void keep() { log_ = nullptr; }

 private:
  IntentLog* log_;
  uint64_t id_;
};

}  // namespace ublkvol::daemon
