// Store::Impl data path: read / write / discard / write-zeroes / flush, and
// the group-commit state machine behind flush.
// Why one file of ~1,100 lines: the data path and the group commit share the
// in-flight invariants listed below (which bit is set when, which extent may
// be reused when); split apart, each half would be correct only by reference
// to the other.
//
// Rules that make it crash-safe (docs/dbs.md):
//   - a block's bit is set in memory only when its data write has completed,
//     and a commit captures the in-memory state *before* its data flush is
//     submitted, so every bit a commit makes durable points at durable data;
//   - freed extents are reused only after the commit that freed them is
//     durable (pending -> committing -> free), and not before a device
//     discard of them has completed;
//   - an extent is never freed while a device request against it is in
//     flight (ExtentEntry::inflight);
//   - journal_mappings: a request that changed a mapping completes only
//     after a journal commit captured after the change was written; the
//     data of a write that sets new block bits is durable before that
//     (unflushed) journal commit is written - by a device flush ahead of the
//     commit, or FUA (MappingDataOrder) - so any image in which the commit
//     survived also holds the data.
#include <poll.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>
#include <string>
#include <system_error>
#include <thread>

#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;
using namespace format;

namespace {

constexpr uint64_t kBlock = kBlockSize;

void on_sub_complete(IoRequest& request, int result) {
  auto* sub = static_cast<SubIo*>(request.user_data);
  sub->impl->sub_done(*sub, result);
}

void on_commit_flush(IoRequest& request, int result) {
  static_cast<Store::Impl*>(request.user_data)->commit_step(result);
}

void on_meta_write(IoRequest& request, int result) {
  static_cast<Store::Impl*>(request.user_data)->meta_write_done(result);
}

bool is_data_write(StoreOp op) {
  return op == StoreOp::kWrite || op == StoreOp::kDiscard || op == StoreOp::kWriteZeroes;
}

bool block_bit(const uint64_t (&mask)[4], uint32_t b) {
  return ((mask[b >> 6] >> (b & 63)) & 1) != 0;
}

// Whether `entry` holds every block of [first, first + count).
bool holds_all(const ExtentEntry& entry, uint32_t first, uint32_t count) {
  for (uint32_t b = first; b < first + count;) {
    const uint32_t word = b >> 6;
    const uint32_t lo = b & 63;
    const uint32_t n = std::min(64 - lo, first + count - b);
    const uint64_t want = (n == 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1)) << lo;
    if ((entry.bits[word] & want) != want) {
      return false;
    }
    b += n;
  }
  return true;
}

// Calls fn(begin, end) for each run of set bits of `mask` inside
// [first, first + count), in order.
template <typename Fn>
void for_each_run(const uint64_t (&mask)[4], uint32_t first, uint32_t count, Fn&& fn) {
  for (uint32_t b = first; b < first + count;) {
    if (!block_bit(mask, b)) {
      ++b;
      continue;
    }
    uint32_t end = b + 1;
    while (end < first + count && block_bit(mask, end)) {
      ++end;
    }
    fn(b, end);
    b = end;
  }
}

// The part of `io` not yet issued (from store_cursor) that lies in one
// logical extent: requests are split at extent boundaries.
struct ExtentSlice {
  uint32_t logical;  // the logical extent
  uint32_t first;    // first block inside it
  uint32_t count;    // blocks of the slice
};

ExtentSlice next_slice(const StoreIo& io, uint32_t extent_blocks) {
  const uint64_t block = (io.offset + io.store_cursor) / kBlock;
  const auto first = static_cast<uint32_t>(block % extent_blocks);
  return {static_cast<uint32_t>(block / extent_blocks), first,
          static_cast<uint32_t>(
              std::min<uint64_t>(extent_blocks - first, (io.length - io.store_cursor) / kBlock))};
}

}  // namespace

const char* to_string(StoreOp op) {
  switch (op) {
    case StoreOp::kRead:
      return "read";
    case StoreOp::kWrite:
      return "write";
    case StoreOp::kDiscard:
      return "discard";
    case StoreOp::kWriteZeroes:
      return "write-zeroes";
    case StoreOp::kFlush:
      return "flush";
  }
  return "unknown";
}

