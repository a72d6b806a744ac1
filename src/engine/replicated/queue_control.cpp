// QueueState's set-up and teardown, replica binding (membership changes, with
// the replica fenced) and the internal operations that control threads run
// on the rebuild and control queues (barriers, copies, verify reads, flush).
#include "impl.h"

namespace ublkvol::engine::detail {

// ---------------------------------------------------------------------------
// QueueState implementation
// ---------------------------------------------------------------------------

Status QueueState::init(ReplicatedVolume::Impl& volume, unsigned queue_index, unsigned depth) {
  vol = &volume;
  index = queue_index;
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    return errno_error("volume " + volume.options.name + ": eventfd");
  }
  wake.reset(fd);
  nslots = depth;
  UBLKVOL_TRY(slots.init(depth));
  // The rebuild and control queues (a few slots) need far fewer buckets than
  // a user queue: 8192 counters each cost 32 KiB per volume and queue.
  UBLKVOL_TRY(order.init(depth <= kInternalQueueDepth ? kInternalBuckets : kBuckets, slots));
  // One channel per distinct store thread.
  for (unsigned r = 0; r < volume.nreplicas; ++r) {
    UBLKVOL_TRY(bind_replica(r));
  }
  return ok_status();
}

// Publishes replica r's binding to this queue: reuses the channel to its
// store thread if there is one, else adds one. Before r's state puts it in
// any mask (so the queue thread only sends to r after this).
Status QueueState::bind_replica(unsigned r) {
  StoreExecutor* t = vol->replicas[r].thread;
  StoreChannel* ch = nullptr;
  int free_entry = -1;
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && c->thread == t) {
      ch = c;
    } else if (c == nullptr && free_entry < 0) {
      free_entry = static_cast<int>(i);
    }
  }
  if (ch != nullptr) {
    // The store thread reads stores[r] only for requests of replica r, which
    // are pushed after this (ring release/acquire orders it).
    ch->stores[r] = vol->replicas[r].store;
    if (ch->local) {
      local_mask.fetch_or(bit(r), std::memory_order_relaxed);
    }
    mark_fixed_buffer_io(r);
    channel_of[r].store(ch, std::memory_order_release);
    return ok_status();
  }
  if (free_entry < 0) {
    return Error(ENOSPC, "volume " + vol->options.name + ": no free channel on queue " +
                             std::to_string(index));
  }
  // Each replica has at most one sub-request per slot in flight.
  owned.push_back(std::make_unique<StoreChannel>(size_t{nslots} * kMaxReplicas));
  ch = owned.back().get();
  ch->thread = t;
  ch->queue_wake_fd = wake.get();
  ch->stores[r] = vol->replicas[r].store;
  ch->local = home != nullptr && t->home_reactor() == home;
  if (!ch->local) {
    UBLKVOL_TRY(t->add_channel(*ch));
  }
  if (ch->local) {
    local_mask.fetch_or(bit(r), std::memory_order_relaxed);
  }
  mark_fixed_buffer_io(r);
  channel_of[r].store(ch, std::memory_order_release);
  channels[static_cast<unsigned>(free_entry)].store(ch, std::memory_order_release);
  return ok_status();
}

// Forgets replica r's binding (fenced: no sub-request of r is at its store
// and the queue thread will not send to r). A channel no other replica of
// the volume uses is unpublished and taken off its thread (if that thread
// still runs); the object stays in `owned`.
Status QueueState::unbind_replica(unsigned r) {
  StoreChannel* ch = channel_of[r].load(std::memory_order_acquire);
  channel_of[r].store(nullptr, std::memory_order_release);
  local_mask.fetch_and(~bit(r), std::memory_order_relaxed);
  fixed_mask.fetch_and(~bit(r), std::memory_order_relaxed);
  if (ch == nullptr) {
    return ok_status();
  }
  ch->stores[r] = nullptr;
  for (unsigned o = 0; o < kMaxReplicas; ++o) {
    if (channel_of[o].load(std::memory_order_acquire) == ch) {
      return ok_status();  // still used by another replica on that thread
    }
  }
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    if (channel(i) == ch) {
      channels[i].store(nullptr, std::memory_order_release);
    }
  }
  if (!ch->local && !ch->thread->exited()) {
    return ch->thread->remove_channel(*ch);
  }
  return ok_status();
}

