// backup_snapshot / restore_to_new_volume (include/ublkvol/backup/store_backup.h).
#include "ublkvol/backup/store_backup.h"

#include <cerrno>

namespace ublkvol::backup {

namespace {

class StoreSnapshotReader final : public SnapshotReader {
 public:
  StoreSnapshotReader(dbs::Store& store, dbs::SnapshotId snapshot)
      : store_(store), snapshot_(snapshot) {}
  Status read(uint64_t offset, std::span<std::byte> buffer) override {
    return store_.read_snapshot(snapshot_, offset, buffer);
  }

 private:
  dbs::Store& store_;
  dbs::SnapshotId snapshot_;
};

class StoreVolumeWriter final : public VolumeWriter {
 public:
  StoreVolumeWriter(dbs::Store& store, dbs::VolumeId volume) : store_(store), volume_(volume) {}
  Status write(uint64_t offset, std::span<const std::byte> data) override {
    return store_.write(volume_, offset, data);
  }

 private:
  dbs::Store& store_;
  dbs::VolumeId volume_;
};

}  // namespace

Result<BackupSource> backup_source(dbs::Store& store, Repository& repo, std::string_view volume,
                                   std::string_view snapshot, const std::string& backup,
                                   const std::string& parent) {
  UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeId volume_id, store.find_volume(volume));
  UBLKVOL_ASSIGN_OR_RETURN(const dbs::SnapshotId snapshot_id,
                           store.find_snapshot(volume_id, snapshot));
  UBLKVOL_ASSIGN_OR_RETURN(const dbs::SnapshotInfo info, store.snapshot_info(snapshot_id));
  BackupSource source;
  source.volume = std::string(volume);
  source.snapshot = std::string(snapshot);
  source.store_uuid = store.uuid_string();
  source.snapshot_id = snapshot_id;
  source.size_bytes = info.size_bytes;
  UBLKVOL_ASSIGN_OR_RETURN(source.mapped, store.snapshot_mapped_ranges(snapshot_id));
  if (!parent.empty()) {
    auto manifest = repo.get_manifest(parent);
    if (!manifest) {
      return manifest.error().with_context("backup '" + backup + "': parent");
    }
    if (manifest->store_uuid != source.store_uuid) {
      return Error(EINVAL, "backup '" + backup + "': parent backup '" + parent +
                               "' was taken from store " + manifest->store_uuid + ", not " +
                               source.store_uuid + ": make a full backup");
    }
    auto changed = store.changed_ranges(manifest->snapshot_id, snapshot_id);
    if (!changed) {
      return changed.error().with_context(
          "backup '" + backup + "': parent backup '" + parent + "' (snapshot '" +
          manifest->snapshot + "', id " + std::to_string(manifest->snapshot_id) +
          ") cannot be the base of snapshot '" + std::string(snapshot) +
          "' (deleted, or not under it): make a full backup");
    }
    source.changed = std::move(*changed);
  }
  return source;
}

Result<Manifest> backup_snapshot(dbs::Store& store, Repository& repo, std::string_view volume,
                                 std::string_view snapshot, const BackupOptions& options) {
  UBLKVOL_ASSIGN_OR_RETURN(const BackupSource source, backup_source(store, repo, volume, snapshot,
                                                                    options.name, options.parent));
  StoreSnapshotReader reader(store, source.snapshot_id);
  return run_backup(repo, reader, source, options);
}

Result<dbs::VolumeId> restore_to_new_volume(dbs::Store& store, Repository& repo,
                                            std::string_view backup, std::string_view volume,
                                            const RestoreOptions& options) {
  UBLKVOL_ASSIGN_OR_RETURN(const Manifest manifest, repo.get_manifest(backup));
  UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeId id,
                           store.create_volume(volume, manifest.volume_size));
  StoreVolumeWriter writer(store, id);
  auto restored = run_restore(repo, backup, writer, options);
  Status committed = restored.ok() ? store.commit() : Status(restored.error());
  if (!committed) {
    // Nothing half-restored stays behind; the restore's error is the news.
    (void)store.delete_volume(id);
    return committed.error();
  }
  return id;
}

}  // namespace ublkvol::backup
