// backup.create / list / show / verify / delete against a REAL daemon on its
// real socket (daemon_fixture.h): the store file is prepared with data and a
// snapshot before the daemon imports it; the backup runs as the daemon's
// background job, and the test checks what landed on the target with the
// backup library itself (a restore into memory, byte for byte). (~810 lines:
// every backup method shares this one daemon fixture and its store set-up.)
#include <algorithm>
#include <cstring>
#include <fstream>

#include "ublkvol/backup/hash.h"
#include "ublkvol/backup/repository.h"
#include "ublkvol/backup/restore.h"
#include "ublkvol/backup/store_backup.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"

#include "../backup/s3_server.h"
#include "daemon_fixture.h"

namespace ublkvol::daemon::test_support {
namespace {

constexpr uint64_t kVolumeBytes = 32 * kMiB;

// Collects a restore in memory.
class MemoryWriter final : public backup::VolumeWriter {
 public:
  explicit MemoryWriter(uint64_t size) : bytes(size) {}
  Status write(uint64_t offset, std::span<const std::byte> data) override {
    std::memcpy(bytes.data() + offset, data.data(), data.size());
    return ok_status();
  }
  std::vector<std::byte> bytes;
};

class BackupDaemonTest : public DaemonTest {
 protected:
  // A new store file of `store_bytes` holding volume "vol" (`volume_bytes`,
  // as the engine creates it), left open: the store is destroyed before its
  // device (member order).
  struct VolumeStore {
    std::unique_ptr<dbs::FileDevice> device;
    std::unique_ptr<dbs::Store> store;
    dbs::VolumeId id{};
  };
  static VolumeStore store_with_volume(const std::string& path, uint64_t store_bytes,
                                       uint64_t volume_bytes) {
    VolumeStore out;
    dbs::FileDeviceOptions options;
    options.create_size = store_bytes;
    auto device = dbs::FileDevice::open(path, options);
    EXPECT_TRUE(device.ok()) << path;
    if (!device.ok()) {
      return out;
    }
    out.device = std::move(*device);
    EXPECT_TRUE(dbs::Store::format(*out.device).ok()) << path;
    auto store = dbs::Store::open(*out.device);
    EXPECT_TRUE(store.ok()) << path;
    if (!store.ok()) {
      return out;
    }
    out.store = std::move(*store);
    EXPECT_TRUE(engine::create_dbs_replica(*out.store, "vol", volume_bytes).ok()) << path;
    out.id = *out.store->find_volume("vol");
    return out;
  }

  // A store file holding volume "vol" (as the engine creates it) with data
  // in 3 chunks and snapshot "s1". Returns the volume's content.
  std::vector<std::byte> prepare_store(const std::string& path) {
    VolumeStore vs = store_with_volume(path, 96 * kMiB, kVolumeBytes);
    if (vs.store == nullptr) {
      ADD_FAILURE() << path << ": no store";
      return {};
    }
    dbs::Store* const store = vs.store.get();
    const dbs::VolumeId id = vs.id;
    std::vector<std::byte> content(kVolumeBytes);
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, 64 * 4096));
    for (const uint64_t offset : {uint64_t{0}, 5 * kMiB + 8192, 20 * kMiB}) {
      for (size_t i = 0; i < 64 * 4096; ++i) {
        // The offset in MiB keeps the three chunks distinct (else they dedup).
        buffer[i] = static_cast<std::byte>(((offset + i) / 4096 * 7 + i / 64 + offset / kMiB) | 1U);
      }
      EXPECT_TRUE(store->write(id, offset, {buffer, 64 * 4096}).ok());
      std::memcpy(content.data() + offset, buffer, 64 * 4096);
    }
    std::free(buffer);
    EXPECT_TRUE(store->commit().ok());
    EXPECT_TRUE(store->create_snapshot(id, "s1").ok());
    EXPECT_TRUE(store->close().ok());
    return content;
  }

