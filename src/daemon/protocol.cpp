#include "ublkvol/daemon/protocol.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <optional>
#include <utility>
#include <vector>

#include "ublkvol/daemon/methods.h"

namespace ublkvol::daemon {
namespace {

struct CodeName {
  ErrorCode code;
  std::string_view name;
};

constexpr std::array kCodeNames = {
    CodeName{ErrorCode::kBadRequest, "bad_request"},
    CodeName{ErrorCode::kUnsupportedVersion, "unsupported_version"},
    CodeName{ErrorCode::kUnknownMethod, "unknown_method"},
    CodeName{ErrorCode::kInvalidArgument, "invalid_argument"},
    CodeName{ErrorCode::kNotFound, "not_found"},
    CodeName{ErrorCode::kAlreadyExists, "already_exists"},
    CodeName{ErrorCode::kBusy, "busy"},
    CodeName{ErrorCode::kPermissionDenied, "permission_denied"},
    CodeName{ErrorCode::kTooLarge, "too_large"},
    CodeName{ErrorCode::kUnavailable, "unavailable"},
    CodeName{ErrorCode::kIoError, "io_error"},
    CodeName{ErrorCode::kCorruption, "corruption"},
    CodeName{ErrorCode::kTimeout, "timeout"},
    CodeName{ErrorCode::kInternal, "internal"},
};

Error invalid(std::string message) { return Error(EINVAL, std::move(message)); }

// A response a client cannot read: the daemon (or this client) has a bug;
// EBADMSG alone would read as stored-data corruption.
Error bad_response(std::string message) {
  return Error(ErrorKind::kInternal, EBADMSG, std::move(message));
}

// The JSON type a value has, in the words error messages use.
std::string type_name(const Json& value) {
  if (value.is_number_unsigned()) {
    return "unsigned integer";
  }
  if (value.is_number_integer()) {
    return "negative integer";
  }
  if (value.is_number_float()) {
    return "number with a fraction";
  }
  return value.type_name();
}

// Printable form of a client-supplied name for messages: control characters
// are escaped so a log line or terminal never receives them raw.
std::string printable(std::string_view text) {
  std::string out;
  constexpr size_t kMaxShown = 80;
  for (size_t i = 0; i < text.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > kMaxShown) {
    out += "...";
  }
  return out;
}

}  // namespace

namespace {

// A SAX pass that only watches object keys: one key list per open object
// (objects nest); the first duplicate is remembered. (A parser callback on the
// DOM parse would do the same, but trips GCC's -Wnull-dereference inside
// nlohmann's callback parser.)
class DuplicateKeyFinder final : public nlohmann::json_sax<Json> {
 public:
  std::optional<std::string> duplicate;

  bool null() override { return true; }
  bool boolean(bool /*value*/) override { return true; }
  bool number_integer(number_integer_t /*value*/) override { return true; }
  bool number_unsigned(number_unsigned_t /*value*/) override { return true; }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) override { return true; }
  bool string(string_t& /*value*/) override { return true; }
  bool binary(binary_t& /*value*/) override { return true; }
  bool start_object(std::size_t /*elements*/) override {
    open_.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (open_.empty()) {
      return true;
    }
    auto& keys = open_.back();
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) {
      duplicate = key;
      return false;  // stop: one is enough
    }
    keys.push_back(key);
    return true;
  }
  bool end_object() override {
    if (!open_.empty()) {
      open_.pop_back();
    }
    return true;
  }
  bool start_array(std::size_t /*elements*/) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*error*/) override {
    return false;
  }

 private:
  std::vector<std::vector<std::string>> open_;
};

// The first key of valid JSON `text` that appears twice in one object.
std::optional<Error> duplicate_key_error(std::string_view text) {
  DuplicateKeyFinder finder;
  (void)Json::sax_parse(text.begin(), text.end(), &finder, Json::input_format_t::json,
                        /*strict=*/true);
  if (!finder.duplicate) {
    return std::nullopt;
  }
  return Error(EINVAL, "duplicate key '" + printable(*finder.duplicate) +
                           "' (every key may appear once per object)");
}

}  // namespace

