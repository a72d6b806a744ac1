#include "store_paths.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <string_view>
#include <system_error>

namespace ublkvol::daemon {
namespace {

constexpr size_t kMaxPathBytes = 4095;

int openat2_beneath(int dir, const std::string& relative, uint64_t flags) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(::syscall(SYS_openat2, dir, relative.c_str(), &how, sizeof(how)));
}

std::string dir_list(const std::vector<std::string>& dirs) {
  if (dirs.empty()) {
    return "store_dirs is empty";
  }
  std::string out = "store_dirs: ";
  for (size_t i = 0; i < dirs.size(); ++i) {
    out += (i == 0 ? "" : ", ") + dirs[i];
  }
  return out;
}

// The one refusal for every path a client may not name, so that its text
// says nothing about the path beyond what the client sent.
Error not_permitted(const Peer& peer, const std::string& path,
                    const std::vector<std::string>& dirs) {
  return Error(EACCES,
               "store path " + path + " is not permitted for uid " + std::to_string(peer.uid) +
                   ": only root may name paths outside store_dirs (" + dir_list(dirs) + ")");
}

// `path` relative to `dir` if it lies lexically inside it with plain
// components (no empty, '.' or '..' component), else "".
std::string relative_inside(const std::string& path, std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') {
    dir.pop_back();
  }
  const std::string prefix = dir == "/" ? "/" : dir + "/";
  if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) {
    return "";
  }
  std::string rest = path.substr(prefix.size());
  size_t start = 0;
  while (start <= rest.size()) {
    size_t end = rest.find('/', start);
    if (end == std::string::npos) {
      end = rest.size();
    }
    const std::string_view part(rest.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return "";
    }
    start = end + 1;
  }
  return rest;
}

std::string missing_directory(const std::string& path, const std::string& dir,
                              const std::string& parent) {
  return path + ": directory " + dir + "/" + parent + " does not exist";
}

std::string cannot_create(const std::string& path, const std::string& dir, int err) {
  return path + ": cannot create the store file in " + dir + ": " +
         std::error_code(err, std::generic_category()).message();
}

std::string fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

std::string real_path_of(int fd, const std::string& fallback) {
  std::array<char, 4096> target{};
  const ssize_t n = ::readlink(fd_path(fd).c_str(), target.data(), target.size() - 1);
  return n > 0 ? std::string(target.data(), static_cast<size_t>(n)) : fallback;
}

}  // namespace

bool may_name_any_path(const Peer& peer) { return peer.uid == 0 || peer.uid == ::geteuid(); }

Status validate_store_path(const std::string& path) {
  if (path.empty() || path.front() != '/') {
    return Error(EINVAL, "field 'path' must be an absolute path");
  }
  if (path.size() > kMaxPathBytes) {
    return Error(EINVAL, "field 'path' is " + std::to_string(path.size()) +
                             " bytes long; the limit is " + std::to_string(kMaxPathBytes));
  }
  for (const char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Error(EINVAL, "field 'path' contains a control character (byte " +
                               std::to_string(static_cast<unsigned char>(c)) +
                               "); store paths may not");
    }
  }
  return ok_status();
}

Status validate_new_store_size(uint64_t bytes) {
  if (bytes < kMinNewStoreBytes || bytes > kMaxNewStoreBytes) {
    return Error(EINVAL, "field 'size' " + std::to_string(bytes) +
                             " is out of range for a new store file: 16 MiB (" +
                             std::to_string(kMinNewStoreBytes) + ") .. 64 TiB (" +
                             std::to_string(kMaxNewStoreBytes) + ") bytes");
  }
  return ok_status();
}

Result<AdmittedPath> admit_store_path(const Peer& peer, const std::string& path,
                                      const std::vector<std::string>& store_dirs, bool create) {
  UBLKVOL_TRY(validate_store_path(path));
  AdmittedPath out;
  if (may_name_any_path(peer)) {
    out.open_path = path;
    out.record_path = path;
    out.missing = ::access(path.c_str(), F_OK) != 0 && errno == ENOENT;
    return out;
  }
  for (const std::string& dir : store_dirs) {
    const std::string relative = relative_inside(path, dir);
    if (relative.empty()) {
      continue;
    }
    UniqueFd base(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!base) {
      break;  // a store dir the admin named but that is not there
    }
    UniqueFd file(openat2_beneath(base.get(), relative, O_PATH));
    if (file) {
      out.record_path = real_path_of(file.get(), path);
      out.open_path = fd_path(file.get());
      out.held = std::move(file);
      return out;
    }
    if (errno != ENOENT) {
      break;  // EXDEV/ELOOP: leads out of the store dir (or a magic link)
    }
    if (!create) {
      return Error(ENOENT, path + " does not exist");
    }
    // A new file: its directory must resolve beneath the store dir; the
    // file is created here, exclusively, without following anything.
    const size_t slash = relative.rfind('/');
    const std::string parent_relative =
        slash == std::string::npos ? "." : relative.substr(0, slash);
    out.name = slash == std::string::npos ? relative : relative.substr(slash + 1);
    out.parent.reset(openat2_beneath(base.get(), parent_relative, O_PATH | O_DIRECTORY));
    if (!out.parent) {
      if (errno == ENOENT) {
        return Error(ENOENT, missing_directory(path, dir, parent_relative));
      }
      break;
    }
    UniqueFd dir_fd(::openat(out.parent.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd) {
      break;
    }
    out.parent = std::move(dir_fd);
    out.held.reset(::openat(out.parent.get(), out.name.c_str(),
                            O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out.held) {
      const int err = errno;
      return Error(err, cannot_create(path, dir, err));
    }
    out.missing = true;
    out.record_path = real_path_of(out.held.get(), path);
    out.open_path = fd_path(out.held.get());
    return out;
  }
  return not_permitted(peer, path, store_dirs);
}

CreatedFileGuard::~CreatedFileGuard() {
  if (keep_ || !path_.missing) {
    return;
  }
  if (path_.parent) {
    (void)::unlinkat(path_.parent.get(), path_.name.c_str(), 0);
  } else {
    (void)::unlink(path_.open_path.c_str());
  }
}

}  // namespace ublkvol::daemon