Store::Impl::Impl(BlockDevice& device, LoadedStore loaded, const OpenOptions& options)
    : device_(device),
      journal_mappings_(options.journal_mappings),
      fua_new_data_(options.journal_mappings &&
                    options.mapping_data_order == OpenOptions::MappingDataOrder::kFuaData),
      device_timeout_(options.device_timeout),
      g_(loaded.geometry),
      md_(std::move(loaded.metadata)),
      epoch_(loaded.epoch),
      seq_(loaded.seq),
      active_checkpoint_(loaded.active_checkpoint),
      journal_pos_(loaded.journal_pos),
      open_notes_(std::move(loaded.notes)) {
  // Free map: everything not mapped by a layer.
  free_bits_.assign((uint64_t{g_.extent_count} + 63) / 64, ~uint64_t{0});
  if (g_.extent_count % 64 != 0) {
    free_bits_.back() = (uint64_t{1} << (g_.extent_count % 64)) - 1;
  }
  free_count_ = g_.extent_count;
  for (auto& [id, layer] : md_->layers) {
    std::vector<uint32_t> empty;
    layer->map.for_each([&](uint32_t logical, ExtentEntry& entry) {
      free_bits_[entry.phys >> 6] &= ~(uint64_t{1} << (entry.phys & 63));
      --free_count_;
      if (entry.empty()) {
        empty.push_back(logical);
      }
    });
    // An extent committed before any of its blocks was: reclaim it (the
    // removal is committed by the next commit; until then it stays pending).
    for (uint32_t logical : empty) {
      remove_entry(*layer, logical, *layer->map.find(logical));
    }
  }
  // Journal capacity in extent records bounds the change log: more changes
  // than the journal holds go to a full checkpoint anyway.
  const uint64_t journal_records =
      g_.journal_blocks * kMetaPayloadBytes / (sizeof(RecordHeader) + sizeof(ExtentRecord));
  md_->set_change_log_capacity(
      static_cast<size_t>(std::min<uint64_t>(journal_records, g_.extent_count) + 16));

  subs_.resize(std::max<uint32_t>(options.max_device_requests, 16));
  for (auto& sub : subs_) {
    sub.impl = this;
    sub.request.user_data = &sub;
    sub.request.on_complete = &on_sub_complete;
    sub.next_free = free_subs_;
    free_subs_ = &sub;
  }
  zeros_.resize(g_.extent_bytes());
  std::memset(zeros_.data(), 0, zeros_.size());
  flush_request_.op = IoOp::kFlush;
  flush_request_.on_complete = &on_commit_flush;
  flush_request_.user_data = this;
  control_request_.user_data = this;
  control_request_.on_complete = [](IoRequest& request, int result) {
    auto* impl = static_cast<Store::Impl*>(request.user_data);
    impl->control_request_result_ = result;
    impl->control_request_busy_ = false;
  };
  chain_.resize(16);
}

// ---------------------------------------------------------------------------
// Space
// ---------------------------------------------------------------------------

uint32_t Store::Impl::allocate_extent() {
  if (free_count_ == 0) {
    return kNoExtent;
  }
  const size_t words = free_bits_.size();
  for (size_t i = 0; i < words; ++i) {
    const size_t w = (alloc_cursor_ + i) % words;
    if (free_bits_[w] != 0) {
      const int bit = std::countr_zero(free_bits_[w]);
      free_bits_[w] &= free_bits_[w] - 1;
      --free_count_;
      alloc_cursor_ = w;
      return static_cast<uint32_t>(w * 64 + static_cast<size_t>(bit));
    }
  }
  return kNoExtent;
}

void Store::Impl::free_extent_later(uint32_t phys) {
  pending_frees_.push_back(phys);
  if (collecting_frees_) {
    control_freed_.push_back(phys);
  }
}

void Store::Impl::remove_entry(Layer& layer, uint32_t logical, ExtentEntry& entry) {
  layer.mapped_blocks -= entry.count();
  free_extent_later(entry.phys);
  layer.map.erase(logical);
  md_->mark_extent(layer, logical, nullptr);
}

void Store::Impl::drop_layer(Layer& layer) {
  layer.map.for_each([&](uint32_t, ExtentEntry& entry) { free_extent_later(entry.phys); });
  if (layer.parent != nullptr) {
    --layer.parent->children;
  }
  const uint32_t id = layer.id;
  md_->layers.erase(id);  // destroys `layer`
  md_->mark_layer_deleted(id);
}

// ---------------------------------------------------------------------------
// Submission
// ---------------------------------------------------------------------------

SubIo* Store::Impl::take_sub() {
  SubIo* sub = free_subs_;
  if (sub != nullptr) {
    free_subs_ = sub->next_free;
    ++subs_in_use_;
    sub->entry = nullptr;
    sub->layer = nullptr;
    sub->sets_bits = false;
    sub->freed_phys = kNoExtent;
    sub->request.fua = false;
    sub->request.zero_fill = false;
  }
  return sub;
}

void Store::Impl::release_sub(SubIo& sub) {
  sub.next_free = free_subs_;
  free_subs_ = &sub;
  --subs_in_use_;
}

void Store::Impl::submit(StoreIo& io) {
  ++in_flight_;
  io.store_next = nullptr;
  io.store_cursor = 0;
  io.store_pending = 0;
  io.store_result = 0;
  io.store_layer = nullptr;
  io.store_internal = false;
  io.store_remapped = false;
  start_io(io);
}

void Store::Impl::complete(StoreIo& io, int result) {
  io.store_result = result;
  if (io.store_internal) {
    io.on_complete(io, result);
    return;
  }
  completed_.push_back(io);
}

