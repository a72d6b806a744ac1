#include "replicated_backend.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>
#include <utility>

#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/engine/write_through_queue.h"
#include "ublkvol/reactor/reactor.h"
#include "ublkvol/stack/store_stack.h"

namespace ublkvol::ublk {
namespace {

// Single-writer counter bump: only the owning store thread writes.
inline void bump(std::atomic<uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// Counts the requests DBS sends to the store file; everything else passes
// straight through (the request itself is forwarded, so no per-I/O state).
class CountingDevice final : public dbs::BlockDevice {
 public:
  CountingDevice(dbs::BlockDevice& inner, ReplicaCounters& counters)
      : inner_(inner), counters_(counters) {}
  [[nodiscard]] std::string_view name() const override { return inner_.name(); }
  [[nodiscard]] uint64_t size_bytes() const override { return inner_.size_bytes(); }
  [[nodiscard]] uint32_t block_size() const override { return inner_.block_size(); }
  void submit(dbs::IoRequest& request) override {
    switch (request.op) {
      case dbs::IoOp::kWrite:
        bump(counters_.device_writes);
        break;
      case dbs::IoOp::kFlush:
        bump(counters_.device_flushes);
        break;
      case dbs::IoOp::kDiscard:
        bump(counters_.device_discards);
        break;
      default:
        break;
    }
    inner_.submit(request);
  }
  void kick() override { inner_.kick(); }
  unsigned poll(bool wait) override { return inner_.poll(wait); }
  [[nodiscard]] unsigned in_flight() const override { return inner_.in_flight(); }
  [[nodiscard]] int completion_fd() const override { return inner_.completion_fd(); }

 private:
  dbs::BlockDevice& inner_;
  ReplicaCounters& counters_;
};

// Counts what the engine hands to one replica (this is where "a FLUSH reached
// the replica" is observable); forwards everything to the DBS replica.
class CountingReplicaStore final : public engine::ReplicaStore {
 public:
  CountingReplicaStore(engine::ReplicaStore& inner, ReplicaCounters& counters)
      : inner_(inner), counters_(counters) {}
  [[nodiscard]] std::string_view name() const override { return inner_.name(); }
  [[nodiscard]] uint64_t size_bytes() const override { return inner_.size_bytes(); }
  void submit(engine::ReplicaIo& io) override {
    switch (io.op) {
      case engine::ReplicaOp::kRead:
        bump(counters_.reads);
        break;
      case engine::ReplicaOp::kWrite:
        bump(counters_.writes);
        if (io.fua) {
          bump(counters_.fua_writes);
        }
        break;
      case engine::ReplicaOp::kFlush:
        bump(counters_.flushes);
        break;
      case engine::ReplicaOp::kDiscard:
        bump(counters_.discards);
        break;
      case engine::ReplicaOp::kWriteZeroes:
        bump(counters_.write_zeroes);
        break;
    }
    inner_.submit(io);
  }
  void kick() override { inner_.kick(); }
  unsigned poll(bool wait) override { return inner_.poll(wait); }
  [[nodiscard]] unsigned in_flight() const override { return inner_.in_flight(); }
  [[nodiscard]] int completion_fd() const override { return inner_.completion_fd(); }
  [[nodiscard]] const engine::ReplicaMeta& meta() const override { return inner_.meta(); }
  Status write_meta(const engine::ReplicaMeta& meta) override { return inner_.write_meta(meta); }
  [[nodiscard]] uint64_t region_bytes() const override { return inner_.region_bytes(); }
  [[nodiscard]] std::vector<uint8_t> dirty_regions() const override {
    return inner_.dirty_regions();
  }
  Status clear_dirty() override { return inner_.clear_dirty(); }
  Status create_snapshot(std::string_view snapshot) override {
    return inner_.create_snapshot(snapshot);
  }
  Status delete_snapshot(std::string_view snapshot) override {
    return inner_.delete_snapshot(snapshot);
  }
  Status revert_snapshot(std::string_view snapshot) override {
    return inner_.revert_snapshot(snapshot);
  }
  Status clone_snapshot(std::string_view snapshot, std::string_view clone,
                        const engine::ReplicaMeta& clone_meta) override {
    return inner_.clone_snapshot(snapshot, clone, clone_meta);
  }
  [[nodiscard]] std::vector<std::string> list_snapshots() const override {
    return inner_.list_snapshots();
  }

 private:
  engine::ReplicaStore& inner_;
  ReplicaCounters& counters_;
};

// Store file size for a new replica: the volume plus room for DBS metadata
// (journal = device/256, checkpoints, the engine's metadata volume). Files
// are sparse, so the slack costs nothing until used.
uint64_t default_store_size(uint64_t volume_size) {
  constexpr uint64_t kMiB = 1ULL << 20U;
  const uint64_t slack = std::max<uint64_t>(64 * kMiB, volume_size / 8);
  return (volume_size + slack + kMiB - 1) / kMiB * kMiB;
}

}  // namespace

struct ReplicatedBackend::Impl {
  struct Replica {
    std::string file;
    ReplicaCounters counters;
    // file -> CountingDevice -> Store (checked) -> StoreThread (src/stack).
    stack::StoreStack store;
    std::unique_ptr<engine::DbsReplicaStore> dbs_replica;
    std::unique_ptr<CountingReplicaStore> replica;
    bool created = false;  // formatted or given a new volume by this process
  };
  // Stable addresses: counters and devices are referenced by the layers above.
  std::vector<std::unique_ptr<Replica>> replicas;
  std::unique_ptr<engine::ReplicatedVolume> volume;
  bool write_through = false;
  bool closed = false;

