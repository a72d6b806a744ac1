// Unit tests of the protocol envelope, validation helpers and error mapping
// (include/ublkvol/daemon/protocol.h).
#include "ublkvol/daemon/protocol.h"

#include <gtest/gtest.h>
#include <string>

namespace ublkvol::daemon {
namespace {

struct EnvelopeCase {
  const char* line;
  const char* code;  // "" = accepted
  const char* message_part;
};

TEST(Protocol, EnvelopeTable) {
  const EnvelopeCase cases[] = {
      {R"({"v":1,"id":1,"method":"stats"})", "", ""},
      {R"({"v":1,"id":"abc","method":"stats","params":{}})", "", ""},
      {R"(not json)", "bad_request", "not valid JSON"},
      {R"([1,2])", "bad_request", "JSON object"},
      {R"("s")", "bad_request", "JSON object"},
      {R"({"v":1,"method":"stats"})", "invalid_argument", "missing field 'id'"},
      {R"({"v":1,"id":-1,"method":"stats"})", "invalid_argument", "'id'"},
      {R"({"v":1,"id":1.5,"method":"stats"})", "invalid_argument", "'id'"},
      {R"({"v":1,"id":{},"method":"stats"})", "invalid_argument", "'id'"},
      {R"({"id":1,"method":"stats"})", "invalid_argument", "missing field 'v'"},
      {R"({"v":2,"id":1,"method":"stats"})", "unsupported_version", "version 2"},
      {R"({"v":"1","id":1,"method":"stats"})", "unsupported_version", "of type string"},
      {R"({"v":0,"id":1,"method":"stats"})", "unsupported_version", "version 0"},
      {R"({"v":1,"id":1})", "invalid_argument", "missing field 'method'"},
      {R"({"v":1,"id":1,"method":""})", "invalid_argument", "'method'"},
      {R"({"v":1,"id":1,"method":7})", "invalid_argument", "'method'"},
      {R"({"v":1,"id":1,"method":"stats","params":[]})", "invalid_argument", "'params'"},
      {R"({"v":1,"id":1,"method":"stats","extra":1})", "invalid_argument", "unknown field 'extra'"},
  };
  for (const auto& c : cases) {
    const ParsedRequest parsed = parse_request(c.line);
    if (std::string(c.code).empty()) {
      ASSERT_TRUE(parsed.request.has_value()) << c.line << ": " << parsed.error->message();
      EXPECT_FALSE(parsed.error.has_value());
      EXPECT_EQ(parsed.request->method, "stats");
      EXPECT_TRUE(parsed.request->params.is_object());
    } else {
      ASSERT_TRUE(parsed.error.has_value()) << c.line;
      EXPECT_FALSE(parsed.request.has_value());
      EXPECT_EQ(to_string(parsed.code), c.code) << c.line;
      EXPECT_NE(parsed.error->message().find(c.message_part), std::string::npos)
          << c.line << " -> " << parsed.error->message();
    }
  }
}

TEST(Protocol, ErrorKeepsTheIdWhenReadable) {
  EXPECT_EQ(parse_request(R"({"v":9,"id":42,"method":"x"})").id, 42);
  EXPECT_EQ(parse_request(R"({"v":1,"id":"a","method":"x","bad":1})").id, "a");
  EXPECT_TRUE(parse_request("{").id.is_null());
}

TEST(Protocol, DeepNestingDoesNotCrash) {
  std::string deep = R"({"v":1,"id":1,"method":"x","params":{"a":)";
  deep += std::string(200000, '[') + std::string(200000, ']') + "}}";
  const ParsedRequest parsed = parse_request(deep);
  ASSERT_TRUE(parsed.request.has_value());
  Params p(parsed.request->params);
  EXPECT_FALSE(p.finish().ok());  // unknown field 'a'
  std::string deep_v =
      R"({"id":1,"method":"x","v":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_TRUE(parse_request(deep_v).error.has_value());
}

TEST(Protocol, Names) {
  for (const char* good : {"a", "vol-0", "A.b_c", "x1234567890", "0"}) {
    EXPECT_TRUE(validate_name(good, "name").ok()) << good;
  }
  const std::string longest(64, 'n');
  EXPECT_TRUE(validate_name(longest, "name").ok());
  struct Bad {
    std::string name;
    const char* part;
  };
  const Bad bad[] = {{"", "empty"},
                     {std::string(65, 'n'), "the limit is 64"},
                     {"a/b", "contains '/'"},
                     {"../x", "must not start"},
                     {"-x", "must not start"},
                     {".x", "must not start"},
                     {std::string("a\nb"), "\\x0a"},
                     {std::string("a\x01"), "\\x01"},
                     {"a b", "contains ' '"},
                     {"é", "contains"}};
  for (const auto& b : bad) {
    const Status s = validate_name(b.name, "volume name");
    ASSERT_FALSE(s.ok()) << b.name;
    EXPECT_EQ(s.error().errno_value(), EINVAL);
    EXPECT_NE(s.error().message().find(b.part), std::string::npos) << s.error().message();
    EXPECT_EQ(s.error().message().find('\n'), std::string::npos);  // never raw
  }
}

TEST(Protocol, Sizes) {
  EXPECT_TRUE(validate_size(4096, "size").ok());
  EXPECT_TRUE(validate_size(uint64_t{1} << 40, "size").ok());
  EXPECT_NE(validate_size(0, "size").error().message().find("greater than 0"), std::string::npos);
  EXPECT_NE(validate_size(1000, "size").error().message().find("multiple of 4096"),
            std::string::npos);
}

TEST(Protocol, ParamsTypesAndUnknownFields) {
  const Json params = Json::parse(
      R"({"name":"v","size":8192,"neg":-5,"frac":1.5,"flag":true,"list":["a","b"],"dup":["a","a"],"str":"x"})");
  Params p(params);
  EXPECT_EQ(*p.name("name"), "v");
  EXPECT_EQ(*p.size("size"), 8192u);
  const auto neg = p.uint("neg");
  ASSERT_FALSE(neg.ok());
  EXPECT_NE(neg.error().message().find("must not be negative"), std::string::npos);
  const auto frac = p.uint("frac");
  ASSERT_FALSE(frac.ok());
  EXPECT_NE(frac.error().message().find("unsigned integer"), std::string::npos);
  EXPECT_EQ(**p.optional_bool("flag"), true);
  EXPECT_EQ(p.name_list("list", 1, 4)->size(), 2u);
  EXPECT_NE(p.name_list("dup", 1, 4).error().message().find("twice"), std::string::npos);
  const auto wrong = p.size("str");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("field 'str' must be an unsigned integer, not string"),
            std::string::npos);
  EXPECT_FALSE(p.optional_uint("absent")->has_value());
  EXPECT_NE(p.name("missing").error().message().find("missing field 'missing'"), std::string::npos);
  EXPECT_TRUE(p.finish().ok());

