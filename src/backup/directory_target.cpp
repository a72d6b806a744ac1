// DirectoryTarget: backups in a directory (local disk, NFS, CIFS).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "ublkvol/backup/target.h"
#include "ublkvol/common/unique_fd.h"

namespace ublkvol::backup {

namespace {

namespace fs = std::filesystem;

constexpr const char* kTempDir = "tmp";

Status write_all(int fd, std::span<const std::byte> data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error("cannot write " + what);
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return ok_status();
}

Status fsync_dir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) {
    return errno_error("cannot fsync directory " + dir);
  }
  return ok_status();
}

// mkdir -p whose new directories are durable: each is fsynced into its parent.
Status make_dirs(const std::string& root, const std::string& relative) {
  std::string path = root;
  size_t start = 0;
  while (start < relative.size()) {
    const size_t slash = relative.find('/', start);
    const size_t end = slash == std::string::npos ? relative.size() : slash;
    const std::string parent = path;
    path += "/" + relative.substr(start, end - start);
    if (::mkdir(path.c_str(), 0755) == 0) {
      UBLKVOL_TRY(fsync_dir(parent));
    } else if (errno != EEXIST) {
      return errno_error("cannot create directory " + path);
    }
    start = end + 1;
  }
  return ok_status();
}

std::string random_nonce() {
  uint64_t value = 0;
  if (::getrandom(&value, sizeof(value), 0) != static_cast<ssize_t>(sizeof(value))) {
    // No entropy (should not happen after boot): the address of a stack
    // variable still differs between objects alive at the same time.
    value = reinterpret_cast<uintptr_t>(&value) ^ static_cast<uint64_t>(::time(nullptr));
  }
  char text[17];
  (void)std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

class FlockLock final : public TargetLock {
 public:
  explicit FlockLock(UniqueFd fd) : fd_(std::move(fd)) {}

 private:
  UniqueFd fd_;  // closing it releases the lock
};

class DirectoryTarget final : public Target {
 public:
  DirectoryTarget(std::string root, PutHook hook)
      : root_(std::move(root)), hook_(std::move(hook)), nonce_(random_nonce()) {}

  [[nodiscard]] std::string describe() const override { return "directory " + root_; }

  [[nodiscard]] Result<bool> exists(const std::string& key) override {
    struct stat st {};
    if (::stat(path(key).c_str(), &st) == 0) {
      return true;
    }
    if (errno == ENOENT) {
      return false;
    }
    return errno_error(describe() + ": cannot stat " + key);
  }

  Status put(const std::string& key, std::span<const std::byte> data) override {
    const size_t slash = key.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : key.substr(0, slash);
    const std::string tmp = root_ + "/" + kTempDir + "/" + std::to_string(::getpid()) + "-" +
                            nonce_ + "-" + std::to_string(next_temp_++) + ".tmp";
    {
      UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
      if (!fd) {
        return errno_error(describe() + ": cannot create " + tmp + " for " + key);
      }
      if (auto written = write_all(fd.get(), data, tmp + " (for " + key + ")"); !written) {
        ::unlink(tmp.c_str());
        return written.error().with_context(describe());
      }
      if (auto stop = step(key, PutStep::kTempWritten); !stop) {
        return stop;
      }
      if (::fsync(fd.get()) != 0) {
        auto error = errno_error(describe() + ": cannot fsync " + tmp + " (for " + key + ")");
        ::unlink(tmp.c_str());
        return error;
      }
    }
    UBLKVOL_TRY(step(key, PutStep::kTempSynced));
    if (!dir.empty()) {
      if (auto made = make_dirs(root_, dir); !made) {
        ::unlink(tmp.c_str());
        return made.error().with_context(describe());
      }
    }
    if (::rename(tmp.c_str(), path(key).c_str()) != 0) {
      auto error = errno_error(describe() + ": cannot rename " + tmp + " to " + key);
      ::unlink(tmp.c_str());
      return error;
    }
    UBLKVOL_TRY(step(key, PutStep::kRenamed));
    if (auto synced = fsync_dir(dir.empty() ? root_ : root_ + "/" + dir); !synced) {
      return synced.error().with_context(describe());
    }
    return ok_status();
  }

  [[nodiscard]] Result<std::vector<std::byte>> get(const std::string& key) override {
    UniqueFd fd(::open(path(key).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      return errno_error(describe() + ": cannot open " + key);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      return errno_error(describe() + ": cannot stat " + key);
    }
    std::vector<std::byte> data(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        return errno_error(describe() + ": cannot read " + key);
      }
      if (n == 0) {
        break;  // shrank while read: the decoder reports the short object
      }
      done += static_cast<size_t>(n);
    }
    data.resize(done);
    return data;
  }

  [[nodiscard]] Result<std::vector<std::string>> list(const std::string& prefix) override {
    std::vector<std::string> keys;
    const fs::path base = fs::path(root_) / prefix;
    std::error_code ec;
    if (!fs::exists(base, ec)) {
      return keys;
    }
    for (auto it = fs::recursive_directory_iterator(base, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec)) {
        keys.push_back(prefix + fs::relative(it->path(), base, ec).generic_string());
      }
    }
    if (ec) {
      return Error(ec.value(), describe() + ": cannot list " + prefix + ": " + ec.message());
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  Status remove(const std::string& key) override {
    if (::unlink(path(key).c_str()) != 0) {
      if (errno == ENOENT) {
        return ok_status();
      }
      return errno_error(describe() + ": cannot remove " + key);
    }
    // Durable before anything that depends on it: a deleted manifest must
    // not come back after a crash once garbage collection removed its chunks.
    const size_t slash = key.rfind('/');
    if (auto synced = fsync_dir(slash == std::string::npos ? root_ : path(key.substr(0, slash)));
        !synced) {
      return synced.error().with_context(describe());
    }
    return ok_status();
  }

  [[nodiscard]] Result<std::unique_ptr<TargetLock>> lock(bool exclusive) override {
    const std::string file = root_ + "/lock";
    UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!fd) {
      return errno_error(describe() + ": cannot open " + file);
    }
    while (::flock(fd.get(), exclusive ? LOCK_EX : LOCK_SH) != 0) {
      if (errno != EINTR) {
        return errno_error(describe() + ": cannot lock " + file);
      }
    }
    return std::unique_ptr<TargetLock>(std::make_unique<FlockLock>(std::move(fd)));
  }

  Status remove_temporaries() override {
    std::error_code ec;
    for (auto it = fs::directory_iterator(root_ + "/" + kTempDir, ec);
         !ec && it != fs::directory_iterator(); it.increment(ec)) {
      fs::remove(it->path(), ec);
      if (ec) {
        break;
      }
    }
    if (ec) {
      return Error(ec.value(), describe() + ": cannot clean " + kTempDir + "/: " + ec.message());
    }
    return ok_status();
  }

 private:
  [[nodiscard]] std::string path(const std::string& key) const { return root_ + "/" + key; }

  Status step(const std::string& key, PutStep at) { return hook_ ? hook_(key, at) : ok_status(); }

  std::string root_;
  PutHook hook_;
  // Temporary names: pid, a random nonce per target object (several objects
  // may work on one directory in a process), a counter.
  std::string nonce_;
  std::atomic<uint64_t> next_temp_{0};
};

}  // namespace

Result<std::unique_ptr<Target>> open_directory_target(const std::string& root, PutHook hook) {
  if (root.empty() || root[0] != '/') {
    return Error(EINVAL, "backup target directory '" + root + "' is not an absolute path");
  }
  if (::mkdir(root.c_str(), 0755) != 0 && errno != EEXIST) {
    return errno_error("backup target directory " + root + ": cannot create it");
  }
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0) {
    return errno_error("backup target directory " + root + ": cannot stat it");
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error(ENOTDIR, "backup target " + root + " is not a directory");
  }
  UBLKVOL_TRY(make_dirs(root, kTempDir));
  if (::access(root.c_str(), W_OK) != 0) {
    return errno_error("backup target directory " + root + " is not writable");
  }
  return std::unique_ptr<Target>(std::make_unique<DirectoryTarget>(root, std::move(hook)));
}

}  // namespace ublkvol::backup
