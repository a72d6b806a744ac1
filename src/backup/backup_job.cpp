// run_backup (include/ublkvol/backup/backup_job.h).
#include "ublkvol/backup/backup_job.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <thread>

#include "aligned_buffer.h"
#include "chunk_pipeline.h"

namespace ublkvol::backup {

namespace {

bool all_zero(std::span<const std::byte> block) {
  return block[0] == std::byte{0} &&
         std::memcmp(block.data(), block.data() + 1, block.size() - 1) == 0;
}

// Chunk offsets that `ranges` touch, ascending, from `from` on.
std::vector<uint64_t> chunks_of(const ByteRanges& ranges, uint64_t from) {
  std::vector<uint64_t> chunks;
  for (const auto& [offset, length] : ranges) {
    for (uint64_t c = offset / kChunkBytes * kChunkBytes; c < offset + length; c += kChunkBytes) {
      if (c >= from && (chunks.empty() || chunks.back() != c)) {
        chunks.push_back(c);
      }
    }
  }
  return chunks;
}

class ChunkBuilder {
 public:
  ChunkBuilder(SnapshotReader& reader, const BackupSource& source)
      : reader_(reader), source_(source), buffer_(kChunkBytes) {}

  // Fills the empty `chunk` with the chunk at `chunk_offset`: the snapshot's
  // mapped blocks there, all-zero blocks left out as holes. `bytes_read`
  // grows by what was read.
  Status build(uint64_t chunk_offset, uint64_t& bytes_read, ChunkContent& chunk) {
    const uint64_t end = std::min(chunk_offset + kChunkBytes, source_.size_bytes);
    // Ranges ending at or before the chunk are behind us: chunks come in
    // ascending order, so the cursor only moves forward.
    while (next_ < source_.mapped.size() &&
           source_.mapped[next_].first + source_.mapped[next_].second <= chunk_offset) {
      ++next_;
    }
    for (size_t i = next_; i < source_.mapped.size() && source_.mapped[i].first < end; ++i) {
      const uint64_t from = std::max(source_.mapped[i].first, chunk_offset);
      const uint64_t to = std::min(source_.mapped[i].first + source_.mapped[i].second, end);
      auto piece = buffer_.span().subspan(from - chunk_offset, to - from);
      if (auto read = reader_.read(from, piece); !read) {
        return read.error().with_context("reading volume '" + source_.volume + "' snapshot '" +
                                         source_.snapshot + "' at offset " + std::to_string(from));
      }
      bytes_read += to - from;
      for (uint64_t at = from; at < to; at += kBlockBytes) {
        auto block = buffer_.span().subspan(at - chunk_offset, kBlockBytes);
        if (!all_zero(block)) {
          chunk.set_block(static_cast<uint32_t>((at - chunk_offset) / kBlockBytes));
          chunk.data.insert(chunk.data.end(), block.begin(), block.end());
        }
      }
    }
    return ok_status();
  }