  // Writes 16 blocks (64 KiB) into each of `chunks` 2 MiB chunks of volume
  // `id` (pattern from `seed`, so other seeds make other chunks) and into
  // `content`.
  static void write_chunks(dbs::Store& store, dbs::VolumeId id, uint64_t chunks, uint64_t seed,
                           std::vector<std::byte>& content) {
    constexpr size_t kRun = 16 * 4096;
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, kRun));
    for (uint64_t c = 0; c < chunks; ++c) {
      const uint64_t offset = c * 2 * kMiB + (c % 7) * 4096;
      for (size_t i = 0; i < kRun; ++i) {
        buffer[i] = static_cast<std::byte>((i / 512 * 13 + c * 29 + seed * 101) | 1U);
      }
      ASSERT_TRUE(store.write(id, offset, {buffer, kRun}).ok());
      std::memcpy(content.data() + offset, buffer, kRun);
    }
    std::free(buffer);
  }

  // A formatted, empty store file.
  static void empty_store(const std::string& path, uint64_t bytes) {
    dbs::FileDeviceOptions options;
    options.create_size = bytes;
    auto device = dbs::FileDevice::open(path, options);
    ASSERT_TRUE(device.ok());
    ASSERT_TRUE(dbs::Store::format(**device).ok());
  }

  // Volume `volume` of the store file at `path`, read whole.
  static std::vector<std::byte> read_volume(const std::string& path, const std::string& volume,
                                            uint64_t bytes) {
    dbs::FileDeviceOptions options;
    auto device = dbs::FileDevice::open(path, options);
    EXPECT_TRUE(device.ok());
    auto store = dbs::Store::open(**device);
    EXPECT_TRUE(store.ok()) << store.error().to_string();
    std::vector<std::byte> out(bytes);
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, bytes));
    auto id = (*store)->find_volume(volume);
    EXPECT_TRUE(id.ok()) << id.error().to_string();
    EXPECT_TRUE((*store)->read(*id, 0, {buffer, bytes}).ok());
    std::memcpy(out.data(), buffer, bytes);
    std::free(buffer);
    EXPECT_TRUE((*store)->close().ok());
    return out;
  }

  // Store a: volume "vol" (`bytes`) with `chunks` chunks written, snapshot
  // "s1" of them backed up as "b" into `target` (`backed_up`), then half as
  // many chunks written over the head (`head`). Starts the daemon with
  // stores a and b and the volume on both, in sync.
  void prepare_restore_as_snapshot(const std::string& store_a, const std::string& store_b,
                                   const std::string& target, uint64_t bytes, uint64_t chunks,
                                   std::vector<std::byte>& backed_up,
                                   std::vector<std::byte>& head) {
    {
      VolumeStore vs = store_with_volume(store_a, bytes + 96 * kMiB, bytes);
      ASSERT_NE(vs.store, nullptr);
      dbs::Store* const store = vs.store.get();
      const dbs::VolumeId id = vs.id;
      write_chunks(*store, id, chunks, 1, backed_up);
      ASSERT_TRUE(store->commit().ok());
      ASSERT_TRUE(store->create_snapshot(id, "s1").ok());
      auto t = backup::open_target(target);
      ASSERT_TRUE(t.ok());
      backup::Repository repo(**t);
      backup::BackupOptions backup_options;
      backup_options.name = "b";
      ASSERT_TRUE(backup::backup_snapshot(*store, repo, "vol", "s1", backup_options).ok());
      // The head moves on after the backup: the restore must not touch it.
      head = backed_up;
      write_chunks(*store, id, chunks / 2, 2, head);
      ASSERT_TRUE(store->commit().ok());
      ASSERT_TRUE(store->close().ok());
    }
    ASSERT_FALSE(head == backed_up);
    empty_store(store_b, bytes + 96 * kMiB);
    start();
    ok("store.add", {{"name", "a"}, {"path", store_a}});
    ok("store.add", {{"name", "b"}, {"path", store_b}});
    ok("volume.import", {{"name", "vol"}, {"stores", {"a"}}});
    ok("replica.add", {{"volume", "vol"}, {"store", "b"}});
    wait_for("volume.show", {{"name", "vol"}}, [](const Json& v) {
      return v["replicas"].size() == 2 && v["replicas"][0]["state"] == "in_sync" &&
             v["replicas"][1]["state"] == "in_sync";
    });
  }

  // On the store file at `path` (daemon stopped): volume "vol" reads `head`,
  // its snapshot `snapshot` reads `expected`, no staging volume is left, and
  // the store checks clean.
  static void expect_restored_snapshot(const std::string& path, const std::string& snapshot,
                                       const std::vector<std::byte>& expected,
                                       const std::vector<std::byte>& head) {
    const uint64_t bytes = expected.size();
    EXPECT_TRUE(read_volume(path, "vol", bytes) == head) << path << ": head changed";
    dbs::FileDeviceOptions options;
    auto device = dbs::FileDevice::open(path, options);
    ASSERT_TRUE(device.ok());
    auto store = dbs::Store::open(**device);
    ASSERT_TRUE(store.ok());
    EXPECT_FALSE((*store)->find_volume("vol~restoring").ok()) << path << ": staging left";
    auto found = (*store)->find_snapshot(*(*store)->find_volume("vol"), snapshot);
    ASSERT_TRUE(found.ok()) << path;
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, bytes));
    ASSERT_TRUE((*store)->read_snapshot(*found, 0, {buffer, bytes}).ok());
    EXPECT_EQ(std::memcmp(buffer, expected.data(), bytes), 0) << path << ": snapshot differs";
    std::free(buffer);
    EXPECT_TRUE((*store)->check().empty()) << path;
    ASSERT_TRUE((*store)->close().ok());
  }

  // The job of `kind` (into `volume` if given) of backup `name`, once
  // it no longer runs (or after `seconds`).
  Json finished_job(const Json& target, const std::string& name, const std::string& kind,
                    int seconds = 15, const std::string& volume = "") {
    Json params = target;
    params["name"] = name;
    auto job_of = [kind, volume](const Json& r) {
      for (const auto& job : r["jobs"]) {
        if (job["kind"] == kind && (volume.empty() || job["volume"] == volume)) {
          return job;
        }
      }
      return Json();
    };
    const Json shown = wait_for(
        "backup.show", params,
        [&](const Json& r) {
          const Json job = job_of(r);
          return !job.is_null() && job["state"] != "running";
        },
        seconds);
    return job_of(shown);
  }
};