void Store::Impl::start_io(StoreIo& io) {
  if (io.op == StoreOp::kFlush) {
    if (failed_) {
      complete(io, -EIO);
      return;
    }
    flush_waiters_.push_back(io);
    maybe_start_commit();
    return;
  }
  if (io.length == 0 || io.offset % kBlock != 0 || io.length % kBlock != 0 ||
      ((io.op == StoreOp::kRead || io.op == StoreOp::kWrite) &&
       (io.buffer == nullptr || reinterpret_cast<uintptr_t>(io.buffer) % kIoAlignment != 0))) {
    complete(io, -EINVAL);
    return;
  }
  Layer* layer = nullptr;
  uint64_t size = 0;
  if (io.snapshot != 0) {
    Layer* snapshot = md_->layer(io.snapshot);
    if (snapshot == nullptr || !snapshot->is_snapshot()) {
      complete(io, -ENOENT);
      return;
    }
    if (io.op != StoreOp::kRead) {
      complete(io, -EROFS);
      return;
    }
    layer = snapshot;
    size = snapshot->size_bytes;
  } else {
    Volume* volume = md_->volume(io.volume);
    if (volume == nullptr) {
      complete(io, -ENOENT);
      return;
    }
    layer = volume->head;
    size = volume->size_bytes;
  }
  if (io.offset > size || io.length > size - io.offset) {
    complete(io, -EINVAL);
    return;
  }
  if (failed_ && is_data_write(io.op)) {
    complete(io, -EIO);
    return;
  }
  io.store_layer = layer;
  if (!issue(io)) {
    parked_.push_back(io);
  }
}

bool Store::Impl::issue(StoreIo& io) {
  auto& layer = *static_cast<Layer*>(io.store_layer);
  bool done = false;
  switch (io.op) {
    case StoreOp::kRead:
      done = issue_read(io, layer, io.snapshot == 0);
      break;
    case StoreOp::kWrite:
      done = issue_write(io, layer);
      break;
    case StoreOp::kDiscard:
    case StoreOp::kWriteZeroes:
      done = issue_zero(io, layer);
      break;
    case StoreOp::kFlush:
      done = true;
      break;
  }
  if (done) {
    maybe_finish(io);
  }
  return done;
}

void Store::Impl::maybe_finish(StoreIo& io) {
  if (io.store_cursor < io.length || io.store_pending != 0) {
    return;
  }
  if (io.op == StoreOp::kWrite && io.fua && io.store_result == 0) {
    // FUA: durable on completion, so it completes with the next commit
    // (whose capture includes this write's bits and whose data flush
    // includes its data).
    if (failed_) {
      complete(io, -EIO);
      return;
    }
    flush_waiters_.push_back(io);
    maybe_start_commit();
    return;
  }
  if (io.store_remapped && journal_mappings_ && io.store_result == 0) {
    // The new mapping must be on the device (not necessarily durable)
    // before the request completes, or a killed process would lose it.
    if (failed_) {
      complete(io, -EIO);
      return;
    }
    map_waiters_.push_back(io);
    maybe_start_commit();
    return;
  }
  complete(io, io.store_result);
}

void Store::Impl::load_chain(Layer& top, uint32_t logical) {
  uint32_t depth = 0;
  for (Layer* l = &top; l != nullptr; l = l->parent) {
    if (depth == chain_.size()) {
      chain_.resize(chain_.size() * 2);  // deeper chain than ever before
    }
    chain_[depth++] = l->map.find(logical);
  }
  chain_depth_ = depth;
}

bool Store::Impl::issue_read(StoreIo& io, Layer& top, bool top_is_head) {
  while (io.store_cursor < io.length) {
    const auto [logical, first, count] = next_slice(io, g_.extent_blocks);
    load_chain(top, logical);
    auto source = [&](uint32_t b) -> int {
      for (uint32_t k = 0; k < chain_depth_; ++k) {
        if (chain_[k] != nullptr && chain_[k]->test(b)) {
          return static_cast<int>(k);
        }
      }
      return -1;
    };
    uint32_t b = first;
    while (b < first + count) {
      const int src = source(b);
      uint32_t end = b + 1;
      while (end < first + count && source(end) == src) {
        ++end;
      }
      std::byte* buffer = io.buffer + io.store_cursor;
      const uint64_t bytes = uint64_t{end - b} * kBlock;
      if (src < 0 && FixedBufferWindows::current().find(buffer, bytes) == nullptr) {
        std::memset(buffer, 0, bytes);  // no layer holds these blocks
      } else if (src < 0) {
        // A zero-copy request (fixed_buffer.h): this process cannot touch
        // its memory, so the device fills the hole.
        SubIo* sub = take_sub();
        if (sub == nullptr) {
          return false;
        }
        sub->parent = &io;
        sub->request.op = IoOp::kRead;
        sub->request.zero_fill = true;
        sub->request.offset = 0;
        sub->request.length = bytes;
        sub->request.buffer = buffer;
        ++io.store_pending;
        device_.submit(sub->request);
      } else {
        SubIo* sub = take_sub();
        if (sub == nullptr) {
          return false;
        }
        ExtentEntry* entry = chain_[static_cast<uint32_t>(src)];
        if (src == 0 && top_is_head) {
          ++entry->inflight;  // pin against a concurrent discard freeing it
          sub->entry = entry;
          sub->layer = &top;
          sub->logical = logical;
        }
        sub->parent = &io;
        sub->request.op = IoOp::kRead;
        sub->request.offset = g_.data_offset(entry->phys, b);
        sub->request.length = bytes;
        sub->request.buffer = buffer;
        ++io.store_pending;
        device_.submit(sub->request);
      }
      io.store_cursor += bytes;
      b = end;
    }
  }
  return true;
}

