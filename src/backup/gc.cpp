// Backup deletion and chunk garbage collection (include/ublkvol/backup/gc.h).
#include "ublkvol/backup/gc.h"

#include <cerrno>
#include <set>

#include "aligned_buffer.h"

namespace ublkvol::backup {

namespace {

// Collection proper; the caller holds the exclusive lock.
Result<GcResult> collect_locked(Repository& repo, const GcOptions& options) {
  std::set<ChunkHash> live;
  for (const bool partial : {false, true}) {
    UBLKVOL_ASSIGN_OR_RETURN(auto names, repo.list_backups(partial));
    for (const auto& name : names) {
      auto manifest = partial ? repo.get_partial(name) : repo.get_manifest(name);
      if (!manifest) {
        // Its chunks are unknown: removing anything could lose them.
        return manifest.error().with_context("garbage collection stopped before removing anything");
      }
      for (const auto& entry : manifest->entries) {
        live.insert(entry.hash);
      }
    }
  }
  GcResult result;
  result.chunks_live = live.size();
  UBLKVOL_ASSIGN_OR_RETURN(auto keys, repo.target().list("chunks/"));
  GcProgress progress;
  progress.chunks_total = keys.size();
  detail::Throttle throttle(options.rate_removals_per_sec);
  for (const auto& key : keys) {
    if (options.stop.stop_requested()) {
      return Error(ECANCELED, repo.target().describe() + ": garbage collection stopped after " +
                                  std::to_string(result.chunks_removed) +
                                  " chunks removed; the next collection removes the rest");
    }
    ++progress.chunks_checked;
    const auto slash = key.rfind('/');
    auto hash = ChunkHash::parse_hex(std::string_view(key).substr(slash + 1));
    if (!hash || Repository::chunk_key(*hash) != key) {
      continue;  // not a chunk this format writes: leave it alone
    }
    if (live.count(*hash) == 0) {
      UBLKVOL_TRY(repo.target().remove(key));
      ++result.chunks_removed;
      progress.chunks_removed = result.chunks_removed;
      throttle.wait(result.chunks_removed, options.stop);
    }
    if (options.on_progress) {
      options.on_progress(progress);
    }
  }
  UBLKVOL_TRY(repo.target().remove_temporaries());
  return result;
}

}  // namespace

Result<GcResult> collect_garbage(Repository& repo, const GcOptions& options) {
  UBLKVOL_ASSIGN_OR_RETURN(auto lock, repo.target().lock(/*exclusive=*/true));
  return collect_locked(repo, options);
}

Result<GcResult> delete_backup(Repository& repo, std::string_view backup,
                               const GcOptions& options) {
  UBLKVOL_TRY(check_backup_name(backup, "backup name"));
  UBLKVOL_ASSIGN_OR_RETURN(auto lock, repo.target().lock(/*exclusive=*/true));
  const std::string manifest = Repository::manifest_key(backup);
  const std::string partial = Repository::partial_key(backup);
  UBLKVOL_ASSIGN_OR_RETURN(const bool has_manifest, repo.target().exists(manifest));
  UBLKVOL_ASSIGN_OR_RETURN(const bool has_partial, repo.target().exists(partial));
  if (!has_manifest && !has_partial && !options.missing_ok) {
    return Error(ENOENT, repo.target().describe() + ": no backup '" + std::string(backup) + "'");
  }
  // Manifests first: from here on its chunks are garbage, whatever happens.
  UBLKVOL_TRY(repo.target().remove(manifest));
  UBLKVOL_TRY(repo.target().remove(partial));
  return collect_locked(repo, options);
}

}  // namespace ublkvol::backup
