// A killed process loses no completed request (OpenOptions::journal_mappings).
//
// The store runs on a real file opened O_DIRECT through io_uring (FileDevice).
// A forked child opens it, runs requests that change mappings - first writes
// to fresh extents, new blocks of allocated extents, redirect-on-write after a
// snapshot, write-zeroes over snapshot blocks, discards - plus overwrites of
// mapped blocks, sync and async (up to 48 in flight), never flushes, and
// SIGKILLs itself once every request has completed. Nothing of the Store runs
// after the last completion: no destructor, no commit. The parent reopens the
// file: the store must open, check clean, and read back exactly what the
// completed requests wrote; the snapshot must be unchanged.
//
// The same run with journal_mappings = false must lose completed writes
// (the mappings were only in the killed process's memory): proof that the
// test can tell the two apart.
//
// Also: several mapping changes in flight share journal commits, and writes
// to mapped blocks cost no metadata I/O and no FUA.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <vector>

#include "ublkvol/dbs/crash_device.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "../device/temp_file.h"
#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kFileBytes = 32 * kMiB;
constexpr uint64_t kVolumeBlocks = 1024;  // 4 MiB = 16 extents of 64 blocks
constexpr uint32_t kExtentBlocks = 64;

std::string scratch_directory() {
  // A disk-backed file when possible (its page cache survives the killed
  // process, as a device's volatile cache does); tmpfs otherwise.
  for (const char* dir : {"/var/tmp", "/tmp", "/dev/shm"}) {
    if (::access(dir, W_OK) == 0) {
      return dir;
    }
  }
  return ".";
}

std::unique_ptr<FileDevice> open_file(const std::string& path, uint64_t create_size) {
  FileDeviceOptions options;
  options.create_size = create_size;
  options.queue_depth = 64;
  auto file = FileDevice::open(path, options);
  if (!file.ok()) {
    (void)std::fprintf(stderr, "%s\n", file.error().to_string().c_str());
    return nullptr;
  }
  return std::move(*file);
}

// What each block of the volume should hold (seq 0 = zeros).
using VolumeModel = std::vector<BlockTag>;

// The child's workload: deterministic from `seed`, so the parent computes
// the same expected content. Returns false (after printing why) on any
// unexpected result; the caller then exits with a failure code.
bool run_child_workload(Store& store, VolumeId volume, uint64_t seed, VolumeModel& model) {
  std::mt19937_64 rng(seed);
  auto rand = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  uint64_t seq = 1000;
  // Sync phase: each request completes before the next is submitted.
  for (int i = 0; i < 60; ++i) {
    const uint64_t dice = rand(100);
    const uint64_t block = rand(kVolumeBlocks - 8);
    const uint64_t count = 1 + rand(8);
    if (dice < 70) {
      Buffer buffer(count * kBlock);
      ++seq;
      for (uint64_t b = 0; b < count; ++b) {
        fill_block(buffer.block(b), BlockTag{volume, block + b, seq});
      }
      if (auto s = store.write(volume, block * kBlock, buffer.span()); !s.ok()) {
        (void)std::fprintf(stderr, "child: %s\n", s.error().to_string().c_str());
        return false;
      }
      for (uint64_t b = 0; b < count; ++b) {
        model[block + b] = BlockTag{volume, block + b, seq};
      }
    } else {
      auto s = dice < 85 ? store.discard(volume, block * kBlock, count * kBlock)
                         : store.write_zeroes(volume, block * kBlock, count * kBlock);
      if (!s.ok()) {
        (void)std::fprintf(stderr, "child: %s\n", s.error().to_string().c_str());
        return false;
      }
      for (uint64_t b = 0; b < count; ++b) {
        model[block + b] = BlockTag{};
      }
    }
  }
  // Async phase: 48 non-overlapping writes in flight at once (a mix of new
  // extents, new blocks and mapped blocks), all completed before the kill.
  struct Op {
    StoreIo io;
    std::unique_ptr<Buffer> buffer;
    int result = 1;
  };
  std::vector<Op> ops(48);
  for (size_t i = 0; i < ops.size(); ++i) {
    const uint64_t block = i * (kVolumeBlocks / ops.size()) + rand(4);
    const uint64_t count = 1 + rand(3);
    Op& op = ops[i];
    op.buffer = std::make_unique<Buffer>(count * kBlock);
    ++seq;
    for (uint64_t b = 0; b < count; ++b) {
      fill_block(op.buffer->block(b), BlockTag{volume, block + b, seq});
      model[block + b] = BlockTag{volume, block + b, seq};
    }
    op.io.op = StoreOp::kWrite;
    op.io.volume = volume;
    op.io.offset = block * kBlock;
    op.io.length = count * kBlock;
    op.io.buffer = op.buffer->data();
    op.io.user_data = &op;
    op.io.on_complete = [](StoreIo& io, int result) {
      static_cast<Op*>(io.user_data)->result = result;
    };
    store.submit(op.io);
  }
  store.kick();
  while (store.in_flight() > 0) {
    store.poll(true);
  }
  for (const Op& op : ops) {
    if (op.result != 0) {
      (void)std::fprintf(stderr, "child: async write failed: %d\n", op.result);
      return false;
    }
  }
  return true;
}

