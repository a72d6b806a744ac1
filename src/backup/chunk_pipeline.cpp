// ChunkPipeline (chunk_pipeline.h).
#include "chunk_pipeline.h"

namespace ublkvol::backup::detail {

ChunkPipeline::ChunkPipeline(unsigned workers, int level) {
  workers = std::max(1U, workers);
  slots_.resize(workers + 2);
  for (auto& slot : slots_) {
    slot = std::make_unique<Slot>();
  }
  for (unsigned i = 0; i < workers; ++i) {
    encoders_.push_back(std::make_unique<ChunkEncoder>(level));
  }
  if (workers > 1) {
    for (unsigned i = 0; i < workers; ++i) {
      ChunkEncoder& encoder = *encoders_[i];
      threads_.emplace_back([this, &encoder](const std::stop_token& stop) { work(stop, encoder); });
    }
  }
}

ChunkPipeline::~ChunkPipeline() {
  for (auto& thread : threads_) {
    thread.request_stop();
  }
  threads_.clear();  // joins; a worker finishes the slot it holds first
}

void ChunkPipeline::process(Slot& slot, ChunkEncoder& encoder) {
  slot.hash = chunk_hash(slot.chunk);
  slot.file_bytes = slot.chunk.block_count() > 0 ? encoder.encode(slot.chunk, slot.file) : 0;
}

void ChunkPipeline::work(const std::stop_token& stop, ChunkEncoder& encoder) {
  for (;;) {
    Slot* slot = nullptr;
    {
      std::unique_lock lock(mutex_);
      if (!queued_cv_.wait(lock, stop, [&] { return !queue_.empty(); })) {
        return;  // stop requested
      }
      slot = queue_.front();
      queue_.pop_front();
    }
    process(*slot, encoder);
    {
      std::lock_guard lock(mutex_);
      slot->done = true;
    }
    done_cv_.notify_all();
  }
}

void ChunkPipeline::submit(Slot& slot) {
  ++in_flight_;
  if (threads_.empty()) {
    process(slot, *encoders_.front());
    slot.done = true;
    return;
  }
  {
    std::lock_guard lock(mutex_);
    slot.done = false;
    queue_.push_back(&slot);
  }
  queued_cv_.notify_one();
}

bool ChunkPipeline::head_done() {
  std::lock_guard lock(mutex_);
  return slots_[head_]->done;
}

Status ChunkPipeline::retire_head(const Retire& retire) {
  Slot& slot = *slots_[head_];
  {
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return slot.done; });
  }
  head_ = (head_ + 1) % slots_.size();
  --in_flight_;
  return retire(slot);
}

Result<ChunkPipeline::Slot*> ChunkPipeline::next(const Retire& retire,
                                                 const std::stop_token& stop) {
  // The finished ones at the head go now (fresh progress, early checkpoints).
  while (in_flight_ > 0 && !stop.stop_requested() && head_done()) {
    UBLKVOL_TRY(retire_head(retire));
  }
  if (in_flight_ == slots_.size() && !stop.stop_requested()) {
    UBLKVOL_TRY(retire_head(retire));
  }
  if (stop.stop_requested()) {
    return nullptr;
  }
  Slot& slot = *slots_[(head_ + in_flight_) % slots_.size()];
  slot.done = false;
  slot.chunk.present = {};
  slot.chunk.data.clear();
  return &slot;
}

Status ChunkPipeline::drain(const Retire& retire, const std::stop_token& stop) {
  while (in_flight_ > 0 && !stop.stop_requested()) {
    UBLKVOL_TRY(retire_head(retire));
  }
  return ok_status();
}

std::optional<uint64_t> ChunkPipeline::abandon() {
  if (in_flight_ == 0) {
    return std::nullopt;
  }
  const uint64_t oldest = slots_[head_]->offset;
  std::unique_lock lock(mutex_);
  for (size_t i = 0; i < in_flight_; ++i) {
    Slot& slot = *slots_[(head_ + i) % slots_.size()];
    done_cv_.wait(lock, [&] { return slot.done; });
  }
  head_ = (head_ + in_flight_) % slots_.size();
  in_flight_ = 0;
  return oldest;
}

}  // namespace ublkvol::backup::detail
