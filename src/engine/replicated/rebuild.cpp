// Online rebuild / resync (docs/engine.md "Online rebuild", "Thin rebuild"):
// the rebuild worker thread and its job's phases, start_rebuild, and the
// thin-rebuild helpers (mapped ranges, space check).
#include "impl.h"
#include "rebuild_pacing.h"

namespace ublkvol::engine {

Status ReplicatedVolume::Impl::start_job(const Job& job) {
  MutexLock lock(rebuild_mutex);
  if (rebuild_stop) {
    return Error(ESHUTDOWN, "volume " + options.name + " is closing");
  }
  jobs.push_back(job);
  rebuild_running = true;
  if (!rebuild_worker) {
    // The last worker ended when the queue ran empty (rebuild_loop()).
    if (rebuild_thread) {
      rebuild_thread->join();
    }
    rebuild_worker = true;
    rebuild_thread = runner().start("vol-rebuild", [this] { rebuild_loop(); });
  }
  rebuild_cv.notify_all();
  return ok_status();
}

void ReplicatedVolume::Impl::stop_rebuild_worker() {
  {
    MutexLock lock(rebuild_mutex);
    rebuild_stop = true;
  }
  rebuild_cv.notify_all();
  if (rebuild_thread) {
    rebuild_thread->join();
    rebuild_thread.reset();
  }
}

void ReplicatedVolume::Impl::rebuild_loop() {
  pthread_setname_np(pthread_self(), "vol-rebuild");
  UniqueLock lock(rebuild_mutex);
  for (;;) {
    // Ends once the queue is empty (start_job() starts a new worker) rather
    // than waiting for the next job: a task runner may run this on a thread
    // that has other work (the simulator's one thread).
    if (rebuild_stop || jobs.empty()) {
      rebuild_running = false;
      rebuild_worker = false;
      rebuild_cv.notify_all();
      return;
    }
    Job job = jobs.front();
    jobs.pop_front();
    lock.unlock();
    Status st = run_job(job);
    if (!st.ok()) {
      rebuild_abandon(job);
    }
    lock.lock();
    rebuild_result = st;
    if (jobs.empty()) {
      rebuild_running = false;
    }
    rebuild_cv.notify_all();
  }
}

// A rebuild that stopped leaves none of its targets "rebuilding" with nothing
// rebuilding them: they leave the write set (failed), so start_rebuild()
// takes them again and resumes from the persisted watermark. They used to
// stay kRebuilding for good, refused by start_rebuild() ("is rebuilding, not
// failed or stale") and keeping every checkpoint off (engine_sim_test,
// seed 7: a source read error stopped the copy).
void ReplicatedVolume::Impl::rebuild_abandon(const Job& job) {
  MutexLock meta_lock(meta_mutex);
  for (unsigned t = 0; t < nreplicas; ++t) {
    if ((job.targets & bit(t)) != 0 && job.versions[t] == binding_version[t] &&
        replica_state(t) == ReplicaState::kRebuilding) {
      report_failure(t, FailKind::kRebuildStopped, -EIO);
    }
  }
}

// Phase failure: logged as an event and in the progress, returned as EIO.
Status ReplicatedVolume::Impl::rebuild_failed(const Job& job, const std::string& why) {
  std::string msg = "rebuild of replica mask " + std::to_string(job.targets) + " stopped: " + why;
  event(-1, msg);
  MutexLock lock(mutex);
  progress.active = false;
  progress.last_error = msg;
  return Error(EIO, "volume " + options.name + ": " + msg);
}

// 1. Targets become rebuild targets (persisted) and join the write set.
Status ReplicatedVolume::Impl::rebuild_join_targets(const Job& job) {
  MutexLock meta_lock(meta_mutex);
  uint64_t g = 0;
  {
    MutexLock lock(mutex);
    g = generation;
  }
  for (unsigned t = 0; t < nreplicas; ++t) {
    if ((job.targets & bit(t)) == 0) {
      continue;
    }
    ReplicaState ts = replica_state(t);
    if (job.versions[t] != binding_version[t] ||
        (ts != ReplicaState::kStale && ts != ReplicaState::kFailed)) {
      return rebuild_failed(job, "replica " + std::to_string(t) + " was replaced or removed");
    }
    Result<ReplicaMeta> m = read_meta(t);
    if (!m.ok()) {
      return rebuild_failed(job, m.error().to_string());
    }
    ReplicaMeta meta = *m;
    meta.fresh = false;
    meta.volume_uuid = volume_uuid;
    meta.generation = 0;
    meta.history = {};
    meta.in_sync = {};
    if (meta.replica_id == 0) {
      meta.replica_id = new_generation();  // a new replica's identity
    }
    meta.rebuilding = true;
    meta.rebuild_generation = g;
    // Nothing is claimed copied until rebuild_copy() persists a watermark
    // (after the dirty regions below full_from and a flush). Persisting
    // job.full_from here claimed the part below it current while its dirty
    // regions were still to copy: a resume after an interruption then took
    // them from bitmaps that may since have left with a replaced or removed
    // replica, and declared the target in sync over stale blocks
    // (engine_sim_test, seed 14). An interrupted resync so resumes as a
    // full rebuild.
    meta.rebuild_watermark = 0;
    Status st = write_meta(t, meta);
    if (!st.ok()) {
      return rebuild_failed(job, st.error().to_string());
    }
    handled[t] = false;
    fail_kind[t].store(0);
    set_state(t, ReplicaState::kRebuilding);
  }
  return ok_status();
}

// 2. Drain writes dispatched before the targets joined, then take the
//    union of every replica's dirty bitmap (regions that may differ) and,
//    for the whole-range part, what is mapped on the source or a target
//    (thin rebuild: a range mapped on neither reads as zeros on both, and
//    every later write reaches the targets too).
Status ReplicatedVolume::Impl::rebuild_collect(const Job& job, std::vector<uint8_t>& dirty,
                                               detail::Ranges& mapped) {
  const uint64_t size = info.size_bytes;
  QueueState& q = *queues[rebuild_queue];
  InternalOp barrier;
  barrier.kind = SlotKind::kBarrier;
  if (q.submit_op(barrier) != 0) {
    return rebuild_failed(job, "rebuild queue busy");
  }
  q.run_until_done(barrier);
  MutexLock meta_lock(meta_mutex);  // bindings stay put
  if (job.full_from < size) {
    mapped = mapped_ranges_of(mask_of(ReplicaState::kInSync), job.targets);
  }
  for (unsigned r = 0; r < nreplicas && job.full_from > 0; ++r) {
    if (replica_state(r) == ReplicaState::kRemoved || thread_exited(r)) {
      continue;
    }
    Result<std::vector<uint8_t>> bits = read_dirty(r);
    if (!bits.ok()) {
      continue;
    }
    dirty.resize(std::max(dirty.size(), bits->size()));
    for (size_t i = 0; i < bits->size(); ++i) {
      dirty[i] = static_cast<uint8_t>(dirty[i] | (*bits)[i]);
    }
  }
  q.release_barrier(barrier);
  q.reap();
  return ok_status();
}

// 3. The work list: dirty regions below full_from, then the mapped ranges
//    from full_from on.
ReplicatedVolume::Impl::RebuildPlan ReplicatedVolume::Impl::rebuild_plan(
    const Job& job, const std::vector<uint8_t>& dirty, const detail::Ranges& mapped) const {
  const uint64_t size = info.size_bytes;
  const uint64_t region = region_bytes();
  RebuildPlan plan;
  auto& ranges = plan.ranges;
  uint64_t& total = plan.total;
  const uint64_t full_from = plan.full_from = std::min(job.full_from, size);
  for (uint64_t i = 0; i < dirty.size() && i * region < full_from; ++i) {
    if (dirty[i] != 0) {
      uint64_t b = i * region;
      uint64_t e = std::min({b + region, full_from, size});
      if (!ranges.empty() && ranges.back().first + ranges.back().second == b) {
        ranges.back().second += e - b;
      } else {
        ranges.emplace_back(b, e - b);
      }
      total += e - b;
    }
  }
  if (full_from < size) {
    for (auto [b, len] :
         detail::align_and_clip(mapped, options.rebuild_chunk_bytes, full_from, size)) {
      ranges.emplace_back(b, len);
      total += len;
    }
  }
  return plan;
}

// 4. Copy, chunk by chunk, each chunk ordered against user writes; `done`
//    counts the bytes copied.
Status ReplicatedVolume::Impl::rebuild_copy(const Job& job, const RebuildPlan& plan,
                                            uint64_t start_ns, uint64_t& done) {
  AlignedBytes buffer = io_buffer(options.rebuild_chunk_bytes);
  Status st = rebuild_copy_with(job, plan, start_ns, done, buffer.get());
  rebuild_quiesce(*queues[rebuild_queue]);
  return st;
}

// The staging buffer is reused (next chunk) or freed (end of the job) only
// once no copy sub-request points at it any more: a read or write cut off
// at the deadline, or at a replica dropped meanwhile, stays at its store
// until it answers. Freeing it at once let a late answer write freed memory
// (engine_sim_test under ASan: heap-use-after-free after a stopped rebuild);
// reusing it let a late read land in the next chunk's copy. Waits as long as
// such a replica's store holds the request (not if its thread is gone).
void ReplicatedVolume::Impl::rebuild_quiesce(QueueState& q) {
  for (;;) {
    q.reap();
    bool busy = false;
    for (unsigned r = 0; r < nreplicas && !busy; ++r) {
      // A binding with requests outstanding cannot change (the membership
      // fence waits for them), so thread_exited(r) is safe to ask.
      busy = q.outstanding[r].load(std::memory_order_acquire) != 0 && !thread_exited(r);
    }
    if (!busy) {
      return;
    }
    runner().wait(q.wake.get(), std::chrono::milliseconds(50));
    drain_fd(q.wake.get());
  }
}

Status ReplicatedVolume::Impl::rebuild_copy_with(const Job& job, const RebuildPlan& plan,
                                                 uint64_t start_ns, uint64_t& done,
                                                 std::byte* buffer) {
  const auto& ranges = plan.ranges;
  const uint64_t total = plan.total;
  const uint64_t full_from = plan.full_from;
  QueueState& q = *queues[rebuild_queue];
  detail::RebuildPacer pacer(options.rebuild_chunk_bytes, options.rebuild_busy_io_bytes,
                             options.rebuild_busy_percent, user_requests());
  uint64_t since_persist = 0;
  uint64_t step = 0;  // this step's length (the pacer picks the next one)
  for (auto [rb, rlen] : ranges) {
    for (uint64_t off = rb; off < rb + rlen; off += step) {
      {
        MutexLock lock(rebuild_mutex);
        if (rebuild_stop) {
          return rebuild_failed(job, "volume closing (resumable)");
        }
      }
      InternalOp op;
      op.kind = SlotKind::kCopy;
      op.offset = off;
      op.length = step = pacer.next_length(off, rb + rlen);
      op.dst_mask = job.targets;
      op.buffer = buffer;
      const uint64_t step_start_ns = options.clock.now_ns();
      if (q.submit_op(op) != 0) {
        return rebuild_failed(job, "rebuild queue busy");
      }
      q.run_until_done(op);
      rebuild_quiesce(q);
      const uint64_t wait_ns =
          pacer.after_step(options.clock.now_ns() - step_start_ns, user_requests());
      if (op.result != 0) {
        return rebuild_failed(
            job, std::string("copy at byte ") + std::to_string(off) + " failed (" +
                     std::error_code(-op.result, std::generic_category()).message() + ")");
      }
      done += op.length;
      since_persist += op.length;
      uint64_t elapsed = options.clock.now_ns() - start_ns;
      double rate =
          elapsed > 0 ? static_cast<double>(done) * 1e9 / static_cast<double>(elapsed) : 0;
      {
        MutexLock lock(mutex);
        progress.done_bytes = done;
        progress.percent =
            total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
        progress.bytes_per_second = rate;
        progress.eta_seconds = rate > 0 ? static_cast<double>(total - done) / rate : 0;
        ++progress.pieces;
      }
      {
        // Under the lock, so wait_rebuild_progress() cannot miss it.
        MutexLock rlock(rebuild_mutex);
        rebuild_cv.notify_all();
      }
      // Persist the watermark now and then (whole-range part only).
      if (off >= full_from && since_persist >= options.rebuild_persist_bytes) {
        since_persist = 0;
        // Copies are not marked dirty: make them durable before the
        // watermark claims them.
        const int flush_result = flush_and_wait(q);
        if (flush_result != 0) {
          return rebuild_failed(job, "flush before persisting the watermark failed");
        }
        MutexLock meta_lock(meta_mutex);
        for (unsigned t = 0; t < nreplicas; ++t) {
          if ((job.targets & bit(t)) == 0) {
            continue;
          }
          Result<ReplicaMeta> m = read_meta(t);
          if (m.ok()) {
            ReplicaMeta meta = *m;
            meta.rebuild_watermark = off + op.length;
            (void)write_meta(t, meta);
          }
        }
      }
      if (wait_ns > 0) {
        rebuild_yield(wait_ns);
      }
      // Throttle: sleep until the copy is back under the configured rate.
      uint64_t limit = rebuild_rate.load(std::memory_order_relaxed);
      if (limit > 0) {
        uint64_t due_ns = done * 1000000000ULL / limit;
        uint64_t el = options.clock.now_ns() - start_ns;
        if (due_ns > el) {
          UniqueLock lock(rebuild_mutex);
          rebuild_cv.wait_for(lock.native(), std::chrono::nanoseconds(due_ns - el),
                              [&]() REQUIRES(rebuild_mutex) { return rebuild_stop; });
        }
      }
    }
  }
  return ok_status();
}

// User requests submitted to the volume so far (the user queues' counts).
uint64_t ReplicatedVolume::Impl::user_requests() const {
  uint64_t n = 0;
  for (unsigned i = 0; i < options.queues; ++i) {
    n += queues[i]->submitted.load(std::memory_order_relaxed);
  }
  return n;
}

// The pacer's wait after a step that ran beside user I/O; cut short when the
// volume closes. Counted in the progress.
void ReplicatedVolume::Impl::rebuild_yield(uint64_t wait_ns) {
  const uint64_t t0 = options.clock.now_ns();
  if (options.clock.manual()) {
    // Simulated time (tests/engine/sim): the step's length came from jumps
    // of the manual clock; sleeping for it in real time only slowed every
    // seed down (2000 seeds: 108 s -> 395 s). Let the others run instead.
    runner().wait(-1, std::chrono::milliseconds(0));
  } else {
    UniqueLock lock(rebuild_mutex);
    rebuild_cv.wait_for(lock.native(), std::chrono::nanoseconds(wait_ns),
                        [&]() REQUIRES(rebuild_mutex) { return rebuild_stop; });
  }
  const uint64_t waited = options.clock.now_ns() - t0;
  MutexLock lock(mutex);
  ++progress.yields;
  progress.yielded_seconds += static_cast<double>(waited) / 1e9;
}

// The in-sync set at the current generation once the job's targets joined:
// the set recorded so far, every replica in sync now, and the targets. Ids of
// replicas no longer bound to the volume are dropped only if the set would
// overflow: such a replica left out of sync (a bump followed) or never
// reached the generation. An unknown set (recorded by an older version)
// stays unknown: it cannot be completed from what is present.
Result<InSyncSet> ReplicatedVolume::Impl::extended_in_sync_set(const Job& job,
                                                               const ReplicaMeta& lineage) {
  if (lineage.in_sync[0] == 0) {
    return InSyncSet{};
  }
  std::vector<uint64_t> ids(lineage.in_sync.begin(), lineage.in_sync.end());
  std::vector<uint64_t> bound;
  for (unsigned r = 0; r < nreplicas; ++r) {
    const ReplicaState s = replica_state(r);
    if (s == ReplicaState::kRemoved) {
      continue;
    }
    const bool member = s == ReplicaState::kInSync || (job.targets & bit(r)) != 0;
    Result<ReplicaMeta> m = read_meta(r);
    if (!m.ok()) {
      if (!member) {
        continue;  // e.g. a failed replica whose store thread died: not needed
      }
      return rebuild_failed(job, m.error().to_string()).error();
    }
    bound.push_back(m->replica_id);
    if (member) {
      ids.push_back(m->replica_id);
    }
  }
  std::erase(ids, 0);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  if (ids.size() > kInSyncSetSize) {
    std::erase_if(
        ids, [&](uint64_t id) { return std::find(bound.begin(), bound.end(), id) == bound.end(); });
  }
  return make_in_sync_set(ids);
}

// 5. Targets are in sync with the current generation.
Status ReplicatedVolume::Impl::rebuild_finish(const Job& job) {
  MutexLock meta_lock(meta_mutex);
  uint64_t g = 0;
  {
    MutexLock lock(mutex);
    g = generation;
  }
  // Any in-sync replica's lineage is the volume's.
  ReplicaMeta lineage;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) == ReplicaState::kInSync) {
      Result<ReplicaMeta> m = read_meta(r);
      if (m.ok()) {
        lineage = *m;
        break;
      }
    }
  }
  // The targets join the in-sync set at g on every in-sync replica BEFORE
  // they are in sync (docs/engine.md "In-sync sets"): a target could make
  // the next generation, and a later open on replicas still at g must then
  // know to wait for it.
  UBLKVOL_ASSIGN_OR_RETURN(const InSyncSet set, extended_in_sync_set(job, lineage));
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) != ReplicaState::kInSync) {
      continue;
    }
    Result<ReplicaMeta> m = read_meta(r);
    if (!m.ok()) {
      return rebuild_failed(job, m.error().to_string());
    }
    if (m->in_sync != set) {
      ReplicaMeta meta = *m;
      meta.in_sync = set;
      Status st = write_meta(r, meta);
      if (!st.ok()) {
        return rebuild_failed(job, "recording the in-sync set on replica " + std::to_string(r) +
                                       ": " + st.error().to_string());
      }
    }
  }
  for (unsigned t = 0; t < nreplicas; ++t) {
    if ((job.targets & bit(t)) == 0) {
      continue;
    }
    if (replica_state(t) != ReplicaState::kRebuilding) {
      return rebuild_failed(job, "target left the write set");
    }
    Result<ReplicaMeta> m = read_meta(t);
    if (!m.ok()) {
      return rebuild_failed(job, m.error().to_string());
    }
    ReplicaMeta meta = *m;
    meta.generation = g;
    meta.history = lineage.history;
    meta.in_sync = set;
    meta.rebuilding = false;
    meta.rebuild_generation = 0;
    meta.rebuild_watermark = 0;
    meta.bitmap_base = g;
    Status st = write_meta(t, meta);
    if (!st.ok()) {
      return rebuild_failed(job, st.error().to_string());
    }
    set_state(t, ReplicaState::kInSync);
  }
  return ok_status();
}

