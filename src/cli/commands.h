// ublk-volume's commands, one file per family, each adding its commands to
// the tree (session.h). run_cli() (cli.cpp) adds the rest (status, version,
// completion) and runs the parsed one.
#pragma once

#include <cstdint>
#include <string>

#include "session.h"

namespace ublkvol::cli {

void add_store_commands(CLI::App& app, CommandTree& tree);     // commands_store.cpp
void add_volume_commands(CLI::App& app, CommandTree& tree);    // commands_volume.cpp
void add_export_commands(CLI::App& app, CommandTree& tree);    // commands_export.cpp (after volume)
void add_snapshot_commands(CLI::App& app, CommandTree& tree);  // commands_snapshot.cpp
void add_replica_commands(CLI::App& app, CommandTree& tree);   // commands_replica.cpp
void add_stats_command(CLI::App& app, CommandTree& tree);      // commands_stats.cpp
void add_backup_commands(CLI::App& app, CommandTree& tree);    // commands_backup.cpp

// Remote replicas (remote_options.cpp): the URI option (`uri_option`, ""
// for a positional one the caller adds), --tls-psk and --insecure-plain;
// whether a replica target is a URI rather than a store name; the params.
void add_remote_options(CLI::App* c, std::string& uri, std::string& tls_psk, bool& insecure_plain,
                        const std::string& uri_option);
bool is_remote_target(const std::string& target);
void add_remote_params(Json& params, const std::string& key, const std::string& uri,
                       const std::string& tls_psk, bool insecure_plain);

// --wait of replica add/rebuild and replica verify (wait.cpp): poll
// volume.show until the replica is in sync / the verify finished.
ExitCode wait_for_replica(Session& s, const std::string& volume, uint64_t index, double timeout);
ExitCode wait_for_verify(Session& s, const std::string& volume, uint64_t runs_before,
                         double timeout);

}  // namespace ublkvol::cli
