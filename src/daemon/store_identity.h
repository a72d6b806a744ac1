// Store identity: which file or device a store path really names, and which
// DBS store it holds (docs/daemon.md "Store identity").
//
// A path string says little: d/../d/s.img, //s.img, /./s.img, a symlink and a
// hard link all name one file. The daemon therefore compares stores by
//   - the file they name: st_rdev for a block device, (st_dev, st_ino) for a
//     regular file - so no file is ever added as two stores;
//   - the uuid in the DBS superblock - so a byte copy of a store image (same
//     uuid, other file) is not added next to the original.
// StoreWatch keeps an fd on the store's file for the store's lifetime, so the
// daemon notices (periodic check) when the file is deleted or the path is made
// to name another file while the store is open.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/dbs/block_device.h"

namespace ublkvol::daemon {

struct FileIdentity {
  bool block = false;  // a block device: `dev` is its st_rdev, `ino` is 0
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool operator==(const FileIdentity&) const = default;
};

FileIdentity identity_of(const struct stat& st);
// stat() of `path` (symlinks followed).
Result<FileIdentity> identity_of_path(const std::string& path);
// "block device 259:1" / "file 0:45 inode 1234", for messages.
std::string describe(const FileIdentity& identity);

// An O_RDONLY fd on a store's file, held while the store is open.
class StoreWatch {
 public:
  StoreWatch() = default;
  // Opens `path` (before the store's device is opened on it; verify() after).
  static Result<StoreWatch> open(const std::string& path);

  [[nodiscard]] bool valid() const { return static_cast<bool>(fd_); }
  [[nodiscard]] const FileIdentity& identity() const { return identity_; }
  [[nodiscard]] int fd() const { return fd_.get(); }

  // "" while `path` still names the watched file and the file still has a
  // name; else what happened: "/x/s.img was deleted while the store was open",
  // "/x/s.img now names another file (...) than the one the store was opened on".
  [[nodiscard]] std::string check(const std::string& path) const;

 private:
  UniqueFd fd_;
  FileIdentity identity_;
};

// The superblock uuid of the DBS store on `device` (copy 0 if valid, else
// copy 1) as 8-4-4-4-12 hex; an error if neither copy is a valid superblock.
// Call on the thread that owns the device.
Result<std::string> read_store_uuid(dbs::BlockDevice& device);

// What the first blocks of the file `fd` hold, for refusing a --format that
// would erase it: "a DBS store (uuid ...)", "an ext2/3/4 filesystem", "an
// XFS filesystem", "a btrfs filesystem", "swap space", "a LUKS volume", "a
// partition table", or "" when nothing known is recognised.
std::string describe_contents(int fd);

}  // namespace ublkvol::daemon
