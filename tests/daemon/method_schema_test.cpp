// The method table's parameter schema (methods.h) against the handlers, for
// every method: each field the table lists is read by the handler (a value
// of the wrong type is refused naming that field, a missing required field
// is refused naming it) and nothing else is accepted (unknown field). Runs
// the real handlers in-process; the parameters are refused before any
// store or volume is looked up.
#include "ublkvol/daemon/methods.h"

#include "in_process.h"

namespace ublkvol::daemon {
namespace {

using test_support::InProcessTest;

class MethodSchemaTest : public InProcessTest {};

// A value of the right type for `kind` (may still name nothing).
Json valid_value(ParamKind kind) {
  switch (kind) {
    case ParamKind::kName:
      return "x";
    case ParamKind::kString:
      return "/nonexistent/x";
    case ParamKind::kUint:
      return 1;
    case ParamKind::kSize:
      return 4096;
    case ParamKind::kBool:
      return false;
    case ParamKind::kNameList:
      return Json::array({"x"});
  }
  return nullptr;
}

// A value of the wrong type for `kind`.
Json wrong_value(ParamKind kind) {
  return kind == ParamKind::kName || kind == ParamKind::kString ? Json(7) : Json("seven");
}

Json required_params(const MethodInfo& m) {
  Json params = Json::object();
  for (const ParamSpec& field : m.params) {
    if (field.required) {
      params[std::string(field.key)] = valid_value(field.kind);
    }
  }
  return params;
}

TEST_F(MethodSchemaTest, UnknownFieldsAreRefused) {
  for (const MethodInfo& m : all_methods()) {
    Json params = required_params(m);
    params["bogus"] = 1;
    refused(std::string(m.name), params, EINVAL, "unknown field 'bogus' in params");
  }
}

TEST_F(MethodSchemaTest, EveryListedFieldIsRead) {
  for (const MethodInfo& m : all_methods()) {
    for (const ParamSpec& field : m.params) {
      const std::string key(field.key);
      Json params = required_params(m);
      params[key] = wrong_value(field.kind);
      SCOPED_TRACE(std::string(m.name) + " " + params.dump());
      refused(std::string(m.name), params, EINVAL, "field '" + key + "' must");
      if (field.required) {
        params.erase(key);
        refused(std::string(m.name), params, EINVAL, "missing field '" + key + "'");
      }
    }
  }
}

TEST_F(MethodSchemaTest, UnknownMethodIsRefused) {
  refused("volume.creat", Json::object(), ENOSYS, "unknown method 'volume.creat'");
}

}  // namespace
}  // namespace ublkvol::daemon
