#include "control_request_case.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon::fuzz {
namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "control_request fuzz: property broken: %s\n", what);
  std::abort();
}

template <typename R>
void expect_value_or_einval(const R& result) {
  if (!result.ok() &&
      (result.error().errno_value() != EINVAL || result.error().message().empty())) {
    broken("a params accessor failed without EINVAL and a message");
  }
}

}  // namespace

std::string run_request_case(std::span<const uint8_t> input) {
  const std::string_view line(reinterpret_cast<const char*>(input.data()), input.size());
  ParsedRequest parsed = parse_request(line);
  if (parsed.request.has_value() == parsed.error.has_value()) {
    broken("exactly one of request/error must be set");
  }
  if (parsed.error) {
    const ErrorCode code = parsed.code;
    const std::string out =
        to_line(make_error_response(parsed.id, parsed.code, parsed.error->message()));
    if (out.empty() || out.back() != '\n' || out.find('\n') != out.size() - 1) {
      broken("an error response is not exactly one line");
    }
    auto back = parse_response(std::string_view(out).substr(0, out.size() - 1));
    if (!back.ok() || back->ok || back->code != code || back->id != parsed.id) {
      broken("an error response does not round-trip");
    }
    return std::string(to_string(code));
  }
  const Request& request = *parsed.request;
  if (!request.params.is_object() || request.method.empty()) {
    broken("an accepted request lacks an object params or a method");
  }
  Params p(request.params);
  expect_value_or_einval(p.name("name"));
  expect_value_or_einval(p.optional_name("volume"));
  expect_value_or_einval(p.string("path"));
  expect_value_or_einval(p.optional_string("reason"));
  expect_value_or_einval(p.size("size"));
  expect_value_or_einval(p.optional_size("extent_size"));
  expect_value_or_einval(p.uint("index"));
  expect_value_or_einval(p.optional_uint("queues"));
  expect_value_or_einval(p.optional_bool("format"));
  expect_value_or_einval(p.name_list("stores", 1, 4));
  expect_value_or_einval(p.finish());
  auto name = Params(request.params).name("name");
  if (name.ok() && !validate_name(*name, "name").ok()) {
    broken("an accepted name fails validate_name");
  }
  const std::string out = to_line(make_ok_response(request.id, request.params));
  auto back = parse_response(std::string_view(out).substr(0, out.size() - 1));
  if (!back.ok() || !back->ok || back->id != request.id) {
    broken("an ok response does not round-trip");
  }
  return "request";
}

}  // namespace ublkvol::daemon::fuzz
