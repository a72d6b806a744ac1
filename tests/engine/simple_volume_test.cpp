// Null and memory backends: option checks, request checks, completion
// semantics (callbacks only inside reap(), on the submitting thread) and the
// memory backend's data, including the file-backed mode.
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "ublkvol/engine/volume.h"

namespace ublkvol::engine {
namespace {

constexpr uint64_t kMiB = 1ULL << 20U;

// A 4 KiB-aligned buffer, as the ublk frontend's tag buffers are.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) : size_(size) {
    void* p = nullptr;
    EXPECT_EQ(::posix_memalign(&p, 4096, size), 0);
    data_ = static_cast<std::byte*>(p);
  }
  ~AlignedBuffer() { ::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  [[nodiscard]] std::byte* data() const { return data_; }
  [[nodiscard]] size_t size() const { return size_; }
  void fill(uint8_t value) { std::memset(data_, value, size_); }
  [[nodiscard]] bool all(uint8_t value) const {
    for (size_t i = 0; i < size_; ++i) {
      if (data_[i] != std::byte{value}) {
        return false;
      }
    }
    return true;
  }

 private:
  size_t size_;
  std::byte* data_ = nullptr;
};

// Submits one I/O and reaps it; returns the completion result.
struct Completion {
  int result = 1;
  int calls = 0;
};
void record(VolumeIo& io, int result) {
  auto* c = static_cast<Completion*>(io.user_data);
  c->result = result;
  ++c->calls;
}

int run_io(VolumeQueue& queue, VolumeOp op, uint64_t offset, uint32_t length,
           std::byte* buffer = nullptr, bool fua = false) {
  Completion done;
  VolumeIo io;
  io.op = op;
  io.offset = offset;
  io.length = length;
  io.buffer = buffer;
  io.fua = fua;
  io.on_complete = record;
  io.user_data = &done;
  queue.submit(io);
  queue.kick();
  EXPECT_EQ(done.calls, 0) << "callback ran inside submit()";
  EXPECT_EQ(queue.in_flight(), 1U);
  EXPECT_EQ(queue.reap(), 1U);
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(queue.in_flight(), 0U);
  return done.result;
}

SimpleVolumeOptions options(uint64_t size, uint32_t block_size = 4096, unsigned queues = 1) {
  SimpleVolumeOptions o;
  o.name = "t";
  o.size_bytes = size;
  o.block_size = block_size;
  o.queues = queues;
  return o;
}

std::string error_of(const Result<std::unique_ptr<Volume>>& r) {
  return r.ok() ? std::string("<ok>") : r.error().message();
}

TEST(SimpleVolumeOptionsTest, RefusesBadBlockSizeWithClearMessage) {
  for (auto* make : {&make_null_volume, &make_memory_volume}) {
    auto r = make(options(kMiB, 3000));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().errno_value(), EINVAL);
    EXPECT_NE(error_of(r).find("block size 3000 is not a power of two"), std::string::npos)
        << error_of(r);
    EXPECT_FALSE(make(options(kMiB, 256)).ok());
    EXPECT_FALSE(make(options(kMiB, 128 * 1024)).ok());
  }
}

TEST(SimpleVolumeOptionsTest, RefusesZeroAndUnalignedSize) {
  for (auto* make : {&make_null_volume, &make_memory_volume}) {
    auto zero = make(options(0));
    ASSERT_FALSE(zero.ok());
    EXPECT_NE(error_of(zero).find("size is 0"), std::string::npos) << error_of(zero);
    auto odd = make(options(kMiB + 512));
    ASSERT_FALSE(odd.ok());
    EXPECT_NE(error_of(odd).find("not a multiple of the block size 4096"), std::string::npos)
        << error_of(odd);
    auto no_queue = make(options(kMiB, 4096, 0));
    ASSERT_FALSE(no_queue.ok());
    EXPECT_NE(error_of(no_queue).find("queue count is 0"), std::string::npos);
  }
}

TEST(SimpleVolumeOptionsTest, NullRefusesBackingFile) {
  auto o = options(kMiB);
  o.backing_file = "/tmp/whatever";
  EXPECT_FALSE(make_null_volume(o).ok());
}

TEST(SimpleVolumeTest, InfoDescribesTheVolume) {
  auto null = make_null_volume(options(8 * kMiB, 512));
  ASSERT_TRUE(null.ok()) << null.error().to_string();
  EXPECT_EQ((*null)->info().size_bytes, 8 * kMiB);
  EXPECT_EQ((*null)->info().block_size, 512U);
  EXPECT_TRUE((*null)->info().volatile_cache);
  EXPECT_FALSE((*null)->info().discard_zeroes);
  auto mem = make_memory_volume(options(8 * kMiB));
  ASSERT_TRUE(mem.ok());
  EXPECT_TRUE((*mem)->info().discard_zeroes);
  EXPECT_EQ((*mem)->info().max_io_bytes, 1U << 20U);
}

