// Zero copy through DBS and the file device (include/ublkvol/dbs/fixed_buffer.h,
// docs/zero-copy.md), on the host: a test ring stands in for the ublk queue's
// ring. Its fixed buffers are ordinary registered memory, and the requests
// reach DBS only as addresses in a PROT_NONE window - so any byte DBS or the
// device touched itself would crash the test. Reads, writes, holes (zero fill
// without memset), pieces split at extent boundaries and reads falling
// through a snapshot layer must land at the right offsets of the right fixed
// buffer; the file device must issue them on the test ring.
#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/fixed_buffer.h"
#include "ublkvol/dbs/store.h"

#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::decode_block;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kSlots = 4;
constexpr uint64_t kStride = uint64_t{256} * 1024;  // 4 extents of 64 KiB per slot

// The stand-in for a ublk queue: a ring whose fixed buffers 0..kSlots-1 are
// `memory`, and the PROT_NONE window that names them.
class FakeQueueRing {
 public:
  FakeQueueRing() : memory_(kSlots * kStride) {
    EXPECT_EQ(io_uring_queue_init(64, &ring_, 0), 0);
    std::vector<iovec> iovecs(kSlots);
    for (uint32_t i = 0; i < kSlots; ++i) {
      iovecs[i].iov_base = memory_.data() + i * kStride;
      iovecs[i].iov_len = kStride;
    }
    EXPECT_EQ(io_uring_register_buffers(&ring_, iovecs.data(), kSlots), 0);
    window_base_ = ::mmap(nullptr, kSlots * kStride, PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    EXPECT_NE(window_base_, MAP_FAILED);
    FixedBufferWindow window;
    window.base = static_cast<std::byte*>(window_base_);
    window.stride = kStride;
    window.slots = kSlots;
    window.ring = &ring_;
    window.context = this;
    window.addr_of_slot = [](const FixedBufferWindow& w, uint32_t slot) {
      auto* self = static_cast<FakeQueueRing*>(w.context);
      return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(self->slot_memory(slot)));
    };
    EXPECT_TRUE(FixedBufferWindows::current().add(window));
  }
  ~FakeQueueRing() {
    FixedBufferWindows::current().remove(static_cast<std::byte*>(window_base_));
    ::munmap(window_base_, kSlots * kStride);
    io_uring_queue_exit(&ring_);
  }
  FakeQueueRing(const FakeQueueRing&) = delete;
  FakeQueueRing& operator=(const FakeQueueRing&) = delete;

  // What the engine hands DBS for slot `slot`: an address it cannot touch.
  [[nodiscard]] std::byte* window_address(uint32_t slot) const {
    return static_cast<std::byte*>(window_base_) + slot * kStride;
  }
  [[nodiscard]] std::byte* slot_memory(uint32_t slot) const {
    return memory_.data() + slot * kStride;
  }

  // What the queue's loop does with CQEs that are not its own: hands them
  // back to the device that issued them. Returns how many.
  unsigned dispatch() {
    io_uring_submit(&ring_);
    unsigned seen = 0;
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      const uint64_t data = cqe->user_data;
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      EXPECT_TRUE(is_ring_guest(data));
      complete_ring_guest(data, res);
      ++seen;
    }
    return seen;
  }

 private:
  io_uring ring_{};
  Buffer memory_;
  void* window_base_ = nullptr;
};

class ZeroCopyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char path[] = "/dev/shm/ublkvol-zc-XXXXXX";
    const int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::close(fd);
    path_ = path;
    FileDeviceOptions options;
    options.create_size = 64 * kMiB;
    auto device = FileDevice::open(path_, options);
    ASSERT_TRUE(device.ok()) << device.error().to_string();
    device_ = std::move(*device);
    FormatOptions format;
    format.extent_blocks = 16;  // 64 KiB extents: a 256 KiB request is 4 pieces
    ASSERT_TRUE(Store::format(*device_, format).ok());
    auto store = Store::open(*device_);
    ASSERT_TRUE(store.ok()) << store.error().to_string();
    store_ = std::move(*store);
    auto volume = store_->create_volume("v", 16 * kMiB);
    ASSERT_TRUE(volume.ok());
    volume_ = *volume;
  }
  void TearDown() override {
    store_.reset();
    device_.reset();
    ::unlink(path_.c_str());
  }

  // One zero-copy request: the store and the fake queue ring are polled on
  // this thread until it completes (bounded).
  int run(StoreOp op, uint64_t offset, uint64_t length, uint32_t slot, SnapshotId snapshot = 0) {
    StoreIo io;
    io.op = op;
    io.volume = volume_;
    io.snapshot = snapshot;
    io.offset = offset;
    io.length = length;
    io.buffer = queue_.window_address(slot);
    struct Done {
      bool done = false;
      int result = 0;
    } done;
    io.user_data = &done;
    io.on_complete = [](StoreIo& s, int result) {
      auto* d = static_cast<Done*>(s.user_data);
      d->done = true;
      d->result = result;
    };
    store_->submit(io);
    // Bounded in time, not in rounds: a loaded host completes slowly.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done.done && std::chrono::steady_clock::now() < deadline) {
      store_->poll(false);
      queue_.dispatch();
    }
    EXPECT_TRUE(done.done) << "request did not complete: " << device_->in_flight()
                           << " requests at the device, " << device_->counters().zero_copy_ios
                           << " zero-copy I/Os, " << device_->counters().zero_fills
                           << " zero fills";
    return done.result;
  }

  void fill_slot(uint32_t slot, uint64_t first_block, uint64_t blocks, uint64_t seq) {
    for (uint64_t b = 0; b < blocks; ++b) {
      fill_block({queue_.slot_memory(slot) + b * kBlock, kBlock},
                 BlockTag{volume_, first_block + b, seq});
    }
  }
  // seq 0: zeros. Block first_block + b is at block `at + b` of the slot.
  void expect_slot(uint32_t slot, uint64_t first_block, uint64_t blocks, uint64_t seq,
                   uint64_t at = 0) {
    for (uint64_t b = 0; b < blocks; ++b) {
      BlockTag tag;
      ASSERT_TRUE(decode_block({queue_.slot_memory(slot) + (at + b) * kBlock, kBlock}, tag))
          << "garbage in block " << b;
      const BlockTag want = seq == 0 ? BlockTag{} : BlockTag{volume_, first_block + b, seq};
      EXPECT_EQ(tag, want) << "block " << first_block + b << " of slot " << slot;
    }
  }

  std::string path_;
  std::unique_ptr<FileDevice> device_;
  std::unique_ptr<Store> store_;
  VolumeId volume_ = 0;
  FakeQueueRing queue_;
};

