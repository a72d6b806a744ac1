// Who uses a file or block device: for the error a refused open gives
// ("in use by pid 1234 (ublk-volumed)") and for the daemon's `--format`
// refusal. Read from /proc and /sys only; never opens the device itself.
//
// Found, for a regular file (matched by st_dev + st_ino, so any path to the
// same inode - another spelling, a symlink, a hard link - counts):
//   - processes with it open (/proc/<pid>/fd), the caller included ("this
//     process (pid N, name)");
//   - lock holders listed in /proc/locks that hold no fd on it (e.g. a
//     process whose io_uring still holds the file after its fd was closed);
//     holders whose process no longer exists are reported as such.
// For a block device (matched by st_rdev), also:
//   - mount points (/proc/self/mountinfo);
//   - kernel holders (/sys/dev/block/<maj>:<min>/holders: dm, md, ...).
//
// Example:
//   auto busy = FileDevice::open(path);   // EBUSY
//   std::string who = describe_device_users(path);
//   // "pid 4711 (ublk-volumed); mounted on /mnt/data"
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ublkvol::dbs {

// The kernel identity of a store's device: the inode of a regular file
// (st_dev + st_ino), or the device number of a block device (st_rdev, in
// `dev`; `ino` is 0), so that two paths name the same store exactly when
// their identities are equal.
struct DeviceIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool block_device = false;

  friend bool operator==(const DeviceIdentity&, const DeviceIdentity&) = default;
};

struct DeviceUser {
  enum class Kind {
    kProcess,     // has the file or device open
    kLockHolder,  // holds a lock on it (listed in /proc/locks) without an open fd
    kMount,       // block device: mounted
    kHolder,      // block device: held by another kernel device (dm, md, ...)
  };
  Kind kind = Kind::kProcess;
  pid_t pid = 0;        // kProcess / kLockHolder
  bool alive = true;    // kLockHolder: false once the process is gone
  std::string command;  // /proc/<pid>/comm
  std::string where;    // kMount: the mount point; kHolder: the holder's name
  // One phrase, e.g. "pid 4711 (ublk-volumed)", "this process (pid 12,
  // ublk-volumed)", "a lock of pid 99, which has exited", "mounted on /mnt",
  // "held by dm-0".
  [[nodiscard]] std::string describe() const;
};

// Everything found using the file or block device at `path` (empty if none,
// or if `path` cannot be stat()ed). `ignore_fd`: a descriptor of the calling
// process on the same file that is not to be reported (the opener's own).
std::vector<DeviceUser> find_device_users(const std::string& path, int ignore_fd = -1);

// find_device_users() as one "; "-separated phrase list, "" if none found.
std::string describe_device_users(const std::string& path, int ignore_fd = -1);

}  // namespace ublkvol::dbs
