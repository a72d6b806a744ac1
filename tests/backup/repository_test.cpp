// The directory target and the repository on it, on real files: atomic
// puts (interrupted at each step), content addressing, the index, verify
// naming the backup and the offset of a damaged chunk or manifest.
#include "ublkvol/backup/repository.h"

#include <filesystem>
#include <gtest/gtest.h>

#include "temp_dir.h"

namespace ublkvol::backup {
namespace {

using testing::flip_byte;
using testing::TempDir;
namespace fs = std::filesystem;

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

std::string text_of(const std::vector<std::byte>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size()};
}

ChunkContent chunk_with(uint32_t block, uint8_t fill) {
  ChunkContent chunk;
  chunk.set_block(block);
  chunk.data.assign(kBlockBytes, std::byte{fill});
  return chunk;
}

TEST(DirectoryTarget, PutGetListRemove) {
  TempDir dir;
  auto target = open_directory_target(dir.path());
  ASSERT_TRUE(target.ok()) << target.error().message();
  Target& t = **target;
  ASSERT_TRUE(t.put("backups/a.manifest", bytes_of("one")).ok());
  ASSERT_TRUE(t.put("chunks/ab/abcd", bytes_of("two")).ok());
  ASSERT_TRUE(t.put("chunks/cd/cdef", bytes_of("three")).ok());
  EXPECT_TRUE(*t.exists("chunks/ab/abcd"));
  EXPECT_FALSE(*t.exists("chunks/ab/nope"));
  EXPECT_EQ(text_of(*t.get("chunks/cd/cdef")), "three");
  // Overwrite replaces the whole object.
  ASSERT_TRUE(t.put("backups/a.manifest", bytes_of("uno")).ok());
  EXPECT_EQ(text_of(*t.get("backups/a.manifest")), "uno");
  auto chunks = t.list("chunks/");
  ASSERT_TRUE(chunks.ok());
  EXPECT_EQ(*chunks, (std::vector<std::string>{"chunks/ab/abcd", "chunks/cd/cdef"}));
  ASSERT_TRUE(t.remove("chunks/ab/abcd").ok());
  ASSERT_TRUE(t.remove("chunks/ab/abcd").ok());  // missing: not an error
  auto missing = t.get("chunks/ab/abcd");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
  EXPECT_NE(missing.error().message().find("chunks/ab/abcd"), std::string::npos);
  // Nothing but the objects: no temporary left in the namespace.
  EXPECT_TRUE(fs::is_empty(dir.path() + "/tmp"));
}

TEST(DirectoryTarget, InterruptedPutLeavesNothingOrTheWholeObject) {
  TempDir dir;
  for (const PutStep stop : {PutStep::kTempWritten, PutStep::kTempSynced, PutStep::kRenamed}) {
    const std::string key = "chunks/00/k" + std::to_string(static_cast<int>(stop));
    auto target = open_directory_target(dir.path(), [&](const std::string& k, PutStep step) {
      return k == key && step == stop ? Status(Error(EINTR, "crash here")) : ok_status();
    });
    ASSERT_TRUE(target.ok());
    auto put = (*target)->put(key, bytes_of("payload"));
    ASSERT_FALSE(put.ok());
    EXPECT_EQ(put.error().message(), "crash here");
    auto present = (*target)->exists(key);
    ASSERT_TRUE(present.ok());
    if (stop == PutStep::kRenamed) {
      ASSERT_TRUE(*present);
      EXPECT_EQ(text_of(*(*target)->get(key)), "payload");
    } else {
      EXPECT_FALSE(*present) << "a put stopped before its rename showed the key";
    }
  }
  // What the interrupted puts left in tmp/ is garbage that garbage
  // collection removes (under the exclusive lock).
  auto target = open_directory_target(dir.path());
  ASSERT_TRUE(target.ok());
  EXPECT_FALSE(fs::is_empty(dir.path() + "/tmp"));
  auto lock = (*target)->lock(/*exclusive=*/true);
  ASSERT_TRUE(lock.ok());
  ASSERT_TRUE((*target)->remove_temporaries().ok());
  EXPECT_TRUE(fs::is_empty(dir.path() + "/tmp"));
}

TEST(DirectoryTarget, RefusesWhatIsNotADirectory) {
  TempDir dir;
  EXPECT_FALSE(open_target("relative/path").ok());
  EXPECT_FALSE(open_target("s3x://bucket").ok());
  const std::string file = dir.path() + "/file";
  ASSERT_TRUE(open_directory_target(dir.path()).ok());
  {
    auto t = open_directory_target(dir.path());
    ASSERT_TRUE((*t)->put("file", bytes_of("x")).ok());
  }
  auto refused = open_target("dir:" + file);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find(file + " is not a directory"), std::string::npos)
      << refused.error().message();
}

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = open_directory_target(dir_.path());
    ASSERT_TRUE(t.ok()) << t.error().message();
    target_ = std::move(*t);
    repo_ = std::make_unique<Repository>(*target_);
  }

  // A complete backup `name` of two chunks at offsets 0 and 4 MiB.
  Manifest store_backup(const std::string& name, uint8_t fill) {
    Manifest m;
    m.name = name;
    m.volume = "vol";
    m.snapshot = "snap-" + name;
    m.volume_size = 8 * kChunkBytes;
    m.complete = true;
    m.next_offset = m.volume_size;
    for (const uint64_t offset : {uint64_t{0}, 2 * kChunkBytes}) {
      const ChunkContent chunk = chunk_with(static_cast<uint32_t>(offset / kChunkBytes), fill);
      auto hash = repo_->put_chunk(chunk);
      EXPECT_TRUE(hash.ok());
      m.entries.push_back({offset, *hash, 1});
    }
    EXPECT_TRUE(repo_->put_manifest(m).ok());
    return m;
  }

  std::string file_of(const std::string& key) const { return dir_.path() + "/" + key; }

  TempDir dir_;
  std::unique_ptr<Target> target_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(RepositoryTest, ChunksAreStoredOncePerContent) {
  bool written = false;
  auto first = repo_->put_chunk(chunk_with(3, 0xAB), &written);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(written);
  auto second = repo_->put_chunk(chunk_with(3, 0xAB), &written);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(written);
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(target_->list("chunks/")->size(), 1U);
  auto back = repo_->get_chunk(*first);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->data, chunk_with(3, 0xAB).data);
}

