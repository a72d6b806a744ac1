// Issue 12 items 6, 8 (config), 9 (sizes, names, paths) and 10 against a
// REAL ublk-volumed on a real socket: a non-root member of the socket group
// may name store paths only inside store_dirs (tested as uid 65534), no
// group member can lock root out with idle connections, a slow-loris client
// is dropped at the request deadline, bad store sizes leave no file behind,
// and an explicitly named config file must exist.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/client.h"

namespace ublkvol::daemon {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1ULL << 20U;
constexpr uint32_t kNobody = 65534;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The daemon under test: UBLKVOL_TEST_DAEMON overrides the built one (to run
// these tests against another build, e.g. to see them fail before a fix).
std::string daemon_binary() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read before any thread starts
  const char* other = std::getenv("UBLKVOL_TEST_DAEMON");
  return other != nullptr ? other : UBLKVOL_DAEMON_PATH;
}

class ControlLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/dev/shm/ublkvol-cl-XXXXXX";
    dir_ = ::mkdtemp(pattern.data());
    ASSERT_FALSE(dir_.empty());
    ::chmod(dir_.c_str(), 0755);  // uid 65534 must reach the socket
    socket_ = dir_ + "/ctl.sock";
  }

  void TearDown() override {
    client_.reset();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }

  // Writes config.json (state dir and socket in the temp dir, plus `extra`
  // keys), starts the daemon, waits (bounded) until it answers.
  void start(const std::string& extra = "") {
    std::ofstream(dir_ + "/config.json")
        << R"({"state_dir":")" << dir_ << R"(/state","control_socket":")" << socket_
        << R"(","socket_group":"nogroup","log_level":"info")" << extra << "}";
    const pid_t spawned = spawn({"--config", dir_ + "/config.json"});
    ASSERT_GT(spawned, 0);
    pid_ = spawned;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      auto c = Client::connect(socket_);
      if (c.ok() && c->call("daemon.status").ok()) {
        client_.emplace(std::move(*c));
        return;
      }
      int status = 0;
      ASSERT_EQ(::waitpid(pid_, &status, WNOHANG), 0) << "daemon exited:\n" << log_text();
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no answer:\n" << log_text();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  pid_t spawn(std::vector<std::string> args) {
    args.insert(args.begin(), daemon_binary());
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir_ + "/daemon.log";
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    pid_t pid = -1;
    if (::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
      pid = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }

  std::string log_text() const { return read_text(dir_ + "/daemon.log"); }

  Response call(const std::string& method, Json params = Json::object()) {
    auto response = client_->call(method, std::move(params));
    EXPECT_TRUE(response.ok()) << method << ": " << response.error().message();
    return response.ok() ? *response : Response{};
  }

  // Runs `body` in a child process as uid/gid 65534 (a member of group
  // nogroup, the socket's group); returns what it wrote to its pipe. With
  // `release`, the child may block reading it until the parent closes it.
  std::string as_nobody(const std::function<void(int out)>& body,
                        const std::function<void(int in)>& while_running = {}) {
    int out[2];
    int release[2];
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(release, O_CLOEXEC), 0);
    const pid_t child = ::fork();
    if (child == 0) {
      ::close(out[0]);
      ::close(release[1]);
      if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) {
        _exit(3);
      }
      release_fd_ = release[0];
      body(out[1]);
      _exit(0);
    }
    ::close(out[1]);
    ::close(release[0]);
    if (while_running) {
      while_running(out[0]);
    }
    ::close(release[1]);
    std::string text;
    char buffer[4096];
    ssize_t n = 0;
    while ((n = ::read(out[0], buffer, sizeof(buffer))) > 0) {
      text.append(buffer, static_cast<size_t>(n));
    }
    ::close(out[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
    return text;
  }

  static void write_line(int fd, const Json& j) {
    const std::string line = j.dump() + "\n";
    (void)!::write(fd, line.data(), line.size());
  }

  std::string dir_;
  std::string socket_;
  pid_t pid_ = -1;
  std::optional<Client> client_;
  static inline int release_fd_ = -1;
};

std::vector<Json> lines_of(const std::string& text) {
  std::vector<Json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    out.push_back(Json::parse(line));
  }
  return out;
}