bool Store::Impl::issue_write(StoreIo& io, Layer& head) {
  while (io.store_cursor < io.length) {
    const auto [logical, first, count] = next_slice(io, g_.extent_blocks);
    SubIo* sub = take_sub();
    if (sub == nullptr) {
      return false;
    }
    ExtentEntry* entry = head.map.find(logical);
    bool sets_new_bits = true;
    if (entry == nullptr) {
      // First write to this logical extent in this layer: a fresh extent.
      // Its allocation reaches the journal with the first completed block.
      const uint32_t phys = allocate_extent();
      if (phys == kNoExtent) {
        release_sub(*sub);
        io.store_result = -ENOSPC;
        io.store_cursor = io.length;
        return true;
      }
      entry = head.map.insert(logical, phys);
    } else {
      sets_new_bits = !holds_all(*entry, first, count);
    }
    // A write that will set new block bits is journaled before it completes.
    // Its data must reach the medium ahead of that record (else a power cut
    // could keep the record and not the data, and expose whatever the block
    // held before - another volume's old data): either FUA here, or the
    // device flush the mapping commit issues before its journal write.
    // Overwrites of held blocks stay plain writes with no metadata I/O.
    sub->request.fua = fua_new_data_ && sets_new_bits;
    ++entry->inflight;
    sub->parent = &io;
    sub->entry = entry;
    sub->layer = &head;
    sub->logical = logical;
    sub->sets_bits = true;
    sub->first_block = static_cast<uint16_t>(first);
    sub->block_count = static_cast<uint16_t>(count);
    sub->request.op = IoOp::kWrite;
    sub->request.offset = g_.data_offset(entry->phys, first);
    sub->request.length = uint64_t{count} * kBlock;
    sub->request.buffer = io.buffer + io.store_cursor;
    ++io.store_pending;
    device_.submit(sub->request);
    io.store_cursor += uint64_t{count} * kBlock;
  }
  return true;
}