TEST_F(BackupDaemonTest, CreateListShowVerifyDelete) {
  const std::string store_path = dir_ + "/store-a";
  const std::vector<std::byte> content = prepare_store(store_path);
  start();
  ok("store.add", {{"name", "a"}, {"path", store_path}});
  ok("volume.import", {{"name", "vol"}, {"stores", {"a"}}});
  const std::string target = dir_ + "/backups";

  refused("backup.create", {{"volume", "vol"}, {"snapshot", "nope"}, {"target", target}},
          "not_found", "volume 'vol' has no snapshot 'nope'");
  refused("backup.create", {{"volume", "vol"}, {"snapshot", "s1"}, {"target", "relative"}},
          "invalid_argument", "backup target 'relative' is not supported");

  const Json started =
      ok("backup.create", {{"volume", "vol"}, {"snapshot", "s1"}, {"target", target}});
  EXPECT_EQ(started["name"], "vol-s1");
  EXPECT_EQ(started["store"], "a");
  const Json shown = wait_for(
      "backup.show", {{"target", target}, {"name", "vol-s1"}},
      [](const Json& r) { return !r["jobs"].empty() && r["jobs"][0]["state"] != "running"; });
  ASSERT_EQ(shown["jobs"][0]["state"], "done") << shown.dump() << log_text();
  EXPECT_EQ(shown["jobs"][0]["percent"], 100.0);
  EXPECT_EQ(shown["jobs"][0]["chunks_total"], 3);
  EXPECT_EQ(shown["backup"]["chunks"], 3);
  EXPECT_EQ(shown["backup"]["data_bytes"], 3 * 64 * 4096);

  const Json list = ok("backup.list", {{"target", target}});
  ASSERT_EQ(list["backups"].size(), 1U);
  EXPECT_EQ(list["backups"][0]["snapshot"], "s1");
  EXPECT_TRUE(list["partial"].empty());
  EXPECT_TRUE(ok("backup.verify", {{"target", target}, {"name", "vol-s1"}})["problems"].empty());

  // What the daemon wrote restores to the snapshot's bytes.
  {
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    backup::Repository repo(**t);
    MemoryWriter writer(kVolumeBytes);
    auto restored = backup::run_restore(repo, "vol-s1", writer, {});
    ASSERT_TRUE(restored.ok()) << restored.error().to_string();
    EXPECT_TRUE(writer.bytes == content);
  }

  // Restore into a new volume through the daemon (a background job).
  const Json restored =
      ok("backup.restore",
         {{"target", target}, {"name", "vol-s1"}, {"volume", "copy"}, {"stores", {"a"}}});
  EXPECT_EQ(restored["chunks"], 3);
  const Json restore_job = finished_job({{"target", target}}, "vol-s1", "restore");
  ASSERT_EQ(restore_job["state"], "done") << restore_job.dump() << log_text();
  EXPECT_EQ(restore_job["volume"], "copy");
  EXPECT_EQ(restore_job["percent"], 100.0);
  EXPECT_EQ(restore_job["bytes_written"], 3 * 64 * 4096);
  const Json copy = ok("volume.show", {{"name", "copy"}});
  EXPECT_EQ(copy["size_bytes"], kVolumeBytes);
  EXPECT_FALSE(copy.contains("restoring")) << copy.dump();

  // A flipped byte in a chunk: verify names backup and offset, restore
  // refuses and leaves no volume behind.
  {
    auto t = backup::open_target(target);
    backup::Repository repo(**t);
    const auto manifest = repo.get_manifest("vol-s1");
    ASSERT_TRUE(manifest.ok());
    const auto& entry = manifest->entries[1];
    const std::string file = target + "/" + backup::Repository::chunk_key(entry.hash);
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x5a');
    f.close();
    const std::string where = "backup 'vol-s1': volume offset " + std::to_string(entry.offset);
    const Json problems = ok("backup.verify", {{"target", target}, {"name", "vol-s1"}})["problems"];
    ASSERT_EQ(problems.size(), 1U);
    EXPECT_NE(problems[0].get<std::string>().find(where), std::string::npos) << problems.dump();
    // The restore fails at that chunk; its volume stays blocked (it holds
    // part of the backup) until it is deleted.
    ok("backup.restore",
       {{"target", target}, {"name", "vol-s1"}, {"volume", "bad"}, {"stores", {"a"}}});
    const Json failed = finished_job({{"target", target}}, "vol-s1", "restore", 15, "bad");
    ASSERT_EQ(failed["state"], "failed") << failed.dump();
    EXPECT_EQ(failed["volume"], "bad");
    EXPECT_NE(failed["error"].get<std::string>().find(where), std::string::npos) << failed.dump();
    const Json bad = ok("volume.show", {{"name", "bad"}});
    ASSERT_TRUE(bad.contains("restoring")) << bad.dump();
    EXPECT_NE(bad["restoring"].get<std::string>().find(where), std::string::npos) << bad.dump();
    refused("snapshot.create", {{"volume", "bad"}, {"name", "s"}}, "busy",
            "volume 'bad' is being restored from backup 'vol-s1'");
    ok("volume.delete", {{"name", "bad"}});
    refused("volume.show", {{"name", "bad"}}, "not_found", "bad");
  }

  ok("backup.delete", {{"target", target}, {"name", "vol-s1"}});
  const Json deleted = finished_job({{"target", target}}, "vol-s1", "delete");
  ASSERT_EQ(deleted["state"], "done") << deleted.dump() << log_text();
  EXPECT_EQ(deleted["chunks_removed"], 3);
  EXPECT_TRUE(ok("backup.list", {{"target", target}})["backups"].empty());
  refused("backup.verify", {{"target", target}, {"name", "vol-s1"}}, "not_found",
          "no backup 'vol-s1'");

  // The restored volume holds the snapshot's bytes (read from the store file
  // once the daemon is gone).
  EXPECT_EQ(stop(), 0);
  dbs::FileDeviceOptions options;
  auto device = dbs::FileDevice::open(store_path, options);
  ASSERT_TRUE(device.ok());
  auto store = dbs::Store::open(**device);
  ASSERT_TRUE(store.ok()) << store.error().to_string();
  auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, kVolumeBytes));
  ASSERT_TRUE((*store)->read(*(*store)->find_volume("copy"), 0, {buffer, kVolumeBytes}).ok());
  EXPECT_TRUE(std::memcmp(buffer, content.data(), kVolumeBytes) == 0);
  std::free(buffer);
  EXPECT_TRUE((*store)->close().ok());
}

