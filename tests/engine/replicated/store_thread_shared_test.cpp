// StoreThread on a shared reactor (StoreThreadOptions::reactor): its stores
// are served by a ReactorExecutor on a reactor the caller owns (the daemon's
// and ublkvol-serve's ReactorSet, next to ublk queues), not by a thread of
// its own. Control calls run on that reactor, home_reactor() names it (so a
// queue opened there is co-located), stop() leaves the reactor running for
// its other work and refuses later calls with a clear error.
#include <gtest/gtest.h>
#include <memory>

#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/reactor/reactor.h"

namespace ublkvol::engine {
namespace {

std::unique_ptr<reactor::Reactor> start_reactor() {
  reactor::ReactorOptions ro;
  ro.name = "shared";
  auto r = reactor::Reactor::start(ro);
  EXPECT_TRUE(r.ok());
  return r.ok() ? std::move(*r) : nullptr;
}

std::unique_ptr<StoreThread> start_on(reactor::Reactor& r, const std::string& name) {
  StoreThreadOptions options;
  options.name = name;
  options.reactor = &r;
  auto t = StoreThread::start(options);
  EXPECT_TRUE(t.ok()) << t.error().to_string();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(StoreThreadOnSharedReactor, ControlCallsRunOnTheReactorItNamesAsHome) {
  auto r = start_reactor();
  ASSERT_NE(r, nullptr);
  auto a = start_on(*r, "a");
  auto b = start_on(*r, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->home_reactor(), r.get());
  EXPECT_EQ(b->home_reactor(), r.get());
  for (StoreThread* t : {a.get(), b.get()}) {
    reactor::Reactor* ran_on = nullptr;
    ASSERT_TRUE(t->call([&] {
                   ran_on = reactor::Reactor::current();
                   return ok_status();
                 }).ok());
    EXPECT_EQ(ran_on, r.get()) << t->name();
    EXPECT_FALSE(t->exited());
  }
}

TEST(StoreThreadOnSharedReactor, StopLeavesTheReactorRunningAndRefusesLaterCalls) {
  auto r = start_reactor();
  ASSERT_NE(r, nullptr);
  // A store attached, as the stack does, so stop() has a poller to remove.
  dbs::MemoryDevice memory((4U << 20U) + (2U << 20U));
  RawReplicaFormatOptions fo;
  fo.size_bytes = 4U << 20U;
  ASSERT_TRUE(format_raw_replica(memory, fo).ok());
  auto store = open_raw_replica(memory);
  ASSERT_TRUE(store.ok());
  auto a = start_on(*r, "store-a");
  auto b = start_on(*r, "store-b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->attach(**store).ok());
  a->stop();
  EXPECT_TRUE(a->exited());
  EXPECT_FALSE(r->exited());
  Status st = a->call([] { return ok_status(); });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errno_value(), ESHUTDOWN);
  EXPECT_NE(st.error().message().find("store-a"), std::string::npos) << st.error().message();
  // Detaching after stop is harmless; the other store thread still works.
  EXPECT_TRUE(a->detach(**store).ok());
  EXPECT_TRUE(b->call([] { return ok_status(); }).ok());
  EXPECT_FALSE(b->exited());
  a.reset();
  b.reset();
  EXPECT_TRUE(r->call([] { return ok_status(); }).ok());
  // Stopping the reactor stops every store thread on it.
  auto c = start_on(*r, "store-c");
  ASSERT_NE(c, nullptr);
  r->stop();
  EXPECT_TRUE(c->exited());
  EXPECT_FALSE(c->call([] { return ok_status(); }).ok());
}

}  // namespace
}  // namespace ublkvol::engine
