// InProcessTest: the daemon's registry and method handlers in the test's own
// process - no daemon, no socket, no ublk - over stores on dbs::MemoryDevice
// (formatted here), with state.json and intents.json in a temp dir on
// /dev/shm. Requests go through dispatch() (the method table, Params, the
// handler, render), exactly as the control server hands them to Service.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <gtest/gtest.h>
#include <memory>
#include <string>

#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "handlers.h"
#include "registry.h"

namespace ublkvol::daemon::test_support {

inline constexpr uint64_t kMiB = uint64_t{1} << 20U;

class InProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/dev/shm/ublkvol-ip-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    config_.state_dir = dir_ + "/state";
    config_.control_socket = dir_ + "/ctl.sock";
    config_.io_deadline_ms = 2000;
    ASSERT_EQ(::mkdir(config_.state_dir.c_str(), 0700), 0);
    start();
  }

  void TearDown() override {
    registry_.reset();
    std::filesystem::remove_all(dir_);
  }

  void start() {
    auto registry = Registry::start(config_);
    ASSERT_TRUE(registry.ok()) << registry.error().message();
    registry_ = std::move(*registry);
  }

  // A store `name` on a new, formatted memory device.
  StoreEntry* add_memory_store(const std::string& name, uint64_t bytes = 64 * kMiB) {
    auto device = std::make_unique<dbs::MemoryDevice>(bytes);
    Status formatted = dbs::Store::format(*device);
    EXPECT_TRUE(formatted.ok()) << formatted.error().message();
    auto added = registry_->add_open_store(name, "memory:" + name, std::move(device));
    EXPECT_TRUE(added.ok()) << added.error().message();
    return added.ok() ? *added : nullptr;
  }

  // One request through dispatch(), from root.
  Result<Json> call(const std::string& method, const Json& params = Json::object()) {
    Request request;
    request.id = ++next_id_;
    request.method = method;
    // As the wire delivers it (a positive number parses as unsigned).
    request.params = Json::parse(params.dump());
    request.peer = Peer{0, 0, static_cast<int32_t>(::getpid())};
    return dispatch(*registry_, request);
  }

  // The result of a request that must succeed ({} after a failure).
  Json ok(const std::string& method, const Json& params = Json::object()) {
    auto result = call(method, params);
    EXPECT_TRUE(result.ok()) << method << " " << params.dump() << ": " << result.error().message();
    return result.ok() ? *result : Json::object();
  }

  // A request that must fail with `err` and a message containing `part`.
  void refused(const std::string& method, const Json& params, int err, const std::string& part) {
    auto result = call(method, params);
    ASSERT_FALSE(result.ok()) << method << " " << params.dump() << " succeeded: " << result->dump();
    EXPECT_EQ(result.error().errno_value(), err) << result.error().message();
    EXPECT_NE(result.error().message().find(part), std::string::npos)
        << "'" << result.error().message() << "' lacks '" << part << "'";
  }

  std::string dir_;
  DaemonConfig config_;
  std::unique_ptr<Registry> registry_;
  uint64_t next_id_ = 0;
};

}  // namespace ublkvol::daemon::test_support