// The same methods on an s3:// target (a real s3rver on loopback): the
// daemon reaches it with the endpoint and credentials file of the request.
TEST_F(BackupDaemonTest, S3Target) {
  backup::testing::S3Server server;
  ASSERT_EQ(server.start(), "") << "the S3 test server did not start";
  const std::string store_path = dir_ + "/store-a";
  const std::vector<std::byte> content = prepare_store(store_path);
  start();
  ok("store.add", {{"name", "a"}, {"path", store_path}});
  ok("volume.import", {{"name", "vol"}, {"stores", {"a"}}});
  const std::string url = std::string("s3://") + backup::testing::S3Server::kBucket + "/daemon";
  const Json target{{"target", url},
                    {"s3_endpoint", server.endpoint()},
                    {"s3_credentials", server.credentials_file()}};
  auto with = [&](Json extra) {
    Json params = target;
    params.update(extra);
    return params;
  };

  refused("backup.create",
          {{"volume", "vol"},
           {"snapshot", "s1"},
           {"target", url},
           {"s3_endpoint", server.endpoint()},
           {"s3_credentials", "relative/file"}},
          "invalid_argument", "s3_credentials 'relative/file' is not an absolute path");
  refused("backup.list",
          {{"target", url}, {"s3_endpoint", server.endpoint()}, {"s3_credentials", dir_ + "/none"}},
          "not_found", "S3 credentials file " + dir_ + "/none: cannot open it");

  ok("backup.create", with({{"volume", "vol"}, {"snapshot", "s1"}, {"name", "b1"}}));
  const Json shown = wait_for("backup.show", with({{"name", "b1"}}), [](const Json& r) {
    return !r["jobs"].empty() && r["jobs"][0]["state"] != "running";
  });
  ASSERT_EQ(shown["jobs"][0]["state"], "done") << shown.dump() << log_text();
  EXPECT_EQ(shown["backup"]["chunks"], 3);
  EXPECT_EQ(ok("backup.list", target)["backups"].size(), 1U);
  EXPECT_TRUE(ok("backup.verify", with({{"name", "b1"}}))["problems"].empty());
  {
    backup::S3Options s3;
    s3.endpoint = server.endpoint();
    s3.credentials_file = server.credentials_file();
    auto t = backup::open_target(url, s3);
    ASSERT_TRUE(t.ok()) << t.error().to_string();
    backup::Repository repo(**t);
    MemoryWriter writer(kVolumeBytes);
    auto restored = backup::run_restore(repo, "b1", writer, {});
    ASSERT_TRUE(restored.ok()) << restored.error().to_string();
    EXPECT_TRUE(writer.bytes == content);
  }
  EXPECT_EQ(
      ok("backup.restore", with({{"name", "b1"}, {"volume", "copy"}, {"stores", {"a"}}}))["chunks"],
      3);
  EXPECT_EQ(finished_job(target, "b1", "restore")["state"], "done") << log_text();
  ok("backup.delete", with({{"name", "b1"}}));
  EXPECT_EQ(finished_job(target, "b1", "delete")["chunks_removed"], 3) << log_text();
  EXPECT_TRUE(ok("backup.list", target)["backups"].empty());
}

// A backup is resumable after the daemon is SIGKILLed mid-way: the job's
// state file brings it back at start-up, the chunks stored before the kill
// are not written again (content addressed), and what lands restores to the
// snapshot's bytes.
TEST_F(BackupDaemonTest, BackupResumesAfterSigkill) {
  constexpr uint64_t kChunks = 48;
  constexpr uint64_t kBytes = 128 * kMiB;
  const std::string store_path = dir_ + "/store-a";
  // 16 blocks (64 KiB) in each of 48 chunks: 3 MiB to read, 3 s at 1 MiB/s.
  std::vector<std::byte> content(kBytes);
  {
    VolumeStore vs = store_with_volume(store_path, 160 * kMiB, kBytes);
    ASSERT_NE(vs.store, nullptr);
    dbs::Store* const store = vs.store.get();
    const dbs::VolumeId id = vs.id;
    constexpr size_t kRun = 16 * 4096;
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, kRun));
    for (uint64_t c = 0; c < kChunks; ++c) {
      const uint64_t offset = c * 2 * kMiB + (c % 7) * 4096;
      for (size_t i = 0; i < kRun; ++i) {
        buffer[i] = static_cast<std::byte>((i / 512 * 13 + c * 29) | 1U);
      }
      ASSERT_TRUE(store->write(id, offset, {buffer, kRun}).ok());
      std::memcpy(content.data() + offset, buffer, kRun);
    }
    std::free(buffer);
    ASSERT_TRUE(store->commit().ok());
    ASSERT_TRUE(store->create_snapshot(id, "s1").ok());
    ASSERT_TRUE(store->close().ok());
  }
  start();
  ok("store.add", {{"name", "a"}, {"path", store_path}});
  ok("volume.import", {{"name", "vol"}, {"stores", {"a"}}});
  const std::string target = dir_ + "/backups";
  ok("backup.create",
     {{"volume", "vol"}, {"snapshot", "s1"}, {"target", target}, {"name", "b"}, {"rate", 1}});
  const Json midway =
      wait_for("backup.show", {{"target", target}, {"name", "b"}}, [](const Json& r) {
        return !r["jobs"].empty() && r["jobs"][0]["chunks_done"].get<uint64_t>() >= 4;
      });
  ASSERT_EQ(midway["jobs"][0]["state"], "running") << midway.dump();
  EXPECT_EQ(midway["jobs"][0]["resumed"], false);
  EXPECT_EQ(stop(SIGKILL), 128 + SIGKILL);

  // Mid-way for real: no manifest, the job's state file is there.
  const std::string jobs_dir = dir_ + "/state/backup-jobs/jobs";
  ASSERT_TRUE(fs::is_directory(jobs_dir)) << "the daemon keeps no job state files";
  ASSERT_EQ(std::distance(fs::directory_iterator(jobs_dir), fs::directory_iterator()), 1);
  {
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    backup::Repository repo(**t);
    EXPECT_TRUE(repo.list_backups()->empty()) << "the backup finished before the kill";
  }

  start();  // the store and volume come back from state.json, the job from its file
  const Json resumed = wait_for(
      "backup.show", {{"target", target}, {"name", "b"}},
      [](const Json& r) { return !r["jobs"].empty() && r["jobs"][0]["state"] != "running"; }, 60);
  ASSERT_FALSE(resumed["jobs"].empty()) << "the job was not resumed:\n" << log_text();
  const Json& job = resumed["jobs"][0];
  ASSERT_EQ(job["state"], "done") << resumed.dump() << log_text();
  EXPECT_EQ(job["resumed"], true);
  EXPECT_EQ(job["chunks_total"], kChunks);
  // The chunks stored before the kill were read again but not written.
  EXPECT_GE(job["chunks_reused"].get<uint64_t>(), 4U) << job.dump();
  EXPECT_EQ(job["chunks_written"].get<uint64_t>() + job["chunks_reused"].get<uint64_t>(), kChunks);
  EXPECT_EQ(resumed["backup"]["chunks"], kChunks);
  EXPECT_TRUE(fs::is_empty(jobs_dir)) << "the finished job's state file is still there";
  EXPECT_TRUE(ok("backup.verify", {{"target", target}, {"name", "b"}})["problems"].empty());
  auto t = backup::open_target(target);
  ASSERT_TRUE(t.ok());
  backup::Repository repo(**t);
  MemoryWriter writer(kBytes);
  auto restored = backup::run_restore(repo, "b", writer, {});
  ASSERT_TRUE(restored.ok()) << restored.error().to_string();
  EXPECT_TRUE(writer.bytes == content) << "the resumed backup restores other bytes";
}

