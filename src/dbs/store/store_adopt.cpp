// Store::adopt_as_snapshot: a volume's content becomes a new snapshot of
// another volume, in one commit (restore of a backup as a snapshot of a
// live volume, docs/dbs.md "Adopting a volume as a snapshot").
//
// Why a whole volume and not a bare layer: the source is written through the
// ordinary data path (allocating writes, mapping commits, FLUSH), so an
// interrupted fill is an ordinary volume - crash-safe by the same rules as
// every other, resumable by writing the rest, and removable by
// delete_volume. Only the last step is new, and it is one record: the
// source's head layer turns into a read-only snapshot owned by `volume` and
// the source's volume record goes, both in the same journal commit (or
// checkpoint). A crash before that commit leaves the source volume and no
// snapshot; after it, the snapshot and no source volume. Nothing is copied.
#include <cerrno>
#include <chrono>
#include <string>

#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;
using namespace format;

Result<SnapshotId> Store::Impl::adopt_as_snapshot(VolumeId source_id, VolumeId volume_id,
                                                  std::string_view name) {
  UBLKVOL_TRY(validate_name("snapshot", name));
  auto source_found = find_volume(source_id);
  if (!source_found.ok()) {
    return source_found.error();
  }
  auto volume_found = find_volume(volume_id);
  if (!volume_found.ok()) {
    return volume_found.error();
  }
  Volume& source = **source_found;
  Volume& volume = **volume_found;
  if (source_id == volume_id) {
    return Error(EINVAL, "volume '" + volume.name + "' cannot become a snapshot of itself");
  }
  if (source.size_bytes != volume.size_bytes) {
    return Error(EINVAL, "volume '" + source.name + "' is " + std::to_string(source.size_bytes) +
                             " bytes, volume '" + volume.name + "' is " +
                             std::to_string(volume.size_bytes) +
                             " bytes: a snapshot must have its volume's size");
  }
  // The snapshot must stand alone: a head on a snapshot (a clone) would
  // read through layers of another volume, and the source's own snapshots
  // would lose their volume.
  if (source.head->parent != nullptr) {
    return Error(EINVAL, "volume '" + source.name + "' sits on snapshot " +
                             std::to_string(source.head->parent_id) +
                             ": only a volume without a parent can become a snapshot");
  }
  for (auto& [layer_id, layer] : md_->layers) {
    if (layer->is_snapshot() && layer->volume_id == source_id) {
      return Error(EINVAL, "volume '" + source.name +
                               "' has snapshots: only a volume without any can become a snapshot");
    }
    if (layer->is_snapshot() && !layer->hidden() && layer->volume_id == volume_id &&
        layer->name == name) {
      return Error(EEXIST, "volume '" + volume.name + "' already has a snapshot named '" +
                               std::string(name) + "'");
    }
  }
  // Waits for the data path (in-flight writes to the source complete and
  // are captured by the commit below, which flushes their data first).
  UBLKVOL_TRY(prologue());
  Layer& layer = *source.head;
  layer.flags = kLayerSnapshot;
  layer.name = std::string(name);
  layer.volume_id = volume_id;
  layer.create_time = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  md_->mark_layer(layer);
  md_->volumes.erase(source_id);
  md_->mark_volume_deleted(source_id);
  UBLKVOL_TRY(commit_sync());
  return layer.id;
}

Result<SnapshotId> Store::adopt_as_snapshot(VolumeId source, VolumeId volume,
                                            std::string_view name) {
  return impl_->adopt_as_snapshot(source, volume, name);
}

}  // namespace ublkvol::dbs
