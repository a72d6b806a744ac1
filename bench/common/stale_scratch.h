// Scratch files left behind by benchmark runs that were killed.
//
// The benchmarks write their replica and store files as
// `<dir>/<prefix>[<tag>_]<pid>[.ext]` and remove them on the way out. A run
// killed by Ctrl-C, a timeout or SIGKILL cannot, and at 1-8 GiB per file a
// few of those fill a tmpfs (7 GB were found in /dev/shm once). A signal
// handler would not cover SIGKILL, and blocking signals for a watcher thread
// would be inherited by the fio children; so every run instead removes, at
// start, the files of its own prefix whose <pid> is no longer a running
// process. A file of a live run - or of a pid reused by another process - is
// left alone.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace ublkvol::bench {

// The pid in `<prefix>[<tag>_]<pid>[.ext]`, or 0 if `name` is not of that form.
inline pid_t scratch_owner(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) {
    return 0;
  }
  std::string_view rest = name.substr(prefix.size());
  const size_t underscore = rest.rfind('_');
  std::string_view digits =
      underscore == std::string_view::npos ? rest : rest.substr(underscore + 1);
  if (const size_t dot = digits.find('.'); dot != std::string_view::npos) {
    digits = digits.substr(0, dot);
  }
  if (digits.empty() || digits.size() > 9) {
    return 0;
  }
  pid_t pid = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') {
      return 0;
    }
    pid = pid * 10 + (c - '0');
  }
  return pid;
}

// Removes `dir`'s scratch files of `prefix` whose owner process is gone and
// says on stderr what it removed. Errors (an unreadable dir, a file that
// cannot be removed) are reported and otherwise ignored: they must not stop
// the benchmark.
inline void remove_stale_scratch(const std::string& dir, std::string_view prefix,
                                 const char* program) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    return;  // the benchmark itself reports a missing directory
  }
  uint64_t removed = 0;
  uint64_t bytes = 0;
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    const pid_t owner = scratch_owner(name, prefix);
    if (owner <= 0 || owner == ::getpid()) {
      continue;
    }
    if (::kill(owner, 0) == 0 || errno != ESRCH) {
      continue;  // alive (or not ours to signal): maybe a run in progress
    }
    struct stat st {};
    const bool sized = ::stat(entry.path().c_str(), &st) == 0;
    if (std::filesystem::remove(entry.path(), ec)) {
      ++removed;
      // st_blocks: what the (often sparse) file really held.
      bytes += sized ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
    } else if (ec) {
      (void)std::fprintf(stderr, "%s: cannot remove stale scratch file %s: %s\n", program,
                         entry.path().c_str(), ec.message().c_str());
    }
  }
  if (removed != 0) {
    (void)std::fprintf(
        stderr, "%s: removed %llu scratch file(s) (%.1f GB) left in %s by killed runs\n", program,
        static_cast<unsigned long long>(removed), static_cast<double>(bytes) / 1e9, dir.c_str());
  }
}

}  // namespace ublkvol::bench