TEST_F(RepositoryTest, IndexListsCompleteAndPartialBackups) {
  store_backup("b1", 1);
  store_backup("b2", 2);
  Manifest partial;
  partial.name = "b3";
  partial.volume_size = kChunkBytes;
  ASSERT_TRUE(repo_->put_manifest(partial).ok());
  EXPECT_EQ(*repo_->list_backups(), (std::vector<std::string>{"b1", "b2"}));
  EXPECT_EQ(*repo_->list_backups(/*partial=*/true), (std::vector<std::string>{"b3"}));
  auto m = repo_->get_manifest("b2");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->snapshot, "snap-b2");
  auto none = repo_->get_manifest("b3");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().kind(), ErrorKind::kNotFound);
  EXPECT_NE(none.error().message().find("no backup 'b3'"), std::string::npos);
  EXPECT_TRUE(repo_->get_partial("b3").ok());
  ASSERT_TRUE(repo_->remove_partial("b3").ok());
  EXPECT_TRUE(repo_->list_backups(true)->empty());
}

TEST_F(RepositoryTest, VerifyNamesTheBackupAndOffsetOfADamagedChunk) {
  const Manifest m = store_backup("b1", 7);
  ASSERT_TRUE(repo_->verify("b1").ok());
  EXPECT_TRUE(repo_->verify("b1")->empty());
  // Flip one byte in the payload of the chunk at 4 MiB.
  ASSERT_TRUE(flip_byte(file_of(Repository::chunk_key(m.entries[1].hash)), 100));
  auto problems = repo_->verify("b1");
  ASSERT_TRUE(problems.ok());
  ASSERT_EQ(problems->size(), 1U);
  const std::string& p = problems->front();
  EXPECT_NE(p.find("backup 'b1': volume offset 4194304: "), std::string::npos) << p;
  EXPECT_NE(p.find(Repository::chunk_key(m.entries[1].hash)), std::string::npos) << p;
  EXPECT_NE(p.find("checksum mismatch"), std::string::npos) << p;
  auto read = repo_->get_chunk(m.entries[1].hash);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.error().kind(), ErrorKind::kCorruption);
  // A missing chunk is named too.
  ASSERT_TRUE(target_->remove(Repository::chunk_key(m.entries[0].hash)).ok());
  problems = repo_->verify("b1");
  ASSERT_EQ(problems->size(), 2U);
  EXPECT_NE((*problems)[0].find("volume offset 0: "), std::string::npos);
  EXPECT_NE((*problems)[0].find("is missing"), std::string::npos) << (*problems)[0];
}

TEST_F(RepositoryTest, DamagedManifestNamesTheBackupAndEntry) {
  store_backup("b1", 7);
  // Entry 1 (the chunk after offset 0) starts at byte 1024 + 48.
  ASSERT_TRUE(flip_byte(file_of(Repository::manifest_key("b1")), 1024 + 48 + 12));
  auto verified = repo_->verify("b1");
  ASSERT_FALSE(verified.ok());
  EXPECT_EQ(verified.error().kind(), ErrorKind::kCorruption);
  EXPECT_NE(verified.error().message().find(
                "backup 'b1': backups/b1.manifest: manifest entry 1 (the entry after volume "
                "offset 0) checksum mismatch"),
            std::string::npos)
      << verified.error().message();
}

}  // namespace
}  // namespace ublkvol::backup
