// FrontendVolume: what the daemon hands to the ublk frontend for one volume -
// the replicated engine, with every write turned into a FUA write when
// write-through is on (config `write_through`, default false).
//
// Write-back (the default) is crash-safe: the daemon opens its stores with
// dbs::OpenOptions::journal_mappings (the default), so a write that maps a
// block for the first time completes only after a journal commit holding that
// mapping; a SIGKILLed daemon loses no completed write and user recovery is
// only a pause. What write-back leaves to FLUSH is power-cut durability, as a
// disk with a volatile write cache does.
// Write-through adds FUA to every write: each completes after a flushed DBS
// commit, so even a power cut loses no completed write of an application that
// never flushes - at a cost for large sequential writes (fewer writes per
// group commit; docs/ublk.md "Write-through" measured ~40% at 128 KiB QD 8).
#pragma once

#include <memory>
#include <utility>

#include "ublkvol/engine/volume.h"
#include "ublkvol/engine/write_through_queue.h"

namespace ublkvol::daemon {

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
        std::make_unique<engine::WriteThroughQueue>(std::move(*queue)));
  }

 private:
  engine::Volume& inner_;
  bool write_through_;
};

}  // namespace ublkvol::daemon
