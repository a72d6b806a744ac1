// RemoteReplica and RemoteReplicaKeeper (remote_replica.h).
#include "ublkvol/nbd/remote_replica.h"

#include <algorithm>
#include <spdlog/spdlog.h>
#include <utility>

#include "remote_snapshots.h"

namespace ublkvol::nbd {

Status format_remote_replica(const std::string& uri, const engine::RawReplicaFormatOptions& format,
                             const NbdDeviceOptions& device) {
  UBLKVOL_ASSIGN_OR_RETURN(auto nbd, NbdDevice::open(uri, device));
  Status formatted = engine::format_raw_replica(*nbd, format);
  if (!formatted.ok()) {
    return formatted.error().with_context("formatting a remote replica");
  }
  return ok_status();
}

Result<std::unique_ptr<RemoteReplica>> RemoteReplica::open(const std::string& uri,
                                                           const RemoteReplicaOptions& options) {
  std::unique_ptr<RemoteReplica> replica(new RemoteReplica());
  replica->uri_ = uri;
  NbdDeviceOptions device = options.device;
  if (device.command_timeout_ms == 0) {
    device.command_timeout_ms = static_cast<unsigned>(options.io_deadline.count() / 2);
  }
  UBLKVOL_ASSIGN_OR_RETURN(replica->device_, NbdDevice::open(uri, device));
  auto store = engine::open_raw_replica(*replica->device_);
  if (!store.ok()) {
    return store.error().with_context("remote replica");
  }
  replica->store_ = std::move(*store);
  replica->ledger_ = options.ledger ? options.ledger : std::make_shared<SnapshotLedger>();
  auto front = std::make_unique<RemoteSnapshotStore>(*replica->store_, uri, options.control_timeout,
                                                     replica->ledger_);
  RemoteSnapshotStore& snapshots = *front;
  replica->front_ = std::move(front);
  UBLKVOL_ASSIGN_OR_RETURN(replica->thread_, engine::StoreThread::start(options.thread));
  UBLKVOL_TRY(replica->thread_->attach(*replica->front_));
  if (!replica->ledger_->owed().empty()) {
    // A (re)connect retries the snapshot deletes the peer is owed; what
    // still fails stays recorded for the next snapshot call.
    const Status settled = replica->thread_->call([&] { return snapshots.settle(); });
    if (!settled.ok()) {
      spdlog::warn("{}", settled.error().message());
    }
  }
  return replica;
}

RemoteReplica::~RemoteReplica() {
  if (thread_) {
    if (front_) {
      (void)thread_->detach(*front_);
    }
    thread_->stop();
  }
  front_.reset();
  store_.reset();
  device_.reset();
}

engine::ReplicaBinding RemoteReplica::binding() { return {front_.get(), thread_.get()}; }

Result<RemoteReplica::Stats> RemoteReplica::stats() {
  Stats stats;
  UBLKVOL_TRY(thread_->call([&]() -> Status {
    stats.uri = uri_;
    stats.connections = device_->connections();
    stats.live_connections = device_->live_connections();
    stats.requests = device_->latency().count();
    stats.failed = device_->counters().failed;
    stats.latency_p50_us = device_->latency().quantile_us(500);
    stats.latency_p99_us = device_->latency().quantile_us(990);
    stats.last_error = device_->last_error();
    stats.owed_snapshot_deletes = ledger_->owed();
    return ok_status();
  }));
  return stats;
}

Status RemoteReplica::disconnect() {
  return thread_->call([&]() -> Status {
    device_->disconnect();
    device_->abandon_draining();
    return ok_status();
  });
}

Result<RemoteReplica::Pending> RemoteReplica::pending() {
  Pending pending;
  UBLKVOL_TRY(thread_->call([&]() -> Status {
    pending.in_flight = device_->in_flight();
    pending.live_connections = device_->live_connections();
    device_->poll_draining();
    pending.draining = device_->draining();
    return ok_status();
  }));
  return pending;
}

RemoteReplicaKeeper::RemoteReplicaKeeper(engine::ReplicatedVolume& volume, unsigned index,
                                         std::unique_ptr<RemoteReplica> replica,
                                         RemoteReplicaOptions options, ReconnectBackoff backoff)
    : volume_(volume),
      index_(index),
      options_(std::move(options)),
      backoff_(backoff),
      uri_(replica->uri()),
      replica_(std::move(replica)),
      delay_(backoff.initial) {
  if (!options_.ledger) {
    options_.ledger = replica_->ledger();  // reconnects keep the owed deletes
  }
  thread_ = std::thread([this] { run(); });
}

RemoteReplicaKeeper::~RemoteReplicaKeeper() { stop(); }

void RemoteReplicaKeeper::stop() {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void RemoteReplicaKeeper::hold() {
  const std::lock_guard replacing(replace_mutex_);
  const std::lock_guard lock(mutex_);
  held_ = true;
}

void RemoteReplicaKeeper::resume() {
  {
    const std::lock_guard lock(mutex_);
    held_ = false;
    kicked_ = true;
    delay_ = backoff_.initial;
  }
  wake_.notify_all();
}

bool RemoteReplicaKeeper::held() const {
  const std::lock_guard lock(mutex_);
  return held_;
}

uint64_t RemoteReplicaKeeper::reconnects() const {
  const std::lock_guard lock(mutex_);
  return reconnects_;
}

uint64_t RemoteReplicaKeeper::attempts() const {
  const std::lock_guard lock(mutex_);
  return attempts_;
}

std::chrono::milliseconds RemoteReplicaKeeper::delay() const {
  const std::lock_guard lock(mutex_);
  return delay_;
}

std::string RemoteReplicaKeeper::last_error() const {
  const std::lock_guard lock(mutex_);
  return last_error_;
}

Result<RemoteReplica::Stats> RemoteReplicaKeeper::stats() {
  // The replica is only swapped by the keeper thread, under the mutex.
  const std::lock_guard lock(mutex_);
  return replica_->stats();
}

void RemoteReplicaKeeper::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    // A timed wait on the stop condition: the backoff delay between checks.
    wake_.wait_for(lock, delay_, [this] { return stopping_ || kicked_; });
    if (stopping_) {
      break;
    }
    kicked_ = false;
    if (held_) {
      continue;  // the operator's fail stands until resume()
    }
    lock.unlock();
    const engine::VolumeStatus status = volume_.status();
    const engine::ReplicaState state = index_ < status.replicas.size()
                                           ? status.replicas[index_].state
                                           : engine::ReplicaState::kRemoved;
    bool wanted = state == engine::ReplicaState::kFailed;
    if (state == engine::ReplicaState::kStale) {
      // Stale with live connections is one the engine will rebuild through
      // them - e.g. the replica this keeper just handed over, before its
      // resync started: cutting it would turn the resync into a full copy.
      RemoteReplica* current = nullptr;
      {
        const std::lock_guard guard(mutex_);  // `lock` is released here
        current = replica_.get();
      }
      auto pending = current->pending();
      wanted = !pending.ok() || pending->live_connections == 0;
    }
    const bool replaced = wanted && try_reconnect();
    lock.lock();
    if (!wanted || replaced) {
      delay_ = backoff_.initial;
    } else {
      delay_ = std::min(delay_ * 2, backoff_.max);
    }
  }
}

