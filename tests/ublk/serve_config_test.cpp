// ublkvol-serve's parameter handling: sizes, validation, recovery records,
// and the real binary refusing bad parameters before it touches the kernel.
#include "serve_config.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <gtest/gtest.h>
#include <string>

namespace ublkvol::ublk {
namespace {

TEST(ServeConfigTest, ParsesSizes) {
  EXPECT_EQ(*parse_size("4096"), 4096U);
  EXPECT_EQ(*parse_size("64K"), 64U << 10U);
  EXPECT_EQ(*parse_size("512m"), 512ULL << 20U);
  EXPECT_EQ(*parse_size("1G"), 1ULL << 30U);
  EXPECT_EQ(*parse_size("2GiB"), 2ULL << 30U);
  EXPECT_EQ(*parse_size("1T"), 1ULL << 40U);
  EXPECT_EQ(*parse_size("0"), 0U);
  for (const char* bad : {"", "G", "-1", "1.5G", "1X", "1Gx", " 1"}) {
    EXPECT_FALSE(parse_size(bad).ok()) << bad;
  }
  auto huge = parse_size("99999999999999999999");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.error().message().find("too large"), std::string::npos);
  EXPECT_FALSE(parse_size("20000000T").ok());
}

TEST(ServeConfigTest, ValidatesBackendAndDevice) {
  ServeConfig c;
  c.size_bytes = 1ULL << 30U;
  EXPECT_TRUE(validate_serve_config(c).ok());
  c.backend = "disk";
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "unknown backend 'disk' (use null, memory or replicated)");
  c.backend = "null";
  c.backing_file = "/dev/shm/x";
  EXPECT_EQ(validate_serve_config(c).error().message(), "--backing-file needs the memory backend");
  c.backing_file.clear();
  c.block_size = 3000;
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "block size 3000 is not a power of two between 512 and 4096");
}

TEST(ServeConfigTest, BuildsBackends) {
  ServeConfig c;
  c.size_bytes = 16ULL << 20U;
  c.backend = "null";
  auto null = make_backend(c);
  ASSERT_TRUE(null.ok());
  EXPECT_FALSE((*null)->info().discard_zeroes);
  c.backend = "memory";
  auto mem = make_backend(c);
  ASSERT_TRUE(mem.ok());
  EXPECT_EQ((*mem)->info().size_bytes, 16ULL << 20U);
  c.size_bytes = 0;
  EXPECT_FALSE(make_backend(c).ok());
}

TEST(ServeConfigTest, RecoveryRecordCarriesTheBackend) {
  ServeConfig c;
  c.backend = "memory";
  c.size_bytes = 256ULL << 20U;
  c.block_size = 512;
  c.backing_file = "/dev/shm/vol";
  RecoveryRecord r = make_recovery_record(c, 4, 2, 64);
  auto back = config_from_record(r, ServeConfig{});
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(back->backend, "memory");
  EXPECT_EQ(back->size_bytes, 256ULL << 20U);
  EXPECT_EQ(back->block_size, 512U);
  EXPECT_EQ(back->backing_file, "/dev/shm/vol");
  EXPECT_EQ(back->device.dev_id, 4);
  EXPECT_EQ(back->device.queues, 2U);
  EXPECT_EQ(back->device.queue_depth, 64U);
  EXPECT_TRUE(back->device.recoverable);
  r.backend.erase("size");
  EXPECT_FALSE(config_from_record(r, ServeConfig{}).ok());
}

TEST(ServeConfigTest, ValidatesReplicatedAndRecordsItsFiles) {
  ServeConfig c;
  c.backend = "replicated";
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "the replicated backend needs 1 to 3 --replica-file options, got 0");
  c.replica_files = {"/dev/shm/a", "/dev/shm/b", "/dev/shm/c", "/dev/shm/d"};
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "the replicated backend needs 1 to 3 --replica-file options, got 4");
  c.replica_files = {"/dev/shm/a", "/dev/shm/a"};
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "--replica-file /dev/shm/a is given twice: every replica needs its own store file");
  c.replica_files = {"/dev/shm/a", "/dev/shm/b"};
  EXPECT_TRUE(validate_serve_config(c).ok());  // size 0: taken from the files
  c.block_size = 512;
  EXPECT_EQ(validate_serve_config(c).error().message(),
            "the replicated backend has 4096-byte blocks (--block-size 512 was given)");
  c.block_size = 4096;
  c.size_bytes = 1ULL << 30U;
  c.volume_name = "v1";
  RecoveryRecord r = make_recovery_record(c, 2, 2, 128);
  auto back = config_from_record(r, ServeConfig{});
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(back->backend, "replicated");
  EXPECT_EQ(back->replica_files, c.replica_files);
  EXPECT_EQ(back->volume_name, "v1");
  EXPECT_EQ(back->size_bytes, 1ULL << 30U);
  r.backend.erase("replica_file.1");
  EXPECT_EQ(config_from_record(r, ServeConfig{}).error().message(),
            "recovery record: 'replica_file.1' is missing");
  ServeConfig memory;
  memory.size_bytes = 1ULL << 20U;
  memory.replica_files = {"/dev/shm/a"};
  EXPECT_EQ(validate_serve_config(memory).error().message(),
            "--replica-file needs the replicated backend");
}

struct ProcessRun {
  int exit_code = -1;
  std::string output;
};

ProcessRun run_serve(const std::string& args) {
  ProcessRun run;
  const std::string cmd = std::string(UBLKVOL_SERVE_BINARY) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) {
    return run;
  }
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) {
    run.output += buf.data();
  }
  const int status = ::pclose(p);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

TEST(ServeBinaryTest, RefusesBadParametersBeforeTouchingTheKernel) {
  const struct {
    const char* args;
    const char* message;
  } cases[] = {
      {"--block-size 3000", "block size 3000 is not a power of two between 512 and 4096"},
      {"--depth 0", "queue depth 0 is out of range 1..4096"},
      {"--depth 100000", "queue depth 100000 is out of range 1..4096"},
      {"--size 0", "volume size is 0"},
      {"--queues 0", "queue count 0 is out of range"},
      {"--size 1Q", "size '1Q' has an unknown unit"},
      {"--backend tape", "unknown backend 'tape'"},
      {"--recover", "--recover needs --state-file"},
      {"--backend replicated", "the replicated backend needs 1 to 3 --replica-file options, got 0"},
      {"--backend replicated --size 1G --replica-file /x/a --replica-file /x/b --replica-file /x/c "
       "--replica-file /x/d",
       "the replicated backend needs 1 to 3 --replica-file options, got 4"},
      {"--backend replicated --size 1G --replica-file /nonexistent-dir/r0",
       "replica file /nonexistent-dir/r0 cannot be created: directory /nonexistent-dir does not "
       "exist"},
      {"--backend replicated --replica-file /tmp/ublkvol-serve-test-no-such-replica",
       "--size is needed to create new replica files"},
      {"--backend replicated --recover", "--recover needs --state-file"},
  };
  for (const auto& c : cases) {
    ProcessRun r = run_serve(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(std::string("ublkvol-serve: error: ") + c.message), std::string::npos)
        << c.args << ": " << r.output;
  }
}

}  // namespace
}  // namespace ublkvol::ublk