bool Store::Impl::issue_zero(StoreIo& io, Layer& head) {
  while (io.store_cursor < io.length) {
    // Plain variables, not a structured binding: the lambdas below capture
    // them, which clang 14 (the fuzz build) does not allow for bindings.
    const ExtentSlice slice = next_slice(io, g_.extent_blocks);
    const uint32_t logical = slice.logical;
    const uint32_t first = slice.first;
    const uint32_t count = slice.count;
    load_chain(head, logical);
    ExtentEntry* entry = chain_[0];
    // Blocks a parent layer holds must read as zeros without touching the
    // parent: write zeros into the head. Blocks only the head holds are
    // simply unmapped.
    uint64_t in_parent[4] = {0, 0, 0, 0};
    for (uint32_t k = 1; k < chain_depth_; ++k) {
      if (chain_[k] != nullptr) {
        for (int w = 0; w < 4; ++w) {
          in_parent[w] |= chain_[k]->bits[w];
        }
      }
    }
    uint64_t range[4] = {0, 0, 0, 0};
    for (uint32_t b = first; b < first + count; ++b) {
      range[b >> 6] |= uint64_t{1} << (b & 63);
    }
    uint64_t zero_mask[4];
    uint64_t clear_mask[4];
    bool any_zero = false;
    for (int w = 0; w < 4; ++w) {
      zero_mask[w] = range[w] & in_parent[w];
      clear_mask[w] = entry ? (range[w] & ~in_parent[w] & entry->bits[w]) : 0;
      any_zero |= zero_mask[w] != 0;
    }
    auto runs_of = [&](const uint64_t(&mask)[4]) {
      uint32_t runs = 0;
      for_each_run(mask, first, count, [&](uint32_t, uint32_t) { ++runs; });
      return runs;
    };
    bool frees_extent = false;
    if (entry != nullptr && !any_zero && entry->inflight == 0) {
      frees_extent = true;
      for (int w = 0; w < 4; ++w) {
        frees_extent &= (entry->bits[w] & ~clear_mask[w]) == 0;
      }
    }
    const uint32_t zero_runs = runs_of(zero_mask);
    const uint32_t needed = zero_runs + (frees_extent ? 1 : runs_of(clear_mask));
    if (needed > subs_.size() - subs_in_use_) {
      if (subs_in_use_ == 0) {
        // Cannot happen with >= 16 device requests and <= 129 runs per extent.
        io.store_result = -EIO;
        io.store_cursor = io.length;
        return true;
      }
      return false;
    }
    // Unmap the head-only blocks.
    if (entry != nullptr) {
      uint32_t cleared = 0;
      for (int w = 0; w < 4; ++w) {
        cleared += static_cast<uint32_t>(std::popcount(clear_mask[w]));
        entry->bits[w] &= ~clear_mask[w];
      }
      if (cleared > 0) {
        head.mapped_blocks -= cleared;
        md_->mark_extent(head, logical, entry);
        io.store_remapped = true;
      }
      if (frees_extent) {
        const uint32_t phys = entry->phys;
        head.map.erase(logical);
        md_->mark_extent(head, logical, nullptr);
        io.store_remapped = true;
        // The extent becomes reusable only once this discard completed and
        // the removal is committed (sub_done -> pending_frees_).
        ++limbo_extents_;
        SubIo* sub = take_sub();
        sub->parent = &io;
        sub->freed_phys = phys;
        sub->request.op = IoOp::kDiscard;
        sub->request.offset = g_.data_offset(phys, 0);
        sub->request.length = g_.extent_bytes();
        sub->request.buffer = nullptr;
        ++io.store_pending;
        device_.submit(sub->request);
        entry = nullptr;
      } else {
        // Pass the discard of unmapped blocks down (their content no
        // longer matters; the extent stays allocated).
        for_each_run(clear_mask, first, count, [&](uint32_t b, uint32_t end) {
          SubIo* sub = take_sub();
          sub->parent = &io;
          sub->request.op = IoOp::kDiscard;
          sub->request.offset = g_.data_offset(entry->phys, b);
          sub->request.length = uint64_t{end - b} * kBlock;
          sub->request.buffer = nullptr;
          ++io.store_pending;
          device_.submit(sub->request);
        });
      }
    }
    // Zero-write the blocks parents hold.
    if (any_zero) {
      if (entry == nullptr) {
        const uint32_t phys = allocate_extent();
        if (phys == kNoExtent) {
          io.store_result = -ENOSPC;
          io.store_cursor = io.length;
          return true;
        }
        entry = head.map.insert(logical, phys);
      }
      for_each_run(zero_mask, first, count, [&](uint32_t b, uint32_t end) {
        SubIo* sub = take_sub();
        ++entry->inflight;
        sub->parent = &io;
        sub->entry = entry;
        sub->layer = &head;
        sub->logical = logical;
        sub->sets_bits = true;
        sub->first_block = static_cast<uint16_t>(b);
        sub->block_count = static_cast<uint16_t>(end - b);
        sub->request.op = IoOp::kWrite;
        sub->request.offset = g_.data_offset(entry->phys, b);
        sub->request.length = uint64_t{end - b} * kBlock;
        sub->request.buffer = zeros_.data();
        sub->request.fua = fua_new_data_;  // sets bits: see issue_write
        ++io.store_pending;
        device_.submit(sub->request);
      });
    }
    io.store_cursor += uint64_t{count} * kBlock;
  }
  return true;
}

void Store::Impl::sub_done(SubIo& sub, int result) {
  StoreIo& io = *sub.parent;
  if (sub.entry != nullptr) {
    ExtentEntry& entry = *sub.entry;
    --entry.inflight;
    if (sub.sets_bits && result == 0) {
      uint32_t added = 0;
      for (uint32_t b = sub.first_block; b < uint32_t{sub.first_block} + sub.block_count; ++b) {
        if (!entry.test(b)) {
          entry.set(b);
          ++added;
        }
      }
      if (added > 0) {
        sub.layer->mapped_blocks += added;
        md_->mark_extent(*sub.layer, sub.logical, &entry);
        io.store_remapped = true;
      }
    }
    if (entry.inflight == 0 && entry.empty()) {
      // Nothing landed in it (failed write, or everything discarded while
      // this request was in flight): give it back.
      remove_entry(*sub.layer, sub.logical, entry);
    }
  }
  if (sub.freed_phys != kNoExtent) {
    --limbo_extents_;
    free_extent_later(sub.freed_phys);
    // A failed discard loses nothing: the extent is unmapped either way.
    result = 0;
  }
  if (sub.request.op == IoOp::kDiscard && result == -EOPNOTSUPP) {
    result = 0;  // devices without discard: the blocks are unmapped anyway
  }
  if (result < 0) {
    note_data_error(sub.request, result);
  }
  if (result < 0 && io.store_result == 0) {
    io.store_result = result;
  }
  --io.store_pending;
  release_sub(sub);
  maybe_finish(io);
  resume_parked();
}