  // Destruction order matters: the engine first, then the threads that own
  // the stores, then the replicas, the stores and their devices.
  void tear_down() {
    volume.reset();
    for (auto& r : replicas) {
      if (r->store.is_open()) {
        r->store.thread().stop();
      }
    }
    for (auto& r : replicas) {
      r->replica.reset();
      r->dbs_replica.reset();
      r->store.close();
    }
  }

  // How every replica file's store is opened: counted, named after the
  // file, one thread each - or served on reactor for_store(index) of
  // config.reactors (--reactors).
  static stack::StoreOptions store_options(const ServeConfig& config, Replica& r, size_t index) {
    stack::StoreOptions options;
    options.what = "replica file " + r.file;
    options.thread.name = "replica" + std::to_string(index);
    if (config.reactors != nullptr) {
      options.thread.reactor = &config.reactors->for_store(static_cast<unsigned>(index));
    }
    ReplicaCounters* counters = &r.counters;
    options.wrap_device = [counters](dbs::BlockDevice& inner) {
      return std::unique_ptr<dbs::BlockDevice>(std::make_unique<CountingDevice>(inner, *counters));
    };
    return options;
  }
};

Result<std::unique_ptr<ReplicatedBackend>> ReplicatedBackend::open(const ServeConfig& config,
                                                                   bool recovering) {
  UBLKVOL_TRY(validate_serve_config(config));
  if (config.backend != "replicated") {
    return Error(EINVAL, "ReplicatedBackend needs --backend replicated");
  }
  auto impl = std::make_unique<Impl>();
  // Make sure a failure part-way leaves everything closed in order.
  struct TearDownOnError {
    Impl* impl;
    ~TearDownOnError() {
      if (impl != nullptr) {
        impl->tear_down();
      }
    }
  } guard{impl.get()};

  dbs::FileDeviceOptions device_options;
  device_options.queue_depth = 256;

  // Pass 1: open the files that already hold a store; find the size.
  uint64_t size = config.size_bytes;
  std::string size_from;
  for (const std::string& file : config.replica_files) {
    auto replica = std::make_unique<Impl::Replica>();
    replica->file = file;
    struct stat st {};
    const bool exists = ::stat(file.c_str(), &st) == 0;
    if (!exists && errno != ENOENT) {
      return errno_error("replica file " + file + ": cannot stat");
    }
    if (exists && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
      return Error(EINVAL,
                   "replica file " + file + " is neither a regular file nor a block device");
    }
    const bool empty = !exists || (S_ISREG(st.st_mode) && st.st_size == 0);
    if (empty) {
      if (recovering) {
        return Error(ENOENT, "replica file " + file + (exists ? " is empty" : " does not exist") +
                                 ": a recovering server never creates replicas");
      }
      if (!exists) {
        const size_t slash = file.rfind('/');
        const std::string dir =
            slash == std::string::npos ? "." : (slash == 0 ? "/" : file.substr(0, slash));
        struct stat dir_st {};
        if (::stat(dir.c_str(), &dir_st) != 0 || !S_ISDIR(dir_st.st_mode)) {
          return Error(EINVAL, std::string("replica file ")
                                   .append(file)
                                   .append(" cannot be created: directory ")
                                   .append(dir)
                                   .append(" does not exist"));
        }
      }
      impl->replicas.push_back(std::move(replica));
      continue;  // created in pass 2, once the size is known
    }
    auto device = dbs::FileDevice::open(file, device_options);
    if (!device) {
      return device.error().with_context("replica file " + file);
    }
    auto opened = stack::open_store(std::move(*device),
                                    Impl::store_options(config, *replica, impl->replicas.size()));
    if (!opened) {
      return opened.error();
    }
    replica->store = std::move(*opened);
    std::optional<uint64_t> volume_size;
    Status looked = replica->store.run([&](dbs::Store& store) -> Status {
      auto volume = store.find_volume(config.volume_name);
      if (!volume) {
        return ok_status();
      }
      auto info = store.volume_info(*volume);
      if (!info) {
        return info.error();
      }
      volume_size = info->size_bytes;
      return ok_status();
    });
    if (!looked.ok()) {
      return looked.error().with_context("replica file " + file);
    }
    if (volume_size) {
      if (size == 0) {
        size = *volume_size;
        size_from = file;
      } else if (*volume_size != size) {
        return Error(EINVAL,
                     "replica file " + file + " holds volume '" + config.volume_name + "' of " +
                         std::to_string(*volume_size) + " bytes, but " +
                         (size_from.empty() ? std::string("--size is ") : size_from + " holds ") +
                         std::to_string(size) + " bytes");
      }
    } else if (recovering) {
      return Error(ENOENT, "replica file " + file + " has no volume '" + config.volume_name +
                               "': a recovering server never creates replicas");
    }
    impl->replicas.push_back(std::move(replica));
  }
  if (size == 0) {
    return Error(EINVAL,
                 "--size is needed to create new replica files (none of them holds volume '" +
                     config.volume_name + "' yet)");
  }
  if (size % 4096 != 0) {
    return Error(EINVAL, "volume size " + std::to_string(size) + " is not a multiple of 4096");
  }

  // Pass 2: create what is missing: new store files, then the replica volume
  // in stores that lack it; then open and attach every replica.
  const uint64_t store_size =
      config.store_size_bytes != 0 ? config.store_size_bytes : default_store_size(size);
  std::vector<engine::ReplicaBinding> bindings;
  for (size_t i = 0; i < impl->replicas.size(); ++i) {
    auto& r = impl->replicas[i];
    if (!r->store.is_open()) {
      dbs::FileDeviceOptions create_options = device_options;
      create_options.create_size = store_size;
      auto device = dbs::FileDevice::open(r->file, create_options);
      if (!device) {
        return device.error().with_context("creating replica file " + r->file);
      }
      stack::StoreOptions options = Impl::store_options(config, *r, i);
      options.format = true;
      auto opened = stack::open_store(std::move(*device), options);
      if (!opened) {
        return opened.error();
      }
      r->store = std::move(*opened);
      r->created = true;
    }
    bool has_volume = false;
    UBLKVOL_TRY(r->store.run([&](dbs::Store& store) {
      has_volume = store.find_volume(config.volume_name).ok();
      return ok_status();
    }));
    if (!has_volume) {
      UBLKVOL_TRY(stack::create_replica(r->store, config.volume_name, size));
      r->created = true;
      spdlog::info("replica file {}: new replica volume '{}' of {} bytes", r->file,
                   config.volume_name, size);
    }
    if (!config.snapshot_name.empty() && !recovering) {
      // --snapshot: a DBS snapshot of the replica volume, so that later
      // reads fall through its layer (the zero-copy e2e test reads pieces
      // of one request from the head, the snapshot and holes).
      UBLKVOL_TRY(r->store.run([&](dbs::Store& store) -> Status {
        UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeId id, store.find_volume(config.volume_name));
        auto snapshot = store.create_snapshot(id, config.snapshot_name);
        if (!snapshot) {
          return snapshot.error().with_context("replica file " + r->file + ": snapshot '" +
                                               config.snapshot_name + "'");
        }
        return ok_status();
      }));
      spdlog::info("replica file {}: snapshot '{}' of volume '{}'", r->file, config.snapshot_name,
                   config.volume_name);
    }
    auto replica = stack::open_replica(r->store, config.volume_name);
    if (!replica) {
      return replica.error();
    }
    r->dbs_replica = std::move(*replica);
    r->replica = std::make_unique<CountingReplicaStore>(*r->dbs_replica, r->counters);
    UBLKVOL_TRY(r->store.thread().attach(*r->replica));
    // DBS on a FileDevice (CountingDevice only counts): window addresses
    // of the store's thread reach it (VolumeQueue::all_targets_local()).
    bindings.push_back({r->replica.get(), &r->store.thread(), /*fixed_buffer_io=*/true});
  }

