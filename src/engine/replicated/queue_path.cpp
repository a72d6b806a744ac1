// The per-queue data path (docs/engine.md "Data path"): a user request from
// submit() through the fan-out to the store threads' channels, and back via
// reap() -> handle() -> advance() to completion; read repair, the ordering
// wait, deadlines and replica loss as seen by one queue. Runs on the queue's
// own thread only (queue_path.h). (~810 lines: one request's whole path on
// one queue, kept together because its ordering and slot invariants span it.)
#include "impl.h"

namespace ublkvol::engine::detail {

// The completion of a co-located sub-request (send()): on the queue's own
// thread, from the store's poll; reap() handles it.
static void local_complete(ReplicaIo& io, int result) {
  io.result = result;
  auto* channel = static_cast<StoreChannel*>(io.user_data);
  bool was_empty = false;
  bool ok = channel->completions.push(&io, was_empty);
  // Rings hold every request a queue can have in flight.
  (void)ok;
}

Slot* QueueState::alloc_slot() {
  Slot* s = free_list;
  if (s == nullptr) {
    Slot* fresh = slots.fresh();  // never used before: default-constructed
    if (fresh != nullptr) {
      apply(*fresh, fresh->life.allocate(), "allocate");
    }
    return fresh;
  }
  free_list = s->next;
  s->next = nullptr;
  apply(*s, s->life.allocate(), "allocate");
  s->io = nullptr;
  s->op = nullptr;
  s->sent = s->dispatched = s->acked = s->errors = s->tried = s->bad = 0;
  return s;
}

void QueueState::block(Slot& s) {
  apply(s, s.life.block(), "block");
  s.next = blocked;
  blocked = &s;
}

void QueueState::complete_io(VolumeIo& io, int result) {
  IoScratch& sc = scratch(io);
  sc.next = nullptr;
  sc.result = result;
  if (done_tail == nullptr) {
    done_head = &io;
  } else {
    scratch(*done_tail).next = &io;
  }
  done_tail = &io;
  if (!in_reap && !self_signalled) {
    // Completed outside reap() (e.g. a request rejected in submit): make the
    // queue thread call reap().
    self_signalled = true;
    signal_fd(wake.get());
  }
}

void QueueState::refresh_masks() {
  uint64_t epoch = vol->state_epoch.load(std::memory_order_seq_cst);
  if (epoch == seen_epoch) {
    return;
  }
  seen_epoch = epoch;
  in_sync_mask = vol->mask_of(ReplicaState::kInSync);
  write_mask = in_sync_mask | vol->mask_of(ReplicaState::kRebuilding);
}

void QueueState::submit(VolumeIo& io) {
  ++in_flight;
  submitted.store(submitted.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  // Its buffer may be a zero-copy window address: install() waits for it
  // (direct_io.cpp). Counted until its callback runs, a bound on when the
  // request last sends to a replica.
  scratch(io).direct = answered_direct;
  if (answered_direct) {
    answered_direct = false;
    direct_in_flight.store(direct_in_flight.load(std::memory_order_relaxed) + 1,
                           std::memory_order_release);
  }
  const VolumeInfo& info = vol->info;
  int err = 0;
  if (io.op != VolumeOp::kFlush) {
    if (io.length == 0 || io.offset % info.block_size != 0 || io.length % info.block_size != 0 ||
        io.offset > info.size_bytes || io.length > info.size_bytes - io.offset ||
        io.length > info.max_io_bytes ||
        ((io.op == VolumeOp::kRead || io.op == VolumeOp::kWrite) &&
         (io.buffer == nullptr || reinterpret_cast<uintptr_t>(io.buffer) % 4096 != 0))) {
      err = -EINVAL;
    }
  }
  if (err != 0) {
    complete_io(io, err);
    return;
  }
  Slot* s = alloc_slot();
  if (s == nullptr) {
    scratch(io).next = nullptr;
    if (wait_tail == nullptr) {
      wait_head = &io;
    } else {
      scratch(*wait_tail).next = &io;
    }
    wait_tail = &io;
    return;
  }
  start_user(*s, io);
}

void QueueState::start_user(Slot& s, VolumeIo& io) {
  s.kind = SlotKind::kUser;
  s.io = &io;
  s.vop = io.op;
  if (is_mutating(io.op)) {
    publish(s, io.offset, io.offset + io.length);
    if (conflicts(s)) {
      block(s);
      return;
    }
  }
  dispatch_user(s);
}

void QueueState::dispatch_user(Slot& s) {
  refresh_masks();
  VolumeIo& io = *s.io;
  apply(s, s.life.dispatch(), "dispatch");
  if (static_cast<unsigned>(std::popcount(in_sync_mask)) < vol->options.min_replicas) {
    release_order(s);
    finish_io(s, -EIO);
    return;
  }
  if (io.op == VolumeOp::kRead) {
    s.tried = 0;
    retry_read(s);
    return;
  }
  s.dispatched = write_mask;
  send_all(s, write_mask, replica_op(io.op), io.offset, io.length, io.buffer, io.fua);
}

int QueueState::pick_read(uint32_t candidates) const {
  // A replica on the queue's own reactor first: a function call, not a
  // wake-up of another thread.
  const uint32_t local = candidates & local_mask.load(std::memory_order_relaxed);
  if (local != 0) {
    candidates = local;
  }
  int best = -1;
  for (unsigned r = 0; r < vol->nreplicas; ++r) {
    if ((candidates & bit(r)) != 0 &&
        (best < 0 ||
         outstanding[r].load(std::memory_order_relaxed) <
             outstanding[static_cast<unsigned>(best)].load(std::memory_order_relaxed))) {
      best = static_cast<int>(r);
    }
  }
  return best;
}

void QueueState::retry_read(Slot& s) {
  refresh_masks();
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending);
  if (r < 0) {
    finish_io(s, -EIO);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.io->offset, s.io->length, s.io->buffer,
       false);
}

void QueueState::send(Slot& s, unsigned r, ReplicaOp op, uint64_t offset, uint64_t length,
                      std::byte* buffer, bool fua) {
  ReplicaIo& sub = s.sub[r];
  sub.op = op;
  sub.fua = fua;
  sub.replica = static_cast<uint8_t>(r);
  sub.queue = static_cast<uint8_t>(index);
  sub.offset = offset;
  sub.length = static_cast<uint32_t>(length);
  sub.buffer = buffer;
  sub.untracked =
      s.kind == SlotKind::kCopy && (op == ReplicaOp::kWrite || op == ReplicaOp::kWriteZeroes);
  sub.result = 0;
  sub.engine_tag = &s;
  s.pending |= bit(r);
  s.sent |= bit(r);
  inc_outstanding(r);
  StoreChannel* ch = channel_of[r].load(std::memory_order_relaxed);
  if (ch->local) {
    // Co-located: the store lives on this thread. Its completion comes back
    // through the channel's completion ring, pushed by the executor's poll
    // on this same thread (reap() takes it from there: no re-entry into the
    // slot's state machine from inside send()).
    sub.on_complete = &local_complete;
    sub.user_data = ch;
    ch->stores[r]->submit(sub);
  } else {
    bool was_empty = false;
    bool ok = ch->requests.push(&sub, was_empty);
    // Rings hold nslots * kMaxReplicas entries: never full.
    (void)ok;
    ch->pushed = true;
  }
  fifo_touch(s);
}

void QueueState::send_all(Slot& s, uint32_t targets, ReplicaOp op, uint64_t offset, uint64_t length,
                          std::byte* buffer, bool fua) {
  for (unsigned r = 0; r < vol->nreplicas; ++r) {
    if ((targets & bit(r)) != 0) {
      send(s, r, op, offset, length, buffer, fua);
    }
  }
}

// NOLINTNEXTLINE(readability-make-member-function-const): clears the flags of channels it owns
void QueueState::kick() {
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && c->pushed) {
      c->pushed = false;
      c->thread->ring_doorbell();
    }
  }
}

