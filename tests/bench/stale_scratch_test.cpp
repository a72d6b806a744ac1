// remove_stale_scratch (bench/common/stale_scratch.h): a killed benchmark's
// scratch files are removed by the next run, and nothing else is.
#include "../../bench/common/stale_scratch.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>

namespace {

namespace fs = std::filesystem;
using ublkvol::bench::remove_stale_scratch;
using ublkvol::bench::scratch_owner;

// A pid that was just used and is gone: a reaped child's.
pid_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) {
    ::_exit(0);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, 0), child);
  return child;
}

void touch(const fs::path& path) { std::ofstream(path) << "scratch"; }

TEST(StaleScratch, OwnerIsTheTrailingPid) {
  EXPECT_EQ(scratch_owner("engine_bench_r0_1234", "engine_bench_"), 1234);
  EXPECT_EQ(scratch_owner("dbs_bench_alloc_77.img", "dbs_bench_"), 77);
  EXPECT_EQ(scratch_owner("dbs_bench_77.img", "dbs_bench_"), 77);  // no tag
  EXPECT_EQ(scratch_owner("engine_bench_r0_12x4", "engine_bench_"), 0);
  EXPECT_EQ(scratch_owner("engine_bench_r0_", "engine_bench_"), 0);
  EXPECT_EQ(scratch_owner("other_r0_1234", "engine_bench_"), 0);
  EXPECT_EQ(scratch_owner("engine_bench_r0_1234567890", "engine_bench_"), 0);
}

TEST(StaleScratch, RemovesOnlyFilesOfGoneProcesses) {
  char pattern[] = "/tmp/stale_scratch_test.XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  const fs::path dir = pattern;
  const std::string gone = std::to_string(dead_pid());
  touch(dir / ("engine_bench_r0_" + gone));
  touch(dir / ("engine_bench_rb1_" + gone + ".img"));
  touch(dir / ("engine_bench_r1_" + std::to_string(::getpid())));  // this (live) run
  touch(dir / "engine_bench_r2_1");                                // init: alive
  touch(dir / ("dbs_bench_alloc_" + gone + ".img"));               // another prefix
  touch(dir / ("engine_bench_notes_" + gone + "x"));               // not a pid

  remove_stale_scratch(dir.string(), "engine_bench_", "stale_scratch_test");

  EXPECT_FALSE(fs::exists(dir / ("engine_bench_r0_" + gone)));
  EXPECT_FALSE(fs::exists(dir / ("engine_bench_rb1_" + gone + ".img")));
  EXPECT_TRUE(fs::exists(dir / ("engine_bench_r1_" + std::to_string(::getpid()))));
  EXPECT_TRUE(fs::exists(dir / "engine_bench_r2_1"));
  EXPECT_TRUE(fs::exists(dir / ("dbs_bench_alloc_" + gone + ".img")));
  EXPECT_TRUE(fs::exists(dir / ("engine_bench_notes_" + gone + "x")));
  fs::remove_all(dir);
}

TEST(StaleScratch, MissingDirectoryIsNotAnError) {
  remove_stale_scratch("/nonexistent/stale_scratch_test", "engine_bench_", "stale_scratch_test");
}

}  // namespace