void Store::Impl::note_data_error(const IoRequest& request, int result) {
  // The StoreIo fails with the device's errno and the store stays usable
  // (a failed write leaves the block's old mapping, or - in place - old or
  // new data, as the disk does). Logged at the 1st, 2nd, 4th, 8th, ...
  // error of each kind so a dying disk cannot flood the log.
  uint64_t& count = request.op == IoOp::kRead ? read_errors_ : write_errors_;
  ++count;
  if ((count & (count - 1)) == 0) {
    spdlog::warn(
        "dbs store {}: device {} of {} bytes at offset {} failed: {} ({} {} errors so far)",
        device_.name(), to_string(request.op), request.length, request.offset,
        std::error_code(-result, std::generic_category()).message(), count,
        request.op == IoOp::kRead ? "read" : "write");
  }
}

void Store::Impl::resume_parked() {
  while (!parked_.empty() && free_subs_ != nullptr) {
    StoreIo* io = parked_.pop_front();
    if (!issue(*io)) {
      parked_.push_front(*io);
      return;
    }
  }
}

unsigned Store::Impl::poll(bool wait) {
  if (completed_.empty()) {
    device_.poll(wait && device_.in_flight() > 0);
  } else {
    device_.poll(false);
  }
  unsigned ran = 0;
  while (StoreIo* io = completed_.pop_front()) {
    --in_flight_;
    ++ran;
    io->on_complete(*io, io->store_result);
  }
  return ran;
}

// ---------------------------------------------------------------------------
// Commit: capture -> data flush -> metadata write -> flush -> release frees
// ---------------------------------------------------------------------------

void Store::Impl::maybe_start_commit() {
  if (phase_ != CommitPhase::kIdle || (flush_waiters_.empty() && map_waiters_.empty())) {
    return;
  }
  if (failed_) {
    while (StoreIo* io = flush_waiters_.pop_front()) {
      complete(*io, -EIO);
    }
    while (StoreIo* io = map_waiters_.pop_front()) {
      complete(*io, -EIO);
    }
    return;
  }
  // One commit serves every waiter: a flushed one if any FLUSH / FUA /
  // control operation waits, else a journal write of the mappings only.
  commit_durable_ = !flush_waiters_.empty();
  commit_waiters_ = flush_waiters_;
  flush_waiters_ = IoQueue{};
  while (StoreIo* io = map_waiters_.pop_front()) {
    commit_waiters_.push_back(*io);
  }
  // Capture now: only writes completed so far, all of which the data flush
  // submitted next covers (mapping-only commits with kFuaData: whose data
  // was FUA, so they skip that flush).
  body_.clear();
  commit_full_ = false;
  if (force_checkpoint_ || md_->has_changes()) {
    if (force_checkpoint_ || !md_->capture_delta(body_) ||
        journal_pos_ + blocks_for_body(body_.size()) > g_.journal_blocks) {
      body_.clear();
      md_->serialize_full(body_);
      commit_full_ = true;
      // A checkpoint starts a new epoch; journal commits of that epoch may
      // only follow a durable checkpoint, so it is always a flushed commit.
      commit_durable_ = true;
    }
  }
  if (!commit_durable_) {
    if (body_.empty()) {
      finish_commit(0);  // an earlier commit already wrote these changes
      return;
    }
    if (!fua_new_data_) {
      // Mapping commit, flush first: the data of every write it captured
      // completed before the capture, so this flush makes it durable before
      // the record can be. It also makes every earlier journal commit
      // durable before this one is written (recovery relies on it: a valid
      // commit after a damaged one proves corruption, docs/dbs.md). No flush
      // after the record (see meta_write_done).
      phase_ = CommitPhase::kDataFlush;
      device_.submit(flush_request_);
      return;
    }
    // kFuaData: no flush before this record, so the record itself is FUA -
    // otherwise a power cut could lose it and keep the next one, and
    // recovery could not tell that from a corrupted journal.
    meta_fua_ = true;
    write_metadata();
    return;
  }
  committing_frees_.swap(pending_frees_);
  pending_frees_.clear();
  phase_ = CommitPhase::kDataFlush;
  device_.submit(flush_request_);
}

void Store::Impl::commit_step(int result) {
  if (result < 0) {
    ++write_errors_;  // a device error like a failed data write; fail() logs it
    fail(phase_ == CommitPhase::kDataFlush
             ? "device flush of data before metadata commit " + std::to_string(seq_ + 1)
             : "device flush after writing metadata commit " + std::to_string(seq_ + 1),
         result);
    finish_commit(result);
    return;
  }
  if (phase_ == CommitPhase::kDataFlush) {
    if (body_.empty()) {
      finish_commit(0);
      return;
    }
    write_metadata();
    return;
  }
  if (phase_ == CommitPhase::kMetaFlush) {
    const bool checkpoint = commit_full_;
    advance_journal();
    if (checkpoint) {
      start_epoch();
      return;
    }
    finish_commit(0);
  }
}

void Store::Impl::start_epoch() {
  // The checkpoint is durable. Before its waiters complete, journal block 0
  // gets an empty commit of the new epoch (FUA): should the checkpoint be
  // damaged later, this record proves it was complete, and recovery refuses
  // instead of falling back to the older checkpoint, which lacks what the
  // newer one holds beyond its journal.
  body_.clear();
  commit_full_ = false;
  meta_fua_ = true;
  write_metadata(CommitPhase::kEpochStart);
}

