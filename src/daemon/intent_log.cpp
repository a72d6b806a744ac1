#include "intent_log.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <utility>

#include "ublkvol/common/unique_fd.h"

namespace ublkvol::daemon {
namespace {

using Json = nlohmann::json;
constexpr const char* kFormat = "ublk-volumed-intents";

constexpr std::pair<IntentOp, const char*> kOps[] = {
    {IntentOp::kVolumeCreate, "volume.create"},     {IntentOp::kSnapshotClone, "snapshot.clone"},
    {IntentOp::kVolumeDelete, "volume.delete"},     {IntentOp::kSnapshotCreate, "snapshot.create"},
    {IntentOp::kSnapshotDelete, "snapshot.delete"}, {IntentOp::kSnapshotRevert, "snapshot.revert"},
};

Status write_all(int fd, const std::string& text, const std::string& path) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return errno_error("cannot write " + path);
    }
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

Status sync_dir(const std::string& dir) {
  const UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd || ::fsync(dir_fd.get()) != 0) {
    return errno_error("cannot fsync directory " + dir);
  }
  return ok_status();
}

Result<Intent> intent_from_json(const Json& j, const std::string& origin) {
  auto bad = [&](const std::string& what) { return Error(EINVAL, origin + ": " + what); };
  if (!j.is_object()) {
    return bad("an intent is not an object");
  }
  Intent intent;
  try {
    intent.id = j.at("id").get<uint64_t>();
    auto op = intent_op_from_string(j.at("op").get<std::string>());
    if (!op) {
      return bad("unknown intent op '" + j.at("op").get<std::string>() + "'");
    }
    intent.op = *op;
    intent.volume = j.at("volume").get<std::string>();
    intent.stores = j.at("stores").get<std::vector<std::string>>();
    intent.snapshot = j.value("snapshot", "");
    intent.origin = j.value("origin", "");
  } catch (const Json::exception& e) {
    return bad(std::string("malformed intent: ") + e.what());
  }
  return intent;
}

}  // namespace

const char* to_string(IntentOp op) {
  for (const auto& [value, name] : kOps) {
    if (value == op) {
      return name;
    }
  }
  return "?";
}

std::optional<IntentOp> intent_op_from_string(const std::string& text) {
  for (const auto& [value, name] : kOps) {
    if (text == name) {
      return value;
    }
  }
  return std::nullopt;
}

std::string describe(const Intent& intent) {
  std::string out = std::string(to_string(intent.op)) + " of '" + intent.volume + "'";
  if (!intent.snapshot.empty()) {
    out += " snapshot '" + intent.snapshot + "'";
  }
  if (!intent.origin.empty()) {
    out += " from '" + intent.origin + "'";
  }
  out += " on";
  for (size_t i = 0; i < intent.stores.size(); ++i) {
    out += (i == 0 ? " '" : ", '") + intent.stores[i] + "'";
  }
  return out;
}

Result<IntentLog> IntentLog::open(const std::string& state_dir) {
  IntentLog log;
  log.dir_ = state_dir;
  const std::string path = state_dir + "/" + kIntentFileName;
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) {
      return log;
    }
    return errno_error("cannot open " + path);
  }
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return errno_error("cannot read " + path);
    }
    if (n == 0) {
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  const Json doc = Json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("format", "") != kFormat ||
      !doc.contains("intents") || !doc["intents"].is_array()) {
    return Error(EINVAL, path +
                             " is not a ublk-volumed intent log (move it away only after "
                             "checking the stores for leftovers: ublk-volume store gc)");
  }
  for (const auto& j : doc["intents"]) {
    UBLKVOL_ASSIGN_OR_RETURN(Intent intent, intent_from_json(j, path));
    log.next_id_ = std::max(log.next_id_, intent.id + 1);
    log.intents_.push_back(std::move(intent));
  }
  return log;
}

Result<uint64_t> IntentLog::record(Intent intent) {
  intent.id = next_id_++;
  const uint64_t id = intent.id;
  intents_.push_back(std::move(intent));
  Status saved = save();
  if (!saved.ok()) {
    intents_.pop_back();
    return saved.error().with_context("recording the intent");
  }
  return id;
}

Status IntentLog::clear(uint64_t id) {
  const auto before = intents_.size();
  std::erase_if(intents_, [&](const Intent& i) { return i.id == id; });
  if (intents_.size() == before) {
    return ok_status();
  }
  return save();
}

Status IntentLog::save() const {
  const std::string path = dir_ + "/" + kIntentFileName;
  if (intents_.empty()) {
    // Nothing pending: no file (the common case costs one unlink).
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return errno_error("cannot remove " + path);
    }
    return sync_dir(dir_);
  }
  Json list = Json::array();
  for (const auto& i : intents_) {
    list.push_back({{"id", i.id},
                    {"op", to_string(i.op)},
                    {"volume", i.volume},
                    {"stores", i.stores},
                    {"snapshot", i.snapshot},
                    {"origin", i.origin}});
  }
  const std::string text =
      Json{{"format", kFormat}, {"version", 1}, {"intents", list}}.dump(2) + "\n";
  const std::string tmp = path + ".tmp";
  {
    const UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) {
      return errno_error("cannot create " + tmp);
    }
    UBLKVOL_TRY(write_all(fd.get(), text, tmp));
    if (::fsync(fd.get()) != 0) {
      return errno_error("cannot fsync " + tmp);
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return errno_error("cannot rename " + tmp + " to " + path);
  }
  return sync_dir(dir_);
}

CrashPoints::CrashPoints() {
  // Read once at start-up; the daemon's threads never change the environment.
  const char* value = std::getenv("UBLKVOL_TEST_CRASH_STEP");  // NOLINT(concurrency-mt-unsafe)
  if (value != nullptr) {
    crash_at_ = std::strtoull(value, nullptr, 10);
  }
}

void CrashPoints::step(const char* what) {
  ++count_;
  if (crash_at_ != 0 && count_ == crash_at_) {
    (void)std::fprintf(stderr, "ublk-volumed: test crash at step %llu (%s)\n",
                       static_cast<unsigned long long>(count_), what);
    (void)std::fflush(stderr);
    (void)::raise(SIGKILL);
  }
}

}  // namespace ublkvol::daemon

namespace ublkvol::daemon {

IntentGuard::~IntentGuard() {
  if (log_ == nullptr) {
    return;
  }
  // A destructor must not throw: a failure (even an allocation failure while
  // reporting it) is logged to stderr at most.
  try {
    Status cleared = log_->clear(id_);
    if (!cleared.ok()) {
      // Start-up recovery then finds the operation complete (recovery.h).
      spdlog::error("clearing intent {}: {}", id_, cleared.error().message());
    }
  } catch (const std::exception& e) {
    (void)std::fprintf(stderr, "ublk-volumed: clearing intent %llu: %s\n",
                       static_cast<unsigned long long>(id_), e.what());
  }
}

}  // namespace ublkvol::daemon