Result<Json> parse_json_unique_keys(std::string_view text) {
  Json doc = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Error(EBADMSG, "not valid JSON");
  }
  if (auto duplicate = duplicate_key_error(text)) {
    return *duplicate;
  }
  return doc;
}

std::string_view to_string(ErrorCode code) {
  for (const auto& entry : kCodeNames) {
    if (entry.code == code) {
      return entry.name;
    }
  }
  return "internal";
}

std::optional<ErrorCode> parse_error_code(std::string_view text) {
  for (const auto& entry : kCodeNames) {
    if (entry.name == text) {
      return entry.code;
    }
  }
  return std::nullopt;
}

ErrorCode error_code_for(const Error& error) {
  switch (error.kind()) {
    case ErrorKind::kInvalidArgument:
      // The dispatcher's refusal of a method name (unknown_method_error).
      return error.errno_value() == ENOSYS ? ErrorCode::kUnknownMethod
                                           : ErrorCode::kInvalidArgument;
    case ErrorKind::kNotFound:
      return ErrorCode::kNotFound;
    case ErrorKind::kAlreadyExists:
      return ErrorCode::kAlreadyExists;
    case ErrorKind::kBusy:
      return ErrorCode::kBusy;
    case ErrorKind::kPermissionDenied:
      return ErrorCode::kPermissionDenied;
    case ErrorKind::kUnavailable:
      return ErrorCode::kUnavailable;
    case ErrorKind::kIoError:
      return ErrorCode::kIoError;
    case ErrorKind::kCorruption:
      return ErrorCode::kCorruption;
    case ErrorKind::kTimeout:
      return ErrorCode::kTimeout;
    case ErrorKind::kInternal:
      break;
  }
  return ErrorCode::kInternal;
}

Error unknown_method_error(std::string_view method) {
  return Error(ErrorKind::kInvalidArgument, ENOSYS,
               "unknown method '" + printable(method.substr(0, 64)) + "'");
}

ErrorKind kind_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadRequest:
    case ErrorCode::kUnknownMethod:
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kTooLarge:
      return ErrorKind::kInvalidArgument;
    case ErrorCode::kUnsupportedVersion:
    case ErrorCode::kUnavailable:
      return ErrorKind::kUnavailable;
    case ErrorCode::kNotFound:
      return ErrorKind::kNotFound;
    case ErrorCode::kAlreadyExists:
      return ErrorKind::kAlreadyExists;
    case ErrorCode::kBusy:
      return ErrorKind::kBusy;
    case ErrorCode::kPermissionDenied:
      return ErrorKind::kPermissionDenied;
    case ErrorCode::kIoError:
      return ErrorKind::kIoError;
    case ErrorCode::kCorruption:
      return ErrorKind::kCorruption;
    case ErrorCode::kTimeout:
      return ErrorKind::kTimeout;
    case ErrorCode::kInternal:
      break;
  }
  return ErrorKind::kInternal;
}

int errno_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadRequest:
      return EBADMSG;
    case ErrorCode::kUnsupportedVersion:
      return EPROTONOSUPPORT;
    case ErrorCode::kUnknownMethod:
      return ENOSYS;
    case ErrorCode::kTooLarge:
      return EMSGSIZE;
    case ErrorCode::kUnavailable:
      return ENODEV;
    default:
      return default_errno(kind_for(code));
  }
}

Error error_for(ErrorCode code, std::string message) {
  return Error(kind_for(code), errno_for(code), std::move(message));
}