void QueueState::fifo_touch(Slot& s) {
  if (s.life.in_fifo()) {
    if (fifo_tail == &s) {
      s.issue_ns = vol->options.clock.now_ns();
      return;
    }
    fifo_remove(s);
  }
  s.issue_ns = vol->options.clock.now_ns();
  apply(s, s.life.enter_fifo(), "enter_fifo");
  s.fifo_next = nullptr;
  s.fifo_prev = fifo_tail;
  if (fifo_tail == nullptr) {
    fifo_head = &s;
  } else {
    fifo_tail->fifo_next = &s;
  }
  fifo_tail = &s;
}

void QueueState::fifo_remove(Slot& s) {
  if (!s.life.in_fifo()) {
    return;
  }
  if (s.fifo_prev != nullptr) {
    s.fifo_prev->fifo_next = s.fifo_next;
  } else {
    fifo_head = s.fifo_next;
  }
  if (s.fifo_next != nullptr) {
    s.fifo_next->fifo_prev = s.fifo_prev;
  } else {
    fifo_tail = s.fifo_prev;
  }
  s.fifo_prev = s.fifo_next = nullptr;
  apply(s, s.life.leave_fifo(), "leave_fifo");
}

void QueueState::handle(ReplicaIo& sub) {
  auto& s = *static_cast<Slot*>(sub.engine_tag);
  unsigned r = sub.replica;
  s.pending &= ~bit(r);
  dec_outstanding(r);
  if ((s.sent & bit(r)) == 0) {
    // A sub-request the slot stopped waiting for (its replica was dropped).
    maybe_free(s);
    return;
  }
  s.sent &= ~bit(r);
  int result = sub.result;
  if (result < 0) {
    s.errors |= bit(r);
    if (s.life.phase() == Phase::kData && s.vop == VolumeOp::kRead) {
      // Read errors are repaired, not a reason to drop the replica.
      s.bad |= bit(r);
    } else if (s.life.phase() == Phase::kRepairRead || s.life.phase() == Phase::kCopyRead ||
               s.life.phase() == Phase::kVerifyRead) {
      // Same for the other reads: retried elsewhere / reported.
    } else if (!vol->report_failure(r, FailKind::kIoError, result)) {
      spdlog::error("volume {}: {} on the last in-sync replica {} failed: {} (kept in service)",
                    vol->options.name, to_string(sub.op), r,
                    std::error_code(-result, std::generic_category()).message());
    }
  } else if (sub.op == ReplicaOp::kRead && (refresh_masks(), (in_sync_mask & bit(r)) == 0)) {
    // Its replica left the in-sync set while the read was there (the read
    // waited for the answer, on_state_change()): the data may be stale, or
    // even hold bytes a late write of that dropped replica took from a
    // buffer its caller had reused (engine_sim_test, seed 307). Read again
    // from an in-sync replica.
    s.errors |= bit(r);
  } else {
    s.acked |= bit(r);
  }
  advance(s);
}

