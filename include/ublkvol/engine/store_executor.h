// StoreExecutor: what the replicated volume needs from the thing that owns a
// store and runs its I/O. StoreThread (store_thread.h) is the production one:
// a thread serving per-(queue, store) SPSC channels. The engine's simulator
// (tests/engine/sim) implements it on its one OS thread, so that a seed - not
// the OS scheduler - decides when a request reaches a store and when its
// completion comes back.
//
// The contract the engine relies on:
//   - requests arrive through StoreChannel::requests (pushed by the queue
//     thread, followed by ring_doorbell() once per batch); each ReplicaIo is
//     submitted to `channel.stores[io.replica]` and, once the store completed
//     it, pushed into StoreChannel::completions (io.result set), after which
//     the executor touches it no more;
//   - call() runs a control function where the stores live (their owning
//     thread) and returns its result;
//   - exited() turns true only after the executor's last access to any
//     request: the engine then reclaims requests that never came back;
//   - home_reactor(), if not null, is the reactor whose thread polls the
//     stores: a queue living on that thread may call ReplicaStore::submit
//     itself (a local channel, store_channel.h) - the executor then still
//     polls the stores and runs the completions on that thread.
//
// Cost: ring_doorbell() is a virtual call once per kick() per store with new
// requests (a batch, not an I/O); nothing else on the data path goes through
// this interface.
#pragma once

#include <functional>
#include <string_view>

#include "ublkvol/common/result.h"

namespace ublkvol::reactor {
class Reactor;
}

namespace ublkvol::engine {

namespace detail {
struct StoreChannel;
}

class StoreExecutor {
 public:
  virtual ~StoreExecutor() = default;
  StoreExecutor() = default;
  StoreExecutor(const StoreExecutor&) = delete;
  StoreExecutor& operator=(const StoreExecutor&) = delete;

  [[nodiscard]] virtual std::string_view name() const = 0;

  // Runs `fn` where the stores live and returns its result. Fails with
  // ESHUTDOWN once the executor stopped or died.
  virtual Status call(const std::function<Status()>& fn) = 0;

  // Engine plumbing: channels are added/removed by ReplicatedVolume.
  virtual Status add_channel(detail::StoreChannel& channel) = 0;
  virtual Status remove_channel(detail::StoreChannel& channel) = 0;
  // Producer side: called after pushing requests (wakes the executor if it
  // sleeps).
  virtual void ring_doorbell() = 0;

  // True once the executor will never touch a request again (stopped or
  // died); see the contract above.
  [[nodiscard]] virtual bool exited() const = 0;

  // The reactor whose thread runs this executor's stores, if any. A queue
  // opened on that reactor's thread submits to them directly (co-located
  // dispatch, docs/engine.md "Reactors").
  [[nodiscard]] virtual reactor::Reactor* home_reactor() const { return nullptr; }
};

}  // namespace ublkvol::engine
