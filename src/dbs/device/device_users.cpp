#include "ublkvol/dbs/device_users.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

namespace ublkvol::dbs {

namespace {

struct CloseDir {
  void operator()(DIR* dir) const { ::closedir(dir); }
};
using DirPtr = std::unique_ptr<DIR, CloseDir>;

bool all_digits(const std::string& s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

std::string command_of(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

// Runs (a zombie - exited, not yet reaped - does not: it holds no files).
bool process_exists(pid_t pid) {
  if (pid <= 0) {
    return false;
  }
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string stat_line;
  if (std::getline(stat_file, stat_line)) {
    // "pid (comm) S ...": the state follows the last ')'.
    const size_t paren = stat_line.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat_line.size()) {
      const char state = stat_line[paren + 2];
      return state != 'Z' && state != 'X';
    }
  }
  // No /proc entry to read: ask the kernel (EPERM: exists, not ours).
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

// Does `st` (of an open fd) refer to the same file or block device as `target`?
bool same_object(const struct stat& st, const struct stat& target) {
  if (S_ISBLK(target.st_mode)) {
    return S_ISBLK(st.st_mode) && st.st_rdev == target.st_rdev;
  }
  return st.st_dev == target.st_dev && st.st_ino == target.st_ino;
}

void find_processes(const struct stat& target, int ignore_fd, std::vector<DeviceUser>& out) {
  DirPtr proc(::opendir("/proc"));
  if (!proc) {
    return;
  }
  const pid_t self = ::getpid();
  // NOLINTNEXTLINE(concurrency-mt-unsafe): this DIR stream is never shared between threads
  while (dirent* entry = ::readdir(proc.get())) {
    const std::string name = entry->d_name;
    if (!all_digits(name)) {
      continue;
    }
    const auto pid = static_cast<pid_t>(std::stol(name));
    const std::string fd_dir = "/proc/" + name + "/fd";
    DirPtr fds(::opendir(fd_dir.c_str()));
    if (!fds) {
      continue;  // exited, or not ours to look at
    }
    // NOLINTNEXTLINE(concurrency-mt-unsafe): this DIR stream is never shared between threads
    while (dirent* fd = ::readdir(fds.get())) {
      const std::string fd_name = fd->d_name;
      if (!all_digits(fd_name) || (pid == self && std::stoi(fd_name) == ignore_fd)) {
        continue;
      }
      std::string link = fd_dir;
      link.append("/").append(fd_name);
      struct stat st {};
      // stat() follows the magic link to the open file itself.
      if (::stat(link.c_str(), &st) == 0 && same_object(st, target)) {
        DeviceUser user;
        user.kind = DeviceUser::Kind::kProcess;
        user.pid = pid;
        user.command = command_of(pid);
        out.push_back(std::move(user));
        break;
      }
    }
  }
}

// /proc/locks lines: "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF", the
// device as hex major:minor of the filesystem, then the inode number.
// Waiters ("1: -> FLOCK ...") are skipped: they do not hold the lock.
void find_lock_holders(const struct stat& target, std::vector<DeviceUser>& out) {
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    if (line.find("->") != std::string::npos) {
      continue;
    }
    std::istringstream fields(line);
    std::string index;
    std::string kind;
    std::string mode;
    std::string access;
    long pid = 0;
    std::string object;
    if (!(fields >> index >> kind >> mode >> access >> pid >> object)) {
      continue;
    }
    unsigned major_number = 0;
    unsigned minor_number = 0;
    unsigned long long inode = 0;
    if (std::sscanf(object.c_str(), "%x:%x:%llu", &major_number, &minor_number, &inode) != 3) {
      continue;
    }
    if (makedev(major_number, minor_number) != target.st_dev || inode != target.st_ino ||
        pid <= 0) {
      continue;  // another file, or an OFD lock (no owning pid)
    }
    const auto holder = static_cast<pid_t>(pid);
    const bool listed = std::any_of(out.begin(), out.end(), [&](const DeviceUser& user) {
      return user.kind == DeviceUser::Kind::kProcess && user.pid == holder;
    });
    if (listed) {
      continue;
    }
    DeviceUser user;
    user.kind = DeviceUser::Kind::kLockHolder;
    user.pid = holder;
    user.alive = process_exists(holder);
    user.command = user.alive ? command_of(holder) : "";
    out.push_back(std::move(user));
  }
}

void find_block_users(const struct stat& target, std::vector<DeviceUser>& out) {
  const std::string majmin =
      std::to_string(major(target.st_rdev)) + ":" + std::to_string(minor(target.st_rdev));
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    std::istringstream fields(line);
    std::string id;
    std::string parent;
    std::string device;
    std::string root;
    std::string mount_point;
    fields >> id >> parent >> device >> root >> mount_point;
    if (device == majmin) {
      DeviceUser user;
      user.kind = DeviceUser::Kind::kMount;
      user.where = mount_point;
      out.push_back(std::move(user));
    }
  }
  const std::string holders_dir = "/sys/dev/block/" + majmin + "/holders";
  DirPtr holders(::opendir(holders_dir.c_str()));
  if (holders) {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): this DIR stream is never shared between threads
    while (dirent* entry = ::readdir(holders.get())) {
      const std::string name = entry->d_name;
      if (name == "." || name == "..") {
        continue;
      }
      DeviceUser user;
      user.kind = DeviceUser::Kind::kHolder;
      user.where = name;
      out.push_back(std::move(user));
    }
  }
}

}  // namespace

std::string DeviceUser::describe() const {
  switch (kind) {
    case Kind::kProcess:
      if (pid == ::getpid()) {
        return "this process (pid " + std::to_string(pid) + ", " + command + ")";
      }
      return "pid " + std::to_string(pid) + " (" + command + ")";
    case Kind::kLockHolder:
      if (!alive) {
        return "a lock of pid " + std::to_string(pid) + ", which has exited";
      }
      return "a lock of pid " + std::to_string(pid) + " (" + command + ")";
    case Kind::kMount:
      return "mounted on " + where;
    case Kind::kHolder:
      return "held by " + where;
  }
  return "";
}

std::vector<DeviceUser> find_device_users(const std::string& path, int ignore_fd) {
  std::vector<DeviceUser> users;
  struct stat target {};
  if (::stat(path.c_str(), &target) != 0) {
    return users;
  }
  find_processes(target, ignore_fd, users);
  find_lock_holders(target, users);
  if (S_ISBLK(target.st_mode)) {
    find_block_users(target, users);
  }
  return users;
}

std::string describe_device_users(const std::string& path, int ignore_fd) {
  std::string out;
  for (const DeviceUser& user : find_device_users(path, ignore_fd)) {
    if (!out.empty()) {
      out += "; ";
    }
    out += user.describe();
  }
  return out;
}

}  // namespace ublkvol::dbs
