// S3Server: a real S3-compatible server (s3rver, from npm; installed by
// scripts/setup.sh into tests/backup/s3rver/) started on a loopback port for
// a test, and stopped with it. Readiness is the line s3rver prints once it
// listens ("S3rver listening on 127.0.0.1:PORT"), read with a bound - no
// sleeps. A missing s3rver is a failure, not a skip: the S3 target must be
// tested wherever the tests run (CI included).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

#include "temp_dir.h"

namespace ublkvol::backup::testing {

class S3Server {
 public:
  static constexpr const char* kBucket = "ublkvol-test";
  static constexpr const char* kAccessKey = "S3RVER";  // s3rver's built-in account

  S3Server() = default;
  ~S3Server() { stop(); }
  S3Server(const S3Server&) = delete;
  S3Server& operator=(const S3Server&) = delete;

  // "" on success, else why the server did not start.
  std::string start() {
    const std::string binary = UBLKVOL_S3RVER_BIN;
    if (::access(binary.c_str(), X_OK) != 0) {
      return "s3rver is not installed at " + binary +
             " (scripts/setup.sh installs it: npm install in tests/backup/s3rver)";
    }
    credentials_ = data_.path() + "/credentials";
    {
      std::ofstream out(credentials_);
      out << "[default]\naws_access_key_id = " << kAccessKey
          << "\naws_secret_access_key = S3RVER\n";
    }
    ::chmod(credentials_.c_str(), 0600);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      return "pipe failed";
    }
    const std::string dir = data_.path() + "/data";
    pid_ = ::fork();
    if (pid_ == 0) {
      // Gone with the test, also when the test crashes.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // s3rver's continuation tokens use DES, which Node 20's OpenSSL 3 has
      // only in its legacy provider (without it, a paged listing is a 500).
      ::setenv("NODE_OPTIONS", "--openssl-legacy-provider", 1);
      ::dup2(out[1], STDOUT_FILENO);
      ::execl(binary.c_str(), binary.c_str(), "-d", dir.c_str(), "-a", "127.0.0.1", "-p", "0", "-s",
              "--configure-bucket", kBucket, static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    stdout_ = out[0];
    if (pid_ < 0) {
      return "fork failed";
    }
    // Wait (bounded) for the listening line.
    std::string seen;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    const std::string marker = "S3rver listening on 127.0.0.1:";
    while (seen.find(marker) == std::string::npos ||
           seen.find('\n', seen.find(marker)) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return "s3rver did not say it listens within 60 s; it printed: " + seen;
      }
      pollfd p{stdout_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        continue;
      }
      char buffer[512];
      const ssize_t n = ::read(stdout_, buffer, sizeof(buffer));
      if (n <= 0) {
        return "s3rver exited before it listened; it printed: " + seen;
      }
      seen.append(buffer, static_cast<size_t>(n));
    }
    const size_t at = seen.find(marker) + marker.size();
    port_ = std::atoi(seen.c_str() + at);
    endpoint_ = "http://127.0.0.1:" + std::to_string(port_);
    return "";
  }

  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    if (stdout_ >= 0) {
      ::close(stdout_);
      stdout_ = -1;
    }
  }

  [[nodiscard]] const std::string& endpoint() const { return endpoint_; }
  [[nodiscard]] const std::string& credentials_file() const { return credentials_; }
  [[nodiscard]] std::string data_dir() const { return data_.path() + "/data"; }

 private:
  TempDir data_;
  std::string credentials_;
  std::string endpoint_;
  int port_ = 0;
  pid_t pid_ = -1;
  int stdout_ = -1;
};

}  // namespace ublkvol::backup::testing