// Phases in which the slot's sub-requests read into a buffer.
static bool reads_into_buffer(const Slot& s) {
  return (s.life.phase() == Phase::kData && s.vop == VolumeOp::kRead) ||
         s.life.phase() == Phase::kRepairRead || s.life.phase() == Phase::kCopyRead ||
         s.life.phase() == Phase::kVerifyRead;
}

// Drops the expectation of answers from `lost` replicas (dropped, dead or
// overdue) and moves the request on.
void QueueState::lose(Slot& s, uint32_t lost) {
  lost &= s.sent;
  if (lost == 0) {
    return;
  }
  s.sent &= ~lost;
  s.errors |= lost;
  advance(s);
}

void QueueState::advance(Slot& s) {
  if (s.sent != 0 && s.life.phase() != Phase::kData) {
    return;
  }
  switch (s.life.phase()) {
    case Phase::kData:
      if (s.vop == VolumeOp::kRead) {
        if (s.sent != 0) {
          return;
        }
        if (s.acked != 0) {
          if (s.bad != 0) {
            start_repair(s);
          } else {
            finish_io(s, 0);
          }
        } else {
          retry_read(s);
        }
      } else {
        check_done_write(s);
      }
      return;
    case Phase::kRepairRead: {
      if (s.acked == 0) {
        repair_read(s);
        return;
      }
      refresh_masks();
      uint32_t targets = s.bad & write_mask & ~s.pending;
      if (targets == 0) {
        release_order(s);
        finish_io(s, 0);
        return;
      }
      apply(s, s.life.repair_write(), "repair_write");
      s.acked = s.errors = 0;
      send_all(s, targets, ReplicaOp::kWrite, s.io->offset, s.io->length, s.io->buffer, false);
      return;
    }
    case Phase::kRepairWrite:
      if (s.acked != 0) {
        spdlog::info("volume {}: repaired read error at offset {} length {}", vol->options.name,
                     s.io->offset, s.io->length);
      }
      release_order(s);
      finish_io(s, 0);
      return;
    case Phase::kCopyRead: {
      if (s.acked == 0) {
        copy_read(s);
        return;
      }
      refresh_masks();
      uint32_t targets = s.op->dst_mask & write_mask & ~s.pending;
      if (targets != s.op->dst_mask) {
        release_order(s);
        finish_op(s, -EIO);
        return;
      }
      apply(s, s.life.copy_write(), "copy_write");
      s.acked = s.errors = 0;
      // Thin: zeros (unmapped on the source) go out as write-zeroes, which
      // allocate nothing on a thin target. (Internal queue: not the data path.)
      ReplicaOp wop = detail::all_zero(s.op->buffer, s.op->length) ? ReplicaOp::kWriteZeroes
                                                                   : ReplicaOp::kWrite;
      send_all(s, targets, wop, s.op->offset, s.op->length, s.op->buffer, false);
      return;
    }
    case Phase::kCopyWrite:
      release_order(s);
      finish_op(s, s.errors != 0 ? -EIO : 0);
      return;
    case Phase::kVerifyRead:
      release_order(s);
      s.op->read_mask = s.acked;
      finish_op(s, 0);
      return;
    case Phase::kFree:
    case Phase::kOrderWait:
    case Phase::kGranted:
      return;
  }
}

