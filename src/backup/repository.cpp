// Repository: chunk / manifest objects on a Target (docs/backup-format.md).
#include "ublkvol/backup/repository.h"

#include <cerrno>

namespace ublkvol::backup {

namespace {

constexpr std::string_view kManifestSuffix = ".manifest";
constexpr std::string_view kPartialSuffix = ".partial";

}  // namespace

std::string Repository::chunk_key(const ChunkHash& hash) {
  const std::string hex = hash.hex();
  return "chunks/" + hex.substr(0, 2) + "/" + hex;
}

std::string Repository::manifest_key(std::string_view backup) {
  return "backups/" + std::string(backup) + std::string(kManifestSuffix);
}

std::string Repository::partial_key(std::string_view backup) {
  return "backups/" + std::string(backup) + std::string(kPartialSuffix);
}

Result<ChunkHash> Repository::put_chunk(const ChunkContent& chunk, bool* written) {
  const ChunkHash hash = chunk_hash(chunk);
  const std::string key = chunk_key(hash);
  UBLKVOL_ASSIGN_OR_RETURN(const bool present, target_.exists(key));
  if (!present) {
    UBLKVOL_TRY(target_.put(key, encode_chunk(chunk)));
  }
  if (written != nullptr) {
    *written = !present;
  }
  return hash;
}

Result<bool> Repository::put_encoded_chunk(const ChunkHash& hash, std::span<const std::byte> file) {
  const std::string key = chunk_key(hash);
  UBLKVOL_ASSIGN_OR_RETURN(const bool present, target_.exists(key));
  if (!present) {
    UBLKVOL_TRY(target_.put(key, file));
  }
  return !present;
}

Result<ChunkContent> Repository::get_chunk(const ChunkHash& hash) {
  const std::string key = chunk_key(hash);
  auto file = target_.get(key);
  if (!file) {
    if (file.error().errno_value() == ENOENT) {
      return Error(ErrorKind::kCorruption, ENOENT,
                   target_.describe() + ": chunk " + key + " is missing");
    }
    return file.error();
  }
  auto chunk = decode_chunk(*file, hash);
  if (!chunk) {
    return chunk.error().with_context(target_.describe() + ": chunk " + key);
  }
  return chunk;
}

Status Repository::put_manifest(const Manifest& manifest) {
  UBLKVOL_TRY(check_backup_name(manifest.name, "backup name"));
  const std::string key =
      manifest.complete ? manifest_key(manifest.name) : partial_key(manifest.name);
  return target_.put(key, encode_manifest(manifest));
}

namespace {

Result<Manifest> read_manifest(Target& target, std::string_view backup, const std::string& key,
                               bool complete) {
  UBLKVOL_TRY(check_backup_name(backup, "backup name"));
  auto file = target.get(key);
  if (!file) {
    if (file.error().errno_value() == ENOENT) {
      return Error(ENOENT, target.describe() + ": no " + (complete ? "" : "partial ") + "backup '" +
                               std::string(backup) + "'");
    }
    return file.error();
  }
  auto manifest = decode_manifest(*file);
  if (!manifest) {
    return manifest.error().with_context(target.describe() + ": backup '" + std::string(backup) +
                                         "': " + key);
  }
  if (manifest->name != backup || manifest->complete != complete) {
    return Error(ErrorKind::kCorruption, EUCLEAN,
                 target.describe() + ": backup '" + std::string(backup) + "': " + key +
                     " holds the " + (manifest->complete ? "complete" : "partial") +
                     " manifest of backup '" + manifest->name + "'");
  }
  return manifest;
}

}  // namespace

Result<Manifest> Repository::get_manifest(std::string_view backup) {
  return read_manifest(target_, backup, manifest_key(backup), true);
}

Result<Manifest> Repository::get_partial(std::string_view backup) {
  return read_manifest(target_, backup, partial_key(backup), false);
}

Status Repository::remove_partial(std::string_view backup) {
  return target_.remove(partial_key(backup));
}

Result<std::vector<std::string>> Repository::list_backups(bool partial) {
  UBLKVOL_ASSIGN_OR_RETURN(auto keys, target_.list("backups/"));
  const std::string_view suffix = partial ? kPartialSuffix : kManifestSuffix;
  std::vector<std::string> names;
  for (const auto& key : keys) {
    std::string_view name = std::string_view(key).substr(std::string_view("backups/").size());
    if (name.ends_with(suffix) && name.find('/') == std::string_view::npos) {
      name.remove_suffix(suffix.size());
      names.emplace_back(name);
    }
  }
  return names;
}

Result<std::vector<std::string>> Repository::verify(std::string_view backup) {
  UBLKVOL_ASSIGN_OR_RETURN(const Manifest manifest, get_manifest(backup));
  std::vector<std::string> problems;
  for (const auto& entry : manifest.entries) {
    auto chunk = get_chunk(entry.hash);
    std::string problem;
    if (!chunk) {
      problem = chunk.error().to_string();
    } else if (chunk->block_count() != entry.blocks) {
      problem = "chunk " + chunk_key(entry.hash) + " holds " +
                std::to_string(chunk->block_count()) + " blocks, the manifest says " +
                std::to_string(entry.blocks);
    }
    if (!problem.empty()) {
      problems.push_back("backup '" + std::string(backup) + "': volume offset " +
                         std::to_string(entry.offset) + ": " + problem);
    }
  }
  return problems;
}

}  // namespace ublkvol::backup
