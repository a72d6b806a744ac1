#include "queue.h"

#include <liburing.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <optional>
#include <spdlog/spdlog.h>
#include <system_error>
#include <vector>

#include "ublkvol/dbs/fixed_buffer.h"
#include "ublkvol/ublk/uapi.h"

#include "request.h"
#include "tag_state.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace ublkvol::ublk {

void QueueCounters::add_to(DeviceStats& stats) const {
  stats.reads += reads.load(std::memory_order_relaxed);
  stats.writes += writes.load(std::memory_order_relaxed);
  stats.fua_writes += fua_writes.load(std::memory_order_relaxed);
  stats.flushes += flushes.load(std::memory_order_relaxed);
  stats.discards += discards.load(std::memory_order_relaxed);
  stats.write_zeroes += write_zeroes.load(std::memory_order_relaxed);
  stats.bytes_read += bytes_read.load(std::memory_order_relaxed);
  stats.bytes_written += bytes_written.load(std::memory_order_relaxed);
  stats.errors += errors.load(std::memory_order_relaxed);
  stats.zero_copy_ios += zero_copy_ios.load(std::memory_order_relaxed);
  stats.copied_ios += copied_ios.load(std::memory_order_relaxed);
  for (unsigned i = 0; i < kLatencyBuckets; ++i) {
    stats.read_latency.buckets[i] += read_latency[i].load(std::memory_order_relaxed);
    stats.write_latency.buckets[i] += write_latency[i].load(std::memory_order_relaxed);
  }
  stats.read_latency.sum_ns += read_latency_sum_ns.load(std::memory_order_relaxed);
  stats.write_latency.sum_ns += write_latency_sum_ns.load(std::memory_order_relaxed);
}

