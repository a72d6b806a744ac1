// What store.add may touch on behalf of a client (docs/operations.md
// "Privileges"): the daemon runs as root, so it must not open, create,
// measure or format a path with its own rights for a client that could not.
//
//   - root (and the daemon's own uid: it gains nothing) may name any path;
//   - every other client only paths inside the configured `store_dirs`,
//     resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the
//     store dir, so no '..' or symlink leads out of it; the resolved file (or,
//     for a new file, its directory) is held open and reopened through
//     /proc/self/fd, so swapping a path component afterwards changes nothing;
//   - a refused path gets the same message whether or not it exists, and
//     nothing about it is looked up (no existence or size oracle).
//
// Also the rules for a file store.add creates: its size range, and removal
// of the file again when formatting it fails (no file left behind).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {

// Sizes of a store file that store.add creates (format=true with size):
// below 16 MiB the store's metadata leaves (almost) no room for data; above
// 64 TiB its in-memory extent map would need GiBs (and most filesystems
// refuse such files). An existing device may be larger.
inline constexpr uint64_t kMinNewStoreBytes = uint64_t{16} << 20U;
inline constexpr uint64_t kMaxNewStoreBytes = uint64_t{64} << 40U;

// Whether a peer may name any path.
bool may_name_any_path(const Peer& peer);

// Checks the text of a store path for everyone: absolute, no control
// characters (a newline in a path would forge log lines), at most 4095 bytes.
Status validate_store_path(const std::string& path);

// Checks a size for a store file that store.add would create.
Status validate_new_store_size(uint64_t bytes);

// A path a client may use, ready to open.
struct AdmittedPath {
  // What to open/stat: the path itself for root, else /proc/self/fd/N (the
  // resolved file) or /proc/self/fd/N/NAME (a file to create in the resolved
  // directory N).
  std::string open_path;
  // What to remember (state.json): the path as given for root, else the
  // file's real path.
  std::string record_path;
  // The file did not exist: store.add creates it (and removes it on failure).
  // For non-root clients it was already created here, empty, with O_EXCL
  // (so a symlink planted in its place later is never followed).
  bool missing = false;
  UniqueFd held;     // the resolved (or created) file (non-root only)
  UniqueFd parent;   // its directory, for removing a created file
  std::string name;  // its name in `parent`
};

// Resolves `path` for `peer` (see the top of this file). A refusal is EACCES
// with "store path P is not permitted for uid N: only root may name paths
// outside store_dirs (...)". `create`: a missing file will be created (for
// non-root clients it is created here); else a missing file is ENOENT.
Result<AdmittedPath> admit_store_path(const Peer& peer, const std::string& path,
                                      const std::vector<std::string>& store_dirs, bool create);

// Removes a file store.add created when the rest of store.add fails, unless
// keep() was called. For a missing file only.
class CreatedFileGuard {
 public:
  explicit CreatedFileGuard(const AdmittedPath& path) : path_(path) {}
  ~CreatedFileGuard();
  CreatedFileGuard(const CreatedFileGuard&) = delete;
  CreatedFileGuard& operator=(const CreatedFileGuard&) = delete;
  void keep() { keep_ = true; }

 private:
  const AdmittedPath& path_;
  bool keep_ = false;
};

}  // namespace ublkvol::daemon
