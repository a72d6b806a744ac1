// ReplicatedVolume: the public methods (replicated_volume.h, docs/engine.md).
// The work is done elsewhere; impl.h lists which file holds which concept.
#include "ublkvol/engine/replicated_volume.h"

#include "ublkvol/reactor/reactor.h"

#include "impl.h"

namespace ublkvol::engine {

const char* to_string(ReplicaState state) {
  switch (state) {
    case ReplicaState::kInSync:
      return "in-sync";
    case ReplicaState::kRebuilding:
      return "rebuilding";
    case ReplicaState::kFailed:
      return "failed";
    case ReplicaState::kStale:
      return "stale";
    case ReplicaState::kRemoved:
      return "removed";
  }
  return "unknown";
}

namespace {
class ReplicatedQueue final : public VolumeQueue {
 public:
  explicit ReplicatedQueue(QueueState& q) : q_(q) {}
  ~ReplicatedQueue() override {
    if (q_.in_flight + q_.lingering != 0) {
      spdlog::error("volume {}: queue {} closed with {} I/Os in flight", q_.vol->options.name,
                    q_.index, q_.in_flight);
    }
    // Nobody reaps a closed queue: give back what a dead store thread holds
    // now, or a later membership fence would wait on it forever.
    q_.reclaim_zombies();
    // Requests abandoned with the queue never run their callbacks: a queue
    // opened again starts with none on zero-copy buffers (direct_io.cpp).
    q_.direct_in_flight.store(0, std::memory_order_release);
    q_.opened.store(false, std::memory_order_release);
  }
  void submit(VolumeIo& io) override { q_.submit(io); }
  void kick() override { q_.kick(); }
  unsigned reap() override { return q_.reap(); }
  [[nodiscard]] int wake_fd() const override { return q_.wake.get(); }
  // Includes completed writes that still hold their ordering entry until a
  // rebuilding replica answers: the queue must keep reaping until 0.
  [[nodiscard]] unsigned in_flight() const override { return q_.in_flight + q_.lingering; }
  [[nodiscard]] bool all_targets_local() override { return q_.all_targets_local(); }

 private:
  QueueState& q_;
};
}  // namespace

// ---------------------------------------------------------------------------
// ReplicatedVolume
// ---------------------------------------------------------------------------
ReplicatedVolume::ReplicatedVolume(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ReplicatedVolume::~ReplicatedVolume() {
  Impl& v = *impl_;
  cancel_verify();
  v.stop_verify_thread();
  v.stop_dirty_clear();
  v.stop_rebuild_worker();
  v.stopping.store(true);
  if (v.monitor) {
    v.monitor->join();  // stops the ticker
  }
  for (auto& q : v.queues) {
    q->shutdown();
  }
}

const VolumeInfo& ReplicatedVolume::info() const { return impl_->info; }

Result<std::unique_ptr<VolumeQueue>> ReplicatedVolume::open_queue(unsigned index) {
  Impl& v = *impl_;
  if (index >= v.options.queues) {
    return Error(EINVAL, "volume " + v.options.name + ": no queue " + std::to_string(index) +
                             " (the volume has " + std::to_string(v.options.queues) + ")");
  }
  QueueState& q = *v.queues[index];
  if (q.opened.exchange(true)) {
    return Error(EBUSY, "volume " + v.options.name + ": queue " + std::to_string(index) +
                            " is already open");
  }
  reactor::Reactor* here = reactor::Reactor::current();
  if (q.home != here) {
    // Opened before elsewhere: its local channels go back to their
    // executors, then (on a reactor) the ones of this reactor turn local.
    Status st = q.leave_home();
    if (st.ok() && here != nullptr) {
      st = q.make_home(*here);
    }
    if (!st.ok()) {
      q.opened.store(false);
      return st.error().with_context("volume " + v.options.name + ": queue " +
                                     std::to_string(index));
    }
  }
  return std::unique_ptr<VolumeQueue>(new ReplicatedQueue(q));
}

VolumeStatus ReplicatedVolume::status() const {
  const Impl& v = *impl_;
  VolumeStatus st;
  st.name = v.options.name;
  st.size_bytes = v.info.size_bytes;
  st.min_replicas = v.options.min_replicas;
  MutexLock lock(v.mutex);
  st.generation = v.generation;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    ReplicaStatus rs;
    rs.name = v.names[r];
    rs.state = v.replica_state(r);
    rs.generation = rs.state == ReplicaState::kInSync ? v.generation : 0;
    rs.last_error = v.last_error[r];
    if (rs.state == ReplicaState::kInSync) {
      ++st.in_sync;
    }
    st.replicas.push_back(std::move(rs));
  }
  st.online = st.in_sync >= st.min_replicas;
  st.events = v.events;
  st.rebuild = v.progress;
  st.verify = v.verify_status;
  MutexLock checkpoint_lock(v.checkpoint_mutex);
  st.checkpoints = v.checkpoints;
  st.last_checkpoint_pause_us = v.last_checkpoint_pause_us;
  return st;
}

Status ReplicatedVolume::start_rebuild(unsigned replica) {
  MutexLock membership_lock(impl_->membership_mutex);
  return impl_->start_rebuild_locked(replica);
}

Status ReplicatedVolume::wait_rebuild() {
  Impl& v = *impl_;
  UniqueLock lock(v.rebuild_mutex);
  v.rebuild_cv.wait(lock.native(), [&]() REQUIRES(v.rebuild_mutex) { return !v.rebuild_running; });
  return v.rebuild_result;
}

bool ReplicatedVolume::wait_rebuild_progress(uint64_t done_bytes) {
  Impl& v = *impl_;
  UniqueLock lock(v.rebuild_mutex);
  for (;;) {
    {
      MutexLock plock(v.mutex);
      if (v.progress.active && v.progress.done_bytes >= done_bytes) {
        return true;
      }
    }
    if (!v.rebuild_running) {
      return false;
    }
    v.rebuild_cv.wait(lock.native());
  }
}

void ReplicatedVolume::set_rebuild_rate(uint64_t bytes_per_second) {
  impl_->rebuild_rate.store(bytes_per_second);
}

Status ReplicatedVolume::checkpoint() {
  Impl& v = *impl_;
  MutexLock control_lock(v.control_mutex);
  return v.checkpoint_locked();
}

bool ReplicatedVolume::wait_checkpoints(uint64_t count, std::chrono::milliseconds timeout) {
  Impl& v = *impl_;
  UniqueLock lock(v.checkpoint_mutex);
  return v.checkpoint_cv.wait_for(lock.native(), timeout, [&]() REQUIRES(v.checkpoint_mutex) {
    return v.checkpoints >= count;
  });
}

Status ReplicatedVolume::close() {
  Impl& v = *impl_;
  cancel_verify();
  v.stop_verify_thread();
  {
    // A verify running on another thread stops at its next chunk.
    MutexLock run_lock(v.verify_run_mutex);
    v.closed = true;
  }
  v.stop_dirty_clear();
  v.stop_rebuild_worker();
  Status st = ok_status();
  if (v.mask_of(ReplicaState::kInSync) == v.present_mask()) {
    st = checkpoint();
  }
  v.closed = true;
  v.event(-1, "closed");
  return st;
}

}  // namespace ublkvol::engine
