// NetnsLink: a network namespace joined to the test's own by a veth pair,
// for partition tests over a real link (root only; `ip` from iproute2).
//
//   host side  ubvh<pid>  10.200.X.Y+1/30
//   namespace  ubvn<pid>  10.200.X.Y+2/30   (namespace ubvnbd-<pid>)
//
// A server listens inside the namespace (NbdTestServer's TcpListen: the
// listening socket is created there, so the server process itself needs no
// `ip netns exec`). set_down() sets the namespace's end of the link down:
// both ends lose carrier, and every packet either way is silently dropped
// - connections stay open, nothing is reset, as across a real partition.
// set_up() heals it; TCP retransmits what was held.
//
// Cleanup: the destructor deletes the namespace and the veth pair; the
// constructor first removes what a crashed earlier run (a dead pid in the
// name) left behind. Names carry the pid, so parallel test processes never
// meet.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace ublkvol::nbd::testing {

class NetnsLink {
 public:
  NetnsLink() {
    remove_stale();
    const auto pid = static_cast<unsigned>(::getpid());
    name_ = "ubvnbd-" + std::to_string(pid);
    host_if_ = "ubvh" + std::to_string(pid);
    ns_if_ = "ubvn" + std::to_string(pid);
    const unsigned base = (pid % 16384) * 4;  // a /30 of 10.200.0.0/16
    const std::string prefix = "10.200." + std::to_string(base / 256) + ".";
    host_address_ = prefix + std::to_string(base % 256 + 1);
    ns_address_ = prefix + std::to_string(base % 256 + 2);
    try {
      ip({"netns", "add", name_});
      ip({"link", "add", host_if_, "type", "veth", "peer", "name", ns_if_});
      ip({"link", "set", ns_if_, "netns", name_});
      ip({"addr", "add", host_address_ + "/30", "dev", host_if_});
      ip({"link", "set", host_if_, "up"});
      ip({"-n", name_, "addr", "add", ns_address_ + "/30", "dev", ns_if_});
      ip({"-n", name_, "link", "set", ns_if_, "up"});
      ip({"-n", name_, "link", "set", "lo", "up"});
    } catch (...) {
      remove(name_, host_if_);
      throw;
    }
  }
  ~NetnsLink() {
    try {
      remove(name_, host_if_);
    } catch (...) {  // NOLINT(bugprone-empty-catch): best effort; the next run removes it
    }
  }
  NetnsLink(const NetnsLink&) = delete;
  NetnsLink& operator=(const NetnsLink&) = delete;

  // For setns(2) (NbdTestServer::TcpListen::netns_path).
  [[nodiscard]] std::string netns_path() const { return "/run/netns/" + name_; }
  [[nodiscard]] const std::string& ns_address() const { return ns_address_; }

  void set_down() { ip({"-n", name_, "link", "set", ns_if_, "down"}); }
  void set_up() { ip({"-n", name_, "link", "set", ns_if_, "up"}); }

 private:
  // Runs `ip ARGS...`, throwing with the command line if it fails.
  static void ip(const std::vector<std::string>& args, bool quiet = false) {
    std::vector<std::string> argv{"ip"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargs;
    cargs.reserve(argv.size() + 1);
    for (auto& arg : argv) {
      cargs.push_back(arg.data());
    }
    cargs.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      throw std::runtime_error("fork failed");
    }
    if (pid == 0) {
      if (quiet) {
        ::close(2);
      }
      ::execvp("ip", cargs.data());
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!quiet && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
      std::string line;
      for (const auto& arg : argv) {
        line += (line.empty() ? "" : " ") + arg;
      }
      throw std::runtime_error("`" + line + "` failed (status " + std::to_string(status) + ")");
    }
  }

  static void remove(const std::string& name, const std::string& host_if) {
    // Deleting one end of a veth pair deletes both; the namespace goes when
    // its last socket closes.
    ip({"link", "del", host_if}, /*quiet=*/true);
    ip({"netns", "del", name}, /*quiet=*/true);
  }

  // Namespaces (and links) of earlier runs whose process is gone.
  static void remove_stale() {
    DIR* dir = ::opendir("/run/netns");
    if (dir == nullptr) {
      return;
    }
    std::vector<std::string> stale;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): this DIR stream is ours alone
    while (const dirent* entry = ::readdir(dir)) {
      const std::string name = entry->d_name;
      if (name.rfind("ubvnbd-", 0) != 0) {
        continue;
      }
      const long pid = std::strtol(name.c_str() + 7, nullptr, 10);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        stale.push_back(name.substr(7));
      }
    }
    ::closedir(dir);
    for (const auto& pid : stale) {
      remove("ubvnbd-" + pid, "ubvh" + pid);
    }
  }

  std::string name_;
  std::string host_if_;
  std::string ns_if_;
  std::string host_address_;
  std::string ns_address_;
};

}  // namespace ublkvol::nbd::testing