void Store::Impl::advance_journal() {
  ++seq_;
  if (commit_full_) {
    ++epoch_;
    active_checkpoint_ = 1 - active_checkpoint_;
    journal_pos_ = 0;
    ++checkpoints_;
    force_checkpoint_ = false;
  } else {
    journal_pos_ += commit_blocks_;
    ++commits_;
    if (!commit_durable_) {
      ++mapping_commits_;
    }
  }
}

void Store::Impl::write_metadata(CommitPhase phase) {
  const uint64_t seq = seq_ + 1;
  uint64_t start;
  if (commit_full_) {
    const int area = 1 - active_checkpoint_;
    frame_body(g_, MetaType::kCheckpoint, epoch_ + 1, seq, body_, meta_buffer_);
    start = g_.checkpoint_start[area];
    if (meta_buffer_.size() / kBlock > g_.checkpoint_blocks) {
      // Limits are enforced at create: a bug if reached.
      fail("checkpoint of " + std::to_string(meta_buffer_.size() / kBlock) +
               " blocks exceeds the checkpoint area of " + std::to_string(g_.checkpoint_blocks) +
               " blocks; writing it",
           -EFBIG);
      finish_commit(-EFBIG);
      return;
    }
  } else {
    frame_body(g_, MetaType::kJournal, epoch_, seq, body_, meta_buffer_);
    start = g_.journal_start + journal_pos_;
  }
  commit_blocks_ = meta_buffer_.size() / kBlock;
  commit_start_block_ = start;
  constexpr uint64_t kPiece = 256;  // blocks per request
  const uint64_t pieces = (commit_blocks_ + kPiece - 1) / kPiece;
  if (meta_requests_.size() < pieces) {
    meta_requests_.resize(pieces);
  }
  phase_ = phase;
  meta_pending_ = static_cast<uint32_t>(pieces);
  meta_error_ = 0;
  for (uint64_t i = 0; i < pieces; ++i) {
    IoRequest& request = meta_requests_[i];
    const uint64_t n = std::min(kPiece, commit_blocks_ - i * kPiece);
    request = IoRequest{};
    request.op = IoOp::kWrite;
    request.offset = (start + i * kPiece) * kBlock;
    request.length = n * kBlock;
    request.buffer = meta_buffer_.data() + i * kPiece * kBlock;
    request.fua = meta_fua_;
    request.on_complete = &on_meta_write;
    request.user_data = this;
    device_.submit(request);
  }
  meta_fua_ = false;
}

void Store::Impl::meta_write_done(int result) {
  if (result < 0) {
    ++write_errors_;  // each failed piece; fail() below logs the first
    if (meta_error_ == 0) {
      meta_error_ = result;
    }
  }
  if (--meta_pending_ > 0) {
    return;
  }
  if (meta_error_ < 0) {
    // A torn run fails its checksums: recovery stops before it.
    const std::string range = "blocks " + std::to_string(commit_start_block_) + ".." +
                              std::to_string(commit_start_block_ + commit_blocks_ - 1);
    fail(commit_full_ ? "write of checkpoint epoch " + std::to_string(epoch_ + 1) + " (area " +
                            (active_checkpoint_ == 0 ? "B" : "A") + ", " + range + ")"
                      : "write of journal commit " + std::to_string(seq_ + 1) + " (" + range + ")",
         meta_error_);
    finish_commit(meta_error_);
    return;
  }
  if (phase_ == CommitPhase::kEpochStart) {
    // Written FUA: durable. Not counted in stats().commits.
    ++seq_;
    journal_pos_ += commit_blocks_;
    finish_commit(0);
    return;
  }
  if (!commit_durable_) {
    // Mapping-only commit: on the device now (it survives a killed process).
    // kFlushBeforeRecord: not durable; the next commit's flush covers it.
    // kFuaData: written FUA, durable.
    advance_journal();
    finish_commit(0);
    return;
  }
  phase_ = CommitPhase::kMetaFlush;
  device_.submit(flush_request_);
}

void Store::Impl::finish_commit(int result) {
  phase_ = CommitPhase::kIdle;
  if (result < 0) {
    // The metadata on the device is now unknown beyond the last durable
    // commit: stop accepting changes (fail() was called with the cause);
    // reopening recovers.
    result = -EIO;
  } else if (commit_durable_) {
    for (uint32_t phys : committing_frees_) {
      free_bits_[phys >> 6] |= uint64_t{1} << (phys & 63);
      ++free_count_;
    }
  }
  committing_frees_.clear();
  // A checkpoint of a big store needs tens of MB of buffers; journal commits
  // need little. Keep small buffers for reuse, give big ones back.
  constexpr size_t kKeepBytes = 4 << 20;
  if (body_.capacity() > kKeepBytes) {
    std::vector<std::byte>().swap(body_);
  }
  if (meta_buffer_.capacity() > kKeepBytes) {
    meta_buffer_.release();
  }
  md_->trim_change_log();
  while (StoreIo* io = commit_waiters_.pop_front()) {
    complete(*io, result);
  }
  maybe_start_commit();
}