  // The engine over the attached replicas.
  engine::ReplicatedVolumeOptions options;
  options.name = config.volume_name;
  options.queues = config.device.queues;
  options.queue_depth = config.device.queue_depth;
  options.max_io_bytes = kDefaultMaxIoBytes;
  auto volume = stack::open_volume(options, std::move(bindings));
  if (!volume) {
    return volume.error();
  }
  impl->volume = std::move(*volume);
  impl->write_through = config.write_through;
  const engine::VolumeStatus status = impl->volume->status();
  spdlog::info("replicated volume '{}': {} bytes, {} of {} replicas in sync, generation {:#x}",
               status.name, status.size_bytes, status.in_sync, status.replicas.size(),
               status.generation);
  guard.impl = nullptr;
  return std::unique_ptr<ReplicatedBackend>(new ReplicatedBackend(std::move(impl)));
}

ReplicatedBackend::ReplicatedBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ReplicatedBackend::~ReplicatedBackend() {
  if (!impl_->closed) {
    Status s = close();
    if (!s.ok()) {
      spdlog::error("closing the replicated volume: {}", s.error().to_string());
    }
  }
}

const engine::VolumeInfo& ReplicatedBackend::info() const { return impl_->volume->info(); }

Result<std::unique_ptr<engine::VolumeQueue>> ReplicatedBackend::open_queue(unsigned index) {
  auto queue = impl_->volume->open_queue(index);
  if (!queue || !impl_->write_through) {
    return queue;
  }
  return std::unique_ptr<engine::VolumeQueue>(
      std::make_unique<engine::WriteThroughQueue>(std::move(*queue)));
}

engine::VolumeStatus ReplicatedBackend::status() const { return impl_->volume->status(); }

std::vector<ReplicaReport> ReplicatedBackend::replica_reports() const {
  std::vector<ReplicaReport> reports;
  const engine::VolumeStatus status = impl_->closed ? engine::VolumeStatus{} : this->status();
  for (size_t i = 0; i < impl_->replicas.size(); ++i) {
    const auto& r = *impl_->replicas[i];
    ReplicaReport report;
    report.file = r.file;
    if (i < status.replicas.size()) {
      report.state = status.replicas[i].state;
    }
    const auto load = [](const std::atomic<uint64_t>& c) {
      return c.load(std::memory_order_relaxed);
    };
    report.reads = load(r.counters.reads);
    report.writes = load(r.counters.writes);
    report.fua_writes = load(r.counters.fua_writes);
    report.flushes = load(r.counters.flushes);
    report.discards = load(r.counters.discards);
    report.write_zeroes = load(r.counters.write_zeroes);
    report.device_writes = load(r.counters.device_writes);
    report.device_flushes = load(r.counters.device_flushes);
    report.device_discards = load(r.counters.device_discards);
    if (r.store.is_open()) {
      uint64_t commits = 0;
      Status s = r.store.run([&](dbs::Store& store) -> Status {
        commits = store.stats().commits;
        return ok_status();
      });
      report.store_commits = s.ok() ? commits : 0;
    }
    reports.push_back(std::move(report));
  }
  return reports;
}

Status ReplicatedBackend::close() {
  Impl& impl = *impl_;
  if (impl.closed) {
    return ok_status();
  }
  impl.closed = true;
  Status result = impl.volume ? impl.volume->close() : ok_status();
  // The checkpoint flushed everything the engine wrote; one more commit per
  // store persists anything DBS still holds in memory (e.g. the generation).
  for (auto& r : impl.replicas) {
    if (r->store.is_open()) {
      Status s = r->store.run([](dbs::Store& store) { return store.commit(); });
      if (!s.ok() && result.ok()) {
        result = s.error().with_context("replica file " + r->file + ": final commit");
      }
    }
  }
  impl.tear_down();
  return result;
}

}  // namespace ublkvol::ublk