// Item 6: a group member made the root daemon overwrite a root-only file,
// learn sizes and probe paths. Now: only paths inside store_dirs, resolved
// without escaping them, and one refusal text whether a path exists or not.
TEST_F(ControlLimitsTest, NonRootClientsNameOnlyPathsInsideStoreDirs) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to act as another user";
  }
  const std::string secret_dir = dir_ + "/root-only";
  const std::string secret = secret_dir + "/secret";
  const std::string stores = dir_ + "/stores";
  ASSERT_EQ(::mkdir(secret_dir.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(stores.c_str(), 0755), 0);
  const std::string content(8192, 's');
  std::ofstream(secret) << content;
  ASSERT_EQ(::chmod(secret.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("../root-only/secret", (stores + "/link").c_str()), 0);
  start(R"(,"store_dirs":[")" + stores + R"("])");

  const std::string text = as_nobody([&](int out) {
    auto c = Client::connect(socket_);
    if (!c.ok()) {
      write_line(out, {{"connect", c.error().message()}});
      return;
    }
    auto add = [&](const std::string& name, const std::string& path, bool format) {
      Json params = {{"name", name}, {"path", path}};
      if (format) {
        params["format"] = true;
        params["size"] = 64 * kMiB;
      }
      auto r = c->call("store.add", params);
      write_line(out, r.ok() ? Json{{"ok", r->ok},
                                    {"code", std::string(to_string(r->code))},
                                    {"message", r->message}}
                             : Json{{"transport", r.error().message()}});
    };
    add("z", secret, true);                           // 0: exists, root-only
    add("z", secret_dir + "/missing", true);          // 1: does not exist
    add("z", secret, false);                          // 2: open an existing "store"
    add("z", stores + "/link", true);                 // 3: symlink out of store_dirs
    add("z", stores + "/../root-only/secret", true);  // 4: '..' out of store_dirs
    add("mine", stores + "/mine.img", true);          // 5: inside: allowed
  });
  const std::vector<Json> r = lines_of(text);
  ASSERT_EQ(r.size(), 6u) << text;
  for (size_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(r[i].contains("ok")) << r[i].dump();
    EXPECT_FALSE(r[i]["ok"].get<bool>()) << i << ": " << r[i].dump();
    EXPECT_EQ(r[i]["code"], "permission_denied") << i << ": " << r[i].dump();
    EXPECT_NE(r[i]["message"].get<std::string>().find(
                  "is not permitted for uid 65534: only root may name paths outside store_dirs"),
              std::string::npos)
        << i << ": " << r[i].dump();
  }
  // No oracle: the refusal for an existing and a missing path differ only
  // in the path the client sent.
  auto without = [](std::string message, const std::string& path) {
    message.replace(message.find(path), path.size(), "PATH");
    return message;
  };
  EXPECT_EQ(without(r[0]["message"], secret), without(r[1]["message"], secret_dir + "/missing"));
  EXPECT_EQ(without(r[0]["message"], secret), without(r[2]["message"], secret));
  // Nothing touched outside store_dirs.
  EXPECT_EQ(read_text(secret), content);
  EXPECT_EQ(fs::file_size(secret), content.size());
  EXPECT_FALSE(fs::exists(secret_dir + "/missing"));
  // Inside store_dirs it works, and the store is remembered by its real path.
  EXPECT_TRUE(r[5]["ok"].get<bool>()) << r[5].dump();
  const Json listed = call("store.list").result;
  ASSERT_EQ(listed["stores"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["stores"][0]["name"], "mine");
  EXPECT_EQ(listed["stores"][0]["path"], stores + "/mine.img");
  EXPECT_EQ(fs::file_size(stores + "/mine.img"), 64 * kMiB);
  // Root may still name any path.
  const Response by_root = call(
      "store.add",
      {{"name", "r"}, {"path", secret_dir + "/root.img"}, {"format", true}, {"size", 64 * kMiB}});
  EXPECT_TRUE(by_root.ok) << by_root.message;
}

// Item 10: 256 idle connections from one group member used to lock root out.
TEST_F(ControlLimitsTest, IdleConnectionsOfAGroupMemberDoNotLockOutRoot) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to act as another user";
  }
  start();
  std::optional<Response> root_answer;
  const std::string text = as_nobody(
      [&](int out) {
        std::vector<UniqueFd> idle;
        for (int i = 0; i < 300; ++i) {
          UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
          sockaddr_un address{};
          address.sun_family = AF_UNIX;
          std::memcpy(address.sun_path, socket_.c_str(), socket_.size() + 1);
          if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
            idle.push_back(std::move(fd));
          }
        }
        // One more, that asks something: refused, saying why.
        Json extra = {{"connected", idle.size()}};
        auto c = Client::connect(socket_);
        if (c.ok()) {
          auto r = c->call("daemon.status");
          extra["answer"] = r.ok() ? Json{{"ok", r->ok},
                                          {"code", std::string(to_string(r->code))},
                                          {"message", r->message}}
                                   : Json{{"transport", r.error().message()}};
        }
        write_line(out, extra);
        // Hold the connections until the parent has checked root's access.
        char byte = 0;
        (void)!::read(release_fd_, &byte, 1);
      },
      [&](int in) {
        // Wait (blocking read, no sleep) for the child's report: all its
        // connections are open then.
        char byte = 0;
        ASSERT_EQ(::read(in, &byte, 1), 1);
        auto root = Client::connect(socket_, std::chrono::seconds(10));
        ASSERT_TRUE(root.ok()) << root.error().message();
        auto r = root->call("daemon.status");
        ASSERT_TRUE(r.ok()) << r.error().message();
        root_answer = *r;
      });
  ASSERT_TRUE(root_answer.has_value());
  EXPECT_TRUE(root_answer->ok) << root_answer->message;
  const std::vector<Json> r = lines_of("{" + text);  // the first byte was read above
  ASSERT_EQ(r.size(), 1u) << text;
  ASSERT_TRUE(r[0].contains("answer")) << r[0].dump();
  EXPECT_EQ(r[0]["answer"]["code"], "busy") << r[0].dump();
  EXPECT_NE(r[0]["answer"]["message"].get<std::string>().find("max_connections_per_uid 32"),
            std::string::npos)
      << r[0].dump();
  EXPECT_NE(log_text().find("max_connections_per_uid"), std::string::npos);
}

