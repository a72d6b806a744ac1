#include "ublkvol/ublk/recovery_record.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace ublkvol::ublk {
namespace {

class RecoveryRecordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "ublkvol-rec-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    ASSERT_NE(::mkdtemp(buf.data()), nullptr);
    dir_ = buf.data();
  }
  void TearDown() override {
    // std::filesystem instead of system("rm -rf"): no shell, no quoting.
    std::error_code error;
    std::filesystem::remove_all(dir_, error);
    ASSERT_FALSE(error) << "removing " << dir_ << ": " << error.message();
  }
  std::string path(const char* name) const { return dir_ + "/" + name; }
  void write(const std::string& p, const std::string& text) const { std::ofstream(p) << text; }
  std::string load_error(const std::string& text) const {
    const std::string p = path("bad.json");
    write(p, text);
    auto r = load_recovery_record(p);
    return r.ok() ? "<ok>" : r.error().message();
  }

  std::string dir_;
};

TEST_F(RecoveryRecordTest, RoundTrip) {
  RecoveryRecord r;
  r.dev_id = 7;
  r.queues = 2;
  r.queue_depth = 64;
  r.backend = {{"type", "memory"}, {"size", "268435456"}, {"backing_file", "/dev/shm/x"}};
  ASSERT_TRUE(save_recovery_record(path("r.json"), r).ok());
  auto loaded = load_recovery_record(path("r.json"));
  ASSERT_TRUE(loaded.ok()) << loaded.error().to_string();
  EXPECT_EQ(loaded->dev_id, 7U);
  EXPECT_EQ(loaded->queues, 2U);
  EXPECT_EQ(loaded->queue_depth, 64U);
  EXPECT_EQ(loaded->backend, r.backend);
  // Saving again replaces the record atomically.
  r.dev_id = 8;
  ASSERT_TRUE(save_recovery_record(path("r.json"), r).ok());
  EXPECT_EQ(load_recovery_record(path("r.json"))->dev_id, 8U);
  ASSERT_TRUE(remove_recovery_record(path("r.json")).ok());
  ASSERT_TRUE(remove_recovery_record(path("r.json")).ok());  // already gone: fine
  auto missing = load_recovery_record(path("r.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_NE(missing.error().message().find("r.json: cannot read"), std::string::npos);
}

TEST_F(RecoveryRecordTest, CorruptedRecordsAreRefusedWithTheReason) {
  EXPECT_NE(load_error("{\"format\": \"ublkvol-rec").find("not a JSON object (corrupted?)"),
            std::string::npos);
  EXPECT_NE(load_error("[]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(load_error("{\"format\": \"other\"}").find("not a ublkvol recovery record"),
            std::string::npos);
  EXPECT_NE(
      load_error("{\"format\": \"ublkvol-recovery\", \"version\": 9}").find("unsupported version"),
      std::string::npos);
  const std::string head = "{\"format\": \"ublkvol-recovery\", \"version\": 1, ";
  EXPECT_NE(load_error(head + "\"queues\": 1, \"queue_depth\": 1, \"backend\": {}}")
                .find("field 'dev_id' missing"),
            std::string::npos);
  EXPECT_NE(load_error(head + "\"dev_id\": -1, \"queues\": 1, \"queue_depth\": 1, \"backend\": {}}")
                .find("field 'dev_id' missing or not a valid number"),
            std::string::npos);
  EXPECT_NE(load_error(head + "\"dev_id\": 1, \"queues\": 1, \"queue_depth\": 99999, "
                              "\"backend\": {}}")
                .find("field 'queue_depth'"),
            std::string::npos);
  EXPECT_NE(load_error(head + "\"dev_id\": 1, \"queues\": 1, \"queue_depth\": 1}")
                .find("field 'backend' missing"),
            std::string::npos);
  EXPECT_NE(load_error(head + "\"dev_id\": 1, \"queues\": 1, \"queue_depth\": 1, "
                              "\"backend\": {\"size\": 5}}")
                .find("backend field 'size' is not a string"),
            std::string::npos);
}

}  // namespace
}  // namespace ublkvol::ublk
