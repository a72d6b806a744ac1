// Test helper: replicas as DBS volumes in stores on real files (io_uring,
// O_DIRECT) in a temporary directory, one store thread each (or executors on
// shared reactors: store_owner.h), plus the
// queries the tests compare replicas with (content, snapshots, free space).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"

#include "replica_test_util.h"

namespace ublkvol::engine::testing {

struct DbsFileCluster {
  struct Replica {
    std::string path;
    std::unique_ptr<dbs::FileDevice> device;
    std::unique_ptr<dbs::Store> store;
    std::unique_ptr<DbsReplicaStore> replica;
    std::unique_ptr<StoreOwner> thread;
  };
  // Before `replicas`: the executors on them go first.
  std::unique_ptr<reactor::ReactorSet> reactors = start_store_reactors();
  std::string dir;
  uint64_t volume_size = 0;
  std::vector<Replica> replicas;

  explicit DbsFileCluster(uint64_t size) : volume_size(size) {
    std::string templ = ::testing::TempDir() + "ublkvol-engine-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    EXPECT_NE(::mkdtemp(buf.data()), nullptr);
    dir = buf.data();
  }
  DbsFileCluster(const DbsFileCluster&) = delete;
  DbsFileCluster& operator=(const DbsFileCluster&) = delete;
  ~DbsFileCluster() {
    for (Replica& r : replicas) {
      r.thread->stop();
    }
    for (Replica& r : replicas) {
      r.replica.reset();
      if (r.store) {
        (void)r.store->close();
      }
      r.store.reset();
      r.device.reset();
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  // A store of `store_bytes` on a new file, formatted, with a fresh replica
  // "vol" of the volume's size (unless `with_replica` is false); returns
  // its index.
  unsigned add(uint64_t store_bytes, bool with_replica = true) {
    Replica r;
    unsigned i = static_cast<unsigned>(replicas.size());
    r.path = dir + "/store" + std::to_string(i) + ".img";
    dbs::FileDeviceOptions fo;
    fo.create_size = store_bytes;
    fo.single_issuer = false;  // opened here, used on the store thread
    auto device = dbs::FileDevice::open(r.path, fo);
    EXPECT_TRUE(device.ok()) << device.error().to_string();
    r.device = std::move(device.value());
    Status formatted = dbs::Store::format(*r.device);
    EXPECT_TRUE(formatted.ok()) << formatted.error().to_string();
    auto store = dbs::Store::open(*r.device);
    EXPECT_TRUE(store.ok()) << store.error().to_string();
    r.store = std::move(store.value());
    if (with_replica) {
      Status made = create_dbs_replica(*r.store, "vol", volume_size);
      EXPECT_TRUE(made.ok()) << made.error().to_string();
      auto rep = open_dbs_replica(*r.store, "vol");
      EXPECT_TRUE(rep.ok()) << rep.error().to_string();
      r.replica = std::move(rep.value());
    }
    r.thread = StoreOwner::start("fstore" + std::to_string(i),
                                 reactors ? &reactors->for_store(i) : nullptr);
    if (r.replica) {
      EXPECT_TRUE(r.thread->attach(*r.replica).ok());
    }
    replicas.push_back(std::move(r));
    return i;
  }

  ReplicaBinding binding(unsigned i) {
    return {replicas[i].replica.get(), replicas[i].thread.get()};
  }
  std::vector<ReplicaBinding> bindings(unsigned n) {
    std::vector<ReplicaBinding> b;
    for (unsigned i = 0; i < n; ++i) {
      b.push_back(binding(i));
    }
    return b;
  }

  // Runs fn(store) on replica i's store thread.
  template <typename F>
  Status on(unsigned i, F&& fn) {
    dbs::Store* s = replicas[i].store.get();
    return replicas[i].thread->call([&]() -> Status { return fn(*s); });
  }

  // Volume `name`'s content on replica i.
  std::vector<std::byte> content(unsigned i, const std::string& name = "vol") {
    std::vector<std::byte> out(volume_size);
    Buffer buf = make_buffer(volume_size);
    Status st = on(i, [&](dbs::Store& s) -> Status {
      auto v = s.find_volume(name);
      if (!v.ok()) {
        return v.error();
      }
      return s.read(*v, 0, {buf.get(), volume_size});
    });
    EXPECT_TRUE(st.ok()) << st.error().to_string();
    std::memcpy(out.data(), buf.get(), volume_size);
    return out;
  }

  std::vector<std::string> snapshots(unsigned i) {
    std::vector<std::string> names;
    DbsReplicaStore* rep = replicas[i].replica.get();
    EXPECT_TRUE(replicas[i]
                    .thread
                    ->call([&]() -> Status {
                      names = rep->list_snapshots();
                      return ok_status();
                    })
                    .ok());
    return names;
  }

  bool has_volume(unsigned i, const std::string& name) {
    bool found = false;
    EXPECT_TRUE(on(i, [&](dbs::Store& s) -> Status {
                  found = s.find_volume(name).ok();
                  return ok_status();
                }).ok());
    return found;
  }

  // Flips one bit of the byte at `byte_in_block` of the 4 KiB block of
  // store i's file that holds `pattern` (a whole block of the volume, as
  // written through the engine), behind the store's back: silent
  // corruption. Returns the file offset of that byte, or -1 if not found.
  int64_t corrupt_block(unsigned i, const std::byte* pattern, size_t byte_in_block) {
    int fd = ::open(replicas[i].path.c_str(), O_RDWR);
    if (fd < 0) {
      return -1;
    }
    std::vector<std::byte> block(4096);
    int64_t found = -1;
    for (off_t at = 0; found < 0; at += 4096) {
      if (::pread(fd, block.data(), 4096, at) != 4096) {
        break;
      }
      if (std::memcmp(block.data(), pattern, 4096) == 0) {
        found = at + static_cast<int64_t>(byte_in_block);
        block[byte_in_block] ^= std::byte{0x10};
        if (::pwrite(fd, block.data(), 4096, at) != 4096 || ::fsync(fd) != 0) {
          found = -1;
        }
      }
    }
    ::close(fd);
    return found;
  }

  // Free bytes of store i (free + pending-free extents).
  uint64_t free_bytes(unsigned i) {
    dbs::StoreStats st;
    EXPECT_TRUE(on(i, [&](dbs::Store& s) -> Status {
                  st = s.stats();
                  return ok_status();
                }).ok());
    return (st.free_extents + st.pending_free_extents) * st.extent_bytes;
  }
};

// Synchronous whole-block pattern writes through a queue: block b of
// [offset, offset + length) gets fill_block(id, b).
inline void write_pattern(VolumeQueue& q, uint64_t offset, uint64_t length, uint64_t id,
                          std::vector<std::byte>* model = nullptr) {
  constexpr uint64_t kChunk = 1U << 20U;
  Buffer buf = make_buffer(kChunk);
  for (uint64_t at = offset; at < offset + length; at += kChunk) {
    uint64_t n = std::min(kChunk, offset + length - at);
    for (uint64_t b = 0; b < n; b += 4096) {
      fill_block(buf.get() + b, id, (at + b) / 4096);
    }
    ASSERT_EQ(run_io(q, VolumeOp::kWrite, at, static_cast<uint32_t>(n), buf.get()), 0);
    if (model != nullptr) {
      std::memcpy(model->data() + at, buf.get(), n);
    }
  }
}

// Reaps until nothing of the queue is in flight (lingering writes included).
inline void drain(VolumeQueue& q) {
  while (q.in_flight() != 0) {
    if (q.reap() == 0) {
      wait_queue(q);
    }
  }
}

}  // namespace ublkvol::engine::testing