Status ReplicatedVolume::Impl::run_job(const Job& job) {
  const uint64_t size = info.size_bytes;
  UBLKVOL_TRY(rebuild_join_targets(job));
  event(-1, "rebuild of replica mask " + std::to_string(job.targets) + " started (" +
                (job.full_from == 0      ? std::string("full copy")
                 : job.full_from >= size ? std::string("dirty regions only")
                                         : "resuming at byte " + std::to_string(job.full_from)) +
                ")");
  std::vector<uint8_t> dirty;
  detail::Ranges mapped{{0, size}};
  UBLKVOL_TRY(rebuild_collect(job, dirty, mapped));
  const RebuildPlan plan = rebuild_plan(job, dirty, mapped);
  const uint64_t full_from = plan.full_from;
  const uint64_t total = plan.total;
  uint64_t start_ns = options.clock.now_ns();
  {
    MutexLock lock(mutex);
    progress = RebuildProgress{};
    progress.active = true;
    progress.targets = job.targets;
    progress.full_from = full_from;
    progress.total_bytes = total;
  }
  uint64_t done = 0;
  UBLKVOL_TRY(rebuild_copy(job, plan, start_ns, done));
  UBLKVOL_TRY(rebuild_finish(job));
  double secs = static_cast<double>(options.clock.now_ns() - start_ns) / 1e9;
  {
    MutexLock lock(mutex);
    progress.active = false;
    progress.percent = 100.0;
    progress.eta_seconds = 0;
    progress.last_error.clear();
    ++progress.completed;
  }
  event(-1, "rebuild of replica mask " + std::to_string(job.targets) +
                " done: " + std::to_string(done) + " bytes in " + std::to_string(secs) + " s");
  if (mask_of(ReplicaState::kInSync) == present_mask()) {
    MutexLock control_lock(control_mutex);
    Status st = checkpoint_locked();
    if (!st.ok()) {
      spdlog::warn("volume {}: checkpoint after rebuild: {}", options.name, st.error().to_string());
    }
  }
  return ok_status();
}

