// WriteThroughQueue: wraps a VolumeQueue so that every write it submits
// carries FUA - the volume then behaves as if it had no volatile write cache
// (each write completes once durable).
//
// Why it is optional: DBS journals the mapping of an allocating write before
// completing it (dbs::OpenOptions::journal_mappings), so a killed server
// loses no completed write without it; durability against power loss comes
// from FLUSH, as the device advertises (volatile cache + FUA). Write-through
// is for applications that never flush but expect writes to survive a power
// cut; it costs a DBS commit per write (docs/daemon.md, docs/ublk.md).
//
// It only sets a flag on the caller's request: no allocation, no copy.
#pragma once

#include <memory>
#include <utility>

#include "ublkvol/engine/volume.h"

namespace ublkvol::engine {

class WriteThroughQueue final : public VolumeQueue {
 public:
  explicit WriteThroughQueue(std::unique_ptr<VolumeQueue> inner) : inner_(std::move(inner)) {}
  void submit(VolumeIo& io) override {
    if (io.op == VolumeOp::kWrite) {
      io.fua = true;
    }
    inner_->submit(io);
  }
  void kick() override { inner_->kick(); }
  unsigned reap() override { return inner_->reap(); }
  [[nodiscard]] int wake_fd() const override { return inner_->wake_fd(); }
  [[nodiscard]] unsigned in_flight() const override { return inner_->in_flight(); }
  [[nodiscard]] bool all_targets_local() override { return inner_->all_targets_local(); }

 private:
  std::unique_ptr<VolumeQueue> inner_;
};

}  // namespace ublkvol::engine
