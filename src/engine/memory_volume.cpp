// The memory backend: data lives in one mapping, anonymous or (with
// SimpleVolumeOptions::backing_file) a shared mapping of a file, typically on
// tmpfs so that it survives the serving process being killed.
//
// I/O runs synchronously inside submit() on the caller's thread; its
// completion is queued and its callback runs in the next reap(). Queues of
// different threads may touch the same blocks, so each I/O holds the locks of
// the 1 MiB regions it covers (striped over a fixed set of mutexes, taken in
// index order). This is a test backend: correctness over speed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"

#include "simple_volume.h"

namespace ublkvol::engine {
namespace {

constexpr unsigned kRegionShift = 20;  // 1 MiB lock regions
constexpr size_t kStripes = 64;
constexpr uint64_t kPageSize = 4096;

class Mapping {
 public:
  Mapping() = default;
  Mapping(std::byte* base, uint64_t size) : base_(base), size_(size) {}
  ~Mapping() {
    if (base_ != nullptr) {
      ::munmap(base_, size_);
    }
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  [[nodiscard]] std::byte* base() const { return base_; }

 private:
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
};

class MemoryStore {
 public:
  MemoryStore(VolumeInfo info, UniqueFd file, std::byte* base)
      : info_(std::move(info)), file_(std::move(file)), mapping_(base, info_.size_bytes) {}

  [[nodiscard]] const VolumeInfo& info() const { return info_; }

  int execute(const VolumeIo& io) {
    const int check = detail::check_io(info_, io);
    if (check != 0) {
      return check;
    }
    if (io.op == VolumeOp::kFlush) {
      // Data is in the mapping (page cache for a file) the moment a write
      // completes: that is all this backend promises (it survives the
      // process, not the machine).
      return 0;
    }
    RangeLock lock(*this, io.offset, io.length);
    std::byte* at = mapping_.base() + io.offset;
    switch (io.op) {
      case VolumeOp::kRead:
        std::memcpy(io.buffer, at, io.length);
        return 0;
      case VolumeOp::kWrite:
        std::memcpy(at, io.buffer, io.length);
        return 0;
      case VolumeOp::kDiscard:
      case VolumeOp::kWriteZeroes:
        zero(io.offset, io.length);
        return 0;
      default:
        return -EOPNOTSUPP;
    }
  }

 private:
  // Holds the stripe locks of every region in [offset, offset + length).
  class RangeLock {
   public:
    RangeLock(MemoryStore& store, uint64_t offset, uint64_t length) : store_(store) {
      const uint64_t first = offset >> kRegionShift;
      const uint64_t last = (offset + length - 1) >> kRegionShift;
      if (last - first + 1 >= kStripes) {
        held_.set();
      } else {
        for (uint64_t region = first; region <= last; ++region) {
          held_.set(region % kStripes);
        }
      }
      for (size_t i = 0; i < kStripes; ++i) {
        if (held_.test(i)) {
          store_.stripes_[i].lock();
        }
      }
    }
    ~RangeLock() {
      for (size_t i = 0; i < kStripes; ++i) {
        if (held_.test(i)) {
          store_.stripes_[i].unlock();
        }
      }
    }
    RangeLock(const RangeLock&) = delete;
    RangeLock& operator=(const RangeLock&) = delete;

   private:
    MemoryStore& store_;
    std::bitset<kStripes> held_;
  };

  // Zeroes a range; whole pages are given back to the system instead of
  // written (hole punch in the file, or dropped anonymous pages), which both
  // frees memory and reads back as zeros.
  void zero(uint64_t offset, uint64_t length) {
    const uint64_t end = offset + length;
    const uint64_t page_begin = std::min(end, detail_round_up(offset));
    const uint64_t page_end = std::max(page_begin, end / kPageSize * kPageSize);
    std::byte* base = mapping_.base();
    if (page_begin > offset) {
      std::memset(base + offset, 0, page_begin - offset);
    }
    if (page_end > page_begin) {
      const auto len = static_cast<size_t>(page_end - page_begin);
      bool released = false;
      if (file_.valid()) {
        released = ::fallocate(file_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                               static_cast<off_t>(page_begin), static_cast<off_t>(len)) == 0;
      } else {
        released = ::madvise(base + page_begin, len, MADV_DONTNEED) == 0;
      }
      if (!released) {
        std::memset(base + page_begin, 0, len);
      }
    }
    if (end > page_end) {
      std::memset(base + page_end, 0, end - page_end);
    }
  }