struct Prepared {
  VolumeId volume = 0;
  SnapshotId snapshot = 0;
  VolumeModel model;  // the volume (and snapshot) content before the child
};

// Formats the file, writes part of a volume, commits, snapshots it - so the
// child's writes include redirects over snapshot blocks.
Prepared prepare(const std::string& path) {
  Prepared p;
  auto file = open_file(path, kFileBytes);
  EXPECT_NE(file, nullptr);
  if (file == nullptr) {
    return p;
  }
  FormatOptions format;
  format.extent_blocks = kExtentBlocks;
  EXPECT_TRUE(Store::format(*file, format).ok());
  auto store = Store::open(*file);
  EXPECT_TRUE(store.ok());
  if (!store.ok()) {
    return p;
  }
  auto volume = (*store)->create_volume("v", kVolumeBlocks * kBlock);
  EXPECT_TRUE(volume.ok());
  p.volume = *volume;
  p.model.assign(kVolumeBlocks, BlockTag{});
  // Every other extent's first half is mapped.
  for (uint64_t e = 0; e < kVolumeBlocks / kExtentBlocks; e += 2) {
    Buffer buffer(kExtentBlocks / 2 * kBlock);
    for (uint64_t b = 0; b < kExtentBlocks / 2; ++b) {
      const uint64_t block = e * kExtentBlocks + b;
      fill_block(buffer.block(b), BlockTag{p.volume, block, 1});
      p.model[block] = BlockTag{p.volume, block, 1};
    }
    EXPECT_TRUE((*store)->write(p.volume, e * kExtentBlocks * kBlock, buffer.span()).ok());
  }
  auto snapshot = (*store)->create_snapshot(p.volume, "before");
  EXPECT_TRUE(snapshot.ok());
  p.snapshot = *snapshot;
  EXPECT_TRUE((*store)->commit().ok());
  EXPECT_TRUE((*store)->close().ok());
  return p;
}

// Runs the workload in a child that SIGKILLs itself after the last
// completion; the child sends the model of what completed through a pipe
// first (a pipe keeps its data after the writer died).
VolumeModel run_killed_child(const std::string& path, const Prepared& p, bool journal_mappings,
                             uint64_t seed) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  (void)std::fflush(nullptr);  // only so the child does not repeat buffered output
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    int code = 2;
    if (auto file = open_file(path, 0)) {
      OpenOptions options;
      options.journal_mappings = journal_mappings;
      auto store = Store::open(*file, options);
      if (!store.ok()) {
        (void)std::fprintf(stderr, "child: %s\n", store.error().to_string().c_str());
      } else {
        VolumeModel model = p.model;
        code = 3;
        if (run_child_workload(**store, p.volume, seed, model)) {
          const size_t bytes = model.size() * sizeof(BlockTag);
          if (::write(fds[1], model.data(), bytes) == static_cast<ssize_t>(bytes)) {
            // Every request has completed and nothing is in flight: the
            // process dies here, with the store object still alive.
            (void)::raise(SIGKILL);  // if it returns, exit code 4 below tells the parent
          }
          code = 4;
        }
      }
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  EXPECT_GT(pid, 0);
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "child did not die by SIGKILL after its workload (exit code "
      << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << ")";
  VolumeModel completed(kVolumeBlocks);
  const size_t bytes = completed.size() * sizeof(BlockTag);
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::read(fds[0], reinterpret_cast<char*>(completed.data()) + got, bytes - got);
    if (n <= 0) {
      break;
    }
    got += static_cast<size_t>(n);
  }
  ::close(fds[0]);
  EXPECT_EQ(got, bytes) << "the child did not report its completed requests";
  return completed;
}

