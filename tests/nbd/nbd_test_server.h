// NbdTestServer: a real NBD server process (nbdkit, qemu-nbd) for tests.
//
// Readiness without sleeps: the test creates the listening socket itself
// (a Unix socket in a scratch directory, or TCP on 127.0.0.1 port 0 - the
// kernel picks a free port) and hands it to the server by systemd socket
// activation (LISTEN_FDS=1, fd 3), which both nbdkit and qemu-nbd support.
// Connections queue in the kernel's backlog from the moment the socket
// listens, so a client may connect before the server has even started.
// The listening socket stays open here, so restart() starts a new server
// on the same address (a "returning" remote replica). The server gets
// PR_SET_PDEATHSIG so it never outlives a crashed test.
// TcpListen puts the TCP socket on another address, optionally inside a
// network namespace (netns_link.h): created by a helper thread that joined
// it, so the server's connections cross that namespace's link.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace ublkvol::nbd::testing {

// Where a TCP server listens (NbdTestServer::TcpListen).
struct NbdTcpListen {
  std::string address = "127.0.0.1";
  std::string netns_path;  // empty: the test's own namespace
};

class NbdTestServer {
 public:
  enum class Transport { kUnix, kTcp };
  using TcpListen = NbdTcpListen;

  // `argv`: the server command without a listen option, e.g.
  // {"nbdkit", "-f", "memory", "64M"} or {"qemu-nbd", "-f", "raw", "PATH"}.
  NbdTestServer(std::vector<std::string> argv, Transport transport,
                const TcpListen& tcp = TcpListen{})
      : argv_(std::move(argv)), transport_(transport) {
    if (transport == Transport::kUnix) {
      char dir_template[] = "/tmp/ublkvol-nbd-XXXXXX";
      if (::mkdtemp(dir_template) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
      }
      dir_ = dir_template;
      socket_path_ = dir_ + "/sock";
      listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof addr.sun_path - 1);
      if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        throw std::runtime_error("bind " + socket_path_ + ": " +
                                 std::generic_category().message(errno));
      }
      uri_ = "nbd+unix:///?socket=" + socket_path_;
    } else {
      listen_fd_ = tcp.netns_path.empty() ? ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
                                          : socket_in_netns(tcp.netns_path);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      ::inet_pton(AF_INET, tcp.address.c_str(), &addr.sin_addr);
      addr.sin_port = 0;
      if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        throw std::runtime_error("bind " + tcp.address +
                                 ":0: " + std::generic_category().message(errno));
      }
      socklen_t len = sizeof addr;
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
      port_ = ntohs(addr.sin_port);
      uri_ = "nbd://" + tcp.address + ":" + std::to_string(port_) + "/";
    }
    if (::listen(listen_fd_, 64) != 0) {
      throw std::runtime_error(std::string("listen: ") + std::generic_category().message(errno));
    }
    start();
  }

  ~NbdTestServer() {
    stop(SIGKILL);
    ::close(listen_fd_);
    if (!socket_path_.empty()) {
      ::unlink(socket_path_.c_str());
      ::rmdir(dir_.c_str());
    }
  }
  NbdTestServer(const NbdTestServer&) = delete;
  NbdTestServer& operator=(const NbdTestServer&) = delete;

  [[nodiscard]] const std::string& uri() const { return uri_; }
  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] pid_t pid() const { return pid_; }

  // Sends `sig` to the server (SIGSTOP / SIGCONT leave it running).
  void signal(int sig) const {
    if (pid_ > 0) {
      ::kill(pid_, sig);
    }
  }

  // SIGSTOP, returning once the server is stopped (it is our child, so
  // waitpid(WUNTRACED) reports it): nothing it has not yet answered will be
  // answered until SIGCONT.
  void signal_and_wait_stopped() const {
    ::kill(pid_, SIGSTOP);
    int status = 0;
    ::waitpid(pid_, &status, WUNTRACED);
  }

  // Kills the server with `sig` and reaps it.
  void stop(int sig = SIGKILL) {
    if (pid_ <= 0) {
      return;
    }
    ::kill(pid_, sig);
    if (sig != SIGKILL) {
      ::kill(pid_, SIGCONT);  // a stopped server must run to act on `sig`
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // A new server process on the same listening socket.
  void restart() {
    stop(SIGKILL);
    start();
  }

 private:
  // A TCP socket of the namespace at `path` (a socket stays in the
  // namespace it was created in). setns(CLONE_NEWNET) moves only the
  // calling thread, so a short-lived thread does it.
  static int socket_in_netns(const std::string& path) {
    int fd = -1;
    int err = 0;
    std::thread([&] {
      const int ns = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) {
        err = errno;
      } else {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      }
      if (ns >= 0) {
        ::close(ns);
      }
    }).join();
    if (fd < 0) {
      throw std::runtime_error("socket in " + path + ": " + std::generic_category().message(err));
    }
    return fd;
  }

  void start() {
    std::vector<char*> args;
    args.reserve(argv_.size() + 1);
    for (auto& arg : argv_) {
      args.push_back(arg.data());
    }
    args.push_back(nullptr);
    // The environment is built before fork: the child of a threaded parent
    // may only call async-signal-safe functions, so it just writes its pid
    // into the prepared LISTEN_PID slot.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string_view entry(*e);
      if (!entry.starts_with("LISTEN_PID=") && !entry.starts_with("LISTEN_FDS=")) {
        env_strings.emplace_back(entry);
      }
    }
    env_strings.emplace_back("LISTEN_FDS=1");
    env_strings.emplace_back("LISTEN_PID=" + std::string(20, '\0'));
    std::vector<char*> env;
    env.reserve(env_strings.size() + 1);
    for (auto& entry : env_strings) {
      env.push_back(entry.data());
    }
    env.push_back(nullptr);
    char* pid_digits = env_strings.back().data() + std::strlen("LISTEN_PID=");
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      throw std::runtime_error("fork failed");
    }
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) {
        ::_exit(127);
      }
      if (listen_fd_ == 3) {
        ::fcntl(3, F_SETFD, 0);
      } else {
        ::dup2(listen_fd_, 3);  // dup2 clears FD_CLOEXEC on the copy
      }
      char reversed[20];
      int n = 0;
      for (pid_t pid = ::getpid(); pid > 0; pid /= 10) {
        reversed[n++] = static_cast<char>('0' + pid % 10);
      }
      for (int i = 0; i < n; ++i) {
        pid_digits[i] = reversed[n - 1 - i];
      }
      ::execvpe(args[0], args.data(), env.data());
      ::_exit(127);
    }
  }

  std::vector<std::string> argv_;
  Transport transport_;
  std::string dir_;
  std::string socket_path_;
  std::string uri_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  pid_t pid_ = -1;
};

}  // namespace ublkvol::nbd::testing
