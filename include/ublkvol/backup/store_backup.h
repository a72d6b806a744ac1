// Backup and restore against a DBS store (the glue between dbs::Store and
// run_backup / run_restore). The store is used from the calling thread only,
// through its synchronous wrappers: call these on the thread that owns it.
#pragma once

#include <string>
#include <string_view>

#include "ublkvol/backup/backup_job.h"
#include "ublkvol/backup/restore.h"
#include "ublkvol/dbs/store.h"

namespace ublkvol::backup {

// What a backup of `snapshot` of `volume` reads (the layer-map queries):
// incremental from `parent` if not empty (see backup_snapshot). Call on the
// store's thread; `backup` names the backup in errors.
Result<BackupSource> backup_source(dbs::Store& store, Repository& repo, std::string_view volume,
                                   std::string_view snapshot, const std::string& backup,
                                   const std::string& parent);

// Backs up snapshot `snapshot` of `volume`. With options.parent set, an
// incremental backup: the parent's snapshot (by its id in the manifest) must
// still be in this store, under `snapshot`; only the chunks with blocks
// changed since it are read (dbs::Store::changed_ranges).
Result<Manifest> backup_snapshot(dbs::Store& store, Repository& repo, std::string_view volume,
                                 std::string_view snapshot, const BackupOptions& options);

// Creates volume `volume` of the backup's size and restores the backup into
// it; on any failure the new volume is deleted again (nothing half-restored
// is left behind). Returns the new volume's id.
Result<dbs::VolumeId> restore_to_new_volume(dbs::Store& store, Repository& repo,
                                            std::string_view backup, std::string_view volume,
                                            const RestoreOptions& options);

}  // namespace ublkvol::backup