Status ReplicatedVolume::Impl::start_rebuild_locked(unsigned replica) {
  Impl& v = *this;
  std::string what = "volume " + v.options.name + ": replica " + std::to_string(replica);
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  ReplicaState s = v.replica_state(replica);
  if (s != ReplicaState::kFailed && s != ReplicaState::kStale) {
    return Error(EBUSY, what + " is " + to_string(s) + ", not failed or stale");
  }
  if (v.thread_exited(replica)) {
    return Error(ESHUTDOWN, what + ": its store thread is not running");
  }
  if (s == ReplicaState::kFailed) {
    // Its failure may not be handled yet (the monitor runs on its own): do
    // it now. Once the replica is stale the monitor no longer sees it as
    // failed, and the gen_hold its failure raised would never be lowered -
    // every write acknowledgement held for good (engine_sim_test, seed 7).
    v.handle_failures();
  }
  // Requests the store still holds from before it failed must finish first,
  // or they could land after the rebuild copied over them.
  ReplicaStore* store = v.replicas[replica].store;
  unsigned busy = 0;
  UBLKVOL_TRY(v.replicas[replica].thread->call([&]() -> Status {
    busy = store->in_flight();
    return ok_status();
  }));
  if (busy != 0) {
    return Error(EBUSY, what + " still has " + std::to_string(busy) +
                            " requests in flight from before it failed");
  }
  // Resync or full rebuild: decided from the persisted generations.
  int src = -1;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if (v.replica_state(r) == ReplicaState::kInSync) {
      src = static_cast<int>(r);
      break;
    }
  }
  if (src < 0) {
    return Error(EIO, what + ": no in-sync replica to copy from");
  }
  Result<ReplicaMeta> src_meta = v.read_meta(static_cast<unsigned>(src));
  Result<ReplicaMeta> dst_meta = v.read_meta(replica);
  if (!src_meta.ok()) {
    return src_meta.error().with_context(what);
  }
  if (!dst_meta.ok()) {
    return dst_meta.error().with_context(what);
  }
  Impl::Job job = v.make_job(bit(replica), 0);
  if (dst_meta->generation != 0 && bitmap_covers(*src_meta, dst_meta->generation)) {
    job.full_from = UINT64_MAX;
  } else if (dst_meta->rebuilding && bitmap_covers(*src_meta, dst_meta->rebuild_generation)) {
    job.full_from = dst_meta->rebuild_watermark;
  } else {
    job.full_from = 0;
    UBLKVOL_TRY(v.check_space(v.replicas[replica], what));
  }
  v.set_state(replica, ReplicaState::kStale);
  return v.start_job(job);
}

