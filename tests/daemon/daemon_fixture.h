// DaemonTest: a REAL ublk-volumed process on a real Unix socket in a temp
// dir on /dev/shm (stores are files there: O_DIRECT + io_uring, as in
// production), ready once it sent READY=1 on a test NOTIFY_SOCKET. Shared by
// the daemon's process tests.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/client.h"

namespace ublkvol::daemon::test_support {

namespace fs = std::filesystem;
inline constexpr uint64_t kMiB = 1ULL << 20U;

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/dev/shm/ublkvol-dt-XXXXXX";
    dir_ = ::mkdtemp(pattern.data());
    ASSERT_FALSE(dir_.empty());
    socket_ = dir_ + "/ctl.sock";
    std::ofstream(dir_ + "/config.json")
        << R"({"state_dir":")" << dir_ << R"(/state","control_socket":")" << socket_
        << R"(","io_deadline_ms":2000,"log_level":"info"})";
    notify_path_ = dir_ + "/notify.sock";
    notify_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    ASSERT_LT(notify_path_.size(), sizeof(address.sun_path));
    std::memcpy(address.sun_path, notify_path_.c_str(), notify_path_.size() + 1);
    ASSERT_EQ(::bind(notify_.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }

  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }

  // Receives sd_notify datagrams until one contains `what`; false if the
  // daemon exited first or 120 s passed.
  bool wait_notify(const std::string& what, std::string* all = nullptr) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd fds[2] = {{notify_.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
      if (::poll(fds, 2, 1000) < 0) {
        return false;
      }
      if ((fds[0].revents & POLLIN) != 0) {
        char buffer[4096];
        const ssize_t n = ::recv(notify_.get(), buffer, sizeof(buffer), 0);
        if (n > 0) {
          const std::string message(buffer, static_cast<size_t>(n));
          if (all != nullptr) {
            *all += message + "\n";
          }
          if (message.find(what) != std::string::npos) {
            return true;
          }
        }
        continue;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        return false;
      }
    }
    return false;
  }

  // Starts the daemon; `env` entries ("NAME=value") are added to its
  // environment (test hooks).
  void start(std::vector<std::string> extra = {}, const std::vector<std::string>& env = {}) {
    // UBLKVOL_TEST_DAEMON runs another build's daemon (e.g. to show that a
    // test fails on the code before a fix).
    const char* other = std::getenv("UBLKVOL_TEST_DAEMON");  // NOLINT(concurrency-mt-unsafe)
    std::vector<std::string> args = {other != nullptr ? other : UBLKVOL_DAEMON_PATH, "--config",
                                     dir_ + "/config.json"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    std::vector<std::string> env_strings = {"NOTIFY_SOCKET=" + notify_path_};
    env_strings.insert(env_strings.end(), env.begin(), env.end());
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "NOTIFY_SOCKET=", 14) != 0) {
        env_strings.emplace_back(*e);
      }
    }
    std::vector<char*> envp;
    envp.reserve(env_strings.size() + 1);
    for (auto& e : env_strings) {
      envp.push_back(e.data());
    }
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir_ + "/daemon.log";
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ASSERT_EQ(::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&actions);
    std::string notes;
    ASSERT_TRUE(wait_notify("READY=1", &notes)) << "daemon did not become ready:\n" << log_text();
    EXPECT_NE(notes.find("STATUS="), std::string::npos) << notes;
    auto client = Client::connect(socket_);
    ASSERT_TRUE(client.ok()) << client.error().message();
    client_.emplace(std::move(*client));
  }

  // Sends `sig` and returns the exit status (or 128 + signal).
  int stop(int sig = SIGTERM) {
    client_.reset();
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string log_text() const { return read_text(dir_ + "/daemon.log"); }

  Response call(const std::string& method, Json params = Json::object()) {
    if (!client_) {  // start() failed an ASSERT: report, do not touch an empty optional
      ADD_FAILURE() << method << ": no connection to the daemon";
      return Response{};
    }
    auto response = client_->call(method, std::move(params));
    EXPECT_TRUE(response.ok()) << method << ": " << response.error().message();
    return response.ok() ? *response : Response{};
  }

  Json ok(const std::string& method, const Json& params = Json::object()) {
    const Response r = call(method, params);
    EXPECT_TRUE(r.ok) << method << " " << params.dump() << " -> " << to_string(r.code) << ": "
                      << r.message;
    return r.result;
  }

  // Expects a refusal with `code` whose message contains `part`.
  void refused(const std::string& method, const Json& params, const std::string& code,
               const std::string& part) {
    const Response r = call(method, params);
    EXPECT_FALSE(r.ok) << method << " " << params.dump() << " was accepted";
    EXPECT_EQ(to_string(r.code), code) << method << " " << params.dump() << ": " << r.message;
    EXPECT_NE(r.message.find(part), std::string::npos)
        << method << " " << params.dump() << ": '" << r.message << "' lacks '" << part << "'";
  }

  void add_stores(std::initializer_list<const char*> names) {
    for (const char* n : names) {
      ok("store.add",
         {{"name", n}, {"path", dir_ + "/store-" + n}, {"format", true}, {"size", 96 * kMiB}});
    }
  }

  // Polls `method` until `done` holds or `seconds` passed (the daemon checks
  // its stores every second); the last answer.
  Json wait_for(const std::string& method, const Json& params,
                const std::function<bool(const Json&)>& done, int seconds = 15) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    Json last;
    while (std::chrono::steady_clock::now() < deadline) {
      last = ok(method, params);
      if (done(last)) {
        return last;
      }
      // Bounded polling of a condition the daemon reaches on its timer.
      ::usleep(50'000);
    }
    return last;
  }

  // Drops volume `name` from state.json (the daemon is stopped), as an
  // interrupted operation of an earlier daemon leaves it: its replicas
  // become orphans.
  void forget_volume(const std::string& name) {
    const std::string path = dir_ + "/state/state.json";
    Json state = Json::parse(read_text(path));
    Json kept = Json::array();
    for (const auto& v : state["volumes"]) {
      if (v["name"] != name) {
        kept.push_back(v);
      }
    }
    state["volumes"] = kept;
    std::ofstream(path, std::ios::trunc) << state.dump();
  }

  // Waits (at most `seconds`) for the daemon to exit; its status as stop()
  // gives it, or -1 if it is still running.
  int wait_exit(int seconds) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
    pollfd fd = {pidfd.get(), POLLIN, 0};
    if (::poll(&fd, 1, seconds * 1000) != 1) {
      return -1;
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    client_.reset();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string dir_;
  std::string socket_;
  std::string notify_path_;
  UniqueFd notify_;
  pid_t pid_ = -1;
  std::optional<Client> client_;
};

// A second daemon in the same test (e.g. the peer that serves a remote
// replica's export): the same fixture, driven by hand, not a test of its own.
class PeerDaemon final : public DaemonTest {
 public:
  void TestBody() override {}
  using DaemonTest::call;
  using DaemonTest::dir_;
  using DaemonTest::log_text;
  using DaemonTest::ok;
  using DaemonTest::refused;
  using DaemonTest::SetUp;
  using DaemonTest::start;
  using DaemonTest::stop;
  using DaemonTest::TearDown;
};

}  // namespace ublkvol::daemon::test_support
