// Issue 12 item 9 (and item 8's config sentence): what the daemon refuses
// up front - duplicate JSON keys in requests and config, state.json entries
// that contradict each other, names longer than what the store accepts,
// errno values that must not read as `internal`, a --config that is missing.
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>

#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {
namespace {

void expect_refused(const Status& s, int err, const std::string& part) {
  ASSERT_FALSE(s.ok()) << "accepted; expected '" << part << "'";
  EXPECT_EQ(s.error().errno_value(), err) << s.error().message();
  EXPECT_NE(s.error().message().find(part), std::string::npos)
      << "'" << s.error().message() << "' lacks '" << part << "'";
}

TEST(Validation, DuplicateKeysInRequestsAreRefused) {
  for (const char* line : {R"({"v":1,"id":1,"method":"volume.create","method":"volume.delete"})",
                           R"({"v":1,"id":1,"method":"x","params":{"name":"a","name":"b"}})",
                           R"({"v":1,"id":1,"method":"x","params":{"o":{"k":1,"k":2}}})"}) {
    const ParsedRequest parsed = parse_request(line);
    ASSERT_TRUE(parsed.error.has_value()) << line;
    EXPECT_EQ(parsed.code, ErrorCode::kInvalidArgument) << line;
    EXPECT_NE(parsed.error->message().find("duplicate key"), std::string::npos)
        << parsed.error->message();
    EXPECT_EQ(parsed.id, 1) << line;  // the error response still carries the id
  }
  // The same key in sibling objects is no duplicate.
  EXPECT_FALSE(parse_request(R"({"v":1,"id":1,"method":"x","params":{"a":{"k":1},"b":{"k":2}}})")
                   .error.has_value());
}

TEST(Validation, DuplicateKeysInConfigAreRefused) {
  auto config = parse_config(R"({"queues":2,"queues":4})", "c.json");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.error().message().find("c.json: duplicate key 'queues'"), std::string::npos)
      << config.error().message();
}

TEST(Validation, ExplicitConfigMustExistDefaultMayNot) {
  const std::string missing = "/nonexistent-ublkvol/config.json";
  EXPECT_TRUE(load_config(missing).ok());
  auto explicit_missing = load_config(missing, /*must_exist=*/true);
  ASSERT_FALSE(explicit_missing.ok());
  EXPECT_NE(explicit_missing.error().message().find(missing + " does not exist"), std::string::npos)
      << explicit_missing.error().message();
}

TEST(Validation, NewConfigKeys) {
  auto config = parse_config(
      R"({"store_dirs":["/srv/stores"],"max_connections":64,"root_reserved_connections":4,
          "max_connections_per_uid":8,"request_timeout_ms":500,"idle_timeout_ms":1000})",
      "c.json");
  ASSERT_TRUE(config.ok()) << config.error().message();
  EXPECT_EQ(config->store_dirs, std::vector<std::string>{"/srv/stores"});
  EXPECT_EQ(config->max_connections_per_uid, 8u);
  EXPECT_EQ(config->request_timeout_ms, 500u);
  for (const auto& [text, part] : std::vector<std::pair<std::string, std::string>>{
           {R"({"store_dirs":["relative"]})", "store_dirs entry 'relative'"},
           {R"({"store_dirs":["/srv/../etc"]})", "without '.' or '..'"},
           {R"({"store_dirs":"/srv"})", "must be an array"},
           {R"({"root_reserved_connections":256})", "must be less than max_connections"},
           {R"({"request_timeout_ms":10})", "request_timeout_ms 10 is out of range"}}) {
    auto refused = parse_config(text, "c.json");
    ASSERT_FALSE(refused.ok()) << text;
    EXPECT_NE(refused.error().message().find(part), std::string::npos)
        << text << ": " << refused.error().message();
  }
}

std::string state_with(const std::string& stores, const std::string& volumes) {
  return R"({"format":"ublk-volumed-state","version":1,"stores":)" + stores + R"(,"volumes":)" +
         volumes + "}";
}

constexpr const char* kTwoStores =
    R"([{"name":"a","path":"/s/a","uuid":"u1"},{"name":"b","path":"/s/b","uuid":"u2"}])";

std::string volume(const std::string& fields) {
  return R"({"name":"v","size_bytes":1048576,"min_replicas":1,"exposed":null,)" + fields + "}";
}