namespace {
Result<detail::Ranges> mapped_of(const ReplicaBinding& b) {
  detail::Ranges out;
  Status st = b.thread->call([&]() -> Status {
    auto r = b.store->mapped_ranges();
    if (!r.ok()) {
      return r.error();
    }
    out = std::move(*r);
    return ok_status();
  });
  if (!st.ok()) {
    return st.error();
  }
  return out;
}
}  // namespace

detail::Ranges ReplicatedVolume::Impl::mapped_ranges_of(uint32_t sources, uint32_t targets) {
  detail::Ranges whole{{0, info.size_bytes}};
  detail::Ranges out;
  bool have_source = false;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((sources & bit(r)) == 0 || thread_exited(r)) {
      continue;
    }
    auto m = mapped_of(replicas[r]);
    if (!m.ok()) {
      return whole;
    }
    out = std::move(*m);
    have_source = true;
    break;
  }
  if (!have_source) {
    return whole;
  }
  for (unsigned t = 0; t < nreplicas; ++t) {
    if ((targets & bit(t)) == 0) {
      continue;
    }
    auto m = mapped_of(replicas[t]);
    if (!m.ok()) {
      return whole;
    }
    out = detail::range_union(out, *m);
  }
  return out;
}

Status ReplicatedVolume::Impl::check_space(const ReplicaBinding& target, const std::string& what) {
  ReplicaStore::Space space;
  detail::Ranges held;
  Status st = target.thread->call([&]() -> Status {
    auto sp = target.store->space();
    if (!sp.ok()) {
      return sp.error();
    }
    space = *sp;
    auto m = target.store->mapped_ranges();
    if (m.ok()) {
      held = std::move(*m);
    }
    return ok_status();
  });
  if (!st.ok() || space.free_bytes == UINT64_MAX) {
    return ok_status();  // not thin, or unknown: the copy finds out
  }
  int src = -1;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) == ReplicaState::kInSync && !thread_exited(r)) {
      src = static_cast<int>(r);
      break;
    }
  }
  if (src < 0) {
    return ok_status();  // start_rebuild refuses it
  }
  auto mapped = mapped_of(replicas[static_cast<unsigned>(src)]);
  if (!mapped.ok()) {
    return ok_status();
  }
  // What the copy writes: whole chunks around the mapped blocks.
  detail::Ranges copied =
      detail::align_and_clip(*mapped, options.rebuild_chunk_bytes, 0, info.size_bytes);
  const uint64_t unit = std::max<uint64_t>(space.unit_bytes, 1);
  const uint64_t needed = detail::units_to_allocate(copied, held, unit) * unit;
  if (needed <= space.free_bytes) {
    return ok_status();
  }
  return Error(ENOSPC, what + ": the target store (" + std::string(target.store->name()) +
                           ") has " + std::to_string(space.free_bytes) +
                           " bytes free, the copy needs " + std::to_string(needed) + " bytes (" +
                           std::to_string(detail::range_bytes(*mapped)) +
                           " bytes of data mapped on replica " + std::to_string(src) +
                           "); nothing was written");
}

// EBUSY naming the replica(s) being rebuilt and the progress while a
// rebuild runs or is queued.
Status ReplicatedVolume::Impl::refuse_while_rebuilding(const std::string& what) {
  uint32_t who = mask_of(ReplicaState::kRebuilding);
  bool running = false;
  {
    MutexLock lock(rebuild_mutex);
    running = rebuild_running;
    for (const Job& j : jobs) {
      who |= j.targets;
    }
  }
  if (who == 0 && !running) {
    return ok_status();
  }
  RebuildProgress p;
  {
    MutexLock lock(mutex);
    p = progress;
  }
  who |= p.active ? p.targets : 0U;
  std::string list;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((who & bit(r)) != 0) {
      list += (list.empty() ? "" : ", ") + replica_name(r);
    }
  }
  if (list.empty()) {
    list = "a replica";
  }
  char pct[32];
  (void)std::snprintf(pct, sizeof(pct), "%.1f", p.percent);
  return Error(EBUSY, what + " refused: " + list + " is rebuilding (" +
                          std::to_string(p.done_bytes) + " of " + std::to_string(p.total_bytes) +
                          " bytes copied, " + pct +
                          "%); retry once every replica is in sync (or fail that replica first)");
}

}  // namespace ublkvol::engine
