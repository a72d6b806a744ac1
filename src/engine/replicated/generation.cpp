// Generation comparison and the open-time choice (generation.h).
#include "ublkvol/engine/generation.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>

namespace ublkvol::engine {

namespace {

// Position of `id` in m's lineage (0 = current generation), or -1.
int lineage_index(const ReplicaMeta& m, uint64_t id) {
  if (id == 0) {
    return -1;
  }
  if (m.generation == id) {
    return 0;
  }
  for (size_t i = 0; i < m.history.size(); ++i) {
    if (m.history[i] == id) {
      return static_cast<int>(i) + 1;
    }
  }
  return -1;
}

std::string hex(uint64_t v) {
  char buf[20];
  (void)std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

}  // namespace

const char* to_string(ReplicaPlan plan) {
  switch (plan) {
    case ReplicaPlan::kUpToDate:
      return "up-to-date";
    case ReplicaPlan::kResync:
      return "resync";
    case ReplicaPlan::kResumeRebuild:
      return "resume-rebuild";
    case ReplicaPlan::kFullRebuild:
      return "full-rebuild";
  }
  return "unknown";
}

GenerationOrder compare_generations(const ReplicaMeta& a, const ReplicaMeta& b) {
  if (a.generation == b.generation) {
    return GenerationOrder::kEqual;
  }
  if (lineage_index(a, b.generation) > 0) {
    return GenerationOrder::kNewer;
  }
  if (lineage_index(b, a.generation) > 0) {
    return GenerationOrder::kOlder;
  }
  return GenerationOrder::kUnrelated;
}

bool bitmap_covers(const ReplicaMeta& newer, uint64_t since) {
  int at = lineage_index(newer, since);
  if (at < 0) {
    return false;
  }
  if (newer.bitmap_base == 0) {
    return true;  // never cleared: every write since formatting is marked
  }
  int base = lineage_index(newer, newer.bitmap_base);
  return base >= 0 && at <= base;
}

Result<GenerationChoice> choose_generation(const std::vector<ReplicaMeta>& metas,
                                           const std::vector<std::string>& names) {
  GenerationChoice choice;
  choice.plans.assign(metas.size(), ReplicaPlan::kFullRebuild);
  bool all_fresh = true;
  uint64_t uuid = 0;
  for (size_t i = 0; i < metas.size(); ++i) {
    const ReplicaMeta& m = metas[i];
    if (!m.fresh) {
      all_fresh = false;
      if (uuid == 0) {
        uuid = m.volume_uuid;
      } else if (m.volume_uuid != uuid) {
        return Error(EINVAL, "replica " + names[i] + " belongs to another volume (volume id " +
                                 hex(m.volume_uuid) + ", expected " + hex(uuid) + ")");
      }
    }
  }
  if (all_fresh) {
    choice.all_fresh = true;
    choice.plans.assign(metas.size(), ReplicaPlan::kUpToDate);
    return choice;
  }
  // Every pair of consistent replicas must be ordered.
  int newest = -1;
  for (size_t i = 0; i < metas.size(); ++i) {
    if (metas[i].generation == 0) {
      continue;
    }
    for (size_t j = i + 1; j < metas.size(); ++j) {
      if (metas[j].generation == 0) {
        continue;
      }
      if (compare_generations(metas[i], metas[j]) == GenerationOrder::kUnrelated) {
        return Error(EUCLEAN,
                     "split: replicas " + names[i] + " (generation " + hex(metas[i].generation) +
                         ") and " + names[j] + " (generation " + hex(metas[j].generation) +
                         ") each hold writes the other lacks (neither generation descends from "
                         "the other); refusing to choose - keep one replica, rebuild the other");
      }
    }
    if (newest < 0 || compare_generations(metas[i], metas[static_cast<size_t>(newest)]) ==
                          GenerationOrder::kNewer) {
      newest = static_cast<int>(i);
    }
  }
  if (newest < 0) {
    return Error(EUCLEAN, "no replica holds consistent data (all are fresh or mid-rebuild)");
  }
  const ReplicaMeta& src = metas[static_cast<size_t>(newest)];
  choice.source = static_cast<unsigned>(newest);
  choice.generation = src.generation;
  for (size_t i = 0; i < metas.size(); ++i) {
    const ReplicaMeta& m = metas[i];
    if (m.generation != 0) {
      if (m.generation == src.generation) {
        choice.plans[i] = ReplicaPlan::kUpToDate;
      } else {
        choice.plans[i] =
            bitmap_covers(src, m.generation) ? ReplicaPlan::kResync : ReplicaPlan::kFullRebuild;
      }
    } else if (m.rebuilding && !m.fresh && bitmap_covers(src, m.rebuild_generation)) {
      choice.plans[i] = ReplicaPlan::kResumeRebuild;
    } else {
      choice.plans[i] = ReplicaPlan::kFullRebuild;
    }
  }
  return choice;
}

std::string id_string(uint64_t id) { return hex(id); }

InSyncSet make_in_sync_set(const std::vector<uint64_t>& ids) {
  InSyncSet set{};
  size_t n = 0;
  for (uint64_t id : ids) {
    if (id != 0 && n < set.size() &&
        std::find(set.begin(), set.begin() + n, id) == set.begin() + n) {
      set[n++] = id;
    }
  }
  return set;
}

void advance_generation(ReplicaMeta& m, uint64_t g, const InSyncSet& members) {
  std::copy_backward(m.history.begin(), m.history.end() - 1, m.history.end());
  m.history[0] = m.generation;
  m.generation = g;
  m.in_sync = members;
}

InSyncCheck check_in_sync(const std::vector<ReplicaMeta>& metas, uint64_t generation) {
  InSyncCheck check;
  for (const ReplicaMeta& m : metas) {
    if (m.generation != generation || m.in_sync[0] == 0) {
      continue;
    }
    check.unknown = false;
    for (uint64_t id : m.in_sync) {
      if (id != 0 &&
          std::find(check.members.begin(), check.members.end(), id) == check.members.end()) {
        check.members.push_back(id);
      }
    }
  }
  for (uint64_t id : check.members) {
    bool present = std::any_of(metas.begin(), metas.end(),
                               [id](const ReplicaMeta& m) { return m.replica_id == id; });
    if (!present) {
      check.missing.push_back(id);
    }
  }
  return check;
}

}  // namespace ublkvol::engine