// Reads from `fd` until EOF or `bound`; returns what arrived and whether the
// daemon closed the connection. While waiting, sends one more byte of the
// never-ending request every `dribble` (if non-zero).
struct Dropped {
  bool closed = false;
  std::string received;
  std::chrono::milliseconds after{0};
};
Dropped wait_for_drop(int fd, std::chrono::milliseconds dribble, std::chrono::seconds bound) {
  Dropped d;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < bound) {
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, dribble.count() > 0 ? static_cast<int>(dribble.count()) : 1000);
    if (ready > 0) {
      char buffer[4096];
      const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        d.closed = true;
        d.after = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - start);
        return d;
      }
      d.received.append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (dribble.count() > 0) {
      (void)::send(fd, " ", 1, MSG_NOSIGNAL);
    }
  }
  return d;
}

UniqueFd raw_connect(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  return fd;
}

// Item 10: a client that sends a byte at a time (or nothing) is dropped at
// the deadline; one deadline per request line, not per byte.
TEST_F(ControlLimitsTest, SlowLorisAndIdleConnectionsAreDropped) {
  start(R"(,"request_timeout_ms":400,"idle_timeout_ms":800)");
  const auto begin = std::chrono::steady_clock::now();
  UniqueFd loris = raw_connect(socket_);
  ASSERT_EQ(::send(loris.get(), "{\"v\":1", 6, MSG_NOSIGNAL), 6);
  const Dropped d =
      wait_for_drop(loris.get(), std::chrono::milliseconds(50), std::chrono::seconds(20));
  ASSERT_TRUE(d.closed) << "a dribbling client was not dropped within 20 s";
  EXPECT_GE(d.after.count(), 350);   // not before its deadline
  EXPECT_LT(d.after.count(), 5000);  // and not extended by every byte
  EXPECT_NE(d.received.find("request_timeout_ms 400"), std::string::npos) << d.received;

  UniqueFd idle = raw_connect(socket_);
  const Dropped i =
      wait_for_drop(idle.get(), std::chrono::milliseconds(0), std::chrono::seconds(20));
  ASSERT_TRUE(i.closed) << "an idle client was not dropped within 20 s";
  EXPECT_NE(i.received.find("idle_timeout_ms 800"), std::string::npos) << i.received;
  // The daemon itself is fine: a new client is served at once.
  auto fresh = Client::connect(socket_, std::chrono::seconds(10));
  ASSERT_TRUE(fresh.ok()) << fresh.error().message();
  auto answer = fresh->call("daemon.status");
  ASSERT_TRUE(answer.ok()) << answer.error().message();
  EXPECT_TRUE(answer->ok) << answer->message;
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(20));
}