void QueueState::check_done_write(Slot& s) {
  refresh_masks();
  // Every live replica the write went to - rebuilding ones included - must
  // answer before the caller gets its buffer back: replicas write straight
  // from it (zero copy), so completing earlier would let the caller reuse
  // the buffer under a rebuilding replica's write.
  uint32_t need = s.dispatched & write_mask;
  if ((need & s.sent) != 0) {
    return;
  }
  if ((s.sent & write_mask) == 0) {
    // Every live replica has applied it: later overlapping writes may go.
    release_order(s);
  }
  if (!s.life.completed() && s.life.list() != SlotList::kHeld) {
    // A replica that failed it yet stays in the write set (the last in-sync
    // one: kept in service) while others applied it: they now differ from
    // it, possibly where a rebuild already copied, or both are in sync by
    // now (a rebuild finished meanwhile). Take the ones that applied it out
    // (they resync from the bitmaps later); the write fails. Before, it
    // could complete with success and leave two in-sync replicas differing
    // (engine_sim_test, seeds 483, 1086).
    const uint32_t missed = s.errors & s.dispatched & write_mask;
    const uint32_t applied = s.acked & write_mask;
    if (is_mutating(s.vop) && missed != 0 && applied != 0) {
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((applied & bit(r)) != 0) {
          vol->report_failure(r, FailKind::kIoError, -EIO);
        }
      }
      refresh_masks();
    }
    bool ok = (s.acked & in_sync_mask) != 0 &&
              static_cast<unsigned>(std::popcount(in_sync_mask)) >= vol->options.min_replicas;
    if (ok && vol->gen_hold.load(std::memory_order_seq_cst) != 0) {
      apply(s, s.life.hold(), "hold");
      s.next = held;
      held = &s;
      return;
    }
    finish_io(s, ok ? 0 : -EIO);
    return;
  }
  maybe_free(s);
}

void QueueState::start_repair(Slot& s) {
  // Re-read a good copy and rewrite the bad replica(s) while holding the
  // range like a write, so no concurrent write can slip in between.
  spdlog::warn("volume {}: read error at offset {} length {} on replica mask {:#x}; repairing",
               vol->options.name, s.io->offset, s.io->length, s.bad);
  s.tried = s.bad;
  publish(s, s.io->offset, s.io->offset + s.io->length);
  if (conflicts(s)) {
    block(s);
    return;
  }
  repair_read(s);
}

void QueueState::repair_read(Slot& s) {
  refresh_masks();
  apply(s, s.life.repair_read(), "repair_read");
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending);
  if (r < 0) {
    // No other good copy now: the data read earlier stands.
    release_order(s);
    finish_io(s, 0);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.io->offset, s.io->length, s.io->buffer,
       false);
}

void QueueState::copy_read(Slot& s) {
  refresh_masks();
  apply(s, s.life.copy_read(), "copy_read");
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending & ~s.op->dst_mask);
  if (r < 0) {
    release_order(s);
    finish_op(s, -EIO);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.op->offset, s.op->length, s.op->buffer,
       false);
}

void QueueState::resume(Slot& s) {
  switch (s.kind) {
    case SlotKind::kUser:
      if (s.vop == VolumeOp::kRead) {
        repair_read(s);
      } else {
        dispatch_user(s);
      }
      return;
    case SlotKind::kCopy:
      s.tried = 0;
      copy_read(s);
      return;
    case SlotKind::kVerify: {
      refresh_masks();
      apply(s, s.life.verify_read(), "verify_read");
      s.acked = 0;
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((in_sync_mask & bit(r)) != 0 && (s.pending & bit(r)) == 0) {
          send(s, r, ReplicaOp::kRead, s.op->offset, s.op->length, s.op->buffers[r], false);
        }
      }
      if (s.sent == 0) {
        advance(s);
      }
      return;
    }
    case SlotKind::kBarrier:
      apply(s, s.life.grant(), "grant");
      s.op->slot = &s;
      s.op->done = true;
      return;
  }
}

