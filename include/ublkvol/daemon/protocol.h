// The ublk-volumed control protocol, version 1: the envelope both sides speak.
//
// Transport: a Unix stream socket (default kDefaultSocketPath). Each message
// is one JSON object on one line ('\n'-terminated, UTF-8), at most
// kMaxLineBytes long. A client may send several requests on one connection;
// the daemon answers them in order.
//
//   request:  {"v":1, "id":<uint|string>, "method":"volume.create", "params":{...}}
//   response: {"v":1, "id":<same>, "ok":true,  "result":{...}}
//         or  {"v":1, "id":<same>, "ok":false, "error":{"code":"busy","message":"..."}}
//
// docs/control-protocol.md is the normative description (every method, its
// params and result, every error code). This header holds what both the
// daemon and clients need: the version, limits, error codes, and parsing /
// building of envelopes, plus the validation helpers (names, sizes, params
// objects) the daemon applies to every request.
//
// Errors inside the project are ublkvol::Error (errno + kind + message). The
// protocol's error code comes from the error's kind (error_code_for), so a
// daemon operation returning Error(EBUSY, "volume 'a' is exposed") (kind busy)
// becomes {"code":"busy","message":"volume 'a' is exposed"}.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::daemon {

using Json = nlohmann::json;

// The one protocol version this code speaks ("v" in every message).
inline constexpr int kProtocolVersion = 1;
// Longest accepted message line, newline excluded. A longer request gets a
// `too_large` response and the connection is closed (its framing is lost).
inline constexpr size_t kMaxLineBytes = size_t{1} << 20;
inline constexpr const char* kDefaultSocketPath = "/run/ublk-volumed/control.sock";
// Names of stores: 1..kMaxNameLength characters.
inline constexpr size_t kMaxNameLength = 64;
// Volume and snapshot names end up as DBS names (dbs/format.h kNameMax = 63
// bytes): a replica of volume V is the DBS volumes "V" and "V.engine-meta"
// (12 more bytes), a snapshot S of it the DBS snapshot "S". So volume names
// (also the names of clones, which become volumes) have at most 63 - 12 = 51
// characters and snapshot names at most 63.
inline constexpr size_t kMaxVolumeNameLength = 51;
inline constexpr size_t kMaxSnapshotNameLength = 63;
// Volume and store sizes are multiples of this many bytes.
inline constexpr uint64_t kSizeAlignment = 4096;

// Every error a response can carry. The wire form is the snake_case name
// (to_string / parse_error_code).
enum class ErrorCode {
  kBadRequest,          // not JSON / not an object (the connection stays open)
  kUnsupportedVersion,  // "v" is not 1
  kUnknownMethod,       // no such method
  kInvalidArgument,     // unknown field, wrong type, bad name/size, shrink, ...
  kNotFound,            // the named store/volume/snapshot/replica does not exist
  kAlreadyExists,       // the name is taken
  kBusy,                // the object is in use (exposed, holds replicas, ...)
  kPermissionDenied,    // peer is neither root nor in the daemon's group
  kTooLarge,            // message line longer than kMaxLineBytes
  kUnavailable,         // closing / shutting down, facility missing (ublk_drv), not supported
  kIoError,             // a device or store failed
  kCorruption,          // a store's data or metadata failed validation (checksum, magic, torn)
  kTimeout,             // a device or store did not answer within its deadline
  kInternal,            // a bug in the daemon
};

std::string_view to_string(ErrorCode code);
std::optional<ErrorCode> parse_error_code(std::string_view text);

// The code a response carries for an Error: its kind (ErrorKind, same
// names; permission_denied too), except the dispatcher's unknown method
// (invalid_argument with ENOSYS, see unknown_method_error) -> unknown_method.
// The envelope's own codes (bad_request, unsupported_version, too_large) are
// set by parse_request / the control server, never derived from an Error.
ErrorCode error_code_for(const Error& error);
// The refusal of a method name nobody serves (code unknown_method).
Error unknown_method_error(std::string_view method);
// The other direction, for clients: the kind and errno an error response
// stands for (error_for builds the Error a call returns). Envelope codes map
// to invalid_argument (bad_request, too_large, unknown_method) or
// unavailable (unsupported_version).
ErrorKind kind_for(ErrorCode code);
int errno_for(ErrorCode code);
Error error_for(ErrorCode code, std::string message);

// Who sent a request: the peer's credentials from SO_PEERCRED, taken by the
// control server when the connection was accepted. The default is nobody
// (uid/gid -1): a request whose peer is unknown is never privileged.
struct Peer {
  static constexpr uint32_t kNobody = static_cast<uint32_t>(-1);
  uint32_t uid = kNobody;
  uint32_t gid = kNobody;
  int32_t pid = 0;
};