TEST(SimpleVolumeTest, OpenQueueChecksIndex) {
  for (auto* make : {&make_null_volume, &make_memory_volume}) {
    auto v = make(options(kMiB, 4096, 2));
    ASSERT_TRUE(v.ok());
    EXPECT_TRUE((*v)->open_queue(0).ok());
    EXPECT_TRUE((*v)->open_queue(1).ok());
    auto bad = (*v)->open_queue(2);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.error().message().find("queue 2 does not exist"), std::string::npos);
  }
}

TEST(SimpleVolumeTest, CompletesOnSubmittingThreadWithoutWakeFd) {
  for (auto* make : {&make_null_volume, &make_memory_volume}) {
    auto v = make(options(kMiB));
    ASSERT_TRUE(v.ok());
    auto q = (*v)->open_queue(0);
    ASSERT_TRUE(q.ok());
    EXPECT_EQ((*q)->wake_fd(), -1);
    AlignedBuffer buf(4096);
    EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 4096, buf.data(), true), 0);
    EXPECT_EQ(run_io(**q, VolumeOp::kRead, 4096, 4096, buf.data()), 0);
    EXPECT_EQ(run_io(**q, VolumeOp::kFlush, 0, 0), 0);
    EXPECT_EQ((*q)->reap(), 0U);
  }
}

TEST(SimpleVolumeTest, RejectsMalformedRequests) {
  for (auto* make : {&make_null_volume, &make_memory_volume}) {
    auto v = make(options(kMiB));
    ASSERT_TRUE(v.ok());
    auto q = (*v)->open_queue(0);
    ASSERT_TRUE(q.ok());
    AlignedBuffer buf(2 * kMiB);
    // Unaligned offset and length.
    EXPECT_EQ(run_io(**q, VolumeOp::kRead, 512, 4096, buf.data()), -EINVAL);
    EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 1000, buf.data()), -EINVAL);
    // Past the end, and wrapping.
    EXPECT_EQ(run_io(**q, VolumeOp::kRead, kMiB, 4096, buf.data()), -EINVAL);
    EXPECT_EQ(run_io(**q, VolumeOp::kRead, kMiB - 4096, 8192, buf.data()), -EINVAL);
    EXPECT_EQ(run_io(**q, VolumeOp::kDiscard, ~0ULL - 4095, 4096), -EINVAL);
    // Zero length, no buffer, larger than max_io_bytes.
    EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 0, buf.data()), -EINVAL);
    EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 4096, nullptr), -EINVAL);
    auto big = make(options(4 * kMiB));
    ASSERT_TRUE(big.ok());
    auto bq = (*big)->open_queue(0);
    ASSERT_TRUE(bq.ok());
    EXPECT_EQ(run_io(**bq, VolumeOp::kWrite, 0, 2 * kMiB, buf.data()), -EINVAL);
    EXPECT_EQ(run_io(**bq, VolumeOp::kWrite, 0, kMiB, buf.data()), 0);
  }
}

TEST(SimpleVolumeTest, CallbackMaySubmitAgain) {
  auto v = make_null_volume(options(kMiB));
  ASSERT_TRUE(v.ok());
  auto q = (*v)->open_queue(0);
  ASSERT_TRUE(q.ok());
  struct Chain {
    VolumeQueue* queue;
    int remaining;
    int completed;
  } chain{q->get(), 3, 0};
  VolumeIo io;
  io.op = VolumeOp::kFlush;
  io.user_data = &chain;
  io.on_complete = [](VolumeIo& self, int result) {
    auto* c = static_cast<Chain*>(self.user_data);
    EXPECT_EQ(result, 0);
    ++c->completed;
    if (--c->remaining > 0) {
      c->queue->submit(self);
    }
  };
  (*q)->submit(io);
  // Each reap runs what was queued before it; the re-submission waits.
  EXPECT_EQ((*q)->reap(), 1U);
  EXPECT_EQ((*q)->in_flight(), 1U);
  EXPECT_EQ((*q)->reap(), 1U);
  EXPECT_EQ((*q)->reap(), 1U);
  EXPECT_EQ((*q)->reap(), 0U);
  EXPECT_EQ(chain.completed, 3);
}

