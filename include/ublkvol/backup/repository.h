// Repository: the backup store on a Target - chunks, manifests, the index.
//
// Layout (docs/backup-format.md):
//   chunks/<first 2 hex digits>/<64 hex digits>   one file per distinct chunk
//   backups/<name>.manifest                       one per complete backup
//   backups/<name>.partial                        a backup running or interrupted
// The index is the backups/ listing: a backup exists exactly when its
// manifest does. Writing order keeps every manifest whole: the chunks a
// manifest (complete or partial) names are put before the manifest is.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/backup/format.h"
#include "ublkvol/backup/target.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

class Repository {
 public:
  explicit Repository(Target& target) : target_(target) {}

  [[nodiscard]] Target& target() { return target_; }

  static std::string chunk_key(const ChunkHash& hash);
  static std::string manifest_key(std::string_view backup);
  static std::string partial_key(std::string_view backup);

  // Encodes and puts the chunk unless a chunk with its hash is stored
  // already (content addressing: same content, same object). Returns the
  // hash; `written` (if given) says whether an object was written.
  Result<ChunkHash> put_chunk(const ChunkContent& chunk, bool* written = nullptr);
  // The same for a chunk hashed and encoded already (ChunkEncoder): puts
  // `file` as chunk `hash` unless it is stored; true if it was written.
  Result<bool> put_encoded_chunk(const ChunkHash& hash, std::span<const std::byte> file);
  // Reads and checks a chunk; errors are the target's or EUCLEAN from
  // decode_chunk, prefixed with the key.
  Result<ChunkContent> get_chunk(const ChunkHash& hash);

  Status put_manifest(const Manifest& manifest);  // complete or partial, by manifest.complete
  Result<Manifest> get_manifest(std::string_view backup);
  Result<Manifest> get_partial(std::string_view backup);
  Status remove_partial(std::string_view backup);

  // Names of the complete backups, sorted; `partial` lists the partial ones.
  Result<std::vector<std::string>> list_backups(bool partial = false);

  // Reads every chunk of the backup and checks it. Returns one line per
  // problem ("backup b: volume offset 4194304: chunk ...: chunk payload
  // checksum mismatch"); empty means the backup restores intact. An Error
  // only when the manifest itself cannot be read.
  Result<std::vector<std::string>> verify(std::string_view backup);

 private:
  Target& target_;
};

}  // namespace ublkvol::backup