// A request as the daemon sees it once the envelope was validated.
struct Request {
  Json id;  // unsigned integer or string, echoed in the response
  std::string method;
  Json params = Json::object();  // always an object ("params" may be omitted)
  Peer peer;                     // set by the control server
};

// Parses a JSON document like Json::parse, but refuses an object that holds
// the same key twice (nlohmann keeps the last one silently, so
// {"name":"a","name":"b"} would mean something else to another parser).
// Never throws. Errors: EBADMSG "not valid JSON" or EINVAL "duplicate key
// 'k'" (naming the key and, for nested objects, its path).
Result<Json> parse_json_unique_keys(std::string_view text);

// The outcome of parsing one request line. On failure `error` and `code`
// are set and `id` holds the request's id if it could be read (else null),
// so the error response still carries it.
// NOLINTNEXTLINE(bugprone-exception-escape): false positive in nlohmann::json's noexcept move ctor
struct ParsedRequest {
  Json id;
  std::optional<Request> request;
  std::optional<Error> error;
  ErrorCode code = ErrorCode::kInvalidArgument;  // the response's code when `error` is set
};

// Parses and validates the envelope of one line (without its '\n'): JSON
// object without duplicate keys (at any depth), "v" == 1, "id" uint or
// string, "method" a non-empty string, "params" an object if present, no
// other top-level field. Never throws.
// Params themselves are validated by the method (see Params).
ParsedRequest parse_request(std::string_view line);

// Builders. Both return the full response object.
Json make_ok_response(const Json& id, Json result);
Json make_error_response(const Json& id, ErrorCode code, std::string_view message);
Json make_error_response(const Json& id, const Error& error);  // code: error_code_for
// A request object (for clients).
Json make_request(const Json& id, std::string_view method, Json params);

// One message line: compact JSON + '\n'. Invalid UTF-8 in strings is
// replaced (U+FFFD) instead of throwing, so echoing a client's bytes in an
// error message can never fail.
std::string to_line(const Json& message);

// A response as a client sees it.
// NOLINTNEXTLINE(bugprone-exception-escape): false positive in nlohmann::json's noexcept move ctor
struct Response {
  Json id;
  bool ok = false;
  Json result;                            // when ok
  ErrorCode code = ErrorCode::kInternal;  // when !ok
  std::string message;                    // when !ok
};

// Parses one response line; an Error (EBADMSG) if it is not a valid response.
Result<Response> parse_response(std::string_view line);

// --- validation helpers --------------------------------------------------

// A valid name: 1..max_length characters of [A-Za-z0-9._-], not starting
// with '.' or '-'. `what` names the field in the message ("volume name",
// "store").
Status validate_name(std::string_view name, std::string_view what,
                     size_t max_length = kMaxNameLength);
// The DBS limits on the names a method's params hold (volume names <= 51,
// snapshot names <= 63, see kMaxVolumeNameLength): checked for every request
// before its method runs, so a name that DBS would refuse half-way through a
// multi-store operation is refused up front with the real limit.
Status validate_dbs_names(std::string_view method, const Json& params);
// A valid size: > 0 and a multiple of kSizeAlignment.
Status validate_size(uint64_t bytes, std::string_view what);

// Reads a method's params object field by field with type checks and
// messages naming the field, then refuses fields nobody asked for:
//
//   Params p(request.params);
//   auto name = p.name("name");             // required, validated name
//   auto size = p.size("size");             // required, > 0, 4 KiB multiple
//   auto format = p.optional_bool("format");
//   UBLKVOL_TRY(p.finish());                // "unknown field 'x' in params"
//
// Every accessor returns an Error with EINVAL (-> invalid_argument).
class Params {
 public:
  // `params` must be a JSON object (parse_request guarantees it). `peer` is
  // the request's sender, for methods whose rules depend on it (paths).
  explicit Params(const Json& params, Peer peer = {});

  [[nodiscard]] const Peer& peer() const { return peer_; }

  Result<std::string> string(const std::string& key);
  Result<std::optional<std::string>> optional_string(const std::string& key);
  Result<std::string> name(const std::string& key);
  Result<std::optional<std::string>> optional_name(const std::string& key);
  Result<uint64_t> uint(const std::string& key);
  Result<std::optional<uint64_t>> optional_uint(const std::string& key);
  Result<uint64_t> size(const std::string& key);
  Result<std::optional<uint64_t>> optional_size(const std::string& key);
  Result<std::optional<bool>> optional_bool(const std::string& key);
  // An array of names (each validated), `min`..`max` entries, no duplicates.
  Result<std::vector<std::string>> name_list(const std::string& key, size_t min, size_t max);

  // Refuses the first field that no accessor asked for.
  Status finish() const;

 private:
  const Json* find(const std::string& key);
  const Json& params_;
  Peer peer_;
  std::vector<std::string> seen_;
};

}  // namespace ublkvol::daemon