Status QueueState::leave_home() {
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c == nullptr || !c->local) {
      continue;
    }
    c->local = false;
    if (!c->thread->exited()) {
      UBLKVOL_TRY(c->thread->add_channel(*c));
    }
  }
  local_mask.store(0, std::memory_order_relaxed);
  direct_epoch = 0;  // the zero-copy answer depends on local_mask
  home = nullptr;
  return ok_status();
}

Status QueueState::make_home(reactor::Reactor& reactor) {
  home = &reactor;
  direct_epoch = 0;
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c == nullptr || c->local || c->thread->home_reactor() != &reactor) {
      continue;
    }
    // On this reactor's thread: the executor is not polling the channel
    // while we take it off (the call runs inline), and the queue has sent
    // nothing through it yet (it was not open).
    UBLKVOL_TRY(c->thread->remove_channel(*c));
    c->local = true;
    for (unsigned r = 0; r < vol->nreplicas; ++r) {
      if (channel_of[r].load(std::memory_order_acquire) == c) {
        local_mask.fetch_or(bit(r), std::memory_order_relaxed);
      }
    }
  }
  return ok_status();
}

void QueueState::shutdown() {
  // Wait for sub-requests still at live store threads (their completions
  // would land in memory we are about to free).
  for (;;) {
    bool waiting = false;
    for (unsigned i = 0; i < slots.live(); ++i) {
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((slots[i].pending & bit(r)) != 0 && !vol->thread_exited(r)) {
          waiting = true;
        }
      }
    }
    if (!waiting) {
      break;
    }
    for (unsigned i = 0; i < kMaxReplicas; ++i) {
      if (StoreChannel* c = channel(i)) {
        while (ReplicaIo* sub = c->completions.pop()) {
          handle(*sub);
        }
      }
    }
    vol->runner().wait(wake.get(), std::chrono::milliseconds(100));
    drain_fd(wake.get());
  }
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && !c->local && !c->thread->exited()) {
      (void)c->thread->remove_channel(*c);
    }
  }
}

int QueueState::submit_op(InternalOp& op) {
  Slot* s = alloc_slot();
  if (s == nullptr) {
    return -EBUSY;
  }
  op.done = false;
  op.result = 0;
  op.read_mask = 0;
  s->kind = op.kind;
  s->op = &op;
  uint64_t b = op.offset;
  uint64_t e = op.offset + op.length;
  if (op.kind == SlotKind::kBarrier) {
    b = 0;
    e = vol->info.size_bytes;
  }
  publish(*s, b, e);
  if (conflicts(*s)) {
    block(*s);
  } else {
    resume(*s);
  }
  kick();
  return 0;
}

void QueueState::release_barrier(InternalOp& op) {
  Slot& s = *op.slot;
  release_order(s);
  apply(s, s.life.complete(), "complete");
  maybe_free(s);
  op.slot = nullptr;
}

void QueueState::run_until_done(InternalOp& op) {
  while (!op.done) {
    reap();
    if (op.done) {
      break;
    }
    vol->runner().wait(wake.get(), std::chrono::milliseconds(50));
    drain_fd(wake.get());
  }
}

void QueueState::run_until_idle() {
  while (in_flight > 0) {
    reap();
    if (in_flight == 0) {
      break;
    }
    vol->runner().wait(wake.get(), std::chrono::milliseconds(50));
    drain_fd(wake.get());
  }
}

// FLUSH through a control queue, run to completion on the calling thread;
// the request's result (0 or -errno).
int flush_and_wait(QueueState& q) {
  VolumeIo flush;
  flush.op = VolumeOp::kFlush;
  int flush_result = 1;
  flush.user_data = &flush_result;
  flush.on_complete = [](VolumeIo& io, int result) { *static_cast<int*>(io.user_data) = result; };
  q.submit(flush);
  q.kick();
  q.run_until_idle();
  return flush_result;
}

}  // namespace ublkvol::engine::detail
