// Target: where backups are stored - a flat key -> object namespace, the
// least that both a directory and S3-compatible object storage offer.
//
// Keys are relative paths ("chunks/ab/ab12...", "backups/daily-1.manifest").
// put() is atomic and durable: once it returns, the object is whole and
// survives a crash; before, the key shows either nothing or the old object,
// never a part. That is the one property the backup format relies on
// (docs/backup-format.md, "Crash safety").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::backup {

// Held while a backup, restore or delete works on a target: several readers
// and writers of backups together, or one garbage collection alone.
class TargetLock {
 public:
  virtual ~TargetLock() = default;
};

class Target {
 public:
  virtual ~Target() = default;
  // "directory /mnt/backups": the prefix of every error message.
  [[nodiscard]] virtual std::string describe() const = 0;
  [[nodiscard]] virtual Result<bool> exists(const std::string& key) = 0;
  virtual Status put(const std::string& key, std::span<const std::byte> data) = 0;
  // ENOENT (kind not_found) naming the key if there is no such object.
  [[nodiscard]] virtual Result<std::vector<std::byte>> get(const std::string& key) = 0;
  // Every key that starts with `prefix` (which ends in '/'), sorted.
  [[nodiscard]] virtual Result<std::vector<std::string>> list(const std::string& prefix) = 0;
  // Removes the object; a missing object is not an error.
  virtual Status remove(const std::string& key) = 0;
  // shared: backups, restores, verifies; exclusive: garbage collection. Waits.
  [[nodiscard]] virtual Result<std::unique_ptr<TargetLock>> lock(bool exclusive) = 0;
  // Removes what interrupted puts left behind. Only under the exclusive lock:
  // a put running at the same time would lose its temporary file.
  virtual Status remove_temporaries() = 0;
};

// Steps of DirectoryTarget::put, for fault-injection tests: a hook that
// returns an error stops the put right there, as a crash would.
enum class PutStep { kTempWritten, kTempSynced, kRenamed };
using PutHook = std::function<Status(const std::string& key, PutStep step)>;

// A target on a local (or NFS/CIFS-mounted) directory, created if missing.
// put = write a temporary file under <root>/tmp, fsync, rename into place,
// fsync the directory. lock() is flock(2) on <root>/lock.
Result<std::unique_ptr<Target>> open_directory_target(const std::string& root, PutHook hook = {});

// Where an s3:// target is and how to reach it (include/ublkvol/backup/s3_target.h).
struct S3Options {
  std::string endpoint;          // "http://127.0.0.1:9000"; "" = https://s3.<region>.amazonaws.com
  std::string region;            // "" = us-east-1
  std::string credentials_file;  // "" = /etc/ublk-volumed/s3-credentials
  std::string lock_dir;          // "" = /run/lock (local lock files, see S3Target)
  uint32_t list_page_keys = 0;   // keys per listing page; 0 = the server's (1000). Tests: small
};

// Opens the target an operator names: "dir:/path", an absolute path, or
// "s3://bucket/prefix" (reached as `s3` says).
Result<std::unique_ptr<Target>> open_target(std::string_view url, const S3Options& s3 = {});

}  // namespace ublkvol::backup
