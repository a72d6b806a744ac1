// Verify, repair and scrub (docs/engine.md "Verify, repair and scrub") and
// the background verify thread.
#include "impl.h"
#include "verify_compare.h"

namespace ublkvol::engine {

namespace {
void add_range(std::vector<std::pair<uint64_t, uint64_t>>& list, uint64_t offset, uint64_t length) {
  if (!list.empty() && list.back().first + list.back().second == offset) {
    list.back().second += length;
  } else {
    list.emplace_back(offset, length);
  }
}
}  // namespace

// Verify / repair / scrub (docs/engine.md "Verify, repair and scrub"). The
// control queue is taken per chunk, so snapshots and membership changes
// interleave with a long (throttled) scrub instead of waiting for it.
Result<VerifyReport> ReplicatedVolume::verify(const VerifyOptions& options) {
  Impl& v = *impl_;
  if (!v.verify_run_mutex.try_lock()) {
    VerifyStatus now;
    {
      MutexLock lock(v.mutex);
      now = v.verify_status;
    }
    return Error(EBUSY, "volume " + v.options.name + ": a verify is already running (" +
                            std::to_string(now.done_bytes) + " of " +
                            std::to_string(now.total_bytes) + " bytes)");
  }
  MutexLock run_lock(v.verify_run_mutex, kAdoptLock);
  if (v.closed) {
    return Error(ESHUTDOWN, "volume " + v.options.name + " is closed");
  }
  v.verify_cancel.store(false);
  const uint64_t size = v.info.size_bytes;
  const uint64_t chunk = 1U << 20U;
  std::array<AlignedBytes, kMaxReplicas> buffers;
  std::array<std::byte*, kMaxReplicas> views{};
  for (unsigned r = 0; r < kMaxReplicas; ++r) {
    buffers[r] = io_buffer(chunk);
    views[r] = buffers[r].get();
  }
  AlignedBytes copy_buffer = io_buffer(chunk);
  {
    MutexLock lock(v.mutex);
    VerifyStatus& st = v.verify_status;
    st.active = true;
    st.repair = options.repair;
    st.done_bytes = st.mismatched_bytes = st.repaired_bytes = 0;
    st.total_bytes = size;
    st.percent = st.bytes_per_second = 0;
  }
  VerifyReport report;
  std::string error;
  const uint64_t start_ns = v.options.clock.now_ns();
  std::vector<detail::BlockVerdict> verdicts;
  // One ordered op on the control queue (caller holds control_mutex).
  auto run_op = [&](InternalOp& op) -> Status {
    QueueState& q = *v.queues[v.control_queue];
    if (q.submit_op(op) != 0) {
      return Error(EBUSY, "volume " + v.options.name + ": control queue busy");
    }
    q.run_until_done(op);
    return ok_status();
  };
  auto verify_op = [&](uint64_t offset, uint64_t length) -> Result<uint32_t> {
    InternalOp op;
    op.kind = SlotKind::kVerify;
    op.offset = offset;
    op.length = length;
    op.buffers = views;
    UBLKVOL_TRY(run_op(op));
    return op.read_mask;
  };
  for (uint64_t off = 0; off < size && error.empty(); off += chunk) {
    if (v.verify_cancel.load()) {
      report.cancelled = true;
      break;
    }
    const uint64_t len = std::min(chunk, size - off);
    uint64_t mismatched = 0;
    uint64_t repaired = 0;
    {
      MutexLock control_lock(v.control_mutex);
      auto mask = verify_op(off, len);
      if (!mask.ok()) {
        error = mask.error().to_string();
        break;
      }
      report.replicas_compared |= *mask;
      verdicts.clear();
      detail::compare_chunk(views, *mask, off, len, verdicts);
      bool wrote = false;
      for (const detail::BlockVerdict& d : verdicts) {
        add_range(report.mismatches, d.offset, d.length);
        mismatched += d.length;
        if (!options.repair) {
          continue;
        }
        if (!d.decided) {
          add_range(report.unrepaired, d.offset, d.length);
          v.event(-1, "verify: replicas mask " + std::to_string(d.bad_mask) + " differ at byte " +
                          std::to_string(d.offset) + " (+" + std::to_string(d.length) +
                          ") with no majority; not repaired");
          continue;
        }
        // Rewrite the minority from a majority replica: an ordered copy, so
        // a write in between is applied before it reads or after it wrote.
        InternalOp copy;
        copy.kind = SlotKind::kCopy;
        copy.offset = d.offset;
        copy.length = d.length;
        copy.dst_mask = d.bad_mask;
        copy.buffer = copy_buffer.get();
        Status st = run_op(copy);
        wrote = true;
        std::vector<detail::BlockVerdict> again;
        if (st.ok() && copy.result == 0) {
          auto recheck = verify_op(d.offset, d.length);
          if (recheck.ok()) {
            // The re-read landed at the start of the buffers.
            detail::compare_chunk(views, *recheck, d.offset, d.length, again);
          }
        }
        if (st.ok() && copy.result == 0 && again.empty()) {
          add_range(report.repaired, d.offset, d.length);
          repaired += d.length;
          v.event(-1, "verify: repaired byte " + std::to_string(d.offset) + " (+" +
                          std::to_string(d.length) + ") on replica mask " +
                          std::to_string(d.bad_mask) + " from the majority");
        } else {
          add_range(report.unrepaired, d.offset, d.length);
        }
      }
      if (wrote) {
        // Repair copies are not dirty-marked: make them durable now.
        if (const int flushed = flush_and_wait(*v.queues[v.control_queue]); flushed != 0) {
          // The replica that failed the flush leaves the write set (as for
          // any I/O error); say why the repairs may not have stuck there.
          v.event(-1, "verify: flush after repairs failed (" + std::to_string(flushed) + ")");
        }
      }
    }
    report.bytes_compared += len;
    const uint64_t elapsed = v.options.clock.now_ns() - start_ns;
    {
      MutexLock lock(v.mutex);
      VerifyStatus& st = v.verify_status;
      st.done_bytes = report.bytes_compared;
      st.percent = 100.0 * static_cast<double>(st.done_bytes) / static_cast<double>(size);
      st.bytes_per_second =
          elapsed > 0 ? static_cast<double>(st.done_bytes) * 1e9 / static_cast<double>(elapsed) : 0;
      st.mismatched_bytes += mismatched;
      st.repaired_bytes += repaired;
    }
    if (options.bytes_per_second > 0) {
      const uint64_t due_ns = report.bytes_compared * 1000000000ULL / options.bytes_per_second;
      if (due_ns > elapsed) {
        UniqueLock lock(v.verify_sleep_mutex);
        v.verify_cv.wait_for(lock.native(), std::chrono::nanoseconds(due_ns - elapsed),
                             [&] { return v.verify_cancel.load(); });
      }
    }
  }
  auto total = [](const std::vector<std::pair<uint64_t, uint64_t>>& list) {
    uint64_t n = 0;
    for (const auto& [o, l] : list) {
      n += l;
    }
    return n;
  };
  {
    MutexLock lock(v.mutex);
    VerifyStatus& st = v.verify_status;
    st.active = false;
    ++st.runs;
    st.last_finished = std::chrono::system_clock::now();
    st.last_repair = options.repair;
    st.last_bytes = report.bytes_compared;
    st.last_mismatched_bytes = total(report.mismatches);
    st.last_repaired_bytes = total(report.repaired);
    st.last_unrepaired_bytes = total(report.unrepaired);
    st.last_seconds = static_cast<double>(v.options.clock.now_ns() - start_ns) / 1e9;
    st.last_error = !error.empty() ? error : report.cancelled ? "cancelled" : "";
    st.last_mismatches.assign(
        report.mismatches.begin(),
        report.mismatches.begin() +
            static_cast<std::ptrdiff_t>(std::min<size_t>(report.mismatches.size(), 64)));
  }
  {
    // Under the lock, so wait_verify() cannot miss it.
    MutexLock lock(v.verify_bg_mutex);
    v.verify_bg_cv.notify_all();
  }
  v.event(-1, std::string(options.repair ? "verify+repair: " : "verify: ") +
                  std::to_string(report.bytes_compared) + " bytes compared, " +
                  std::to_string(report.mismatches.size()) + " mismatching range(s), " +
                  std::to_string(report.repaired.size()) + " repaired, " +
                  std::to_string(report.unrepaired.size()) + " unrepaired" +
                  (report.cancelled ? " (cancelled)" : "") +
                  (error.empty() ? "" : " (stopped: " + error + ")"));
  if (!error.empty()) {
    return Error(EIO, "volume " + v.options.name + ": verify stopped at byte " +
                          std::to_string(report.bytes_compared) + ": " + error);
  }
  return report;
}

void ReplicatedVolume::start_verify_thread() {
  Impl& v = *impl_;
  if (v.verify_thread) {
    return;
  }
  v.verify_thread = v.runner().start("vol-verify", [this] {
    pthread_setname_np(pthread_self(), "vol-verify");
    Impl& w = *impl_;
    const auto interval = w.options.scrub_interval;
    auto next = std::chrono::steady_clock::now() + interval;
    UniqueLock lock(w.verify_bg_mutex);
    for (;;) {
      auto wake = [&]() REQUIRES(w.verify_bg_mutex) {
        return w.verify_bg_stop || w.verify_request.has_value();
      };
      if (interval.count() > 0) {
        w.verify_bg_cv.wait_until(lock.native(), next, wake);
      } else {
        w.verify_bg_cv.wait(lock.native(), wake);
      }
      if (w.verify_bg_stop) {
        return;
      }
      VerifyOptions run;
      if (w.verify_request) {
        run = *w.verify_request;
        w.verify_request.reset();
      } else if (interval.count() > 0 && std::chrono::steady_clock::now() >= next) {
        run.repair = w.options.scrub_repair;
        run.bytes_per_second = w.options.scrub_bytes_per_second;
      } else {
        continue;
      }
      w.verify_bg_running = true;
      lock.unlock();
      Result<VerifyReport> report = verify(run);
      if (!report.ok()) {
        spdlog::warn("volume {}: background verify: {}", w.options.name,
                     report.error().to_string());
      }
      lock.lock();
      w.verify_bg_running = false;
      next = std::chrono::steady_clock::now() + interval;
    }
  });
}

Status ReplicatedVolume::start_verify(const VerifyOptions& options) {
  Impl& v = *impl_;
  if (v.closed) {
    return Error(ESHUTDOWN, "volume " + v.options.name + " is closed");
  }
  VerifyStatus now;
  {
    MutexLock lock(v.mutex);
    now = v.verify_status;
  }
  {
    MutexLock lock(v.verify_bg_mutex);
    if (now.active || v.verify_request || v.verify_bg_running) {
      return Error(EBUSY, "volume " + v.options.name + ": a verify is already " +
                              (now.active || v.verify_bg_running
                                   ? "running (" + std::to_string(now.done_bytes) + " of " +
                                         std::to_string(now.total_bytes) + " bytes)"
                                   : std::string("queued")));
    }
    v.verify_request = options;
  }
  start_verify_thread();
  v.verify_bg_cv.notify_all();
  return ok_status();
}

bool ReplicatedVolume::wait_verify(uint64_t runs, std::chrono::milliseconds timeout) {
  Impl& v = *impl_;
  UniqueLock lock(v.verify_bg_mutex);
  return v.verify_bg_cv.wait_for(lock.native(), timeout, [&] {
    MutexLock status_lock(v.mutex);
    return v.verify_status.runs >= runs;
  });
}

void ReplicatedVolume::cancel_verify() {
  Impl& v = *impl_;
  v.verify_cancel.store(true);
  MutexLock lock(v.verify_sleep_mutex);
  v.verify_cv.notify_all();
}

}  // namespace ublkvol::engine