bool RemoteReplicaKeeper::try_reconnect() {
  RemoteReplica* old = nullptr;
  {
    const std::lock_guard lock(mutex_);
    ++attempts_;
    old = replica_.get();
  }
  // A stalled server still holding the old connection's commands would
  // execute them after the resync: wait until it answered them (header).
  auto pending = old->pending();
  const bool held = pending.ok() && pending->in_flight > 0 && pending->live_connections > 0;
  if (held || (pending.ok() && pending->draining > 0)) {
    const std::string what = held ? std::to_string(pending->in_flight) + " command(s)"
                                  : std::to_string(pending->draining) + " cut connection(s)";
    const auto now = std::chrono::steady_clock::now();
    const std::lock_guard lock(mutex_);
    if (stalled_since_ == std::chrono::steady_clock::time_point{}) {
      stalled_since_ = now;
    }
    if (now - stalled_since_ < backoff_.stalled_wait) {
      last_error_ = uri_ + ": waiting for the server to answer (or close) " + what +
                    " of the dropped connection before reconnecting";
      return false;
    }
    last_error_ = uri_ + ": the server did not answer (or close) " + what +
                  " of the dropped connection within " +
                  std::to_string(backoff_.stalled_wait.count()) + " ms; connection abandoned";
  }
  {
    const std::lock_guard lock(mutex_);
    stalled_since_ = {};
  }
  // Nothing of the old connection may still arrive (or we gave up on it):
  // close it so its store's requests end and the engine can let go of it.
  (void)old->disconnect();
  auto fresh = RemoteReplica::open(uri_, options_);
  if (!fresh.ok()) {
    const std::lock_guard lock(mutex_);
    last_error_ = fresh.error().to_string();
    return false;
  }
  Status replaced = ok_status();
  {
    const std::lock_guard replacing(replace_mutex_);
    {
      const std::lock_guard lock(mutex_);
      if (held_) {  // failed by the operator while we connected
        last_error_ = "failed by the operator; not reconnected";
        return false;
      }
    }
    replaced = volume_.replace_replica(index_, (*fresh)->binding());
  }
  if (!replaced.ok()) {
    const std::lock_guard lock(mutex_);
    last_error_ = "replica " + std::to_string(index_) + " (" + uri_ +
                  "): replace: " + replaced.error().to_string();
    return false;
  }
  auto old_stats = old->stats();
  std::unique_ptr<RemoteReplica> retired;
  {
    const std::lock_guard lock(mutex_);
    last_error_ = "reconnected; the previous connection ended with: " +
                  (old_stats.ok() ? old_stats->last_error : old_stats.error().to_string());
    retired = std::exchange(replica_, std::move(*fresh));
    ++reconnects_;
  }
  retired.reset();  // the engine no longer touches it (replace_replica)
  return true;
}

}  // namespace ublkvol::nbd