// A restore is a background job: the control thread answers while a
// throttled restore runs, the volume cannot be exposed or snapshotted until
// it is done, and a SIGKILL mid-way resumes at start-up after the last
// checkpoint (the chunks committed on every replica are not read again);
// both replicas end byte-identical to the snapshot.
TEST_F(BackupDaemonTest, RestoreResumesAfterSigkill) {
  constexpr uint64_t kChunks = 48;
  constexpr uint64_t kBytes = 128 * kMiB;
  const std::string store_a = dir_ + "/store-a";
  const std::string store_b = dir_ + "/store-b";
  const std::string target = dir_ + "/backups";
  std::vector<std::byte> content(kBytes);
  {
    // The backup, made with the library before the daemon starts.
    VolumeStore vs = store_with_volume(store_a, 160 * kMiB, kBytes);
    ASSERT_NE(vs.store, nullptr);
    dbs::Store* const store = vs.store.get();
    const dbs::VolumeId id = vs.id;
    write_chunks(*store, id, kChunks, 1, content);
    ASSERT_TRUE(store->commit().ok());
    ASSERT_TRUE(store->create_snapshot(id, "s1").ok());
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    backup::Repository repo(**t);
    backup::BackupOptions backup_options;
    backup_options.name = "b";
    auto made = backup::backup_snapshot(*store, repo, "vol", "s1", backup_options);
    ASSERT_TRUE(made.ok()) << made.error().to_string();
    ASSERT_EQ(made->entries.size(), kChunks);
    ASSERT_TRUE(store->close().ok());
  }
  empty_store(store_b, 160 * kMiB);
  start();
  ok("store.add", {{"name", "a"}, {"path", store_a}});
  ok("store.add", {{"name", "b"}, {"path", store_b}});
  // 64 KiB per chunk at 1 MiB/s: 16 chunks (one checkpoint) a second, 3 s in all.
  const Json started = ok(
      "backup.restore",
      {{"target", target}, {"name", "b"}, {"volume", "copy"}, {"stores", {"a", "b"}}, {"rate", 1}});
  EXPECT_EQ(started["state"], "running");
  const Json midway =
      wait_for("backup.show", {{"target", target}, {"name", "b"}}, [](const Json& r) {
        return !r["jobs"].empty() && r["jobs"][0]["chunks_done"].get<uint64_t>() >= 20;
      });
  ASSERT_EQ(midway["jobs"][0]["kind"], "restore") << midway.dump();
  ASSERT_EQ(midway["jobs"][0]["state"], "running") << midway.dump();
  EXPECT_EQ(midway["jobs"][0]["resumed"], false);
  EXPECT_GT(midway["jobs"][0]["percent"].get<double>(), 0.0);
  EXPECT_TRUE(midway["jobs"][0]["eta_seconds"].is_number()) << midway.dump();
  // The control thread answers meanwhile, and the volume is not usable.
  EXPECT_EQ(ok("daemon.status")["volumes"], 1) << "daemon.status";
  const Json copy = ok("volume.show", {{"name", "copy"}});
  ASSERT_TRUE(copy.contains("restoring")) << copy.dump();
  refused("volume.expose", {{"name", "copy"}}, "busy",
          "volume 'copy' is being restored from backup 'b'");
  refused("snapshot.create", {{"volume", "copy"}, {"name", "s"}}, "busy", "being restored");
  refused("volume.resize", {{"name", "copy"}, {"size", 256 * kMiB}}, "busy", "being restored");
  refused("backup.delete", {{"target", target}, {"name", "b"}}, "busy",
          "is being restored into volume 'copy'");
  const Json still = ok("backup.show", {{"target", target}, {"name", "b"}});
  ASSERT_EQ(still["jobs"][0]["state"], "running") << "the restore ended before the checks";
  EXPECT_EQ(stop(SIGKILL), 128 + SIGKILL);

  const std::string jobs_dir = dir_ + "/state/backup-jobs/jobs";
  ASSERT_EQ(std::distance(fs::directory_iterator(jobs_dir), fs::directory_iterator()), 1);

  start();  // stores and volume from state.json, the restore from its state file
  refused("volume.expose", {{"name", "copy"}}, "busy", "being restored");
  const Json job = finished_job({{"target", target}}, "b", "restore", 60);
  ASSERT_EQ(job["state"], "done") << job.dump() << log_text();
  EXPECT_EQ(job["resumed"], true);
  EXPECT_EQ(job["chunks_total"], kChunks);
  EXPECT_EQ(job["chunks_done"], kChunks);
  // Resumed after a checkpoint: what was committed before it was not read again.
  EXPECT_GE(job["chunks_skipped"].get<uint64_t>(), 16U) << job.dump();
  EXPECT_LT(job["chunks_skipped"].get<uint64_t>(), kChunks) << job.dump();
  EXPECT_FALSE(ok("volume.show", {{"name", "copy"}}).contains("restoring"));
  EXPECT_TRUE(fs::is_empty(jobs_dir)) << "the finished restore's state file is still there";
  EXPECT_TRUE(ok("backup.verify", {{"target", target}, {"name", "b"}})["problems"].empty());
  EXPECT_EQ(stop(), 0);
  EXPECT_TRUE(read_volume(store_a, "copy", kBytes) == content) << "replica on a";
  EXPECT_TRUE(read_volume(store_b, "copy", kBytes) == content) << "replica on b";
}

