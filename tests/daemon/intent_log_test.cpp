// IntentLog (src/daemon/intent_log.h): intents survive a reopen, clearing
// the last one removes the file, ids keep growing, and a damaged file is
// refused instead of being treated as "nothing pending".
#include "intent_log.h"

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>

namespace ublkvol::daemon {
namespace {

namespace fs = std::filesystem;

class IntentLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/dev/shm/ublkvol-intent-XXXXXX";
    dir_ = ::mkdtemp(pattern.data());
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file() const { return dir_ + "/" + kIntentFileName; }
  std::string dir_;
};

TEST_F(IntentLogTest, RecordReopenClear) {
  auto log = IntentLog::open(dir_);
  ASSERT_TRUE(log.ok()) << log.error().message();
  EXPECT_TRUE(log->pending().empty());
  Intent create;
  create.op = IntentOp::kVolumeCreate;
  create.volume = "v";
  create.stores = {"a", "b"};
  Intent clone;
  clone.op = IntentOp::kSnapshotClone;
  clone.volume = "c";
  clone.stores = {"a"};
  clone.snapshot = "s";
  clone.origin = "v";
  auto first = log->record(create);
  auto second = log->record(clone);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_LT(*first, *second);
  EXPECT_TRUE(fs::exists(file()));
  EXPECT_FALSE(fs::exists(file() + ".tmp"));

  auto reopened = IntentLog::open(dir_);
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  ASSERT_EQ(reopened->pending().size(), 2u);
  create.id = *first;
  clone.id = *second;
  EXPECT_EQ(reopened->pending()[0], create);
  EXPECT_EQ(reopened->pending()[1], clone);
  EXPECT_EQ(describe(clone), "snapshot.clone of 'c' snapshot 's' from 'v' on 'a'");

  ASSERT_TRUE(reopened->clear(*first).ok());
  ASSERT_TRUE(reopened->clear(12345).ok());  // not recorded: nothing happens
  auto third = reopened->record(create);
  ASSERT_TRUE(third.ok());
  EXPECT_GT(*third, *second);  // ids are not reused
  ASSERT_TRUE(reopened->clear(*second).ok());
  ASSERT_TRUE(reopened->clear(*third).ok());
  EXPECT_FALSE(fs::exists(file()));  // nothing pending: no file
  auto empty = IntentLog::open(dir_);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->pending().empty());
}

TEST_F(IntentLogTest, DamagedFileIsRefused) {
  for (const char* text : {"{", R"({"format":"other","intents":[]})",
                           R"({"format":"ublk-volumed-intents","version":1,"intents":[{"id":1}]})",
                           R"({"format":"ublk-volumed-intents","version":1,"intents":[
                              {"id":1,"op":"volume.explode","volume":"v","stores":[]}]})"}) {
    std::ofstream(file(), std::ios::trunc) << text;
    auto log = IntentLog::open(dir_);
    EXPECT_FALSE(log.ok()) << text;
    if (!log.ok()) {
      EXPECT_NE(log.error().message().find(file()), std::string::npos) << log.error().message();
    }
  }
}

}  // namespace
}  // namespace ublkvol::daemon
