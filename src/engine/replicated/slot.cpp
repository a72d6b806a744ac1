// Slot state names, the invariant check and the abort on a broken slot
// (slot.h).
#include "slot.h"

#include <cstdio>
#include <cstdlib>

namespace ublkvol::engine::detail {

const char* to_string(Phase phase) {
  switch (phase) {
    case Phase::kFree:
      return "free";
    case Phase::kOrderWait:
      return "order-wait";
    case Phase::kData:
      return "data";
    case Phase::kRepairRead:
      return "repair-read";
    case Phase::kRepairWrite:
      return "repair-write";
    case Phase::kCopyRead:
      return "copy-read";
    case Phase::kCopyWrite:
      return "copy-write";
    case Phase::kVerifyRead:
      return "verify-read";
    case Phase::kGranted:
      return "granted";
  }
  return "unknown";
}

const char* to_string(SlotList list) {
  switch (list) {
    case SlotList::kNone:
      return "none";
    case SlotList::kFree:
      return "free";
    case SlotList::kBlocked:
      return "blocked";
    case SlotList::kHeld:
      return "held";
    case SlotList::kZombie:
      return "zombie";
  }
  return "unknown";
}

const char* slot_invariant_broken(const Slot& s) {
  const SlotLife& l = s.life;
  if ((s.sent & ~s.pending) != 0) {
    return "awaits a replica it has no sub-request at (sent not within pending)";
  }
  if (l.lingering() && !(l.ordered() && l.completed())) {
    return "lingering without being completed and ordered";
  }
  switch (l.list()) {
    case SlotList::kFree:
      if (l.phase() != Phase::kFree || l.ordered() || l.in_fifo() || s.pending != 0) {
        return "on the free list but in use";
      }
      break;
    case SlotList::kBlocked:
      if (l.phase() != Phase::kOrderWait || !l.ordered() || l.completed()) {
        return "blocked but not an ordered request waiting for the ordering";
      }
      break;
    case SlotList::kHeld:
      if (l.phase() != Phase::kData || l.completed() || s.kind != SlotKind::kUser) {
        return "held but not an uncompleted user request at the replicas";
      }
      break;
    case SlotList::kZombie:
      if (!l.completed() || l.ordered() || l.in_fifo() || s.sent != 0) {
        return "a zombie that is not finished";
      }
      break;
    case SlotList::kNone:
      break;
  }
  // Allocated, not started yet: at most its ordering entry is published.
  if (l.phase() == Phase::kFree && l.list() == SlotList::kNone &&
      (l.completed() || l.in_fifo() || s.pending != 0)) {
    return "allocated but not started, yet completed or at a store";
  }
  if (l.phase() == Phase::kOrderWait && (!l.ordered() || l.completed())) {
    return "waiting for the ordering without an ordering entry";
  }
  return nullptr;
}

void slot_check_failed(const Slot& s, const char* transition, const char* why) {
  const SlotLife& l = s.life;
  // stderr, not spdlog: this runs on the data path right before abort().
  (void)std::fprintf(stderr,
                     "ublkvol engine: slot %p: %s after '%s': phase %s, list %s, ordered %d, "
                     "completed %d, lingering %d, in_fifo %d, pending %#x, sent %#x\n",
                     static_cast<const void*>(&s), why, transition, to_string(l.phase()),
                     to_string(l.list()), l.ordered(), l.completed(), l.lingering(), l.in_fifo(),
                     s.pending, s.sent);
  std::abort();
}

}  // namespace ublkvol::engine::detail
