// resume_backup_jobs (backup_jobs.h): at daemon start-up, the backups a
// stop or a crash interrupted run again from their state files.
#include <spdlog/spdlog.h>

#include "backup_jobs.h"
#include "registry.h"

namespace ublkvol::daemon {

void resume_backup_jobs(Registry& r) {
  for (const auto& spec : r.backup_jobs.persisted()) {
    StoreEntry* s = r.find_store(spec.store);
    if (s == nullptr || !s->online()) {
      const std::string why = "store '" + spec.store + "' is not available: not resumed";
      spdlog::error("backup '{}' to {}: {}", spec.name, spec.target, why);
      r.backup_jobs.add_waiting(spec, why);
      continue;
    }
    if (auto started = r.backup_jobs.start(spec, *s->store, *s->thread, /*resumed=*/true);
        !started) {
      spdlog::error("backup '{}' to {}: cannot resume: {}", spec.name, spec.target,
                    started.error().to_string());
      r.backup_jobs.add_waiting(spec, started.error().to_string());
      continue;
    }
    spdlog::info("backup '{}' of volume '{}' snapshot '{}' to {} resumed (replica on store '{}')",
                 spec.name, spec.volume, spec.snapshot, spec.target, spec.store);
  }
}

}  // namespace ublkvol::daemon