void QueueState::finish_io(Slot& s, int result) {
  apply(s, s.life.complete(), "complete");
  if (s.life.lingering()) {
    // Still ordering later writes until a rebuilding replica applied it.
    ++lingering;
  }
  complete_io(*s.io, result);
  maybe_free(s);
}

void QueueState::finish_op(Slot& s, int result) {
  apply(s, s.life.complete(), "complete");
  s.op->result = result;
  s.op->done = true;
  maybe_free(s);
}

void QueueState::maybe_free(Slot& s) {
  if (!s.life.completed() || s.life.list() == SlotList::kHeld) {
    return;
  }
  if (s.sent == 0) {
    fifo_remove(s);
  }
  if (s.life.ordered()) {
    return;
  }
  if (s.pending != 0) {
    if (s.life.list() != SlotList::kZombie && s.sent == 0) {
      apply(s, s.life.bury(), "bury");
      s.next = zombies;
      zombies = &s;
    }
    return;
  }
  if (s.life.list() == SlotList::kZombie) {
    // Unlink from the zombie list.
    Slot** p = &zombies;
    while (*p != nullptr && *p != &s) {
      p = &(*p)->next;
    }
    if (*p != nullptr) {
      *p = s.next;
    }
    apply(s, s.life.unbury(), "unbury");
  }
  fifo_remove(s);
  apply(s, s.life.release(), "release");
  s.next = free_list;
  free_list = &s;
  if (wait_head != nullptr) {
    VolumeIo* io = wait_head;
    wait_head = scratch(*io).next;
    if (wait_head == nullptr) {
      wait_tail = nullptr;
    }
    start_user(*alloc_slot(), *io);
  }
}

// ---- ordering (the table and its correctness argument: write_order.h) ----

void QueueState::publish(Slot& s, uint64_t b, uint64_t e) {
  apply(s, s.life.publish(), "publish");
  order.publish(s, b, e, vol->next_seq);
}

bool QueueState::conflicts(Slot& s) {
  for (auto& q : vol->queues) {
    if (q->order.blocks(s, q.get() == this, index)) {
      return true;
    }
  }
  return false;
}

void QueueState::release_order(Slot& s) {
  if (!s.life.ordered()) {
    return;
  }
  if (s.life.lingering()) {
    --lingering;
  }
  apply(s, s.life.withdraw(), "withdraw");
  uint64_t waiters = order.withdraw(s);
  recheck_blocked = true;
  while (waiters != 0) {
    unsigned q = static_cast<unsigned>(std::countr_zero(waiters));
    waiters &= waiters - 1;
    if (q != index && q < vol->queues.size()) {
      signal_fd(vol->queues[q]->wake.get());
    }
  }
}

void QueueState::recheck() {
  recheck_blocked = false;
  // Oldest first (the list is LIFO): collect, then retry in sequence order.
  Slot* list = blocked;
  blocked = nullptr;
  std::array<Slot*, 64> batch{};
  while (list != nullptr) {
    unsigned n = 0;
    while (list != nullptr && n < batch.size()) {
      batch[n++] = list;
      list = list->next;
      apply(*batch[n - 1], batch[n - 1]->life.unblock(), "unblock");
    }
    std::sort(batch.begin(), batch.begin() + n,
              [](const Slot* a, const Slot* b) { return a->my_seq < b->my_seq; });
    for (unsigned i = 0; i < n; ++i) {
      Slot& s = *batch[i];
      if (conflicts(s)) {
        block(s);
      } else {
        resume(s);
      }
    }
  }
}

void QueueState::on_state_change() {
  refresh_masks();
  // Stop waiting for replicas that left the write set.
  for (Slot* s = fifo_head; s != nullptr;) {
    Slot* next = s->fifo_next;
    uint32_t lost = s->sent & ~write_mask;
    if (lost != 0 && reads_into_buffer(*s)) {
      // A read's sub-request at a dropped replica whose store thread still
      // runs will still be issued and land in the buffer: retrying the read
      // elsewhere now would have two replicas write it, the late one
      // possibly after the request completed. Wait for its answer (handled
      // as usual); a hung replica is still cut off by the deadline tick,
      // and one whose thread died never answers, so it is let go now.
      uint32_t dead = 0;
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((lost & bit(r)) != 0 && vol->thread_exited(r)) {
          dead |= bit(r);
        }
      }
      lost = dead;
    }
    if (lost != 0) {
      lose(*s, lost);
    } else if (s->life.phase() == Phase::kData && s->kind == SlotKind::kUser &&
               s->vop != VolumeOp::kRead) {
      // A replica may have joined the in-sync set or left it.
      check_done_write(*s);
    }
    s = next;
  }
}

