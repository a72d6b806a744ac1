// ReplicatedVolume::open(): validates the bindings, reads every replica's
// metadata, picks the generation and the resync plan (generation.h), starts
// the queues, the monitor and any rebuild.
#include "impl.h"

namespace ublkvol::engine {

namespace {

// The open-time fence (docs/engine.md "In-sync sets"): refuses (ENOLINK)
// while a replica recorded in sync at `generation`, the newest present one,
// is not among `metas`; it may have moved on. True: one is missing and
// options.accept_missing_in_sync lets the open go on.
Result<bool> check_missing_in_sync(const ReplicatedVolumeOptions& options,
                                   const std::vector<ReplicaMeta>& metas, uint64_t generation) {
  const InSyncCheck check = check_in_sync(metas, generation);
  if (check.unknown) {
    spdlog::warn(
        "volume {}: generation {} has no recorded in-sync set (written by an older version): "
        "cannot tell whether a missing replica is newer; opening on the replicas present",
        options.name, id_string(generation));
    return false;
  }
  if (check.missing.empty()) {
    return false;
  }
  std::string ids;
  for (uint64_t id : check.missing) {
    ids += (ids.empty() ? "" : ", ") + id_string(id);
  }
  std::string what = "volume " + options.name + ": " + std::to_string(check.missing.size()) +
                     " of the " + std::to_string(check.members.size()) +
                     " replicas in sync at generation " + id_string(generation) +
                     (check.missing.size() == 1 ? " is" : " are") + " missing (replica id " + ids +
                     ")";
  if (options.accept_missing_in_sync) {
    spdlog::warn("{}; opening without (accepted): writes only they hold are lost", what);
    return true;
  }
  // "unavailable" (not the default kind of ENOLINK): a replica is missing.
  return Error(ErrorKind::kUnavailable, ENOLINK,
               what +
                   ": they may hold acknowledged writes the present replicas lack; "
                   "bring them back, or accept losing those writes explicitly");
}

}  // namespace

Result<std::unique_ptr<ReplicatedVolume>> ReplicatedVolume::open(
    const ReplicatedVolumeOptions& options, std::vector<ReplicaBinding> replicas) {
  std::string what = "volume " + options.name;
  if (replicas.empty() || replicas.size() > kMaxReplicas) {
    return Error(EINVAL, what + ": needs 1 to " + std::to_string(kMaxReplicas) + " replicas, got " +
                             std::to_string(replicas.size()));
  }
  if (options.min_replicas < 1 || options.min_replicas > replicas.size()) {
    return Error(EINVAL, what + ": min-replicas " + std::to_string(options.min_replicas) +
                             " must be between 1 and the replica count " +
                             std::to_string(replicas.size()));
  }
  if (options.queues < 1 || options.queues > 60) {
    return Error(EINVAL, what + ": queue count must be between 1 and 60");
  }
  if (options.queue_depth < 4 || options.queue_depth > 65536) {
    return Error(EINVAL, what + ": queue depth must be between 4 and 65536");
  }
  if (options.rebuild_chunk_bytes < 4096 || options.rebuild_chunk_bytes % 4096 != 0 ||
      options.rebuild_chunk_bytes > (64U << 20U)) {
    return Error(EINVAL, what + ": rebuild chunk must be a multiple of 4096 up to 64 MiB");
  }
  if (options.rebuild_busy_io_bytes < 4096 || options.rebuild_busy_io_bytes % 4096 != 0) {
    return Error(EINVAL, what + ": rebuild_busy_io_bytes must be a positive multiple of 4096");
  }
  if (options.rebuild_busy_percent < 1 || options.rebuild_busy_percent > 100) {
    return Error(EINVAL, what + ": rebuild_busy_percent must be between 1 and 100");
  }
  if (options.io_deadline.count() <= 0) {
    return Error(EINVAL, what + ": the I/O deadline must be positive");
  }
  for (size_t i = 0; i < replicas.size(); ++i) {
    if (replicas[i].store == nullptr || replicas[i].thread == nullptr) {
      return Error(EINVAL, what + ": replica " + std::to_string(i) + " has no store or thread");
    }
    for (size_t j = 0; j < i; ++j) {
      if (replicas[j].store == replicas[i].store) {
        return Error(EINVAL, what + ": replicas " + std::to_string(j) + " and " +
                                 std::to_string(i) + " are the same store");
      }
    }
  }
  auto impl = std::make_unique<Impl>();
  Impl& v = *impl;
  v.options = options;
  v.nreplicas = static_cast<unsigned>(replicas.size());
  v.replicas = std::move(replicas);
  v.replicas.resize(kMaxReplicas);
  for (unsigned r = v.nreplicas; r < kMaxReplicas; ++r) {
    v.state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved));
  }
  {
    // Not shared yet; the lock only keeps the analysis exact.
    MutexLock lock(v.mutex);
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      v.names[r] = std::string(v.replicas[r].store->name());
    }
  }
  v.deadline_ns = static_cast<uint64_t>(options.io_deadline.count()) * 1000000ULL;
  v.rebuild_rate.store(options.rebuild_bytes_per_second);
  int mfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (mfd < 0) {
    return errno_error(what + ": eventfd");
  }
  v.monitor_fd.reset(mfd);

  // Metadata and geometry.
  std::vector<ReplicaMeta> metas;
  std::vector<std::string> names;
  uint64_t size = UINT64_MAX;
  uint64_t region = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    Result<ReplicaMeta> m = v.read_meta(r);
    if (!m.ok()) {
      return m.error().with_context(what);
    }
    metas.push_back(*m);
    names.emplace_back(v.replicas[r].store->name());
    size = std::min(size, v.replicas[r].store->size_bytes());
    if (region == 0) {
      region = v.replicas[r].store->region_bytes();
    } else if (region != v.replicas[r].store->region_bytes()) {
      return Error(EINVAL, what + ": replicas have different dirty-region sizes");
    }
  }
  v.region_size = region;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if (v.replicas[r].store->size_bytes() != size) {
      spdlog::warn("{}: replica {} is larger than the smallest one; using {} bytes", what, names[r],
                   size);
    }
  }
  v.info.name = options.name;
  v.info.size_bytes = size;
  v.info.block_size = 4096;
  v.info.max_io_bytes = options.max_io_bytes;
  v.info.supports_discard = true;
  v.info.supports_write_zeroes = true;
  v.info.discard_zeroes = false;
  v.info.volatile_cache = true;

  Result<GenerationChoice> choice = choose_generation(metas, names);
  if (!choice.ok()) {
    return choice.error().with_context(what);
  }
  bool advance = false;  // move the up-to-date replicas to a new generation
  if (!choice->all_fresh) {
    Result<bool> fenced = check_missing_in_sync(options, metas, choice->generation);
    if (!fenced.ok()) {
      return fenced.error();
    }
    advance = *fenced;
  }
  // Every replica gets its identity on first open (also one written by an
  // older version), before any in-sync set could name it.
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if (metas[r].replica_id == 0) {
      {
        MutexLock meta_lock(v.meta_mutex);
        metas[r].replica_id = v.new_generation();
      }
      UBLKVOL_TRY(v.write_meta(r, metas[r]));
    }
  }
  std::vector<Impl::Job> jobs;
  uint64_t generation = 0;  // the volume's, published below
  if (choice->all_fresh) {
    std::vector<uint64_t> ids;
    {
      MutexLock meta_lock(v.meta_mutex);
      v.volume_uuid = v.new_generation();
      generation = v.new_generation();
    }
    ids.reserve(metas.size());
    for (const ReplicaMeta& m : metas) {
      ids.push_back(m.replica_id);
    }
    const InSyncSet set = make_in_sync_set(ids);
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      ReplicaMeta m = metas[r];
      m.fresh = false;
      m.volume_uuid = v.volume_uuid;
      m.generation = generation;
      m.bitmap_base = generation;
      m.in_sync = set;
      UBLKVOL_TRY(v.write_meta(r, m));
      v.state[r].store(static_cast<uint8_t>(ReplicaState::kInSync));
    }
  } else {
    v.volume_uuid = metas[choice->source].volume_uuid;
    generation = choice->generation;
    uint32_t newest = 0;
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      ReplicaPlan plan = choice->plans[r];
      spdlog::info("{}: replica {} ({}): generation {}: {}", what, r, names[r],
                   hex(metas[r].generation), to_string(plan));
      if (plan == ReplicaPlan::kUpToDate) {
        newest |= bit(r);
        v.state[r].store(static_cast<uint8_t>(ReplicaState::kInSync));
      } else {
        v.state[r].store(static_cast<uint8_t>(ReplicaState::kStale));
        Impl::Job job;
        job.targets = bit(r);
        job.full_from = plan == ReplicaPlan::kFullRebuild     ? 0
                        : plan == ReplicaPlan::kResumeRebuild ? metas[r].rebuild_watermark
                                                              : UINT64_MAX;
        jobs.push_back(job);
      }
    }
    // Replicas at the newest generation may still differ where writes were
    // in flight at a crash: the union of their dirty bitmaps, copied from
    // the source to the others.
    if (std::popcount(newest) > 1) {
      bool any_dirty = false;
      for (unsigned r = 0; r < v.nreplicas && !any_dirty; ++r) {
        if ((newest & bit(r)) != 0) {
          Result<std::vector<uint8_t>> bits = v.read_dirty(r);
          if (!bits.ok()) {
            return bits.error().with_context(what);
          }
          any_dirty = std::any_of(bits->begin(), bits->end(), [](uint8_t b) { return b != 0; });
        }
      }
      if (any_dirty) {
        Impl::Job job;
        job.targets = newest & ~bit(choice->source);
        job.full_from = UINT64_MAX;
        for (unsigned r = 0; r < v.nreplicas; ++r) {
          if ((job.targets & bit(r)) != 0) {
            v.state[r].store(static_cast<uint8_t>(ReplicaState::kStale));
          }
        }
        jobs.insert(jobs.begin(), job);
      }
    }
  }
  if (advance) {
    // Opened without a replica that may have moved on (the caller accepted
    // it): the present ones move to a new generation, so that replica, if
    // it returns newer, is refused as a split instead of being taken as
    // the source or overwritten silently.
    std::vector<uint64_t> ids;
    uint64_t g = 0;
    {
      MutexLock meta_lock(v.meta_mutex);
      g = v.new_generation();
    }
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if (choice->plans[r] == ReplicaPlan::kUpToDate) {
        ids.push_back(metas[r].replica_id);
      }
    }
    const InSyncSet set = make_in_sync_set(ids);
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if (choice->plans[r] == ReplicaPlan::kUpToDate) {
        ReplicaMeta m = metas[r];
        advance_generation(m, g, set);
        UBLKVOL_TRY(v.write_meta(r, m));
      }
    }
    spdlog::warn(
        "{}: opened without replicas in sync at generation {} (accepted): now generation {}", what,
        hex(generation), hex(g));
    generation = g;
  }
  {
    MutexLock lock(v.mutex);
    v.generation = generation;
  }
  v.event(-1, "opened: generation " + hex(generation) + ", " +
                  std::to_string(std::popcount(v.mask_of(ReplicaState::kInSync))) + " of " +
                  std::to_string(v.nreplicas) + " replicas in sync");

  // Queues: user queues + rebuild + control.
  unsigned total = options.queues + 2;
  v.rebuild_queue = options.queues;
  v.control_queue = options.queues + 1;
  for (unsigned i = 0; i < total; ++i) {
    v.queues.push_back(std::make_unique<QueueState>());
  }
  for (unsigned i = 0; i < total; ++i) {
    UBLKVOL_TRY(v.queues[i]->init(
        v, i, i < options.queues ? options.queue_depth : detail::kInternalQueueDepth));
  }
  Impl* raw = impl.get();
  const uint64_t tick_ms = std::clamp<uint64_t>(v.deadline_ns / 4 / 1000000, 1, 1000);
  v.monitor =
      v.runner().start_ticker("vol-monitor", v.monitor_fd.get(), std::chrono::milliseconds(tick_ms),
                              [raw] { raw->monitor_tick(); });
  if (options.dirty_clear_interval.count() > 0) {
    v.dirty_clear_thread = v.runner().start("vol-dirtyclear", [raw] { raw->dirty_clear_loop(); });
  }
  auto volume = std::unique_ptr<ReplicatedVolume>(new ReplicatedVolume(std::move(impl)));
  if (options.scrub_interval.count() > 0) {
    volume->start_verify_thread();
  }
  if (options.auto_rebuild) {
    for (const Impl::Job& job : jobs) {
      UBLKVOL_TRY(raw->start_job(job));
    }
  }
  return volume;
}

}  // namespace ublkvol::engine