TEST_F(ZeroCopyStoreTest, WritesAndReadsGoThroughTheQueueRingsFixedBuffers) {
  // 256 KiB from block 8: 5 pieces (extent boundaries every 16 blocks).
  fill_slot(1, 8, 64, 1);
  ASSERT_EQ(run(StoreOp::kWrite, 8 * kBlock, 64 * kBlock, 1), 0);
  EXPECT_GE(device_->counters().zero_copy_ios, 5U);
  // Read back into another slot, and with the ordinary API.
  std::memset(queue_.slot_memory(2), 0xee, kStride);
  ASSERT_EQ(run(StoreOp::kRead, 8 * kBlock, 64 * kBlock, 2), 0);
  expect_slot(2, 8, 64, 1);
  Buffer plain(64 * kBlock);
  ASSERT_TRUE(store_->read(volume_, 8 * kBlock, plain.span()).ok());
  EXPECT_EQ(std::memcmp(plain.data(), queue_.slot_memory(1), 64 * kBlock), 0);
}

TEST_F(ZeroCopyStoreTest, HolesAreZeroFilledByTheDeviceWithoutTouchingTheBuffer) {
  // Blocks 20..23 written; a 64-block read from block 0 has holes on both
  // sides, zero-filled through the ring (PROT_NONE window: a memset would
  // have crashed).
  fill_slot(0, 20, 4, 7);
  ASSERT_EQ(run(StoreOp::kWrite, 20 * kBlock, 4 * kBlock, 0), 0);
  std::memset(queue_.slot_memory(3), 0xee, kStride);
  const uint64_t fills_before = device_->counters().zero_fills;
  ASSERT_EQ(run(StoreOp::kRead, 0, 64 * kBlock, 3), 0);
  expect_slot(3, 0, 20, 0);
  for (uint64_t b = 20; b < 24; ++b) {
    BlockTag tag;
    ASSERT_TRUE(decode_block({queue_.slot_memory(3) + b * kBlock, kBlock}, tag));
    EXPECT_EQ(tag, (BlockTag{volume_, b, 7}));
  }
  expect_slot(3, 24, 40, 0, 24);
  EXPECT_GE(device_->counters().zero_fills, fills_before + 2);
}

TEST_F(ZeroCopyStoreTest, ReadsFallThroughSnapshotLayersIntoTheRightOffsets) {
  fill_slot(0, 0, 32, 1);
  ASSERT_EQ(run(StoreOp::kWrite, 0, 32 * kBlock, 0), 0);
  auto snapshot = store_->create_snapshot(volume_, "s");
  ASSERT_TRUE(snapshot.ok());
  // Overwrite every other 4-block run in the head.
  for (uint64_t b = 0; b < 32; b += 8) {
    fill_slot(1, b, 4, 2);
    ASSERT_EQ(run(StoreOp::kWrite, b * kBlock, 4 * kBlock, 1), 0);
  }
  std::memset(queue_.slot_memory(2), 0xee, kStride);
  ASSERT_EQ(run(StoreOp::kRead, 0, 48 * kBlock, 2), 0);
  for (uint64_t b = 0; b < 48; ++b) {
    BlockTag tag;
    ASSERT_TRUE(decode_block({queue_.slot_memory(2) + b * kBlock, kBlock}, tag)) << b;
    const uint64_t seq = b >= 32 ? 0 : (b % 8 < 4 ? 2 : 1);
    EXPECT_EQ(tag, seq == 0 ? BlockTag{} : (BlockTag{volume_, b, seq})) << "block " << b;
  }
  // The snapshot itself still reads the old data.
  ASSERT_EQ(run(StoreOp::kRead, 0, 32 * kBlock, 3, *snapshot), 0);
  expect_slot(3, 0, 32, 1);
}

TEST_F(ZeroCopyStoreTest, OrdinaryBuffersStillUseTheDevicesOwnRing) {
  Buffer plain(8 * kBlock);
  for (uint64_t b = 0; b < 8; ++b) {
    fill_block(plain.block(b), BlockTag{volume_, b, 3});
  }
  ASSERT_TRUE(store_->write(volume_, 0, plain.span()).ok());
  EXPECT_EQ(device_->counters().zero_copy_ios, 0U);
  Buffer back(16 * kBlock);
  ASSERT_TRUE(store_->read(volume_, 0, back.span()).ok());
  EXPECT_EQ(std::memcmp(back.data(), plain.data(), 8 * kBlock), 0);
  for (uint64_t b = 8; b < 16; ++b) {
    for (size_t i = 0; i < kBlock; ++i) {
      ASSERT_EQ(back.data()[b * kBlock + i], std::byte{0});
    }
  }
  EXPECT_EQ(device_->counters().zero_copy_ios, 0U);
}

}  // namespace
}  // namespace ublkvol::dbs