 private:
  SnapshotReader& reader_;
  const BackupSource& source_;
  detail::AlignedBuffer buffer_;
  size_t next_ = 0;
};

}  // namespace

Result<Manifest> run_backup(Repository& repo, SnapshotReader& reader, const BackupSource& source,
                            const BackupOptions& options) {
  UBLKVOL_TRY(check_backup_name(options.name, "backup name"));
  const std::string what = repo.target().describe() + ": backup '" + options.name + "'";
  for (const std::string* field : {&source.volume, &source.snapshot, &source.store_uuid}) {
    if (field->size() > kMaxNameBytes) {
      return Error(ENAMETOOLONG, what + ": '" + *field + "' is longer than " +
                                     std::to_string(kMaxNameBytes) + " bytes");
    }
  }
  UBLKVOL_ASSIGN_OR_RETURN(auto lock, repo.target().lock(/*exclusive=*/false));
  UBLKVOL_ASSIGN_OR_RETURN(const bool exists,
                           repo.target().exists(Repository::manifest_key(options.name)));
  if (exists) {
    return Error(EEXIST, what + " exists already");
  }

  Manifest out;
  out.name = options.name;
  out.volume = source.volume;
  out.snapshot = source.snapshot;
  out.parent = options.parent;
  out.store_uuid = source.store_uuid;
  out.snapshot_id = source.snapshot_id;
  out.volume_size = source.size_bytes;
  out.create_time =
      options.create_time != 0 ? options.create_time : static_cast<uint64_t>(::time(nullptr));

  // The parent's entries for chunks this backup does not read.
  std::map<uint64_t, ManifestEntry> inherited;
  if (!options.parent.empty()) {
    if (!source.changed) {
      return Error(EINVAL, what + ": an incremental backup needs the ranges changed since " +
                               "parent '" + options.parent + "'");
    }
    auto parent = repo.get_manifest(options.parent);
    if (!parent) {
      return parent.error().with_context(what + ": parent");
    }
    if (parent->store_uuid != source.store_uuid || parent->volume_size > source.size_bytes) {
      return Error(EINVAL, what + ": parent backup '" + options.parent + "' (store " +
                               parent->store_uuid + ", " + std::to_string(parent->volume_size) +
                               " bytes) is not of this store's volume (store " + source.store_uuid +
                               ", " + std::to_string(source.size_bytes) +
                               " bytes): make a full backup");
    }
    for (const auto& entry : parent->entries) {
      inherited.emplace(entry.offset, entry);
    }
  } else if (source.changed) {
    return Error(EINVAL, what + ": changed ranges given without a parent backup");
  }

  // Resume from a partial manifest of the same snapshot.
  uint64_t start = 0;
  auto partial = repo.get_partial(options.name);
  if (partial.ok()) {
    if (partial->snapshot_id != source.snapshot_id || partial->store_uuid != source.store_uuid ||
        partial->parent != options.parent || partial->volume_size != source.size_bytes) {
      return Error(EEXIST, what + ": an interrupted backup of another snapshot ('" +
                               partial->volume + "' snapshot '" + partial->snapshot +
                               "', parent '" + partial->parent +
                               "') holds this name: delete it first");
    }
    out.entries = std::move(partial->entries);
    start = partial->next_offset;
  } else if (partial.error().kind() != ErrorKind::kNotFound) {
    return partial.error();
  }

  const std::vector<uint64_t> all = chunks_of(source.changed ? *source.changed : source.mapped, 0);
  BackupProgress progress;
  progress.chunks_total = all.size();
  progress.chunks_done =
      static_cast<uint64_t>(std::lower_bound(all.begin(), all.end(), start) - all.begin());
  const std::vector<uint64_t> todo(all.begin() + static_cast<std::ptrdiff_t>(progress.chunks_done),
                                   all.end());

  auto checkpoint = [&](uint64_t next_offset) -> Status {
    Manifest p = out;
    p.complete = false;
    p.next_offset = next_offset;
    return repo.put_manifest(p);
  };
  auto take_inherited = [&](uint64_t below) {
    for (auto it = inherited.lower_bound(start); it != inherited.end() && it->first < below;
         it = inherited.erase(it)) {
      out.entries.push_back(it->second);
    }
  };

  ChunkBuilder builder(reader, source);
  detail::Throttle throttle(options.rate_bytes_per_sec);
  const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
  detail::ChunkPipeline pipeline(options.workers != 0 ? options.workers : std::min(cpus, 16U),
                                 /*level=*/3);
  uint64_t since_checkpoint = 0;
  // Hashed and encoded chunks come back in read order: the entries, the
  // progress and the checkpoints are those of a single thread.
  const detail::ChunkPipeline::Retire retire = [&](detail::ChunkPipeline::Slot& slot) -> Status {
    take_inherited(slot.offset);
    inherited.erase(slot.offset);
    if (slot.chunk.block_count() > 0) {
      UBLKVOL_ASSIGN_OR_RETURN(
          const bool written,
          repo.put_encoded_chunk(slot.hash, std::span(slot.file).first(slot.file_bytes)));
      if (written) {
        ++progress.chunks_written;
      } else {
        ++progress.chunks_reused;
      }
      out.entries.push_back({slot.offset, slot.hash, slot.chunk.block_count()});
    }
    ++progress.chunks_done;
    if (options.on_progress) {
      options.on_progress(progress);
    }
    if (++since_checkpoint == options.checkpoint_chunks) {
      since_checkpoint = 0;
      UBLKVOL_TRY(checkpoint(slot.offset + kChunkBytes));
    }
    return ok_status();
  };
  // A stop: the chunks retired so far are checkpointed; the ones read but
  // not retired yet are read again by the resume.
  auto stopped = [&](uint64_t offset) -> Error {
    const uint64_t at = pipeline.abandon().value_or(offset);
    take_inherited(at);
    if (auto saved = checkpoint(at); !saved) {
      return saved.error();
    }
    return Error(ECANCELED, what + " stopped at volume offset " + std::to_string(at) +
                                "; run it again to resume");
  };
  for (const uint64_t offset : todo) {
    if (options.stop.stop_requested()) {
      return stopped(offset);
    }
    UBLKVOL_ASSIGN_OR_RETURN(detail::ChunkPipeline::Slot * slot,
                             pipeline.next(retire, options.stop));
    if (slot == nullptr) {
      return stopped(offset);
    }
    slot->offset = offset;
    UBLKVOL_TRY(builder.build(offset, progress.bytes_read, slot->chunk));
    pipeline.submit(*slot);
    throttle.wait(progress.bytes_read, options.stop);
  }
  UBLKVOL_TRY(pipeline.drain(retire, options.stop));
  if (auto left = pipeline.abandon()) {
    return stopped(*left);  // stopped while the last chunks were retired
  }
  take_inherited(UINT64_MAX);
  out.complete = true;
  out.next_offset = out.volume_size;
  UBLKVOL_TRY(repo.put_manifest(out));
  UBLKVOL_TRY(repo.remove_partial(options.name));
  return out;
}

}  // namespace ublkvol::backup