namespace {

// Single-writer counter bump: no locked instruction on the data path.
inline void bump(std::atomic<uint64_t>& counter, uint64_t by = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

// CQE user_data: what completed, and for tag commands which tag.
enum class Completion : uint64_t { kTagCommand = 1, kVolumeWake = 2, kDetach = 3 };
constexpr unsigned kKindShift = 32;

constexpr uint64_t user_data(Completion kind, uint32_t tag = 0) {
  return (static_cast<uint64_t>(kind) << kKindShift) | tag;
}
constexpr Completion kind_of(uint64_t data) { return static_cast<Completion>(data >> kKindShift); }
constexpr uint16_t tag_of(uint64_t data) { return static_cast<uint16_t>(data & 0xffffU); }

// The registered-file index of /dev/ublkcN in each queue's ring.
constexpr int kCharFileIndex = 0;

class Mapping {
 public:
  Mapping() = default;
  Mapping(void* base, size_t size) : base_(base), size_(size) {}
  ~Mapping() {
    if (base_ != nullptr) {
      ::munmap(base_, size_);
    }
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& o) noexcept : base_(o.base_), size_(o.size_) { o.base_ = nullptr; }
  Mapping& operator=(Mapping&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    return *this;
  }
  [[nodiscard]] void* base() const { return base_; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

class Ring {
 public:
  Ring() = default;
  ~Ring() {
    if (initialized_) {
      io_uring_queue_exit(&ring_);
    }
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Tries the cheapest task-run modes first and falls back on kernels that
  // lack them. Returns the flags in use.
  //
  // `external` (a poller sleeping on an eventfd registered on the ring, not
  // in io_uring_enter): no DEFER_TASKRUN. With it, the kernel announces
  // deferred completions by signalling that eventfd - and when the
  // completion was triggered by an eventfd write (the volume's wake fd, the
  // detach fd) it must defer the signal through RCU, which Linux 6.12 does
  // once per registered eventfd: IO_EVENTFD_OP_SIGNAL_BIT is set and never
  // cleared (io_uring/eventfd.c), so every later such wake-up is lost (seen
  // as a detach that never ended). Without DEFER_TASKRUN, task work
  // interrupts the sleep (TWA_SIGNAL[_NO_IPI] wakes the task), runs on the
  // way back to user space and posts the CQE, whose eventfd signal comes
  // from task context, never deferred. TASKRUN_FLAG: the kernel sets
  // IORING_SQ_TASKRUN while task work waits, so poll() knows to enter.
  Result<unsigned> init(unsigned entries, bool external) {
    const unsigned candidates[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (unsigned flags : candidates) {
      if (external) {
        if ((flags & IORING_SETUP_DEFER_TASKRUN) != 0) {
          continue;
        }
        if (flags != 0) {
          flags |= IORING_SETUP_TASKRUN_FLAG;  // valid with COOP_TASKRUN only
        }
      }
      io_uring_params params{};
      params.flags = flags | IORING_SETUP_CQSIZE;
      params.cq_entries = entries * 2;
      rc = io_uring_queue_init_params(entries, &ring_, &params);
      if (rc == 0) {
        initialized_ = true;
        return flags;
      }
      if (rc != -EINVAL) {
        break;
      }
    }
    return Error(-rc, "cannot set up the queue's io_uring");
  }

  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
  bool initialized_ = false;
};

}  // namespace

struct QueueRunner::Impl {
  struct Tag {
    TagStateMachine state;
    uint16_t index = 0;
    int32_t result = 0;
    std::byte* buffer = nullptr;
    Impl* owner = nullptr;
    // CLOCK_MONOTONIC when the request went to the volume (0: not timed).
    uint64_t start_ns = 0;
    // Zero copy served by copy: a READ whose data goes back with pwrite.
    bool copy_back = false;
    engine::VolumeIo io;
  };

  QueueSetup setup;
  engine::Volume& volume;
  QueueCounters& counters;
  UniqueFd detach_fd;
  // External mode: the eventfd registered on the ring (wait_fd()).
  UniqueFd ring_event_fd;
  FinishedCallback finished_callback;

  // Declared before the ring so that they outlive it: the kernel may still
  // write the eventfd read buffers until the ring is gone.
  Mapping descriptors;
  Mapping buffers;
  // Zero copy, direct: the PROT_NONE window naming the tags' fixed buffers
  // (registered in this thread's dbs::FixedBufferWindows while set up).
  Mapping window;
  bool window_registered = false;
  uint64_t wake_value = 0;
  uint64_t detach_value = 0;
  std::vector<Tag> tags;
  std::unique_ptr<engine::VolumeQueue> volume_queue;
  std::unique_ptr<Ring> ring = std::make_unique<Ring>();

  unsigned finished_tags = 0;
  bool detaching = false;
  // request_detach(true): the driver has cancelled every tag's command (a
  // quiesced device), so the queue waits - at most kAbortWait from when it
  // could otherwise finish - until it has seen them all come back. Their
  // CQEs arrive as task work, possibly after the detach wake-up; a queue
  // that finished before them would still hold driver commands and keep
  // its ring (and /dev/ublkcN) open until the reactor's thread exits.
  std::atomic<bool> expect_aborts{false};
  std::optional<std::chrono::steady_clock::time_point> abort_deadline;
  static constexpr std::chrono::seconds kAbortWait{5};
  // Nothing more to do (finished()); closed: the VolumeQueue is gone and the
  // FinishedCallback ran.
  bool done = false;
  bool closed = false;
  // First refusal by the driver, or a bookkeeping error.
  Status failure;

  Impl(const QueueSetup& s, engine::Volume& v, QueueCounters& c, UniqueFd fd)
      : setup(s), volume(v), counters(c), detach_fd(std::move(fd)) {}

  std::string where() const {
    return "ublk device " + std::to_string(setup.dev_id) + " queue " +
           std::to_string(setup.queue_id);
  }

  const uapi::IoDesc* descriptor_array() const {
    return static_cast<const uapi::IoDesc*>(descriptors.base());
  }

  // NOLINTNEXTLINE(readability-make-member-function-const): takes an SQE from its ring
  io_uring_sqe* next_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(ring->get());
    if (sqe == nullptr) {
      // The ring holds one SQE per tag plus the eventfd reads, so this only
      // happens if a batch was not submitted yet: push it out and retry.
      io_uring_submit(ring->get());
      sqe = io_uring_get_sqe(ring->get());
    }
    return sqe;
  }

  bool queue_tag_command(Tag& tag, uint32_t op) {
    io_uring_sqe* sqe = next_sqe();
    if (sqe == nullptr) {
      return false;
    }
    std::memset(static_cast<void*>(sqe), 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = kCharFileIndex;
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->cmd_op = op;
    uapi::IoCmd cmd{};
    cmd.q_id = setup.queue_id;
    cmd.tag = tag.index;
    cmd.result = tag.result;
    if (setup.zero_copy) {
      // AUTO_BUF_REG: the next request's pages become fixed buffer `tag` of
      // this ring (the SQE's addr says which; the command's addr stays 0).
      // FALLBACK: if that fails the request still comes, flagged
      // NEED_REG_BUF, and is served by copy.
      cmd.addr = 0;
      sqe->addr = uapi::auto_buf_reg_addr(tag.index, uapi::kAutoBufRegFallback);
    } else {
      cmd.addr = reinterpret_cast<uintptr_t>(tag.buffer);
    }
    std::memcpy(static_cast<void*>(sqe->cmd), &cmd, sizeof(cmd));
    sqe->user_data = user_data(Completion::kTagCommand, tag.index);
    return true;
  }

  bool queue_eventfd_read(int fd, uint64_t* value, Completion kind) {
    io_uring_sqe* sqe = next_sqe();
    if (sqe == nullptr) {
      return false;
    }
    io_uring_prep_read(sqe, fd, value, sizeof(*value), 0);
    sqe->user_data = user_data(kind);
    return true;
  }

  void fail(Status status) {
    if (failure.ok()) {
      failure = std::move(status);
    }
  }

  Status set_up() {
    if (setup.pin && CPU_COUNT(&setup.cpus) > 0) {
      const int rc = pthread_setaffinity_np(pthread_self(), sizeof(setup.cpus), &setup.cpus);
      if (rc != 0) {
        spdlog::warn("{}: cannot pin the queue thread to its CPUs ({}); running unpinned", where(),
                     std::error_code(rc, std::generic_category()).message());
      }
    }
    if (setup.io_flusher && ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
      spdlog::warn(
          "{}: PR_SET_IO_FLUSHER refused ({}): memory reclaim may wait on this thread; "
          "grant CAP_SYS_RESOURCE",
          where(), std::error_code(errno, std::generic_category()).message());
    }

    int rc = 0;
    auto opened = volume.open_queue(setup.queue_id);
    if (!opened) {
      return opened.error().with_context(where());
    }
    volume_queue = std::move(opened.value());

    // Zero copy, direct: the volume's store I/O goes out on this ring too,
    // a request may be several pieces (extents, snapshot layers).
    const unsigned entries = setup.zero_copy_direct ? setup.depth * 4 + 2 : setup.depth + 2;
    auto flags = ring->init(entries, setup.external);
    if (!flags) {
      return flags.error().with_context(where());
    }
    if (setup.zero_copy) {
      // One empty fixed-buffer slot per tag for AUTO_BUF_REG to fill.
      rc = io_uring_register_buffers_sparse(ring->get(), setup.depth);
      if (rc < 0) {
        return Error(-rc, where() + ": cannot register " + std::to_string(setup.depth) +
                              " sparse fixed buffers with the io_uring (zero copy)");
      }
    }
    rc = io_uring_register_files(ring->get(), &setup.char_fd, 1);
    if (rc < 0) {
      return Error(-rc, where() + ": cannot register /dev/ublkc with the io_uring");
    }
    if (setup.external) {
      ring_event_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!ring_event_fd) {
        return errno_error(where() + ": cannot create the ring's eventfd");
      }
      rc = io_uring_register_eventfd(ring->get(), ring_event_fd.get());
      if (rc < 0) {
        return Error(-rc, where() + ": cannot register an eventfd with the io_uring");
      }
    }

    const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const size_t desc_bytes = uapi::io_desc_array_bytes(setup.depth, page);
    void* desc = ::mmap(nullptr, desc_bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, setup.char_fd,
                        static_cast<off_t>(uapi::io_desc_mmap_offset(setup.queue_id, page)));
    if (desc == MAP_FAILED) {
      return errno_error(where() + ": cannot map the request descriptors");
    }
    descriptors = Mapping(desc, desc_bytes);

    const size_t buffer_bytes = size_t{setup.buffer_bytes} * setup.depth;
    void* bufs = ::mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (bufs == MAP_FAILED) {
      return errno_error(where() + ": cannot allocate " + std::to_string(buffer_bytes) +
                         " bytes of tag buffers");
    }
    buffers = Mapping(bufs, buffer_bytes);
    if (setup.zero_copy_direct) {
      UBLKVOL_TRY(set_up_window(buffer_bytes));
    }

    tags.resize(setup.depth);
    for (unsigned i = 0; i < setup.depth; ++i) {
      Tag& tag = tags[i];
      tag.index = static_cast<uint16_t>(i);
      tag.owner = this;
      tag.buffer = static_cast<std::byte*>(bufs) + size_t{i} * setup.buffer_bytes;
      tag.io.user_data = &tag;
      tag.io.on_complete = &Impl::on_volume_done;
      if (!tag.state.submit_fetch() || !queue_tag_command(tag, uapi::kIoFetchReq)) {
        return Error(EIO, where() + ": cannot queue FETCH_REQ for tag " + std::to_string(i));
      }
    }
    if (volume_queue->wake_fd() >= 0 &&
        !queue_eventfd_read(volume_queue->wake_fd(), &wake_value, Completion::kVolumeWake)) {
      return Error(EIO, where() + ": cannot watch the volume's wake fd");
    }
    if (!queue_eventfd_read(detach_fd.get(), &detach_value, Completion::kDetach)) {
      return Error(EIO, where() + ": cannot watch the detach eventfd");
    }
    rc = io_uring_submit(ring->get());
    if (rc < 0) {
      return Error(-rc, where() + ": cannot submit FETCH_REQs");
    }
    // FETCH_REQ is checked while it is submitted: a refusal is already in the
    // CQ. Report it now - START_DEV would otherwise wait for this queue
    // forever.
    process_completions();
    if (!failure.ok()) {
      return failure;
    }
    if (finished_tags != 0) {
      return Error(EIO, where() + ": the driver aborted FETCH_REQ (device being removed?)");
    }
    return ok_status();
  }

  // Zero copy, direct: reserves the window (address space only) and
  // registers it for this thread's file devices.
  Status set_up_window(size_t bytes) {
    void* base =
        ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return errno_error(where() + ": cannot reserve the zero-copy window");
    }
    window = Mapping(base, bytes);
    dbs::FixedBufferWindow w;
    w.base = static_cast<std::byte*>(base);
    w.stride = setup.buffer_bytes;
    w.slots = setup.depth;
    w.first_index = 0;
    w.ring = ring->get();
    // The driver's request buffers start at offset 0.
    w.addr_of_slot = [](const dbs::FixedBufferWindow&, uint32_t) { return uint64_t{0}; };
    if (!dbs::FixedBufferWindows::current().add(w)) {
      return Error(ENOSPC, where() + ": too many zero-copy queues on one thread (at most " +
                               std::to_string(dbs::FixedBufferWindows::kMaxWindows) + ")");
    }
    window_registered = true;
    return ok_status();
  }

  [[nodiscard]] std::byte* window_address(const Tag& tag) const {
    return static_cast<std::byte*>(window.base()) + size_t{tag.index} * setup.buffer_bytes;
  }

  static void on_volume_done(engine::VolumeIo& io, int result) {
    Tag& tag = *static_cast<Tag*>(io.user_data);
    if (tag.copy_back) {
      tag.copy_back = false;
      if (result >= 0 && !tag.owner->copy_to_request(tag)) {
        result = -EIO;
      }
    }
    tag.owner->answer(tag, commit_result(io.op, io.length, result));
  }

  // Zero copy served by copy (UBLK_F_USER_COPY): the request's pages <->
  // the tag buffer, synchronously on the queue's thread.
  [[nodiscard]] bool copy_from_request(Tag& tag) const {
    const auto offset = static_cast<off_t>(uapi::user_copy_offset(setup.queue_id, tag.index));
    const ssize_t n = ::pread(setup.char_fd, tag.buffer, tag.io.length, offset);
    return n == static_cast<ssize_t>(tag.io.length);
  }
  [[nodiscard]] bool copy_to_request(Tag& tag) const {
    const auto offset = static_cast<off_t>(uapi::user_copy_offset(setup.queue_id, tag.index));
    const ssize_t n = ::pwrite(setup.char_fd, tag.buffer, tag.io.length, offset);
    return n == static_cast<ssize_t>(tag.io.length);
  }

  // Records the answer to a tag's request and queues its COMMIT_AND_FETCH_REQ.
  void answer(Tag& tag, int result) {
    if (result < 0) {
      bump(counters.errors);
    }
    if (tag.start_ns != 0) {
      record_latency(tag);
    }
    tag.result = result;
    if (!tag.state.on_backend_done() || !tag.state.submit_commit() ||
        !queue_tag_command(tag, uapi::kIoCommitAndFetchReq)) {
      fail(Error(EIO, where() + ": tag " + std::to_string(tag.index) +
                          " cannot be committed from state " + to_string(tag.state.state())));
    }
  }

  static uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO: no syscall
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
  }

  // One histogram bucket bump + a sum, by this queue's thread only.
  void record_latency(Tag& tag) {
    const uint64_t elapsed = now_ns() - tag.start_ns;
    tag.start_ns = 0;
    const bool read = tag.io.op == engine::VolumeOp::kRead;
    const unsigned width = static_cast<unsigned>(std::bit_width(elapsed >> 10U));
    const unsigned bucket = std::min(width, kLatencyBuckets - 1);
    bump(read ? counters.read_latency[bucket] : counters.write_latency[bucket]);
    bump(read ? counters.read_latency_sum_ns : counters.write_latency_sum_ns, elapsed);
  }

  void start_request(Tag& tag) {
    tag.start_ns = 0;
    tag.copy_back = false;
    const uapi::IoDesc desc = descriptor_array()[tag.index];
    const uint8_t op = uapi::io_desc_op(desc.op_flags);
    // Asked per request, last: every replica this request can reach does
    // its I/O on this thread's ring (docs/zero-copy.md).
    const bool direct = setup.zero_copy_direct && window_registered &&
                        (desc.op_flags & uapi::kIoFNeedRegBuf) == 0 &&
                        (op == uapi::kOpRead || op == uapi::kOpWrite) &&
                        volume_queue->all_targets_local();
    const int check = translate_request(desc, direct ? window_address(tag) : tag.buffer,
                                        setup.buffer_bytes, tag.io);
    if (check != 0) {
      answer(tag, check);
      return;
    }
    if (setup.zero_copy && tag.io.buffer != nullptr) {
      if (direct) {
        bump(counters.zero_copy_ios);
      } else {
        bump(counters.copied_ios);
        if (tag.io.op == engine::VolumeOp::kWrite && !copy_from_request(tag)) {
          answer(tag, -EIO);
          return;
        }
        tag.copy_back = tag.io.op == engine::VolumeOp::kRead;
      }
    }
    switch (tag.io.op) {
      case engine::VolumeOp::kRead:
        bump(counters.reads);
        bump(counters.bytes_read, tag.io.length);
        tag.start_ns = now_ns();
        break;
      case engine::VolumeOp::kWrite:
        bump(counters.writes);
        bump(counters.bytes_written, tag.io.length);
        if (tag.io.fua) {
          bump(counters.fua_writes);
        }
        tag.start_ns = now_ns();
        break;
      case engine::VolumeOp::kFlush:
        bump(counters.flushes);
        break;
      case engine::VolumeOp::kDiscard:
        bump(counters.discards);
        break;
      case engine::VolumeOp::kWriteZeroes:
        bump(counters.write_zeroes);
        break;
    }
    volume_queue->submit(tag.io);
  }

  void on_tag_completion(uint16_t index, int result) {
    if (index >= tags.size()) {
      fail(Error(EIO, where() + ": completion for unknown tag " + std::to_string(index)));
      return;
    }
    Tag& tag = tags[index];
    switch (tag.state.on_kernel_completion(result)) {
      case KernelEvent::kRequest:
        start_request(tag);
        break;
      case KernelEvent::kAbort:
        ++finished_tags;
        break;
      case KernelEvent::kError:
        ++finished_tags;
        fail(Error(-result,
                   where() + ": the driver refused the command for tag " + std::to_string(index)));
        break;
      case KernelEvent::kInvalid:
        fail(Error(EIO, where() + ": unexpected completion for tag " + std::to_string(index) +
                            " in state " + to_string(tag.state.state())));
        break;
    }
  }

  // Handles every CQE in the ring; returns how many.
  unsigned process_completions() {
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring->get(), head, cqe) {
      ++seen;
      const uint64_t data = cqe->user_data;
      const int res = cqe->res;
      if (dbs::is_ring_guest(data)) {
        // Zero copy: a store's read/write on a tag's fixed buffer.
        dbs::complete_ring_guest(data, res);
        continue;
      }
      switch (kind_of(data)) {
        case Completion::kTagCommand:
          on_tag_completion(tag_of(data), res);
          break;
        case Completion::kVolumeWake:
          // The read drained the eventfd; reap() below collects the work.
          if (!detaching || volume_queue->in_flight() > 0) {
            queue_eventfd_read(volume_queue->wake_fd(), &wake_value, Completion::kVolumeWake);
          }
          break;
        case Completion::kDetach:
          detaching = true;
          break;
      }
    }
    io_uring_cq_advance(ring->get(), seen);
    return seen;
  }

  // The CQEs that are visible, then the volume. Returns the work done.
  unsigned process() {
    unsigned work = process_completions();
    volume_queue->kick();
    work += volume_queue->reap();
    return work;
  }

  // Whether the queue has nothing more to do; decides it once.
  bool check_finished() {
    if (done) {
      return true;
    }
    if (!failure.ok() || finished_tags == setup.depth) {
      // A refusal, or the driver aborted every tag: the device is stopping.
      done = true;
    } else if (detaching && volume_queue->in_flight() == 0) {
      // Commits queued by the last reap go out; the tags then stay with the
      // driver until the ring closes.
      io_uring_submit(ring->get());
      done = !awaiting_aborts();
    }
    return done;
  }

  // After a quiesced detach: not every tag's abort is in yet, and the wait
  // is still within its bound.
  bool awaiting_aborts() {
    if (!expect_aborts.load(std::memory_order_acquire) || !setup.external ||
        finished_tags == setup.depth) {
      return false;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!abort_deadline) {
      abort_deadline = now + kAbortWait;
    }
    if (now < *abort_deadline) {
      return true;
    }
    spdlog::warn("{}: {} of {} tags' commands not back {} s after a quiesced detach", where(),
                 setup.depth - finished_tags, setup.depth, kAbortWait.count());
    return false;
  }

  // Backends without a wake fd finish work inside reap(): never sleep while
  // they hold some.
  [[nodiscard]] bool volume_busy() const {
    return volume_queue != nullptr && volume_queue->in_flight() > 0 && volume_queue->wake_fd() < 0;
  }

  static bool enter_failed(int rc) {
    return rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME;
  }

  // Thread mode: the only poller of this thread, so it may sleep inside the
  // submit - exactly one io_uring_enter per batch, as before the split.
  Status loop() {
    while (!check_finished()) {
      const int rc = io_uring_submit_and_wait(ring->get(), volume_busy() ? 0 : 1);
      if (enter_failed(rc)) {
        fail(Error(-rc, where() + ": io_uring_enter failed"));
        break;
      }
      process();
    }
    return failure;
  }

  // External mode: one step, never blocking.
  unsigned poll() {
    if (closed) {
      return 0;
    }
    unsigned work = 0;
    if (!check_finished()) {
      // Task work not run yet (it posts the CQEs) or an overflowed CQ:
      // enter the kernel once. The kernel says so in the SQ ring's flags
      // (IORING_SETUP_TASKRUN_FLAG), so an idle poll costs no syscall.
      const unsigned kflags = IO_URING_READ_ONCE(*ring->get()->sq.kflags);
      if ((kflags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0) {
        const int rc = io_uring_get_events(ring->get());
        if (enter_failed(rc)) {
          fail(Error(-rc, where() + ": io_uring_enter failed"));
        }
      }
      work = process();
      if (io_uring_sq_ready(ring->get()) > 0) {
        const int rc = io_uring_submit(ring->get());
        if (enter_failed(rc)) {
          fail(Error(-rc, where() + ": io_uring_enter failed"));
        }
      }
    }
    if (check_finished()) {
      close_on_thread();
      closed = true;
      if (finished_callback) {
        // Last: the callback may hand this runner to its next owner.
        finished_callback(failure);
      }
    }
    return work;
  }

  // The volume queue belongs to the thread that opened it: close it there.
  // So does the zero-copy window's entry in the thread's table.
  void close_on_thread() {
    volume_queue.reset();
    remove_window();
  }
  void remove_window() {
    if (window_registered) {
      dbs::FixedBufferWindows::current().remove(static_cast<std::byte*>(window.base()));
      window_registered = false;
    }
  }
};

Result<std::unique_ptr<QueueRunner>> QueueRunner::make(const QueueSetup& setup,
                                                       engine::Volume& volume,
                                                       QueueCounters& counters) {
  UniqueFd detach_fd(::eventfd(0, EFD_CLOEXEC));
  if (!detach_fd) {
    return errno_error("cannot create the queue's detach eventfd");
  }
  return std::unique_ptr<QueueRunner>(
      new QueueRunner(std::make_unique<Impl>(setup, volume, counters, std::move(detach_fd))));
}

QueueRunner::QueueRunner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// The ring is closed only here, never when the queue finishes. Commands still
// with the driver (after a detach) are cancelled by the kernel when the thread
// that issued them exits, exactly as when the process is killed. Closing the
// ring first and exiting that thread later with cancelable uring_cmds
// outstanding trips a Linux 6.12 bug (tctx refcount underflow in
// io_uring_cancel_generic, then an oops in io_ring_exit_work). So whoever owns
// a runner that holds_driver_commands() destroys it only after that thread
// has exited: thread mode joins the queue thread first; external mode hands
// it to the QueueHost (keep_until_exit).
QueueRunner::~QueueRunner() = default;

Status QueueRunner::run(const ReadyCallback& ready) {
  Status setup = set_up();
  ready(setup);
  Status result = setup.ok() ? impl_->loop() : setup;
  impl_->close_on_thread();
  impl_->closed = true;
  return result;
}

Status QueueRunner::set_up() {
  Status status = impl_->set_up();
  if (!status.ok()) {
    // This thread's file devices must not find a window whose ring goes.
    impl_->remove_window();
  }
  return status;
}

void QueueRunner::on_finished(FinishedCallback callback) {
  impl_->finished_callback = std::move(callback);
}

unsigned QueueRunner::poll() { return impl_->poll(); }

int QueueRunner::wait_fd() const { return impl_->ring_event_fd.get(); }

bool QueueRunner::busy() const {
  // Waiting for a quiesced device's aborts: poll again instead of sleeping
  // (they come within microseconds; the wait is bounded).
  return !impl_->closed && (impl_->volume_busy() || impl_->abort_deadline.has_value());
}

bool QueueRunner::waiting() const {
  return !impl_->closed && impl_->volume_queue != nullptr && impl_->volume_queue->in_flight() > 0;
}

bool QueueRunner::finished() const { return impl_->done; }

bool QueueRunner::holds_driver_commands() const {
  // Aborted or failed tags are back from the driver for good; any other tag
  // that got its FETCH_REQ may still have a command there (conservative: a
  // tag in the backend after a failure counts too).
  return std::any_of(impl_->tags.begin(), impl_->tags.end(), [](const Impl::Tag& tag) {
    return tag.state.state() != TagState::kIdle && !tag.state.finished();
  });
}

void QueueRunner::request_detach(bool driver_aborts) {
  if (driver_aborts) {
    impl_->expect_aborts.store(true, std::memory_order_release);
  }
  const uint64_t one = 1;
  // An eventfd write of 8 bytes cannot be short; failure would mean the fd
  // is gone, which the owner prevents.
  [[maybe_unused]] const ssize_t n = ::write(impl_->detach_fd.get(), &one, sizeof(one));
}

}  // namespace ublkvol::ublk