// A restore as a new snapshot of an existing volume (two replicas, open
// in the daemon): both replicas get the snapshot with the backup's bytes,
// the volume's head keeps its newer data, a clone of the snapshot reads the
// backup, and no staging volume is left; refused: an existing snapshot
// name, a volume of another size, stores with a snapshot.
TEST_F(BackupDaemonTest, RestoreAsSnapshotOfAnExistingVolume) {
  constexpr uint64_t kChunks = 8;
  const std::string store_a = dir_ + "/store-a";
  const std::string store_b = dir_ + "/store-b";
  const std::string target = dir_ + "/backups";
  std::vector<std::byte> backed_up(kVolumeBytes);
  std::vector<std::byte> head;
  prepare_restore_as_snapshot(store_a, store_b, target, kVolumeBytes, kChunks, backed_up, head);
  ok("volume.create", {{"name", "small"}, {"size", 16 * kMiB}, {"stores", {"a"}}});

  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "s1"}},
          "already_exists", "volume 'vol' already has a snapshot 's1'");
  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "small"}, {"snapshot", "r"}},
          "invalid_argument",
          "backup 'b' is " + std::to_string(kVolumeBytes) + " bytes, volume 'small' is " +
              std::to_string(16 * kMiB) + " bytes");
  refused(
      "backup.restore",
      {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "r"}, {"stores", {"a"}}},
      "invalid_argument", "'stores' and 'min_replicas' are for a restore into a new volume");

  const Json started = ok(
      "backup.restore", {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "r"}});
  EXPECT_EQ(started["snapshot"], "r");
  EXPECT_EQ(started["chunks"], kChunks);
  const Json job = finished_job({{"target", target}}, "b", "restore", 30, "vol");
  ASSERT_EQ(job["state"], "done") << job.dump() << log_text();
  EXPECT_EQ(job["snapshot"], "r");
  EXPECT_EQ(job["chunks_done"], kChunks);
  // The volume stayed usable: it is not blocked, lists the new snapshot.
  EXPECT_FALSE(ok("volume.show", {{"name", "vol"}}).contains("restoring"));
  const Json listed = ok("snapshot.list", {{"volume", "vol"}});
  EXPECT_EQ(listed["snapshots"], Json::parse(R"([{"name":"s1"},{"name":"r"}])")) << listed.dump();
  refused("snapshot.create", {{"volume", "vol"}, {"name", "r"}}, "already_exists",
          "already has a snapshot 'r'");
  ok("snapshot.clone", {{"volume", "vol"}, {"snapshot", "r"}, {"clone", "copy"}});
  EXPECT_TRUE(ok("daemon.status")["orphans"].empty()) << "a staging volume is left";
  EXPECT_TRUE(fs::is_empty(dir_ + "/state/backup-jobs/jobs"));

  // A corrupted chunk: the job fails naming backup and offset, and leaves
  // nothing behind - no snapshot, no staging volume, no job state.
  {
    auto t = backup::open_target(target);
    backup::Repository repo(**t);
    const auto manifest = repo.get_manifest("b");
    ASSERT_TRUE(manifest.ok());
    const auto& entry = manifest->entries[3];
    std::fstream f(target + "/" + backup::Repository::chunk_key(entry.hash),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x5a');
    f.close();
    ok("backup.restore",
       {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "bad"}});
    const Json failed = finished_job({{"target", target}}, "b", "restore", 30, "vol");
    ASSERT_EQ(failed["state"], "failed") << failed.dump();
    EXPECT_NE(failed["error"].get<std::string>().find("backup 'b': volume offset " +
                                                      std::to_string(entry.offset)),
              std::string::npos)
        << failed.dump();
    EXPECT_EQ(ok("snapshot.list", {{"volume", "vol"}})["snapshots"].size(), 2U);
    EXPECT_TRUE(ok("daemon.status")["orphans"].empty()) << "the staging volume is left";
    EXPECT_TRUE(fs::is_empty(dir_ + "/state/backup-jobs/jobs"));
  }
  EXPECT_EQ(stop(), 0);

  for (const std::string& path : {store_a, store_b}) {
    expect_restored_snapshot(path, "r", backed_up, head);
    EXPECT_TRUE(read_volume(path, "copy", kVolumeBytes) == backed_up) << path << ": clone";
  }
}