  Params q(params);
  (void)q.name("name");
  const Status unknown = q.finish();
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message().find("unknown field"), std::string::npos);
}

TEST(Protocol, ErrorCodesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(ErrorCode::kInternal); ++i) {
    const auto code = static_cast<ErrorCode>(i);
    EXPECT_EQ(parse_error_code(to_string(code)), code);
    // A client's Error for the code carries the code's kind; the codes that
    // are kinds (and unknown_method) come back unchanged.
    const Error error = error_for(code, "m");
    EXPECT_EQ(error.kind(), kind_for(code)) << to_string(code);
    EXPECT_EQ(error.errno_value(), errno_for(code)) << to_string(code);
    if (code != ErrorCode::kBadRequest && code != ErrorCode::kUnsupportedVersion &&
        code != ErrorCode::kTooLarge) {
      EXPECT_EQ(error_code_for(error), code) << to_string(code);
    }
  }
  EXPECT_FALSE(parse_error_code("nope").has_value());
}

TEST(Protocol, ResponsesRoundTrip) {
  const auto ok = parse_response(to_line(make_ok_response(7, {{"x", 1}})));
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->ok);
  EXPECT_EQ(ok->id, 7);
  EXPECT_EQ(ok->result["x"], 1);
  const auto err = parse_response(to_line(make_error_response("q", Error(EBUSY, "in use"))));
  ASSERT_TRUE(err.ok());
  EXPECT_FALSE(err->ok);
  EXPECT_EQ(err->code, ErrorCode::kBusy);
  EXPECT_EQ(err->message, "in use");
  EXPECT_FALSE(parse_response("{}").ok());
  // Invalid UTF-8 in a message is replaced, never thrown.
  const std::string line = to_line(
      make_error_response(nullptr, ErrorCode::kInvalidArgument, std::string("bad \xff\xfe name")));
  EXPECT_TRUE(parse_response(line).ok());
}

}  // namespace
}  // namespace ublkvol::daemon
