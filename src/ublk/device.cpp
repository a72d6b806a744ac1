#include "ublkvol/ublk/device.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <future>
#include <limits>
#include <mutex>
#include <spdlog/spdlog.h>
#include <thread>
#include <vector>

#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/features.h"
#include "ublkvol/ublk/queue_host.h"

#include "queue.h"

namespace ublkvol::ublk {

namespace {

// /dev/ublkcN appears through devtmpfs/udev shortly after ADD_DEV returns.
Result<UniqueFd> open_char_device(uint32_t dev_id) {
  const std::string path = char_device_path(dev_id);
  constexpr int kAttempts = 300;  // 3 s
  for (int attempt = 0;; ++attempt) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd) {
      return fd;
    }
    if (errno != ENOENT || attempt == kAttempts) {
      if (errno == EBUSY) {
        return Error(EBUSY, path + " is open by another process (another server running?)");
      }
      return errno_error("cannot open " + path);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool process_alive(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace

struct UblkDevice::State {
  ControlDevice control;
  engine::Volume& volume;
  DeviceOptions options;
  uapi::CtrlDevInfo info{};
  uint64_t kernel_features = 0;
  UniqueFd char_fd;
  UniqueFd finished_fd;
  std::unique_ptr<QueueCounters[]> counters;
  // Shared with the QueueHost in external mode (it polls them, and keeps
  // those whose ring must outlive its thread).
  std::vector<std::shared_ptr<QueueRunner>> runners;
  std::vector<std::thread> threads;
  // External mode: set by each queue as the last thing it does for us.
  std::vector<std::future<void>> exits;
  std::atomic<unsigned> running{0};
  // External mode: queues whose ring the host keeps until its thread exits
  // (commands still with the driver); DEL_DEV must not wait for them.
  std::atomic<unsigned> kept_by_host{0};
  mutable std::mutex status_mutex;  // control path only: guards queue_status
  Status queue_status;
  bool done = false;  // stopped, deleted or detached

  State(ControlDevice c, engine::Volume& v, const DeviceOptions& o)
      : control(std::move(c)), volume(v), options(o) {}

  std::string name() const { return "ublk device " + std::to_string(info.dev_id); }

  void on_queue_exit(const Status& status) {
    if (!status.ok()) {
      spdlog::error("{}", status.error().to_string());
      std::lock_guard<std::mutex> lock(status_mutex);
      if (queue_status.ok()) {
        queue_status = status;
      }
    }
    if (running.fetch_sub(1) == 1) {
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(finished_fd.get(), &one, sizeof(one));
    }
  }

  // Starts the queues (a thread each, or on the QueueHost) and waits until
  // each has its FETCH_REQs with the driver (or failed).
  Status start_queues() {
    const bool external = options.queue_loop == QueueLoop::kExternal;
    if (external && options.queue_host == nullptr) {
      return Error(EINVAL, name() + ": queue loop 'external' needs a queue host");
    }
    auto fd = open_char_device(info.dev_id);
    if (!fd) {
      return fd.error();
    }
    char_fd = std::move(fd.value());
    finished_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!finished_fd) {
      return errno_error(name() + ": cannot create eventfd");
    }
    const unsigned queues = info.nr_hw_queues;
    counters = std::make_unique<QueueCounters[]>(queues);
    std::vector<std::future<Status>> ready;
    Status first_error;
    for (unsigned q = 0; q < queues; ++q) {
      QueueSetup setup;
      setup.dev_id = info.dev_id;
      setup.queue_id = static_cast<uint16_t>(q);
      setup.depth = info.queue_depth;
      setup.buffer_bytes = info.max_io_buf_bytes;
      setup.char_fd = char_fd.get();
      setup.io_flusher = options.io_flusher && !external;
      setup.external = external;
      setup.zero_copy = (info.flags & uapi::kFAutoBufReg) != 0;
      setup.zero_copy_direct = setup.zero_copy && options.zero_copy_direct;
      if (options.pin_queue_threads && !external) {
        auto cpus = control.get_queue_affinity(info.dev_id, static_cast<uint16_t>(q));
        if (cpus) {
          setup.pin = true;
          setup.cpus = cpus.value();
        } else {
          spdlog::warn("{}: no affinity for queue {} ({}); not pinning", name(), q,
                       cpus.error().to_string());
        }
      }
      auto runner = QueueRunner::make(setup, volume, counters[q]);
      if (!runner) {
        first_error = runner.error();
        break;
      }
      auto promise = std::make_shared<std::promise<Status>>();
      ready.push_back(promise->get_future());
      std::shared_ptr<QueueRunner> shared = std::move(runner.value());
      runners.push_back(shared);
      running.fetch_add(1);
      if (external) {
        Status queued = start_external(options.queue_ref(info.dev_id, q), shared, promise);
        if (!queued.ok()) {
          ready.pop_back();
          first_error = queued;
          break;
        }
        continue;
      }
      QueueRunner* raw = shared.get();
      threads.emplace_back([this, raw, promise] {
        Status status = raw->run([&promise](const Status& s) { promise->set_value(s); });
        on_queue_exit(status);
      });
    }
    for (auto& f : ready) {
      Status s = f.get();
      if (!s.ok() && first_error.ok()) {
        first_error = s;
      }
    }
    return first_error;
  }

  // External mode: the queue is set up on the host's thread and polled there
  // until it finishes; then the host drops it - or keeps it until that thread
  // exits if its ring still has commands with the driver (queue_host.h).
  Status start_external(const QueueRef& ref, const std::shared_ptr<QueueRunner>& runner,
                        const std::shared_ptr<std::promise<Status>>& ready) {
    QueueHost& host = *options.queue_host;
    auto exited = std::make_shared<std::promise<void>>();
    exits.push_back(exited->get_future());
    // This queue's end, on the host's thread: nothing touches the device after
    // exited is set (the device may be gone right after).
    auto finish = [this, &host, ref, exited](const std::shared_ptr<QueueRunner>& r,
                                             const Status& status) {
      if (r->holds_driver_commands()) {
        kept_by_host.fetch_add(1);
        host.keep_until_exit(ref, r);
      }
      on_queue_exit(status);
      exited->set_value();
    };
    // Weak: the runner owns this callback; the host holds the runner while it
    // polls it, so lock() succeeds inside poll().
    std::weak_ptr<QueueRunner> weak = runner;
    runner->on_finished([&host, ref, weak, finish](const Status& status) {
      std::shared_ptr<QueueRunner> r = weak.lock();
      host.remove_poller(ref, *r);
      finish(r, status);
    });
    Status queued = host.run_on(ref, [&host, ref, runner, ready, finish] {
      Status s = runner->set_up();
      if (s.ok()) {
        host.add_poller(ref, runner);
        ready->set_value(s);
        return;
      }
      ready->set_value(s);
      finish(runner, s);
    });
    if (!queued.ok()) {
      exits.pop_back();
      running.fetch_sub(1);
    }
    return queued;
  }

  void end_queues(bool driver_aborts = false) {
    for (auto& r : runners) {
      r->request_detach(driver_aborts);
    }
    join_queues();
  }

  void join_queues() {
    for (auto& t : threads) {
      if (t.joinable()) {
        t.join();
      }
    }
    for (auto& e : exits) {
      e.wait();
    }
    threads.clear();
    exits.clear();
    runners.clear();
  }
};

UblkDevice::UblkDevice(std::unique_ptr<State> state) : state_(std::move(state)) {}

UblkDevice::~UblkDevice() {
  if (state_ && !state_->done) {
    Status s = stop_and_delete();
    if (!s.ok()) {
      spdlog::error("{}", s.error().to_string());
    }
  }
}

Result<std::unique_ptr<UblkDevice>> UblkDevice::create(engine::Volume& volume,
                                                       const DeviceOptions& options) {
  const engine::VolumeInfo& vinfo = volume.info();
  UBLKVOL_TRY(validate_device_options(options, vinfo));
  auto control = ControlDevice::open();
  if (!control) {
    return control.error();
  }
  auto features = control->get_features();
  if (!features) {
    return features.error();
  }
  uint64_t wanted = kRequiredFeatures;
  UBLKVOL_TRY(require_features(*features, kRequiredFeatures, "the ublk frontend"));
  if (options.recoverable) {
    UBLKVOL_TRY(require_features(*features, kRecoveryFeatures, "transparent daemon restart"));
    wanted |= kRecoveryFeatures;
    // QUIESCE needs USER_RECOVERY (the driver refuses it alone).
    if (options.quiesce && (*features & uapi::kFQuiesce) != 0) {
      wanted |= uapi::kFQuiesce;
    }
  }
  if (options.zero_copy && (*features & kZeroCopyFeatures) == kZeroCopyFeatures) {
    wanted |= kZeroCopyFeatures;
  }

  uapi::CtrlDevInfo request{};
  request.nr_hw_queues = static_cast<uint16_t>(options.queues);
  request.queue_depth = static_cast<uint16_t>(options.queue_depth);
  request.max_io_buf_bytes = effective_max_io_bytes(options, vinfo);
  request.dev_id = options.dev_id < 0 ? uapi::kAutoDevId : static_cast<uint32_t>(options.dev_id);
  request.flags = wanted;
  auto added = control->add_device(request);
  if (!added) {
    return added.error();
  }

  auto state = std::make_unique<State>(std::move(control.value()), volume, options);
  state->info = added.value();
  state->kernel_features = *features;
  auto device = std::unique_ptr<UblkDevice>(new UblkDevice(std::move(state)));
  State& s = *device->state_;
  // From here on, the device exists: any failure deletes it again (the
  // destructor's stop_and_delete()).
  if ((s.info.flags & wanted) != wanted) {
    return Error(EOPNOTSUPP, s.name() + ": the driver did not enable " +
                                 describe_features(wanted & ~s.info.flags));
  }
  if (s.info.nr_hw_queues != options.queues) {
    spdlog::warn("{}: the driver set up {} queues instead of {} (one per CPU at most)", s.name(),
                 s.info.nr_hw_queues, options.queues);
  }
  UBLKVOL_TRY(
      s.control.set_params(s.info.dev_id, make_device_params(vinfo, s.info.max_io_buf_bytes)));
  UBLKVOL_TRY(s.start_queues());
  // START_DEV waits for every queue's FETCH_REQs, which are in.
  UBLKVOL_TRY(s.control.start_device(s.info.dev_id, ::getpid()));
  return device;
}

Result<std::unique_ptr<UblkDevice>> UblkDevice::recover(engine::Volume& volume, uint32_t dev_id,
                                                        const DeviceOptions& options,
                                                        std::chrono::milliseconds quiesce_timeout) {
  const engine::VolumeInfo& vinfo = volume.info();
  auto control = ControlDevice::open();
  if (!control) {
    return control.error();
  }
  auto features = control->get_features();
  if (!features) {
    return features.error();
  }
  UBLKVOL_TRY(require_features(*features, kRequiredFeatures | kRecoveryFeatures,
                               "re-attaching to a device (user recovery)"));
  const std::string name = "ublk device " + std::to_string(dev_id);
  auto info = control->get_device_info(dev_id);
  if (!info) {
    return info.error();
  }
  if ((info->flags & uapi::kFUserRecovery) == 0) {
    return Error(EINVAL, name +
                             " was created without UBLK_F_USER_RECOVERY: it cannot be "
                             "re-attached (delete and re-create it)");
  }
  if (info->state == uapi::kDevStateDead) {
    return Error(EINVAL, name + " is stopped (state dead): nothing to recover; delete it");
  }
  if (info->state == uapi::kDevStateLive && process_alive(info->ublksrv_pid)) {
    // Includes this process: a device it serves is not to be taken over.
    return Error(EBUSY, name + " is live and served by pid " + std::to_string(info->ublksrv_pid) +
                            "; stop that server first");
  }
  auto params = control->get_params(dev_id);
  if (!params) {
    return params.error();
  }
  if (params->basic.dev_sectors != vinfo.size_bytes >> 9U ||
      (1U << params->basic.logical_bs_shift) != vinfo.block_size) {
    return Error(EINVAL, name + " has " + std::to_string(params->basic.dev_sectors << 9U) +
                             " bytes in blocks of " +
                             std::to_string(1U << params->basic.logical_bs_shift) +
                             " but volume '" + vinfo.name + "' has " +
                             std::to_string(vinfo.size_bytes) + " in blocks of " +
                             std::to_string(vinfo.block_size) + ": wrong volume for this device");
  }
  if (info->max_io_buf_bytes > vinfo.max_io_bytes) {
    return Error(EINVAL, name + " sends requests up to " + std::to_string(info->max_io_buf_bytes) +
                             " bytes but volume '" + vinfo.name + "' accepts only " +
                             std::to_string(vinfo.max_io_bytes));
  }

  // The driver accepts START_USER_RECOVERY once the old server's files are
  // released and the device is quiesced; both happen asynchronously after
  // the old process died.
  const auto deadline = std::chrono::steady_clock::now() + quiesce_timeout;
  while (true) {
    Status started = control->start_user_recovery(dev_id);
    if (started.ok()) {
      break;
    }
    if (started.error().errno_value() != EBUSY) {
      return started.error();
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      auto now_info = control->get_device_info(dev_id);
      if (!now_info) {
        return started.error();
      }
      return Error(EBUSY, started.error().message() + " (after " +
                              std::to_string(quiesce_timeout.count()) + " ms: state " +
                              device_state_name(now_info->state) + ", server pid " +
                              std::to_string(now_info->ublksrv_pid) + ")");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  DeviceOptions attached = options;
  attached.queues = info->nr_hw_queues;
  attached.queue_depth = info->queue_depth;
  attached.dev_id = static_cast<int32_t>(dev_id);
  attached.recoverable = true;
  auto state = std::make_unique<State>(std::move(control.value()), volume, attached);
  state->info = info.value();
  state->kernel_features = *features;
  auto device = std::unique_ptr<UblkDevice>(new UblkDevice(std::move(state)));
  State& s = *device->state_;
  Status queues = s.start_queues();
  if (queues.ok()) {
    queues = s.control.end_user_recovery(dev_id, ::getpid());
  }
  if (!queues.ok()) {
    // Leave the device recoverable for another attempt rather than delete
    // the user's data path.
    s.end_queues();
    s.char_fd.reset();
    s.done = true;
    return queues.error();
  }
  auto refreshed = s.control.get_device_info(dev_id);
  if (refreshed) {
    s.info = refreshed.value();
  }
  return device;
}

uint32_t UblkDevice::id() const { return state_->info.dev_id; }
std::string UblkDevice::block_path() const { return block_device_path(state_->info.dev_id); }
const uapi::CtrlDevInfo& UblkDevice::info() const { return state_->info; }
int UblkDevice::finished_fd() const { return state_->finished_fd.get(); }
bool UblkDevice::finished() const { return state_->running.load() == 0; }

Status UblkDevice::queue_status() const {
  std::lock_guard<std::mutex> lock(state_->status_mutex);
  return state_->queue_status;
}

Status UblkDevice::stop_and_delete() {
  State& s = *state_;
  if (s.done) {
    return ok_status();
  }
  s.done = true;
  // STOP_DEV returns after the block device is gone; the queues serve the
  // outstanding requests meanwhile, then get ABORT for every tag and end.
  Status stopped = s.control.stop_device(s.info.dev_id);
  if (!stopped.ok() && stopped.error().errno_value() != ENODEV) {
    spdlog::warn("{}", stopped.error().to_string());
  }
  if (!stopped.ok()) {
    // The queues will not be aborted by the driver: end them ourselves.
    s.end_queues();
  } else {
    s.join_queues();
  }
  // DEL_DEV waits for /dev/ublkcN's last user: close ours first. A ring the
  // queue host keeps until its thread exits is such a user too (external
  // mode, STOP_DEV failed): then the driver deletes the device after that.
  s.char_fd.reset();
  const DeleteMode mode = s.kept_by_host.load() > 0 ? DeleteMode::kAsync : DeleteMode::kWait;
  Status deleted = s.control.delete_device(s.info.dev_id, mode);
  if (!deleted.ok() && deleted.error().errno_value() != ENODEV) {
    return deleted;
  }
  return ok_status();
}

Status UblkDevice::detach() { return detach_queues(false); }

Status UblkDevice::detach_queues(bool driver_aborts) {
  State& s = *state_;
  if (s.done) {
    return ok_status();
  }
  s.done = true;
  s.end_queues(driver_aborts);
  s.char_fd.reset();
  if ((s.info.flags & uapi::kFUserRecovery) == 0) {
    spdlog::warn("{}: detached from a device without user recovery: the driver removes it",
                 s.name());
  }
  return ok_status();
}

bool UblkDevice::zero_copy() const { return (state_->info.flags & uapi::kFAutoBufReg) != 0; }

bool UblkDevice::quiescable() const { return (state_->info.flags & uapi::kFQuiesce) != 0; }

Status UblkDevice::quiesce_and_detach(std::chrono::milliseconds timeout) {
  State& s = *state_;
  if (s.done) {
    return ok_status();
  }
  if (!quiescable()) {
    return Error(EOPNOTSUPP, s.name() + " was created without UBLK_F_QUIESCE");
  }
  // QUIESCE_DEV returns once every queue has an idle tag; then new requests
  // wait in the driver (re-queued until the next server's recovery ends)
  // and the idle tags' commands come back aborted. The queues keep running
  // meanwhile: the requests they hold complete normally in the detach, which
  // waits until the volume has nothing in flight - and, on reactors, until
  // each queue has seen its tags' aborts, so that its ring closes at once
  // and the next server (or this process, after an online resize) can take
  // the device over.
  const auto ms = static_cast<uint32_t>(
      std::clamp<int64_t>(timeout.count(), 1, std::numeric_limits<uint32_t>::max()));
  UBLKVOL_TRY(s.control.quiesce_device(s.info.dev_id, ms));
  return detach_queues(true);
}

Status UblkDevice::wait_released(uint32_t dev_id, std::chrono::milliseconds timeout) {
  UBLKVOL_ASSIGN_OR_RETURN(ControlDevice control, ControlDevice::open());
  const std::string name = "ublk device " + std::to_string(dev_id);
  // The rings of the ended queues close asynchronously in the kernel; only
  // then is /dev/ublkcN released and the device quiesced. No event tells
  // this process, so the state is polled (bounded by `timeout`), as
  // recover() polls START_USER_RECOVERY.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    UBLKVOL_ASSIGN_OR_RETURN(const uapi::CtrlDevInfo info, control.get_device_info(dev_id));
    if (info.state != uapi::kDevStateLive) {
      return ok_status();
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error(EBUSY, name + " is still live " + std::to_string(timeout.count()) +
                              " ms after its queues ended (its queue rings or /dev/ublkc" +
                              std::to_string(dev_id) + " are still open)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::vector<DeviceStats> UblkDevice::queue_stats() const {
  std::vector<DeviceStats> out;
  const State& s = *state_;
  if (s.counters) {
    for (unsigned q = 0; q < s.info.nr_hw_queues; ++q) {
      out.emplace_back();
      s.counters[q].add_to(out.back());
    }
  }
  return out;
}

DeviceStats UblkDevice::stats() const {
  DeviceStats total;
  const State& s = *state_;
  if (s.counters) {
    for (unsigned q = 0; q < s.info.nr_hw_queues; ++q) {
      s.counters[q].add_to(total);
    }
  }
  return total;
}

}  // namespace ublkvol::ublk