TEST(Validation, StateFileIsCheckedAsStrictlyAsRequests) {
  ASSERT_TRUE(
      state_from_json(state_with(kTwoStores, "[" + volume(R"("stores":["a","b"])") + "]"), "s")
          .ok());
  struct Case {
    std::string text;
    std::string part;
  };
  const Case cases[] = {
      {state_with(
           R"([{"name":"a","path":"/s/a","uuid":"u1"},{"name":"a","path":"/s/x","uuid":"u2"}])",
           "[]"),
       "store entry 1 ('a'): a second store named 'a'"},
      {state_with(
           R"([{"name":"a","path":"/s/a","uuid":"u1"},{"name":"b","path":"/s/a","uuid":"u2"}])",
           "[]"),
       "store entry 1 ('b'): path /s/a is already store 'a'"},
      {state_with(kTwoStores,
                  "[" + volume(R"("stores":["a"])") + "," + volume(R"("stores":["b"])") + "]"),
       "volume entry 1 ('v'): a second volume named 'v'"},
      {state_with(kTwoStores, "[" + volume(R"("stores":["a","a"])") + "]"),
       "volume entry 0 ('v') lists store 'a' twice"},
      {state_with(kTwoStores, "[" + volume(R"("stores":["a","zz"])") + "]"),
       "lists store 'zz', which is not in 'stores'"},
      {state_with(
           kTwoStores,
           R"([{"name":"v","size_bytes":1048576,"min_replicas":3,"exposed":null,"stores":["a","b"]}])"),
       "min_replicas 3 is not in 1..2"},
      {state_with(kTwoStores, "[" + volume(R"("stores":["a"],"colour":"red")") + "]"),
       "unknown field 'colour'"},
      {state_with(
           kTwoStores,
           R"([{"name":"v","size_bytes":"1M","min_replicas":1,"exposed":null,"stores":["a"]}])"),
       "'size_bytes' must be an unsigned integer"},
      {state_with(
           kTwoStores,
           R"([{"name":"v","size_bytes":1000,"min_replicas":1,"exposed":null,"stores":["a"]}])"),
       "not a multiple of 4096"},
      {state_with(R"([{"name":"a","path":"/s/a","uuid":"u1","uuid":"u2"}])", "[]"),
       "duplicate key 'uuid'"},
      {R"({"format":"ublk-volumed-state","version":1,"stores":[],"volumes":[],"extra":1})",
       "unknown field 'extra'"},
  };
  for (const Case& c : cases) {
    auto state = state_from_json(c.text, "state file X");
    ASSERT_FALSE(state.ok()) << c.text;
    EXPECT_EQ(state.error().errno_value(), EINVAL);
    EXPECT_NE(state.error().message().find(c.part), std::string::npos)
        << "'" << state.error().message() << "' lacks '" << c.part << "'";
    EXPECT_EQ(state.error().message().rfind("state file X", 0), 0u) << state.error().message();
  }
}

TEST(Validation, NamesAreLimitedToWhatTheStoreAccepts) {
  const std::string v51(51, 'v');
  const std::string v52(52, 'v');
  EXPECT_TRUE(validate_dbs_names("volume.create", {{"name", v51}}).ok());
  expect_refused(validate_dbs_names("volume.create", {{"name", v52}}), EINVAL,
                 "52 characters long; volume names have at most 51 characters");
  expect_refused(validate_dbs_names("snapshot.clone", {{"clone", v52}, {"snapshot", "s"}}), EINVAL,
                 "at most 51");
  EXPECT_TRUE(validate_dbs_names("snapshot.create", {{"name", std::string(63, 's')}}).ok());
  expect_refused(validate_dbs_names("snapshot.create", {{"name", std::string(64, 's')}}), EINVAL,
                 "snapshot names have at most 63 characters");
  // Lookups of long names are not refused here (they find nothing).
  EXPECT_TRUE(validate_dbs_names("volume.show", {{"name", std::string(64, 'x')}}).ok());
  expect_refused(validate_name("a\nb", "volume name"), EINVAL, "\\x0a");
}

// The code comes from the error's kind: an errno alone gets its default
// kind, an explicit kind wins. ESHUTDOWN/EAGAIN (engine closing / busy) were
// once `internal`; EUCLEAN was `io_error`.
TEST(Validation, ErrorKindsMapToCodes) {
  EXPECT_EQ(error_code_for(Error(EFBIG, "")), ErrorCode::kInvalidArgument);  // "volume too large"
  EXPECT_EQ(error_code_for(Error(EAGAIN, "")), ErrorCode::kBusy);
  EXPECT_EQ(error_code_for(Error(ESHUTDOWN, "")), ErrorCode::kUnavailable);
  EXPECT_EQ(error_code_for(Error(EUCLEAN, "")), ErrorCode::kCorruption);
  EXPECT_EQ(error_code_for(Error(ETIMEDOUT, "")), ErrorCode::kTimeout);
  EXPECT_EQ(error_code_for(Error(ENOSPC, "")), ErrorCode::kIoError);
  EXPECT_EQ(error_code_for(Error(EACCES, "")), ErrorCode::kPermissionDenied);
  EXPECT_EQ(error_code_for(Error(ENOTRECOVERABLE, "")), ErrorCode::kInternal);
  EXPECT_EQ(error_code_for(Error(ErrorKind::kCorruption, EINVAL, "checksum mismatch")),
            ErrorCode::kCorruption);
  EXPECT_EQ(error_code_for(Error(ErrorKind::kCorruption, EIO, "").with_context("store a")),
            ErrorCode::kCorruption);
  EXPECT_EQ(error_code_for(unknown_method_error("volume.explode")), ErrorCode::kUnknownMethod);
  // Every kind has a code of the same name.
  for (const ErrorKind kind : kAllErrorKinds) {
    EXPECT_EQ(to_string(error_code_for(Error(kind, default_errno(kind), ""))), to_string(kind));
  }
}

}  // namespace
}  // namespace ublkvol::daemon
