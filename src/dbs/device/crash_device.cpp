#include "ublkvol/dbs/crash_device.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "request_queue.h"

namespace ublkvol::dbs {

// The wrapper's own request for one outer request (the outer one stays with
// its submitter; see IoRequest::device_next).
struct CrashDevice::Slot {
  IoRequest inner;
  IoRequest* outer = nullptr;
  CrashDevice* device = nullptr;
  size_t flush_covers = 0;  // flushes: log size when submitted
};

CrashDevice::CrashDevice(MemoryDevice& inner)
    : inner_(inner),
      inner_memory_(&inner),
      name_("crash(" + std::string(inner.name()) + ")"),
      initial_(inner.snapshot()) {}

CrashDevice::CrashDevice(BlockDevice& inner, std::vector<std::byte> initial_image)
    : inner_(inner),
      inner_memory_(nullptr),
      name_("crash(" + std::string(inner.name()) + ")"),
      initial_(std::move(initial_image)) {}

CrashDevice::~CrashDevice() = default;

void CrashDevice::submit(IoRequest& request) {
  Slot* slot = detail::take_slot(slots_, free_slots_);
  slot->outer = &request;
  slot->device = this;
  slot->flush_covers = log_.size();
  slot->inner = detail::forwarded_request(request, &CrashDevice::on_inner_complete, slot);
  ++in_flight_;
  inner_.submit(slot->inner);
}

void CrashDevice::on_inner_complete(IoRequest& inner, int result) {
  auto* slot = static_cast<Slot*>(inner.user_data);
  CrashDevice& self = *slot->device;
  IoRequest& outer = *slot->outer;
  if (result == 0) {
    if (outer.op == IoOp::kFlush) {
      size_t prefix = slot->flush_covers;
      if (!self.flushes_.empty()) {
        prefix = std::max(prefix, self.flushes_.back().durable_prefix);
      }
      self.flushes_.push_back({prefix, self.log_.size()});
    } else if (outer.op != IoOp::kRead) {
      self.record(outer);
    }
  }
  self.free_slots_.push_back(slot);
  --self.in_flight_;
  outer.on_complete(outer, result);
}

void CrashDevice::record(const IoRequest& request) {
  Entry entry{request.op, request.op == IoOp::kWrite && request.fua, request.offset, request.length,
              arena_.size()};
  if (request.op == IoOp::kWrite) {
    arena_.insert(arena_.end(), request.buffer, request.buffer + request.length);
  }
  if (entry.fua) {
    fua_entries_.push_back(log_.size());
  }
  log_.push_back(entry);
}

unsigned CrashDevice::poll(bool wait) { return inner_.poll(wait); }

std::span<const std::byte> CrashDevice::entry_data(size_t index) const {
  const Entry& entry = log_.at(index);
  if (entry.op != IoOp::kWrite) {
    return {};
  }
  return {arena_.data() + entry.data_offset, entry.length};
}

size_t CrashDevice::durable_prefix(size_t epoch) const {
  return epoch == 0 ? 0 : flushes_.at(epoch - 1).durable_prefix;
}

size_t CrashDevice::window_end(size_t epoch) const {
  return epoch < flushes_.size() ? flushes_[epoch].log_size_at_completion : log_.size();
}

std::vector<size_t> CrashDevice::pending_entries(size_t epoch) const {
  std::vector<size_t> pending;
  for (size_t i = durable_prefix(epoch); i < window_end(epoch); ++i) {
    if (!log_[i].fua) {
      pending.push_back(i);
    }
  }
  return pending;
}

Status CrashDevice::ensure_base(size_t epoch) {
  size_t target = durable_prefix(epoch);
  if (!base_valid_ || base_prefix_ > target) {
    base_ = initial_;
    base_prefix_ = 0;
    base_valid_ = true;
  }
  for (; base_prefix_ < target; ++base_prefix_) {
    apply_entry(base_, log_[base_prefix_], nullptr, base_prefix_, base_prefix_);
  }
  return ok_status();
}

void CrashDevice::apply_entry(std::vector<std::byte>& image, const Entry& entry,
                              const std::vector<uint8_t>* masks, size_t index, size_t cut) const {
  // FUA entries after this one (and before the cut) that overlap it: their
  // sectors are never overwritten by this older, non-durable entry.
  auto later_fua = std::upper_bound(fua_entries_.begin(), fua_entries_.end(), index);
  const bool check_fua = masks != nullptr || index + 1 < cut;
  for (uint64_t sector = 0; sector < entry.length / kSectorSize; ++sector) {
    if (masks != nullptr) {
      uint8_t block_mask = (*masks)[sector / kSectorsPerBlock];
      if ((block_mask & (1u << (sector % kSectorsPerBlock))) == 0) {
        continue;
      }
    }
    uint64_t position = entry.offset + sector * kSectorSize;
    if (check_fua) {
      bool superseded = false;
      for (auto it = later_fua; it != fua_entries_.end() && *it < cut; ++it) {
        const Entry& fua = log_[*it];
        if (position >= fua.offset && position < fua.offset + fua.length) {
          superseded = true;
          break;
        }
      }
      if (superseded) {
        continue;
      }
    }
    std::byte* target = image.data() + position;
    if (entry.op == IoOp::kWrite) {
      std::memcpy(target, arena_.data() + entry.data_offset + sector * kSectorSize, kSectorSize);
    } else {
      std::memset(target, 0, kSectorSize);
    }
  }
}

Status CrashDevice::build_image(const CrashSpec& spec, std::vector<std::byte>& out) {
  if (spec.epoch >= epochs()) {
    return Error(EINVAL, name_ + ": crash epoch " + std::to_string(spec.epoch) +
                             " out of range (have " + std::to_string(epochs()) + ")");
  }
  const size_t begin = durable_prefix(spec.epoch);
  const size_t cut = std::clamp(spec.cut, begin, window_end(spec.epoch));
  for (const Applied& applied : spec.applied) {
    if (applied.entry < begin || applied.entry >= cut || log_[applied.entry].fua) {
      return Error(EINVAL, name_ + ": log entry " + std::to_string(applied.entry) +
                               " is not pending in epoch " + std::to_string(spec.epoch) +
                               " before cut " + std::to_string(cut));
    }
    size_t blocks = log_[applied.entry].length / 4096;
    if (!applied.block_sector_masks.empty() && applied.block_sector_masks.size() != blocks) {
      return Error(EINVAL, name_ + ": log entry " + std::to_string(applied.entry) + " has " +
                               std::to_string(blocks) + " blocks but " +
                               std::to_string(applied.block_sector_masks.size()) +
                               " sector masks were given");
    }
  }
  UBLKVOL_TRY(ensure_base(spec.epoch));
  out.assign(base_.begin(), base_.end());
  for (size_t index : fua_entries_) {
    if (index >= begin && index < cut) {
      apply_entry(out, log_[index], nullptr, index, index);
    }
  }
  for (const Applied& applied : spec.applied) {
    apply_entry(out, log_[applied.entry],
                applied.block_sector_masks.empty() ? nullptr : &applied.block_sector_masks,
                applied.entry, cut);
  }
  return ok_status();
}

Result<std::unique_ptr<MemoryDevice>> CrashDevice::build_device(const CrashSpec& spec) {
  std::vector<std::byte> image;
  UBLKVOL_TRY(build_image(spec, image));
  return MemoryDevice::from_image(std::move(image));
}

Status CrashDevice::reset_history() {
  if (inner_memory_ == nullptr) {
    return Error(EINVAL, name_ + ": reset_history needs a MemoryDevice inside");
  }
  if (in_flight_ != 0) {
    return Error(EBUSY, name_ + ": reset_history with requests in flight");
  }
  initial_ = inner_memory_->snapshot();
  log_.clear();
  arena_.clear();
  flushes_.clear();
  fua_entries_.clear();
  base_valid_ = false;
  base_.clear();
  return ok_status();
}

}  // namespace ublkvol::dbs