ParsedRequest parse_request(std::string_view line) {
  ParsedRequest out;
  if (line.size() > kMaxLineBytes) {
    out.code = ErrorCode::kTooLarge;
    out.error = Error(EMSGSIZE, "request of " + std::to_string(line.size()) +
                                    " bytes exceeds the limit of " + std::to_string(kMaxLineBytes) +
                                    " bytes");
    return out;
  }
  Json message = Json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) {
    out.code = ErrorCode::kBadRequest;
    out.error = Error(ErrorKind::kInvalidArgument, EBADMSG, "request is not valid JSON");
    return out;
  }
  if (!message.is_object()) {
    out.code = ErrorCode::kBadRequest;
    out.error = Error(ErrorKind::kInvalidArgument, EBADMSG,
                      "request must be a JSON object, not " + type_name(message));
    return out;
  }
  // The id first, so that every later error can carry it.
  const auto id = message.find("id");
  if (id == message.end()) {
    out.error = invalid("missing field 'id' (unsigned integer or string)");
    return out;
  }
  if (!id->is_number_unsigned() && !id->is_string()) {
    out.error =
        invalid("field 'id' must be an unsigned integer or a string, not " + type_name(*id));
    return out;
  }
  out.id = *id;
  // nlohmann keeps the last of two equal keys; another reader may keep the
  // first, so such a request means different things: refused (any depth).
  if (auto duplicate = duplicate_key_error(line)) {
    out.error = Error(EINVAL, "request has a " + duplicate->message());
    return out;
  }
  const auto version = message.find("v");
  if (version == message.end()) {
    out.error = invalid("missing field 'v' (protocol version, 1)");
    return out;
  }
  if (!version->is_number_unsigned() || version->get<uint64_t>() != kProtocolVersion) {
    // Never dump() a client's value here: a deeply nested one would recurse.
    const std::string shown =
        version->is_number() ? version->dump() : "of type " + type_name(*version);
    out.code = ErrorCode::kUnsupportedVersion;
    out.error = Error(EPROTONOSUPPORT,
                      "protocol version " + shown + " is not supported (this daemon speaks 1)");
    return out;
  }
  for (const auto& [key, value] : message.items()) {
    if (key != "v" && key != "id" && key != "method" && key != "params") {
      out.error = invalid("unknown field '" + printable(key) + "' in request");
      return out;
    }
  }
  const auto method = message.find("method");
  if (method == message.end()) {
    out.error = invalid("missing field 'method' (string)");
    return out;
  }
  if (!method->is_string() || method->get_ref<const std::string&>().empty()) {
    out.error = invalid("field 'method' must be a non-empty string, not " + type_name(*method));
    return out;
  }
  Request request;
  request.id = out.id;
  request.method = method->get<std::string>();
  const auto params = message.find("params");
  if (params != message.end()) {
    if (!params->is_object()) {
      out.error = invalid("field 'params' must be an object, not " + type_name(*params));
      return out;
    }
    request.params = std::move(*params);
  }
  out.request = std::move(request);
  return out;
}

Json make_ok_response(const Json& id, Json result) {
  return Json{{"v", kProtocolVersion}, {"id", id}, {"ok", true}, {"result", std::move(result)}};
}

Json make_error_response(const Json& id, ErrorCode code, std::string_view message) {
  return Json{
      {"v", kProtocolVersion},
      {"id", id},
      {"ok", false},
      {"error", {{"code", std::string(to_string(code))}, {"message", std::string(message)}}}};
}

Json make_error_response(const Json& id, const Error& error) {
  return make_error_response(id, error_code_for(error), error.message());
}

Json make_request(const Json& id, std::string_view method, Json params) {
  return Json{{"v", kProtocolVersion},
              {"id", id},
              {"method", std::string(method)},
              {"params", std::move(params)}};
}

std::string to_line(const Json& message) {
  std::string line = message.dump(-1, ' ', false, Json::error_handler_t::replace);
  line += '\n';
  return line;
}