// Reopens the file and counts blocks that differ from `expected`; the
// snapshot must be exactly `p.model` and check() clean either way.
size_t reopen_and_count_lost(const std::string& path, const Prepared& p,
                             const VolumeModel& expected, std::string* first_loss) {
  auto file = open_file(path, 0);
  EXPECT_NE(file, nullptr);
  if (file == nullptr) {
    return expected.size();
  }
  auto store = Store::open(*file);
  EXPECT_TRUE(store.ok()) << store.error().to_string();
  if (!store.ok()) {
    return expected.size();
  }
  for (const auto& problem : (*store)->check()) {
    ADD_FAILURE() << "check after the killed process: " << problem;
  }
  Buffer volume(kVolumeBlocks * kBlock);
  Buffer snapshot(kVolumeBlocks * kBlock);
  EXPECT_TRUE((*store)->read(p.volume, 0, volume.span()).ok());
  EXPECT_TRUE((*store)->read_snapshot(p.snapshot, 0, snapshot.span()).ok());
  size_t lost = 0;
  for (uint64_t b = 0; b < kVolumeBlocks; ++b) {
    BlockTag tag;
    EXPECT_TRUE(testing::decode_block(snapshot.block(b), tag)) << "snapshot block " << b;
    EXPECT_EQ(tag, p.model[b]) << "snapshot block " << b << " changed";
    if (!testing::decode_block(volume.block(b), tag) || tag != expected[b]) {
      if (lost++ == 0 && first_loss != nullptr) {
        *first_loss = "block " + std::to_string(b) + " holds " + testing::describe(tag) +
                      ", the completed request wrote " + testing::describe(expected[b]);
      }
    }
  }
  return lost;
}

TEST(DbsProcessCrash, KilledProcessKeepsEveryCompletedRequest) {
  for (uint64_t seed : {1, 2, 3}) {
    testing::TempPath path(scratch_directory(), "killed");
    const Prepared p = prepare(path.path());
    ASSERT_FALSE(::testing::Test::HasFailure());
    const VolumeModel completed = run_killed_child(path.path(), p, true, seed);
    ASSERT_FALSE(::testing::Test::HasFailure());
    std::string first_loss;
    EXPECT_EQ(reopen_and_count_lost(path.path(), p, completed, &first_loss), 0u)
        << "seed " << seed << ": " << first_loss;
  }
}

// Without journal_mappings the killed process's allocating writes are lost:
// the harness above would notice a regression.
TEST(DbsProcessCrash, WithoutMappingJournalCompletedWritesAreLost) {
  testing::TempPath path(scratch_directory(), "killed-off");
  const Prepared p = prepare(path.path());
  ASSERT_FALSE(::testing::Test::HasFailure());
  const VolumeModel completed = run_killed_child(path.path(), p, false, 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const size_t lost = reopen_and_count_lost(path.path(), p, completed, nullptr);
  EXPECT_GT(lost, 0u);
  std::printf("journal_mappings=false: %zu of %llu blocks lost by the killed process\n", lost,
              static_cast<unsigned long long>(kVolumeBlocks));
}

// Mapping changes in flight together share journal commits; writes to mapped
// blocks go out as plain writes with no metadata I/O.
TEST(DbsProcessCrash, MappingCommitsAreBatchedAndOverwritesCostNothing) {
  MemoryDevice memory(16 * kMiB);
  FormatOptions format;
  format.extent_blocks = 16;
  ASSERT_TRUE(Store::format(memory, format).ok());
  CrashDevice crash(memory);
  auto opened = Store::open(crash);
  ASSERT_TRUE(opened.ok());
  Store& store = **opened;
  auto volume = store.create_volume("v", 2 * kMiB);
  ASSERT_TRUE(volume.ok());
  constexpr size_t kOps = 64;
  std::vector<StoreIo> ios(kOps);
  Buffer buffer(kBlock * kOps);
  int done = 0;
  auto submit_all = [&] {
    done = 0;
    for (size_t i = 0; i < kOps; ++i) {
      StoreIo& io = ios[i];
      io = StoreIo{};
      io.op = StoreOp::kWrite;
      io.volume = *volume;
      io.offset = i * 5 * kBlock;  // spread over 20 extents
      io.length = kBlock;
      io.buffer = buffer.block(i).data();
      io.user_data = &done;
      io.on_complete = [](StoreIo& c, int result) {
        EXPECT_EQ(result, 0);
        ++*static_cast<int*>(c.user_data);
      };
      store.submit(io);
    }
    while (done < static_cast<int>(kOps)) {
      store.poll(true);
    }
  };
  const StoreStats before = store.stats();
  submit_all();  // allocating
  const StoreStats after_alloc = store.stats();
  const uint64_t mapping_commits = after_alloc.mapping_commits - before.mapping_commits;
  EXPECT_GE(mapping_commits, 1u);
  EXPECT_LT(mapping_commits, kOps / 4) << "allocating writes in flight together did not batch";
  std::printf("%zu allocating writes in flight: %llu mapping journal commits\n", kOps,
              static_cast<unsigned long long>(mapping_commits));
  const size_t log_before = crash.log().size();
  submit_all();  // the same blocks again: mapped now
  EXPECT_EQ(store.stats().commits, after_alloc.commits);
  ASSERT_EQ(crash.log().size() - log_before, kOps) << "overwrites wrote more than their data";
  for (size_t i = log_before; i < crash.log().size(); ++i) {
    EXPECT_FALSE(crash.log()[i].fua) << "an overwrite of a mapped block went out FUA";
    EXPECT_EQ(crash.log()[i].op, IoOp::kWrite);
  }
}

}  // namespace
}  // namespace ublkvol::dbs