  static uint64_t detail_round_up(uint64_t value) {
    return (value + kPageSize - 1) / kPageSize * kPageSize;
  }

  VolumeInfo info_;
  UniqueFd file_;
  Mapping mapping_;
  std::array<std::mutex, kStripes> stripes_;
};

class MemoryQueue final : public VolumeQueue {
 public:
  explicit MemoryQueue(MemoryStore& store) : store_(store) {}

  void submit(VolumeIo& io) override { completions_.push(io, store_.execute(io)); }
  void kick() override {}
  unsigned reap() override { return completions_.run(); }
  [[nodiscard]] int wake_fd() const override { return -1; }
  [[nodiscard]] unsigned in_flight() const override { return completions_.in_flight(); }

 private:
  MemoryStore& store_;
  detail::CompletionList completions_;
};

class MemoryVolume final : public Volume {
 public:
  MemoryVolume(std::unique_ptr<MemoryStore> store, unsigned queues)
      : store_(std::move(store)), queues_(queues) {}

  [[nodiscard]] const VolumeInfo& info() const override { return store_->info(); }

  Result<std::unique_ptr<VolumeQueue>> open_queue(unsigned index) override {
    if (index >= queues_) {
      return Error(EINVAL, "memory volume '" + info().name + "': queue " + std::to_string(index) +
                               " does not exist (the volume has " + std::to_string(queues_) + ")");
    }
    return std::unique_ptr<VolumeQueue>(std::make_unique<MemoryQueue>(*store_));
  }

 private:
  std::unique_ptr<MemoryStore> store_;
  unsigned queues_;
};

Result<UniqueFd> open_backing_file(const SimpleVolumeOptions& options) {
  const std::string what =
      "memory volume '" + options.name + "': backing file " + options.backing_file;
  UniqueFd fd(::open(options.backing_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) {
    return errno_error(what + ": cannot open");
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return errno_error(what + ": cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    return Error(EINVAL, what + ": not a regular file");
  }
  const auto current = static_cast<uint64_t>(st.st_size);
  if (current == 0) {
    if (::ftruncate(fd.get(), static_cast<off_t>(options.size_bytes)) != 0) {
      return errno_error(what + ": cannot size it to " + std::to_string(options.size_bytes) +
                         " bytes");
    }
  } else if (current != options.size_bytes) {
    // Refuse rather than truncate or grow: the file may hold another
    // volume's data.
    return Error(EINVAL, what + ": holds " + std::to_string(current) + " bytes but the volume is " +
                             std::to_string(options.size_bytes) + " bytes");
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<Volume>> make_memory_volume(const SimpleVolumeOptions& options) {
  UBLKVOL_TRY(detail::check_simple_options(options, "memory"));
  UniqueFd file;
  void* base = nullptr;
  const auto size = static_cast<size_t>(options.size_bytes);
  if (options.backing_file.empty()) {
    // NORESERVE: memory is used only where the volume is written.
    base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return errno_error("memory volume '" + options.name + "': cannot reserve " +
                         std::to_string(options.size_bytes) + " bytes");
    }
  } else {
    auto opened = open_backing_file(options);
    if (!opened) {
      return opened.error();
    }
    file = std::move(opened.value());
    base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.get(), 0);
    if (base == MAP_FAILED) {
      return errno_error("memory volume '" + options.name + "': cannot map backing file " +
                         options.backing_file);
    }
  }
  auto store = std::make_unique<MemoryStore>(detail::simple_volume_info(options), std::move(file),
                                             static_cast<std::byte*>(base));
  return std::unique_ptr<Volume>(std::make_unique<MemoryVolume>(std::move(store), options.queues));
}

}  // namespace ublkvol::engine