Result<Response> parse_response(std::string_view line) {
  Json message = Json::parse(line.begin(), line.end(), nullptr, false);
  if (message.is_discarded() || !message.is_object()) {
    return bad_response("response from the daemon is not a JSON object");
  }
  const auto version = message.find("v");
  if (version == message.end() || !version->is_number_unsigned() ||
      version->get<uint64_t>() != kProtocolVersion) {
    return bad_response("response from the daemon has no protocol version 1");
  }
  Response response;
  if (const auto id = message.find("id"); id != message.end()) {
    response.id = *id;
  }
  const auto ok = message.find("ok");
  if (ok == message.end() || !ok->is_boolean()) {
    return bad_response("response from the daemon has no boolean 'ok'");
  }
  response.ok = ok->get<bool>();
  if (response.ok) {
    const auto result = message.find("result");
    response.result = result == message.end() ? Json::object() : *result;
    return response;
  }
  const auto error = message.find("error");
  if (error == message.end() || !error->is_object()) {
    return bad_response("error response from the daemon has no 'error' object");
  }
  const auto code = error->find("code");
  const auto text = error->find("message");
  if (code == error->end() || !code->is_string() || text == error->end() || !text->is_string()) {
    return bad_response("error response from the daemon lacks 'code' or 'message'");
  }
  // A code this client does not know (a newer daemon) still reads as an error.
  response.code = parse_error_code(code->get<std::string>()).value_or(ErrorCode::kInternal);
  response.message = text->get<std::string>();
  return response;
}

Status validate_name(std::string_view name, std::string_view what, size_t max_length) {
  if (name.empty()) {
    return invalid(std::string(what) + " must not be empty");
  }
  if (name.size() > max_length) {
    return invalid(std::string(what) + " '" + printable(name) + "' is " +
                   std::to_string(name.size()) + " characters long; the limit is " +
                   std::to_string(max_length) + " characters");
  }
  if (name.front() == '.' || name.front() == '-') {
    return invalid(std::string(what) + " '" + printable(name) + "' must not start with '.' or '-'");
  }
  for (const char c : name) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!allowed) {
      std::string shown = c == '/' ? "'/'" : "'" + printable(std::string_view(&c, 1)) + "'";
      return invalid(std::string(what) + " '" + printable(name) + "' contains " + shown +
                     " (allowed: letters, digits, '.', '_', '-')");
    }
  }
  return ok_status();
}

Status validate_dbs_names(std::string_view method, const Json& params) {
  // Only fields that create a DBS name (methods.h dbs_name_max): a lookup of
  // a longer name simply finds nothing.
  const MethodInfo* info = find_method(method);
  if (info == nullptr || !params.is_object()) {
    return ok_status();
  }
  for (const ParamSpec& field : info->params) {
    if (field.dbs_name_max == 0) {
      continue;
    }
    const std::string key(field.key);
    const auto it = params.find(key);
    // get_ptr, not get_ref: GCC's -Wnull-dereference cannot see that
    // is_string() was checked once get_ref is inlined here.
    const std::string* value = it == params.end() ? nullptr : it->get_ptr<const std::string*>();
    if (value == nullptr) {
      continue;  // the method reports a missing or mistyped field
    }
    const std::string& name = *value;
    const std::string_view what =
        field.dbs_name_max == kMaxSnapshotNameLength ? "snapshot" : "volume";
    if (name.size() > field.dbs_name_max) {
      return invalid("field '" + key + "' '" + printable(name) + "' is " +
                     std::to_string(name.size()) + " characters long; " + std::string(what) +
                     " names have at most " + std::to_string(field.dbs_name_max) +
                     " characters (the store's limit for the names derived from them)");
    }
  }
  return ok_status();
}

Status validate_size(uint64_t bytes, std::string_view what) {
  if (bytes == 0) {
    return invalid(std::string(what) + " must be greater than 0");
  }
  if (bytes % kSizeAlignment != 0) {
    return invalid(std::string(what) + " " + std::to_string(bytes) +
                   " is not a multiple of 4096 bytes");
  }
  return ok_status();
}

namespace {

// A required field: the optional accessor's value, or "missing field 'k' (what)".
template <typename T>
Result<T> required(Result<std::optional<T>> field, const std::string& key, const char* what) {
  UBLKVOL_ASSIGN_OR_RETURN(std::optional<T> value, std::move(field));
  if (!value) {
    return invalid("missing field '" + key + "' (" + what + ")");
  }
  return std::move(*value);
}

}  // namespace