void QueueState::on_tick() {
  uint64_t now = vol->options.clock.now_ns();
  for (Slot* s = fifo_head; s != nullptr;) {
    Slot* next = s->fifo_next;
    // (Requests re-sent during this loop carry a later stamp than `now`.)
    if (s->issue_ns + vol->deadline_ns > now) {
      break;
    }
    uint32_t overdue = s->sent;
    for (unsigned r = 0; r < vol->nreplicas; ++r) {
      if ((overdue & bit(r)) != 0) {
        vol->report_failure(r, FailKind::kDeadline, -ETIMEDOUT);
      }
    }
    refresh_masks();
    if (!reads_into_buffer(*s)) {
      // A replica still in the write set - the last in-sync one, whose
      // failure was refused - may still read this request's buffer: keep
      // waiting for it (unless its store thread is gone). Completing now
      // hands the buffer back, and the late write would store whatever the
      // caller puts there next in the only in-sync copy (engine_sim_test,
      // seed 14). The request now takes as long as that replica does.
      uint32_t keep = overdue & write_mask;
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((keep & bit(r)) != 0 && vol->thread_exited(r)) {
          keep &= ~bit(r);
        }
      }
      overdue &= ~keep;
    }
    lose(*s, overdue);
    s = next;
  }
  reclaim_zombies();
}

// Sub-requests at store threads that died will never come back: release the
// slots waiting only for them (and the per-replica outstanding counts that a
// membership fence waits on).
void QueueState::reclaim_zombies() {
  for (Slot* s = zombies; s != nullptr;) {
    Slot* next = s->next;
    for (unsigned r = 0; r < vol->nreplicas; ++r) {
      if ((s->pending & bit(r)) != 0 && vol->thread_exited(r)) {
        s->pending &= ~bit(r);
        dec_outstanding(r);
      }
    }
    maybe_free(*s);
    s = next;
  }
}

unsigned QueueState::reap() {
  in_reap = true;
  self_signalled = false;
  // Completions first: a deadline check must not blame a replica whose
  // answer is already waiting in the ring.
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    if (StoreChannel* c = channel(i)) {
      while (ReplicaIo* sub = c->completions.pop()) {
        handle(*sub);
      }
    }
  }
  uint64_t epoch = vol->state_epoch.load(std::memory_order_seq_cst);
  if (epoch != seen_state_change_epoch) {
    seen_state_change_epoch = epoch;
    on_state_change();
  }
  uint64_t t = vol->tick.load(std::memory_order_relaxed);
  if (t != seen_tick) {
    seen_tick = t;
    on_tick();
  }
  if (held != nullptr && vol->gen_hold.load(std::memory_order_seq_cst) == 0) {
    Slot* list = held;
    held = nullptr;
    refresh_masks();
    while (list != nullptr) {
      Slot* s = list;
      list = list->next;
      apply(*s, s->life.unhold(), "unhold");
      check_done_write(*s);
    }
  }
  if (recheck_blocked) {
    recheck();
  }
  // Pokes from other queues' releases arrive without a flag: look anyway if
  // something is blocked on another queue (cheap: usually empty).
  if (blocked != nullptr) {
    recheck();
  }
  kick();
  unsigned ran = 0;
  while (done_head != nullptr) {
    VolumeIo* io = done_head;
    done_head = scratch(*io).next;
    if (done_head == nullptr) {
      done_tail = nullptr;
    }
    int result = scratch(*io).result;
    if (scratch(*io).direct) {
      direct_in_flight.store(direct_in_flight.load(std::memory_order_relaxed) - 1,
                             std::memory_order_release);
    }
    --in_flight;
    ++ran;
    io->on_complete(*io, result);
  }
  kick();
  in_reap = false;
  // Last: everything this thread sent before now was sent under masks of
  // an epoch <= the one acknowledged (membership fence).
  acked_epoch.store(epoch, std::memory_order_release);
  return ran;
}

}  // namespace ublkvol::engine::detail
