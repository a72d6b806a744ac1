// run_restore (include/ublkvol/backup/restore.h).
#include "ublkvol/backup/restore.h"

#include <cerrno>
#include <cstring>

#include "aligned_buffer.h"

namespace ublkvol::backup {

Result<Manifest> run_restore(Repository& repo, std::string_view backup, VolumeWriter& writer,
                             const RestoreOptions& options) {
  const std::string what = repo.target().describe() + ": backup '" + std::string(backup) + "'";
  UBLKVOL_ASSIGN_OR_RETURN(auto lock, repo.target().lock(/*exclusive=*/false));
  UBLKVOL_ASSIGN_OR_RETURN(Manifest manifest, repo.get_manifest(backup));
  RestoreProgress progress;
  progress.chunks_total = manifest.entries.size();
  if (manifest.entries.empty() && options.checkpoint) {
    UBLKVOL_TRY(options.checkpoint(manifest.volume_size));
  }
  // The store writes with O_DIRECT straight from the buffer: the decoded
  // blocks are laid out at their place in an aligned chunk buffer.
  detail::AlignedBuffer buffer(kChunkBytes);
  detail::Throttle throttle(options.rate_bytes_per_sec);
  uint32_t since_checkpoint = 0;
  for (size_t i = 0; i < manifest.entries.size(); ++i) {
    const ManifestEntry& entry = manifest.entries[i];
    if (entry.offset < options.resume_offset) {
      ++progress.chunks_done;
      ++progress.chunks_skipped;
      continue;
    }
    if (options.stop.stop_requested()) {
      return Error(ECANCELED,
                   what + ": restore stopped at volume offset " + std::to_string(entry.offset));
    }
    auto chunk = repo.get_chunk(entry.hash);
    if (!chunk) {
      return chunk.error().with_context(what + ": volume offset " + std::to_string(entry.offset));
    }
    if (chunk->block_count() != entry.blocks) {
      return Error(ErrorKind::kCorruption, EUCLEAN,
                   what + ": volume offset " + std::to_string(entry.offset) + ": chunk holds " +
                       std::to_string(chunk->block_count()) + " blocks, the manifest says " +
                       std::to_string(entry.blocks));
    }
    const uint64_t chunk_end = std::min(entry.offset + kChunkBytes, manifest.volume_size);
    // Runs of present blocks become one write each.
    size_t source = 0;
    uint32_t b = 0;
    while (b < kChunkBlocks) {
      if (!chunk->has_block(b)) {
        ++b;
        continue;
      }
      const uint32_t first = b;
      while (b < kChunkBlocks && chunk->has_block(b)) {
        ++b;
      }
      const uint64_t at = entry.offset + uint64_t{first} * kBlockBytes;
      const uint64_t length = uint64_t{b - first} * kBlockBytes;
      if (at + length > chunk_end) {
        return Error(ErrorKind::kCorruption, EUCLEAN,
                     what + ": volume offset " + std::to_string(entry.offset) +
                         ": chunk maps blocks beyond the volume size " +
                         std::to_string(manifest.volume_size));
      }
      auto run = buffer.span().subspan(uint64_t{first} * kBlockBytes, length);
      std::memcpy(run.data(), chunk->data.data() + source, length);
      source += length;
      if (auto written = writer.write(at, run); !written) {
        return written.error().with_context(what + ": writing volume offset " + std::to_string(at));
      }
      progress.bytes_written += length;
    }
    ++progress.chunks_done;
    const bool last = i + 1 == manifest.entries.size();
    if (options.checkpoint && (++since_checkpoint == options.checkpoint_chunks || last)) {
      since_checkpoint = 0;
      const uint64_t next = last ? manifest.volume_size : manifest.entries[i + 1].offset;
      if (auto saved = options.checkpoint(next); !saved) {
        return saved.error().with_context(what + ": checkpoint at volume offset " +
                                          std::to_string(next));
      }
    }
    if (options.on_progress) {
      options.on_progress(progress);
    }
    throttle.wait(progress.bytes_written, options.stop);
  }
  if (options.on_progress) {
    options.on_progress(progress);  // also when every chunk was skipped
  }
  return manifest;
}

}  // namespace ublkvol::backup