// A restore that cannot fit is refused before it starts - into a new volume
// and as a snapshot - naming the store, its free space and the backup's
// data, and creates nothing (it used to write until the store was full).
TEST_F(BackupDaemonTest, RestoreThatCannotFitIsRefusedBeforeItStarts) {
  const std::string store_a = dir_ + "/store-a";
  const std::string target = dir_ + "/backups";
  {
    VolumeStore vs = store_with_volume(store_a, kVolumeBytes + 96 * kMiB, kVolumeBytes);
    ASSERT_NE(vs.store, nullptr);
    constexpr size_t kRun = kMiB;
    auto* buffer = static_cast<std::byte*>(std::aligned_alloc(4096, kRun));
    for (uint64_t offset = 0; offset < kVolumeBytes; offset += kRun) {
      for (size_t i = 0; i < kRun; ++i) {
        buffer[i] = static_cast<std::byte>((i / 512 * 13 + offset / kRun * 29) | 1U);
      }
      ASSERT_TRUE(vs.store->write(vs.id, offset, {buffer, kRun}).ok());
    }
    std::free(buffer);
    ASSERT_TRUE(vs.store->commit().ok());
    ASSERT_TRUE(vs.store->create_snapshot(vs.id, "s1").ok());
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    backup::Repository repo(**t);
    backup::BackupOptions backup_options;
    backup_options.name = "b";
    ASSERT_TRUE(backup::backup_snapshot(*vs.store, repo, "vol", "s1", backup_options).ok());
    ASSERT_TRUE(vs.store->close().ok());
  }
  empty_store(dir_ + "/store-tiny", 24 * kMiB);
  start();
  ok("store.add", {{"name", "a"}, {"path", store_a}});
  ok("store.add", {{"name", "tiny"}, {"path", dir_ + "/store-tiny"}});
  ok("volume.import", {{"name", "vol"}, {"stores", {"a"}}});
  ok("volume.create", {{"name", "small"}, {"size", kVolumeBytes}, {"stores", {"tiny"}}});
  const std::string why = "store 'tiny' has ";
  const std::string need = "backup 'b' holds 32 MiB of data";
  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "new"}, {"stores", {"tiny"}}}, "io_error",
          why);
  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "new"}, {"stores", {"tiny"}}}, "io_error",
          need);
  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "small"}, {"snapshot", "r"}}, "io_error",
          need);
  EXPECT_FALSE(ok("volume.list").dump().find("\"new\"") != std::string::npos)
      << "a refused restore created its volume";
  EXPECT_TRUE(ok("snapshot.list", {{"volume", "small"}})["snapshots"].empty());
  EXPECT_TRUE(ok("daemon.status")["orphans"].empty());
  // Where it fits, the same restore runs.
  ok("backup.restore", {{"target", target}, {"name", "b"}, {"volume", "new"}, {"stores", {"a"}}});
  const Json job = finished_job({{"target", target}}, "b", "restore", 30, "new");
  EXPECT_EQ(job["state"], "done") << job.dump() << log_text();
  EXPECT_EQ(stop(), 0);
}

// A restore as a snapshot is a resumable job: SIGKILLed mid-way (the volume
// in use, no snapshot listed yet, its staging volumes no orphans), the
// restarted daemon resumes it after the last checkpoint and seals the
// snapshot on both replicas, byte-identical to the backup.
TEST_F(BackupDaemonTest, RestoreAsSnapshotResumesAfterSigkill) {
  constexpr uint64_t kChunks = 48;
  constexpr uint64_t kBytes = 128 * kMiB;
  const std::string store_a = dir_ + "/store-a";
  const std::string store_b = dir_ + "/store-b";
  const std::string target = dir_ + "/backups";
  std::vector<std::byte> backed_up(kBytes);
  std::vector<std::byte> head;
  prepare_restore_as_snapshot(store_a, store_b, target, kBytes, kChunks, backed_up, head);
  // 64 KiB per chunk at 1 MiB/s: 16 chunks (one checkpoint) a second, 3 s in all.
  ok("backup.restore",
     {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "r"}, {"rate", 1}});
  const Json midway =
      wait_for("backup.show", {{"target", target}, {"name", "b"}}, [](const Json& r) {
        return !r["jobs"].empty() && r["jobs"][0]["chunks_done"].get<uint64_t>() >= 20;
      });
  ASSERT_EQ(midway["jobs"][0]["state"], "running") << midway.dump();
  EXPECT_FALSE(ok("volume.show", {{"name", "vol"}}).contains("restoring"));
  EXPECT_EQ(ok("snapshot.list", {{"volume", "vol"}})["snapshots"].size(), 1U);
  EXPECT_TRUE(ok("daemon.status")["orphans"].empty()) << "the staging volume is no orphan";
  refused("snapshot.create", {{"volume", "vol"}, {"name", "r"}}, "busy",
          "being restored as snapshot 'r'");
  refused("backup.restore",
          {{"target", target}, {"name", "b"}, {"volume", "vol"}, {"snapshot", "r2"}}, "busy",
          "one restore into a volume at a time");
  refused("volume.resize", {{"name", "vol"}, {"size", 2 * kBytes}}, "busy",
          "being restored as snapshot 'r' of volume 'vol'");
  ok("snapshot.create", {{"volume", "vol"}, {"name", "meanwhile"}});  // the volume is usable
  const Json still = ok("backup.show", {{"target", target}, {"name", "b"}});
  ASSERT_EQ(still["jobs"][0]["state"], "running") << "the restore ended before the checks";
  EXPECT_EQ(stop(SIGKILL), 128 + SIGKILL);

  start();
  const Json job = finished_job({{"target", target}}, "b", "restore", 60, "vol");
  ASSERT_EQ(job["state"], "done") << job.dump() << log_text();
  EXPECT_EQ(job["resumed"], true);
  EXPECT_EQ(job["chunks_done"], kChunks);
  EXPECT_GE(job["chunks_skipped"].get<uint64_t>(), 16U) << job.dump();
  EXPECT_LT(job["chunks_skipped"].get<uint64_t>(), kChunks) << job.dump();
  const Json listed = ok("snapshot.list", {{"volume", "vol"}})["snapshots"];
  EXPECT_EQ(listed.size(), 3U) << listed.dump();
  EXPECT_TRUE(std::find(listed.begin(), listed.end(), Json{{"name", "r"}}) != listed.end())
      << listed.dump();
  EXPECT_TRUE(fs::is_empty(dir_ + "/state/backup-jobs/jobs"));
  EXPECT_EQ(stop(), 0);
  for (const std::string& path : {store_a, store_b}) {
    expect_restored_snapshot(path, "r", backed_up, head);
  }
}

