#include "ublkvol/stack/store_stack.h"

#include <cerrno>
#include <optional>
#include <utility>

namespace ublkvol::stack {

StoreStack& StoreStack::operator=(StoreStack&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    file_ = std::move(other.file_);
    wrapper_ = std::move(other.wrapper_);
    store_ = std::move(other.store_);
    thread_ = std::move(other.thread_);
  }
  return *this;
}

dbs::BlockDevice& StoreStack::device() const {
  if (wrapper_) {
    return *wrapper_;
  }
  return *file_;
}

Status StoreStack::run(const std::function<Status(dbs::Store&)>& fn) const {
  if (!thread_ || !store_) {
    return Error(ESHUTDOWN, "store " + path_ + " is closed");
  }
  return thread_->call([&] { return fn(*store_); });
}

void StoreStack::close() {
  // The thread owns the store while it runs: stop it before the store goes.
  if (thread_) {
    thread_->stop();
    thread_.reset();
  }
  store_.reset();
  wrapper_.reset();
  file_.reset();
}

Result<std::unique_ptr<dbs::Store>> open_checked_store(dbs::BlockDevice& device,
                                                       const dbs::OpenOptions& options,
                                                       std::string_view what) {
  auto store = dbs::Store::open(device, options);
  if (!store.ok()) {
    return store.error().with_context(std::string(what) + " is not a usable DBS store");
  }
  const std::vector<std::string> problems = (*store)->check();
  if (!problems.empty()) {
    std::string text = problems.front();
    if (problems.size() > 1) {
      text += " (and " + std::to_string(problems.size() - 1) + " more problems)";
    }
    return Error(ErrorKind::kCorruption, EUCLEAN, std::string(what) + " failed its check: " + text);
  }
  return std::move(*store);
}

Result<StoreStack> open_store(std::unique_ptr<dbs::FileDevice> file, const StoreOptions& options) {
  StoreStack out;
  out.path_ = std::string(file->name());
  const std::string what = options.what.empty() ? "store " + out.path_ : options.what;
  out.file_ = std::move(file);
  if (options.wrap_device) {
    out.wrapper_ = options.wrap_device(*out.file_);
  }
  if (options.format) {
    Status formatted = dbs::Store::format(out.device(), options.format_options);
    if (!formatted.ok()) {
      return formatted.error().with_context("formatting " + what);
    }
  }
  auto store = open_checked_store(out.device(), options.open, what);
  if (!store.ok()) {
    return store.error();
  }
  out.store_ = std::move(*store);
  // Started last: until here only this thread touched the store.
  auto thread = engine::StoreThread::start(options.thread);
  if (!thread.ok()) {
    return thread.error().with_context(what);
  }
  out.thread_ = std::move(*thread);
  return out;
}

Result<StoreStack> open_store(const std::string& path, const StoreOptions& options) {
  auto file = dbs::FileDevice::open(path, options.device);
  if (!file.ok()) {
    return file.error().with_context("store " + path);
  }
  return open_store(std::move(*file), options);
}

Result<std::unique_ptr<engine::DbsReplicaStore>> open_replica(engine::StoreThread& thread,
                                                              dbs::Store& store,
                                                              const std::string& name) {
  std::optional<Result<std::unique_ptr<engine::DbsReplicaStore>>> opened;
  UBLKVOL_TRY(thread.call([&] {
    opened.emplace(engine::open_dbs_replica(store, name));
    return ok_status();
  }));
  return std::move(*opened);
}

Result<std::unique_ptr<engine::DbsReplicaStore>> open_replica(StoreStack& store,
                                                              const std::string& name) {
  if (!store.is_open()) {
    return Error(ESHUTDOWN, "store " + store.path() + " is closed");
  }
  auto opened = open_replica(store.thread(), store.store(), name);
  if (!opened.ok()) {
    return opened.error().with_context("replica '" + name + "' in store " + store.path());
  }
  return std::move(*opened);
}

Status create_replica(StoreStack& store, const std::string& name, uint64_t size_bytes) {
  Status created =
      store.run([&](dbs::Store& s) { return engine::create_dbs_replica(s, name, size_bytes); });
  if (!created.ok()) {
    return created.error().with_context("creating replica '" + name + "' in store " + store.path());
  }
  return ok_status();
}

Result<std::unique_ptr<engine::ReplicatedVolume>> open_volume(
    const engine::ReplicatedVolumeOptions& options, std::vector<engine::ReplicaBinding> bindings) {
  auto volume = engine::ReplicatedVolume::open(options, std::move(bindings));
  if (!volume.ok()) {
    return volume.error().with_context("opening volume '" + options.name + "'");
  }
  return std::move(*volume);
}

}  // namespace ublkvol::stack