TEST(MemoryVolumeTest, ReadsBackWritesAndZerosElsewhere) {
  auto v = make_memory_volume(options(4 * kMiB));
  ASSERT_TRUE(v.ok());
  auto q = (*v)->open_queue(0);
  ASSERT_TRUE(q.ok());
  AlignedBuffer w(size_t{64} * 1024);
  w.fill(0xab);
  ASSERT_EQ(run_io(**q, VolumeOp::kWrite, kMiB - 8192, 64 * 1024, w.data()), 0);
  AlignedBuffer r(size_t{64} * 1024);
  r.fill(0x11);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, kMiB - 8192, 64 * 1024, r.data()), 0);
  EXPECT_TRUE(r.all(0xab));
  AlignedBuffer z(4096);
  z.fill(0x11);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, 3 * kMiB, 4096, z.data()), 0);
  EXPECT_TRUE(z.all(0));
}

TEST(MemoryVolumeTest, DiscardAndWriteZeroesReadAsZeros) {
  // 512-byte blocks, so ranges can start and end inside pages.
  auto v = make_memory_volume(options(4 * kMiB, 512));
  ASSERT_TRUE(v.ok());
  auto q = (*v)->open_queue(0);
  ASSERT_TRUE(q.ok());
  AlignedBuffer w(kMiB);
  w.fill(0x5a);
  ASSERT_EQ(run_io(**q, VolumeOp::kWrite, 0, kMiB, w.data()), 0);
  ASSERT_EQ(run_io(**q, VolumeOp::kDiscard, 512, 3 * 4096), 0);
  ASSERT_EQ(run_io(**q, VolumeOp::kWriteZeroes, 64 * 1024 + 1024, 200 * 1024), 0);
  AlignedBuffer r(kMiB);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, 0, kMiB, r.data()), 0);
  auto byte_at = [&](uint64_t off) { return std::to_integer<int>(r.data()[off]); };
  EXPECT_EQ(byte_at(0), 0x5a);
  EXPECT_EQ(byte_at(511), 0x5a);
  for (uint64_t off = 512; off < 512 + 3 * 4096; ++off) {
    ASSERT_EQ(byte_at(off), 0) << off;
  }
  EXPECT_EQ(byte_at(512 + 3 * 4096), 0x5a);
  EXPECT_EQ(byte_at(64 * 1024 + 1023), 0x5a);
  for (uint64_t off = 64 * 1024 + 1024; off < 64 * 1024 + 1024 + 200 * 1024; ++off) {
    ASSERT_EQ(byte_at(off), 0) << off;
  }
  EXPECT_EQ(byte_at(64 * 1024 + 1024 + 200 * 1024), 0x5a);
}

class TempDir {
 public:
  TempDir() {
    std::string templ = ::testing::TempDir() + "ublkvol-mem-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    EXPECT_NE(::mkdtemp(buf.data()), nullptr);
    path_ = buf.data();
  }
  ~TempDir() {
    // std::filesystem instead of system("rm -rf"): no shell, no quoting.
    std::error_code error;
    std::filesystem::remove_all(path_, error);
    EXPECT_FALSE(error) << "removing " << path_ << ": " << error.message();
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(MemoryVolumeTest, BackingFileKeepsDataAcrossInstances) {
  TempDir dir;
  auto o = options(2 * kMiB);
  o.backing_file = dir.path() + "/vol.img";
  AlignedBuffer w(8192);
  w.fill(0xc3);
  {
    auto v = make_memory_volume(o);
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    auto q = (*v)->open_queue(0);
    ASSERT_TRUE(q.ok());
    ASSERT_EQ(run_io(**q, VolumeOp::kWrite, kMiB, 8192, w.data()), 0);
    ASSERT_EQ(run_io(**q, VolumeOp::kDiscard, kMiB + 4096, 4096), 0);
  }
  auto v = make_memory_volume(o);
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto q = (*v)->open_queue(0);
  ASSERT_TRUE(q.ok());
  AlignedBuffer r(8192);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, kMiB, 8192, r.data()), 0);
  for (size_t i = 0; i < 4096; ++i) {
    ASSERT_EQ(r.data()[i], std::byte{0xc3});
    ASSERT_EQ(r.data()[4096 + i], std::byte{0});
  }
}

TEST(MemoryVolumeTest, BackingFileOfOtherSizeIsRefused) {
  TempDir dir;
  auto o = options(2 * kMiB);
  o.backing_file = dir.path() + "/vol.img";
  ASSERT_TRUE(make_memory_volume(o).ok());
  o.size_bytes = 4 * kMiB;
  auto r = make_memory_volume(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("holds 2097152 bytes but the volume is 4194304"),
            std::string::npos)
      << r.error().message();
  o.backing_file = dir.path() + "/missing-dir/vol.img";
  auto missing = make_memory_volume(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_NE(missing.error().message().find("missing-dir/vol.img: cannot open"), std::string::npos);
}

TEST(VolumeOpTest, Names) {
  EXPECT_STREQ(to_string(VolumeOp::kRead), "read");
  EXPECT_STREQ(to_string(VolumeOp::kWriteZeroes), "write-zeroes");
}

}  // namespace
}  // namespace ublkvol::engine