// A delete is a background job too: SIGKILLed mid-way (its manifest is
// removed first, some chunks after it), the restarted daemon finishes the
// collection from the manifests left - and never removes a chunk the
// remaining backup needs.
TEST_F(BackupDaemonTest, DeleteResumesAfterSigkill) {
  constexpr uint64_t kChunks = 48;
  constexpr uint64_t kChanged = 12;
  constexpr uint64_t kBytes = 128 * kMiB;
  const std::string store_a = dir_ + "/store-a";
  const std::string target = dir_ + "/backups";
  std::vector<std::byte> first(kBytes);
  std::vector<std::byte> second;
  {
    VolumeStore vs = store_with_volume(store_a, 160 * kMiB, kBytes);
    ASSERT_NE(vs.store, nullptr);
    dbs::Store* const store = vs.store.get();
    const dbs::VolumeId id = vs.id;
    write_chunks(*store, id, kChunks, 1, first);
    ASSERT_TRUE(store->commit().ok());
    ASSERT_TRUE(store->create_snapshot(id, "s1").ok());
    // s2: the first kChanged chunks rewritten, the others shared with s1.
    second = first;
    write_chunks(*store, id, kChanged, 2, second);
    ASSERT_TRUE(store->commit().ok());
    ASSERT_TRUE(store->create_snapshot(id, "s2").ok());
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    backup::Repository repo(**t);
    for (const auto& [name, snapshot] : {std::pair{"b1", "s1"}, std::pair{"b2", "s2"}}) {
      backup::BackupOptions backup_options;
      backup_options.name = name;
      auto made = backup::backup_snapshot(*store, repo, "vol", snapshot, backup_options);
      ASSERT_TRUE(made.ok()) << made.error().to_string();
    }
    ASSERT_EQ(repo.target().list("chunks/")->size(), kChunks + kChanged);
    ASSERT_TRUE(store->close().ok());
  }
  start();
  // 12 chunks only b1 names, removed at 4 a second: 3 s.
  ok("backup.delete", {{"target", target}, {"name", "b1"}, {"rate", 4}});
  const Json midway =
      wait_for("backup.show", {{"target", target}, {"name", "b1"}}, [](const Json& r) {
        return !r["jobs"].empty() && r["jobs"][0]["chunks_removed"].get<uint64_t>() >= 2;
      });
  ASSERT_EQ(midway["jobs"][0]["kind"], "delete") << midway.dump();
  ASSERT_EQ(midway["jobs"][0]["state"], "running") << midway.dump();
  EXPECT_FALSE(midway.contains("backup")) << "the manifest goes first";
  refused("backup.delete", {{"target", target}, {"name", "b1"}}, "busy", "is being deleted");
  EXPECT_EQ(stop(SIGKILL), 128 + SIGKILL);
  {
    auto t = backup::open_target(target);
    ASSERT_TRUE(t.ok());
    const size_t left = (*t)->list("chunks/")->size();
    EXPECT_LT(left, kChunks + kChanged - 1) << "nothing was removed before the kill";
    EXPECT_GT(left, kChunks) << "the delete finished before the kill";
  }

  start();  // the delete resumes from its state file
  const Json job = finished_job({{"target", target}}, "b1", "delete", 60);
  ASSERT_EQ(job["state"], "done") << job.dump() << log_text();
  EXPECT_EQ(job["resumed"], true);
  const Json list = ok("backup.list", {{"target", target}});
  ASSERT_EQ(list["backups"].size(), 1U) << list.dump();
  EXPECT_EQ(list["backups"][0]["name"], "b2");
  EXPECT_TRUE(ok("backup.verify", {{"target", target}, {"name", "b2"}})["problems"].empty());
  auto t = backup::open_target(target);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->list("chunks/")->size(), kChunks) << "b2's chunks, and only those";
  backup::Repository repo(**t);
  MemoryWriter writer(kBytes);
  auto restored = backup::run_restore(repo, "b2", writer, {});
  ASSERT_TRUE(restored.ok()) << restored.error().to_string();
  EXPECT_TRUE(writer.bytes == second);
  EXPECT_TRUE(fs::is_empty(dir_ + "/state/backup-jobs/jobs"));
}

// A job state file the daemon cannot use is left alone with an error, and
// a job whose store is gone waits (listed) instead of failing the start.
TEST_F(BackupDaemonTest, UnusableJobStateFiles) {
  const std::string jobs_dir = dir_ + "/state/backup-jobs/jobs";
  fs::create_directories(jobs_dir);
  std::string waiting;
  {
    std::ofstream(jobs_dir + "/garbage.json") << "{not json";
    const Json spec{{"kind", "backup"},  {"name", "b"},      {"target", dir_ + "/backups"},
                    {"s3_endpoint", ""}, {"s3_region", ""},  {"s3_credentials", ""},
                    {"volume", "vol"},   {"snapshot", "s1"}, {"parent", ""},
                    {"store", "gone"},   {"rate", 0}};
    // Named as the daemon names it (sha256 of target and name).
    const std::string id = dir_ + "/backups\nb";
    waiting = jobs_dir + "/" + backup::sha256({std::as_bytes(std::span(id))}).hex().substr(0, 32) +
              ".json";
    std::ofstream(waiting) << spec.dump();
  }
  start();
  const Json list = ok("backup.list", {{"target", dir_ + "/backups"}});
  ASSERT_EQ(list["jobs"].size(), 1U) << list.dump();
  EXPECT_EQ(list["jobs"][0]["state"], "waiting");
  EXPECT_EQ(list["jobs"][0]["error"], "store 'gone' is not available: not resumed");
  EXPECT_NE(log_text().find("garbage.json: not JSON: left alone, not resumed"), std::string::npos)
      << log_text();
  EXPECT_TRUE(fs::exists(jobs_dir + "/garbage.json"));
  EXPECT_TRUE(fs::exists(waiting));

  // Deleting the backup drops the waiting job (else the next start would
  // resume it), also when there is no backup to delete.
  refused("backup.delete", {{"target", dir_ + "/backups"}, {"name", "b"}}, "not_found",
          "no backup 'b'");
  EXPECT_FALSE(fs::exists(waiting));
  EXPECT_TRUE(ok("backup.list", {{"target", dir_ + "/backups"}})["jobs"].empty());
}

}  // namespace
}  // namespace ublkvol::daemon::test_support
