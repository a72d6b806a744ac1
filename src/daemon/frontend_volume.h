// FrontendVolume: what the daemon hands to the ublk frontend for one volume -
// the replicated engine, with every write turned into a FUA write when
// write-through is on (config `write_through`, default true).
//
// Why write-through: DBS keeps the mapping of a block written for the first
// time in memory until the next FLUSH commits it. The data is in the store,
// but a daemon killed before that FLUSH loses the mapping, and after the
// restart the block reads as zeros although the write completed - a power
// cut, where ublk user recovery promises only a pause. With FUA, a write
// completes after the commit that maps it (DBS group-commits concurrent ones).
// docs/ublk.md "Write-through" measured the cost.
#pragma once

#include <memory>
#include <utility>

#include "ublkvol/engine/volume.h"

namespace ublkvol::daemon {

class WriteThroughQueue final : public engine::VolumeQueue {
 public:
  explicit WriteThroughQueue(std::unique_ptr<engine::VolumeQueue> inner)
      : inner_(std::move(inner)) {}
  void submit(engine::VolumeIo& io) override {
    if (io.op == engine::VolumeOp::kWrite) {
      io.fua = true;
    }
    inner_->submit(io);
  }
  void kick() override { inner_->kick(); }
  unsigned reap() override { return inner_->reap(); }
  [[nodiscard]] int wake_fd() const override { return inner_->wake_fd(); }
  [[nodiscard]] unsigned in_flight() const override { return inner_->in_flight(); }

 private:
  std::unique_ptr<engine::VolumeQueue> inner_;
};

class FrontendVolume final : public engine::Volume {
 public:
  FrontendVolume(engine::Volume& inner, bool write_through)
      : inner_(inner), write_through_(write_through) {}
  [[nodiscard]] const engine::VolumeInfo& info() const override { return inner_.info(); }
  Result<std::unique_ptr<engine::VolumeQueue>> open_queue(unsigned index) override {
    auto queue = inner_.open_queue(index);
    if (!queue.ok() || !write_through_) {
      return queue;
    }
    return std::unique_ptr<engine::VolumeQueue>(
        std::make_unique<WriteThroughQueue>(std::move(*queue)));
  }

 private:
  engine::Volume& inner_;
  bool write_through_;
};

}  // namespace ublkvol::daemon
