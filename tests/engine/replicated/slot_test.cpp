// The request slot's state machine (src/engine/replicated/slot.h): every
// path of the lifecycle diagram, refusals of out-of-order transitions, the
// invariants over every reachable state, and the abort on a refused
// transition or a broken invariant.
#include "slot.h"

#include <functional>
#include <gtest/gtest.h>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace ublkvol::engine::detail {
namespace {

using Transition = std::pair<const char*, std::function<bool(SlotLife&)>>;

const std::vector<Transition>& transitions() {
  static const std::vector<Transition> all = {
      {"allocate", [](SlotLife& l) { return l.allocate(); }},
      {"publish", [](SlotLife& l) { return l.publish(); }},
      {"withdraw", [](SlotLife& l) { return l.withdraw(); }},
      {"block", [](SlotLife& l) { return l.block(); }},
      {"unblock", [](SlotLife& l) { return l.unblock(); }},
      {"dispatch", [](SlotLife& l) { return l.dispatch(); }},
      {"repair_read", [](SlotLife& l) { return l.repair_read(); }},
      {"repair_write", [](SlotLife& l) { return l.repair_write(); }},
      {"copy_read", [](SlotLife& l) { return l.copy_read(); }},
      {"copy_write", [](SlotLife& l) { return l.copy_write(); }},
      {"verify_read", [](SlotLife& l) { return l.verify_read(); }},
      {"grant", [](SlotLife& l) { return l.grant(); }},
      {"complete", [](SlotLife& l) { return l.complete(); }},
      {"hold", [](SlotLife& l) { return l.hold(); }},
      {"unhold", [](SlotLife& l) { return l.unhold(); }},
      {"bury", [](SlotLife& l) { return l.bury(); }},
      {"unbury", [](SlotLife& l) { return l.unbury(); }},
      {"release", [](SlotLife& l) { return l.release(); }},
      {"enter_fifo", [](SlotLife& l) { return l.enter_fifo(); }},
      {"leave_fifo", [](SlotLife& l) { return l.leave_fifo(); }},
  };
  return all;
}

bool run(SlotLife& l, const std::string& name) {
  for (const auto& [n, fn] : transitions()) {
    if (name == n) {
      return fn(l);
    }
  }
  ADD_FAILURE() << "no transition " << name;
  return false;
}

using Key = std::tuple<Phase, SlotList, bool, bool, bool, bool>;
Key key(const SlotLife& l) {
  return {l.phase(), l.list(), l.ordered(), l.completed(), l.lingering(), l.in_fifo()};
}

// Applies `path` in order; each step must be accepted and leave a slot that
// satisfies the invariants (masks zero: nothing at a store).
void walk(SlotLife& l, const std::vector<std::string>& path) {
  Slot s;
  for (const auto& step : path) {
    ASSERT_TRUE(run(l, step)) << step << " refused in phase " << to_string(l.phase()) << ", list "
                              << to_string(l.list());
    s.life = l;
    const char* broken = slot_invariant_broken(s);
    ASSERT_EQ(broken, nullptr) << "after " << step << ": " << broken;
  }
}

TEST(SlotTest, UserWriteUnordered) {
  SlotLife l;
  walk(l, {"allocate", "publish", "dispatch", "enter_fifo", "leave_fifo", "withdraw", "complete",
           "release"});
  EXPECT_EQ(l.phase(), Phase::kFree);
  EXPECT_EQ(l.list(), SlotList::kFree);
  EXPECT_FALSE(l.lingering());
  // Recycled from the free list.
  walk(l, {"allocate", "dispatch", "complete", "release"});
}

TEST(SlotTest, WriteWaitsForTheOrderingThenRuns) {
  SlotLife l;
  walk(l, {"allocate", "publish", "block"});
  EXPECT_EQ(l.phase(), Phase::kOrderWait);
  EXPECT_EQ(l.list(), SlotList::kBlocked);
  // Re-checked, still blocked, re-checked again, then free to go.
  walk(l, {"unblock", "block", "unblock", "dispatch", "enter_fifo"});
  EXPECT_EQ(l.phase(), Phase::kData);
}

TEST(SlotTest, CompletedWriteLingersUntilItsOrderingIsReleased) {
  SlotLife l;
  walk(l, {"allocate", "publish", "dispatch", "complete"});
  EXPECT_TRUE(l.lingering());
  EXPECT_FALSE(l.release());  // still ordered
  walk(l, {"withdraw"});
  EXPECT_FALSE(l.lingering());
  walk(l, {"release"});
}

TEST(SlotTest, WriteHeldForAGenerationBump) {
  SlotLife l;
  walk(l, {"allocate", "publish", "dispatch", "withdraw", "hold"});
  EXPECT_EQ(l.list(), SlotList::kHeld);
  EXPECT_FALSE(l.complete());  // held: not yet
  walk(l, {"unhold", "complete", "release"});
}

TEST(SlotTest, ReadRepair) {
  SlotLife l;
  walk(l, {"allocate", "dispatch", "enter_fifo", "publish", "repair_read", "repair_read",
           "repair_write", "withdraw", "complete", "leave_fifo", "release"});
  // The repair may have to wait for the ordering first.
  walk(l, {"allocate", "dispatch", "publish", "block", "unblock", "repair_read", "withdraw",
           "complete", "release"});
}

TEST(SlotTest, InternalOperations) {
  SlotLife copy;
  walk(copy, {"allocate", "publish", "copy_read", "copy_read", "copy_write", "withdraw", "complete",
              "release"});
  SlotLife verify;
  walk(verify, {"allocate", "publish", "block", "unblock", "verify_read", "withdraw", "complete",
                "release"});
  SlotLife barrier;
  walk(barrier, {"allocate", "publish", "grant", "withdraw", "complete", "release"});
}

TEST(SlotTest, ZombieWaitsForADroppedReplica) {
  SlotLife l;
  walk(l, {"allocate", "dispatch", "enter_fifo", "complete"});
  EXPECT_FALSE(l.bury());  // still on the deadline FIFO
  walk(l, {"leave_fifo", "bury"});
  EXPECT_EQ(l.list(), SlotList::kZombie);
  EXPECT_FALSE(l.release());
  walk(l, {"unbury", "release"});
}

TEST(SlotTest, OutOfOrderTransitionsAreRefused) {
  SlotLife fresh;
  EXPECT_FALSE(fresh.complete());  // nothing to complete
  EXPECT_FALSE(fresh.release());
  EXPECT_FALSE(fresh.withdraw());
  EXPECT_FALSE(fresh.block());  // not ordered
  EXPECT_FALSE(fresh.copy_read());
  EXPECT_FALSE(fresh.grant());
  EXPECT_FALSE(fresh.unblock());
  EXPECT_FALSE(fresh.unhold());
  EXPECT_FALSE(fresh.unbury());
  EXPECT_FALSE(fresh.enter_fifo());  // free phase
  EXPECT_FALSE(fresh.leave_fifo());

  SlotLife w;
  walk(w, {"allocate", "publish", "dispatch"});
  EXPECT_FALSE(w.allocate());      // in use
  EXPECT_FALSE(w.publish());       // twice
  EXPECT_FALSE(w.dispatch());      // twice
  EXPECT_FALSE(w.repair_write());  // not repairing
  EXPECT_FALSE(w.copy_write());
  EXPECT_FALSE(w.release());  // not completed
  walk(w, {"complete"});
  EXPECT_FALSE(w.complete());  // completed twice
  EXPECT_FALSE(w.block());     // completed
  EXPECT_FALSE(w.hold());
  EXPECT_FALSE(w.bury());  // still ordered

  SlotLife b;
  walk(b, {"allocate", "publish", "block"});
  EXPECT_FALSE(b.dispatch());  // still on the blocked list
  EXPECT_FALSE(b.withdraw());
  EXPECT_FALSE(b.complete());
  EXPECT_FALSE(b.block());
  walk(b, {"unblock"});
  EXPECT_FALSE(b.complete());  // waiting for the ordering: nothing done yet
  EXPECT_FALSE(b.unblock());

  SlotLife r;
  walk(r, {"allocate", "dispatch"});
  EXPECT_FALSE(r.repair_read());  // a repair needs its ordering entry
  EXPECT_FALSE(r.verify_read());
  walk(r, {"complete", "release"});
  EXPECT_FALSE(r.release());  // freed twice
  EXPECT_FALSE(r.complete());
  EXPECT_STREQ(to_string(r.phase()), "free");
  EXPECT_STREQ(to_string(r.list()), "free");
}

// Every state reachable from a fresh slot satisfies the invariants, and
// every transition a state refuses leaves it unchanged.
TEST(SlotTest, ReachableStatesKeepTheInvariants) {
  std::set<Key> seen;
  std::vector<SlotLife> todo{SlotLife{}};
  seen.insert(key(todo.front()));
  size_t refused = 0;
  while (!todo.empty()) {
    SlotLife from = todo.back();
    todo.pop_back();
    Slot s;
    s.life = from;
    const char* broken = slot_invariant_broken(s);
    ASSERT_EQ(broken, nullptr) << "phase " << to_string(from.phase()) << ", list "
                               << to_string(from.list()) << ": " << broken;
    for (const auto& [name, fn] : transitions()) {
      SlotLife to = from;
      if (!fn(to)) {
        EXPECT_EQ(key(to), key(from)) << name << " refused but changed the slot";
        ++refused;
        continue;
      }
      if (seen.insert(key(to)).second) {
        todo.push_back(to);
      }
    }
  }
  EXPECT_GT(seen.size(), 20U);
  EXPECT_GT(refused, seen.size());
}

TEST(SlotDeathTest, RefusedTransitionAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Slot s;
  EXPECT_DEATH(apply(s, s.life.release(), "release"), "transition refused after 'release'");
}

TEST(SlotDeathTest, BrokenInvariantAbortsWhenChecksAreOn) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Slot s;
  s.sent = 1;  // awaiting a replica with no sub-request there
  ASSERT_NE(slot_invariant_broken(s), nullptr);
#if UBLKVOL_SLOT_CHECKS
  EXPECT_DEATH(apply(s, true, "test"), "sent not within pending");
#else
  apply(s, true, "test");  // release builds do not run the invariant check
  SUCCEED();
#endif
}

}  // namespace
}  // namespace ublkvol::engine::detail