Status Store::Impl::run_sync(StoreIo& io) {
  bool done = false;
  io.user_data = &done;
  io.on_complete = [](StoreIo& completed, int) { *static_cast<bool*>(completed.user_data) = true; };
  submit(io);
  while (!done) {
    poll(true);
  }
  if (io.store_result == 0) {
    return ok_status();
  }
  std::string what = std::string(device_.name()) + ": ";
  if (io.op == StoreOp::kFlush) {
    what += "flush failed";
  } else {
    what += std::string(io.snapshot != 0 ? "snapshot " + std::to_string(io.snapshot)
                                         : "volume " + std::to_string(io.volume)) +
            ": " + to_string(io.op) + " of " + std::to_string(io.length) + " bytes at offset " +
            std::to_string(io.offset) + " failed";
  }
  if (failed_ && io.op != StoreOp::kRead) {
    what += " (" + failure_ + ")";
  }
  return Error(-io.store_result, what);
}

Status Store::Impl::commit_sync() {
  if (failed_) {
    return Error(EIO, failure_);
  }
  if (control_commit_busy_) {
    // An earlier commit_sync() timed out; its waiter is still queued.
    UBLKVOL_TRY(wait_device([&] { return !control_commit_busy_; }, "an earlier metadata commit"));
  }
  StoreIo& io = control_commit_;
  io = StoreIo{};
  io.op = StoreOp::kFlush;
  io.user_data = this;
  io.on_complete = [](StoreIo& completed, int) {
    static_cast<Store::Impl*>(completed.user_data)->control_commit_busy_ = false;
  };
  io.store_internal = true;
  control_commit_busy_ = true;
  flush_waiters_.push_back(io);
  maybe_start_commit();
  UBLKVOL_TRY(wait_device([&] { return !control_commit_busy_; }, "a metadata commit"));
  if (io.store_result != 0) {
    return Error(-io.store_result,
                 failed_ ? failure_ : std::string(device_.name()) + ": metadata commit failed");
  }
  return ok_status();
}

Status Store::Impl::drain() {
  return wait_device(
      [&] {
        if (phase_ == CommitPhase::kIdle && (!flush_waiters_.empty() || !map_waiters_.empty())) {
          maybe_start_commit();
        }
        return subs_in_use_ == 0 && parked_.empty() && phase_ == CommitPhase::kIdle &&
               flush_waiters_.empty() && map_waiters_.empty();
      },
      "the data path to drain");
}

Status Store::Impl::quiesce() {
  return wait_device([&] { return device_.in_flight() == 0; }, "closing the store");
}

void Store::Impl::poll_device_for(std::chrono::milliseconds tick) {
  if (device_.poll(false) > 0) {
    return;
  }
  const int fd = device_.completion_fd();
  if (fd >= 0) {
    pollfd pfd{fd, POLLIN, 0};
    (void)::poll(&pfd, 1, static_cast<int>(tick.count()));
    return;
  }
  // Devices without a completion fd make progress inside poll(): a memory
  // device completes at once, a fault device returns at once when only
  // hung requests are left - do not spin on those.
  if (device_.poll(true) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

template <typename Done>
Status Store::Impl::wait_device(Done&& done, const char* waiting_for) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + device_timeout_;
  while (!done()) {
    const auto now = Clock::now();
    if (now >= deadline) {
      const double seconds = std::chrono::duration<double>(device_timeout_).count();
      char when[32];
      (void)std::snprintf(when, sizeof(when), "%g", seconds);
      return Error(ETIMEDOUT, std::string(device_.name()) + " did not complete " +
                                  std::to_string(device_.in_flight()) + " requests within " + when +
                                  " s (waiting for " + waiting_for + ")");
    }
    poll_device_for(std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(50),
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
            std::chrono::milliseconds(1)));
  }
  return ok_status();
}

Status Store::Impl::control_io(IoOp op, uint64_t offset, uint64_t length, std::byte* buffer) {
  if (control_request_busy_) {
    UBLKVOL_TRY(
        wait_device([&] { return !control_request_busy_; }, "an earlier control-path request"));
  }
  IoRequest& request = control_request_;
  request.op = op;
  request.fua = false;
  request.offset = offset;
  request.length = length;
  request.buffer = buffer;
  control_request_busy_ = true;
  control_request_result_ = 0;
  device_.submit(request);
  UBLKVOL_TRY(wait_device([&] { return !control_request_busy_; }, "a control-path request"));
  if (control_request_result_ < 0) {
    return Error(-control_request_result_, std::string(device_.name()) + ": " + to_string(op) +
                                               " of " + std::to_string(length) +
                                               " bytes at offset " + std::to_string(offset) +
                                               " failed");
  }
  return ok_status();
}

}  // namespace ublkvol::dbs