// Item 9: sizes, names and paths refused up front; no file left behind; an
// existing file is never extended by 'size'.
TEST_F(ControlLimitsTest, BadArgumentsAreRefusedBeforeAnythingIsCreated) {
  start();
  auto refused = [&](const std::string& method, const Json& params, const std::string& part) {
    const Response r = call(method, params);
    EXPECT_FALSE(r.ok) << method << " " << params.dump();
    EXPECT_EQ(to_string(r.code), "invalid_argument") << params.dump() << ": " << r.message;
    EXPECT_NE(r.message.find(part), std::string::npos) << r.message << " lacks " << part;
  };
  for (const uint64_t size : {uint64_t{4096}, uint64_t{1} << 50U}) {
    const std::string path = dir_ + "/s-" + std::to_string(size);
    refused("store.add", {{"name", "s"}, {"path", path}, {"format", true}, {"size", size}},
            "out of range for a new store file");
    EXPECT_FALSE(fs::exists(path)) << path << " was left behind";
  }
  // An existing file: 'size' neither extends nor overwrites it.
  const std::string existing = dir_ + "/existing.img";
  std::ofstream(existing) << std::string(4096, 'e');
  refused("store.add", {{"name", "s"}, {"path", existing}, {"format", true}, {"size", 64 * kMiB}},
          "already exists with 4096 bytes");
  EXPECT_EQ(read_text(existing), std::string(4096, 'e'));
  refused("store.add",
          {{"name", "s"}, {"path", dir_ + "/a\nb"}, {"format", true}, {"size", 64 * kMiB}},
          "control character");
  ASSERT_TRUE(
      call("store.add",
           {{"name", "s"}, {"path", dir_ + "/s.img"}, {"format", true}, {"size", 64 * kMiB}})
          .ok);
  refused("volume.create", {{"name", std::string(52, 'v')}, {"size", kMiB}, {"stores", {"s"}}},
          "at most 51 characters");
  EXPECT_TRUE(
      call("volume.create", {{"name", std::string(51, 'v')}, {"size", kMiB}, {"stores", {"s"}}})
          .ok);
  refused("volume.create", {{"name", "huge"}, {"size", uint64_t{1} << 62U}, {"stores", {"s"}}},
          "too large");
}

// Item 8: a config file named with --config must exist.
TEST_F(ControlLimitsTest, ExplicitConfigThatDoesNotExistIsAnError) {
  const pid_t pid = spawn(
      {"--config", dir_ + "/no-such.json", "--state-dir", dir_ + "/state", "--socket", socket_});
  ASSERT_GT(pid, 0);
  pid_ = pid;  // killed by TearDown if it runs on
  // Wait for its exit (bounded): a daemon that starts with defaults instead
  // never exits by itself.
  UniqueFd exited(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  ASSERT_TRUE(exited);
  pollfd p{exited.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20'000), 1) << "the daemon did not exit: " << log_text();
  int status = 0;
  ::waitpid(pid, &status, 0);
  pid_ = -1;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(log_text().find(dir_ + "/no-such.json does not exist"), std::string::npos)
      << log_text();
}

// Runs the CLI binary with `args`; returns its exit status, stdout, stderr.
struct CliOutput {
  int status = -1;
  std::string out, err;
};
CliOutput run_cli(const std::string& dir, std::vector<std::string> args) {
  args.insert(args.begin(), UBLKVOL_CLI_PATH);
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  const std::string out = dir + "/cli.out";
  const std::string err = dir + "/cli.err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  CliOutput r;
  if (::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&actions);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

// Item 11: with 2,048 volumes the answer to volume.list is larger than the
// 1 MiB request-line limit; the CLI used to fail with "cannot talk to the
// daemon". Responses have no size limit now (the CLI binary, human and JSON).
TEST_F(ControlLimitsTest, ThousandsOfVolumesAreListed) {
  constexpr int kVolumes = 2048;
  start();
  // Two DBS volumes per volume (data + engine metadata); a store allows one
  // DBS volume per 256 MiB of its size (a sparse file: only metadata is
  // written).
  const uint64_t store_bytes = uint64_t{2 * kVolumes + 16} << 28U;
  ASSERT_TRUE(
      call("store.add",
           {{"name", "s"}, {"path", dir_ + "/big.img"}, {"format", true}, {"size", store_bytes}})
          .ok);
  for (int i = 0; i < kVolumes; ++i) {
    char name[32];
    (void)std::snprintf(name, sizeof(name), "volume-%05d", i);
    const Response r = call("volume.create", {{"name", name}, {"size", kMiB}, {"stores", {"s"}}});
    ASSERT_TRUE(r.ok) << name << ": " << r.message;
  }
  const CliOutput human = run_cli(dir_, {"--socket", socket_, "volume", "list"});
  ASSERT_EQ(human.status, 0) << human.err;
  EXPECT_NE(human.out.find("volume-00000"), std::string::npos);
  EXPECT_NE(human.out.find("volume-02047"), std::string::npos);
  EXPECT_GE(static_cast<size_t>(std::count(human.out.begin(), human.out.end(), '\n')),
            static_cast<size_t>(kVolumes));
  const CliOutput json = run_cli(dir_, {"--socket", socket_, "--json", "volume", "list"});
  ASSERT_EQ(json.status, 0) << json.err;
  EXPECT_GT(json.out.size(), size_t{1} << 20U);  // more than the old limit
  const Json listed = Json::parse(json.out);
  ASSERT_TRUE(listed.contains("volumes")) << json.out.substr(0, 200);
  ASSERT_EQ(listed["volumes"].size(), static_cast<size_t>(kVolumes));
  EXPECT_EQ(listed["volumes"][kVolumes - 1]["name"], "volume-02047");
}

}  // namespace
}  // namespace ublkvol::daemon