Params::Params(const Json& params, Peer peer) : params_(params), peer_(peer) {}

const Json* Params::find(const std::string& key) {
  seen_.push_back(key);
  if (!params_.is_object()) {
    return nullptr;
  }
  const auto it = params_.find(key);
  return it == params_.end() ? nullptr : &*it;
}

Result<std::optional<std::string>> Params::optional_string(const std::string& key) {
  const Json* value = find(key);
  if (value == nullptr) {
    return std::optional<std::string>();
  }
  if (!value->is_string()) {
    return invalid("field '" + key + "' must be a string, not " + type_name(*value));
  }
  return std::optional<std::string>(value->get<std::string>());
}

Result<std::string> Params::string(const std::string& key) {
  return required(optional_string(key), key, "string");
}

Result<std::optional<std::string>> Params::optional_name(const std::string& key) {
  UBLKVOL_ASSIGN_OR_RETURN(std::optional<std::string> value, optional_string(key));
  if (value) {
    UBLKVOL_TRY(validate_name(*value, "field '" + key + "'"));
  }
  return value;
}

Result<std::string> Params::name(const std::string& key) {
  return required(optional_name(key), key, "name");
}

Result<std::optional<uint64_t>> Params::optional_uint(const std::string& key) {
  const Json* value = find(key);
  if (value == nullptr) {
    return std::optional<uint64_t>();
  }
  if (value->is_number_integer() && !value->is_number_unsigned()) {
    return invalid("field '" + key + "' must not be negative (" + value->dump() + ")");
  }
  if (!value->is_number_unsigned()) {
    return invalid("field '" + key + "' must be an unsigned integer, not " + type_name(*value));
  }
  return std::optional<uint64_t>(value->get<uint64_t>());
}

Result<uint64_t> Params::uint(const std::string& key) {
  return required(optional_uint(key), key, "unsigned integer");
}

Result<std::optional<uint64_t>> Params::optional_size(const std::string& key) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<uint64_t> value, optional_uint(key));
  if (value) {
    UBLKVOL_TRY(validate_size(*value, "field '" + key + "'"));
  }
  return value;
}

Result<uint64_t> Params::size(const std::string& key) {
  return required(optional_size(key), key, "size in bytes");
}

Result<std::optional<bool>> Params::optional_bool(const std::string& key) {
  const Json* value = find(key);
  if (value == nullptr) {
    return std::optional<bool>();
  }
  if (!value->is_boolean()) {
    return invalid("field '" + key + "' must be a boolean, not " + type_name(*value));
  }
  return std::optional<bool>(value->get<bool>());
}

Result<std::vector<std::string>> Params::name_list(const std::string& key, size_t min, size_t max) {
  const Json* value = find(key);
  if (value == nullptr) {
    return invalid("missing field '" + key + "' (array of names)");
  }
  if (!value->is_array()) {
    return invalid("field '" + key + "' must be an array of names, not " + type_name(*value));
  }
  if (value->size() < min || value->size() > max) {
    return invalid("field '" + key + "' must have " + std::to_string(min) + ".." +
                   std::to_string(max) + " entries, not " + std::to_string(value->size()));
  }
  std::vector<std::string> names;
  for (const Json& entry : *value) {
    if (!entry.is_string()) {
      return invalid("field '" + key + "' must hold strings, not " + type_name(entry));
    }
    std::string name = entry.get<std::string>();
    UBLKVOL_TRY(validate_name(name, "entry of '" + key + "'"));
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      return invalid(
          std::string("field '").append(key).append("' names '").append(name).append("' twice"));
    }
    names.push_back(std::move(name));
  }
  return names;
}

Status Params::finish() const {
  if (!params_.is_object()) {
    return invalid("params must be an object");
  }
  for (const auto& [key, value] : params_.items()) {
    if (std::find(seen_.begin(), seen_.end(), key) == seen_.end()) {
      return invalid("unknown field '" + printable(key) + "' in params");
    }
  }
  return ok_status();
}

}  // namespace ublkvol::daemon
