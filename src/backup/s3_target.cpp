// S3Target (include/ublkvol/backup/s3_target.h): path-style requests
// (endpoint/bucket/key), signed by libcurl (CURLOPT_AWS_SIGV4), one easy
// handle per target (its connection is kept alive between requests).
#include "ublkvol/backup/s3_target.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <curl/curl.h>
#include <fstream>
#include <mutex>
#include <thread>

#include "ublkvol/backup/hash.h"
#include "ublkvol/common/unique_fd.h"

namespace ublkvol::backup {

namespace {

constexpr long kConnectTimeoutSeconds = 10;
// A transfer slower than this for this long is given up (a hung endpoint).
constexpr long kLowSpeedBytes = 1024;
constexpr long kLowSpeedSeconds = 60;
// 500/502/503/504 (and SlowDown) are retried this often, backing off.
constexpr int kAttempts = 3;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// AWS SigV4's URI encoding: everything but the unreserved characters (and
// '/' in paths) as %XX with upper-case digits. A path and query sent in this
// form are their own canonical form, whatever the signer does with them.
std::string uri_encode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4U];
      out += kHex[c & 15U];
    }
  }
  return out;
}

std::string xml_unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  static constexpr std::pair<std::string_view, char> kEntities[] = {
      {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  for (size_t i = 0; i < s.size();) {
    bool replaced = false;
    if (s[i] == '&') {
      for (const auto& [entity, ch] : kEntities) {
        if (s.substr(i).starts_with(entity)) {
          out += ch;
          i += entity.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) {
      out += s[i++];
    }
  }
  return out;
}

// The text of every <tag>...</tag> in `xml`, in order (S3's answers are
// flat enough for this; no attributes on the elements read).
std::vector<std::string> xml_values(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  size_t at = 0;
  while ((at = xml.find(open, at)) != std::string_view::npos) {
    at += open.size();
    const size_t end = xml.find(close, at);
    if (end == std::string_view::npos) {
      break;
    }
    out.push_back(xml_unescape(xml.substr(at, end - at)));
    at = end + close.size();
  }
  return out;
}

std::string xml_value(std::string_view xml, std::string_view tag) {
  auto values = xml_values(xml, tag);
  return values.empty() ? std::string() : values.front();
}

std::string_view as_text(std::span<const std::byte> body) {
  return {reinterpret_cast<const char*>(body.data()), body.size()};
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

Status append_header(SlistPtr& list, const std::string& header) {
  curl_slist* next = curl_slist_append(list.get(), header.c_str());
  if (next == nullptr) {
    return Error(ENOMEM, "cannot build the headers of an S3 request");
  }
  (void)list.release();  // now owned through `next`
  list.reset(next);
  return ok_status();
}

size_t collect_body(char* data, size_t size, size_t count, void* user) {
  auto* body = static_cast<std::vector<std::byte>*>(user);
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  body->insert(body->end(), bytes, bytes + size * count);
  return size * count;
}

class FlockLock final : public TargetLock {
 public:
  explicit FlockLock(UniqueFd fd) : fd_(std::move(fd)) {}

 private:
  UniqueFd fd_;  // closing it releases the lock
};

struct Response {
  long status = 0;
  std::vector<std::byte> body;
};

class S3Target final : public Target {
 public:
  S3Target(S3Location location, std::string endpoint, std::string region, S3Credentials credentials,
           std::string lock_dir, uint32_t page_keys)
      : location_(std::move(location)),
        endpoint_(std::move(endpoint)),
        region_(std::move(region)),
        credentials_(std::move(credentials)),
        lock_dir_(std::move(lock_dir)),
        page_keys_(page_keys),
        curl_(curl_easy_init()) {}

  [[nodiscard]] bool usable() const { return curl_ != nullptr; }

  [[nodiscard]] std::string describe() const override {
    return "s3 " + endpoint_ + " bucket " + location_.bucket +
           (location_.prefix.empty() ? "" : " prefix " + location_.prefix);
  }

  [[nodiscard]] Result<bool> exists(const std::string& key) override {
    UBLKVOL_ASSIGN_OR_RETURN(const Response r, request("HEAD", object_path(key), "", {}));
    if (r.status == 200) {
      return true;
    }
    if (r.status == 404) {
      return false;
    }
    return s3_error(r.status, as_text(r.body), what("HEAD", key));
  }

  Status put(const std::string& key, std::span<const std::byte> data) override {
    UBLKVOL_ASSIGN_OR_RETURN(const Response r, request("PUT", object_path(key), "", data));
    if (r.status == 200) {
      return ok_status();
    }
    return s3_error(r.status, as_text(r.body), what("PUT", key));
  }

  [[nodiscard]] Result<std::vector<std::byte>> get(const std::string& key) override {
    UBLKVOL_ASSIGN_OR_RETURN(Response r, request("GET", object_path(key), "", {}));
    if (r.status == 200) {
      return std::move(r.body);
    }
    return s3_error(r.status, as_text(r.body), what("GET", key));
  }

  [[nodiscard]] Result<std::vector<std::string>> list(const std::string& prefix) override {
    std::vector<std::string> keys;
    std::string token;
    const std::string full = location_.prefix + prefix;
    for (;;) {
      // Parameters in canonical (sorted, encoded) order: see uri_encode.
      std::string query;
      if (!token.empty()) {
        query += "continuation-token=" + uri_encode(token, false) + "&";
      }
      query += "list-type=2&";
      if (page_keys_ != 0) {
        query += "max-keys=" + std::to_string(page_keys_) + "&";
      }
      query += "prefix=" + uri_encode(full, false);
      UBLKVOL_ASSIGN_OR_RETURN(const Response r, request("GET", bucket_path(), query, {}));
      if (r.status != 200) {
        return s3_error(r.status, as_text(r.body), what("LIST", prefix));
      }
      const std::string_view xml = as_text(r.body);
      for (auto& key : xml_values(xml, "Key")) {
        if (key.starts_with(full)) {
          keys.push_back(key.substr(location_.prefix.size()));
        }
      }
      if (xml_value(xml, "IsTruncated") != "true") {
        break;
      }
      token = xml_value(xml, "NextContinuationToken");
      if (token.empty()) {
        return Error(EIO, what("LIST", prefix) +
                              ": a truncated listing without a continuation "
                              "token");
      }
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  Status remove(const std::string& key) override {
    UBLKVOL_ASSIGN_OR_RETURN(const Response r, request("DELETE", object_path(key), "", {}));
    // 204 normally; a missing object is not an error (S3 answers 204 too,
    // some servers 404).
    if (r.status == 204 || r.status == 200 || r.status == 404) {
      return ok_status();
    }
    return s3_error(r.status, as_text(r.body), what("DELETE", key));
  }

  [[nodiscard]] Result<std::unique_ptr<TargetLock>> lock(bool exclusive) override {
    const ChunkHash id =
        sha256({std::as_bytes(std::span(endpoint_)), std::as_bytes(std::span(location_.bucket)),
                std::as_bytes(std::span(location_.prefix))});
    const std::string file = lock_dir_ + "/ublkvol-s3-" + id.hex().substr(0, 16) + ".lock";
    UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) {
      return errno_error(describe() + ": cannot open the local lock file " + file);
    }
    while (::flock(fd.get(), exclusive ? LOCK_EX : LOCK_SH) != 0) {
      if (errno != EINTR) {
        return errno_error(describe() + ": cannot lock " + file);
      }
    }
    return std::unique_ptr<TargetLock>(std::make_unique<FlockLock>(std::move(fd)));
  }

  // A PUT leaves nothing behind when it fails: nothing to remove.
  Status remove_temporaries() override { return ok_status(); }

  Status check_reachable() {
    UBLKVOL_ASSIGN_OR_RETURN(
        const Response r,
        request("GET", bucket_path(),
                "list-type=2&max-keys=1&prefix=" + uri_encode(location_.prefix, false), {}));
    if (r.status != 200) {
      return s3_error(r.status, as_text(r.body), describe() + ": LIST");
    }
    return ok_status();
  }

 private:
  [[nodiscard]] std::string what(const char* method, const std::string& key) const {
    return describe() + ": " + method + " " + key;
  }
  [[nodiscard]] std::string bucket_path() const { return "/" + location_.bucket; }
  [[nodiscard]] std::string object_path(const std::string& key) const {
    return "/" + location_.bucket + "/" + uri_encode(location_.prefix + key, true);
  }

  Result<Response> request(const std::string& method, const std::string& path,
                           const std::string& query, std::span<const std::byte> body) {
    std::lock_guard lock(mutex_);  // one request at a time on the handle
    auto backoff = std::chrono::milliseconds(100);
    for (int attempt = 1;; ++attempt) {
      UBLKVOL_ASSIGN_OR_RETURN(Response r, perform(method, path, query, body));
      const bool retry = r.status == 500 || r.status == 502 || r.status == 503 || r.status == 504;
      if (!retry || attempt == kAttempts) {
        return r;
      }
      std::this_thread::sleep_for(backoff);  // the server asked to slow down
      backoff *= 4;
    }
  }

  Result<Response> perform(const std::string& method, const std::string& path,
                           const std::string& query, std::span<const std::byte> body) {
    CURL* c = curl_.get();
    curl_easy_reset(c);
    const std::string url = endpoint_ + path + (query.empty() ? "" : "?" + query);
    const std::string sigv4 = "aws:amz:" + region_ + ":s3";
    // The payload's SHA-256 is signed (S3 requires the header; it also
    // makes the server check the body it received).
    const std::string payload_hash = sha256({body}).hex();
    SlistPtr headers;
    UBLKVOL_TRY(append_header(headers, "x-amz-content-sha256: " + payload_hash));
    UBLKVOL_TRY(append_header(headers, "Expect:"));  // no 100-continue round trip
    Response response;
    bool ok = curl_easy_setopt(c, CURLOPT_URL, url.c_str()) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, kConnectTimeoutSeconds) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, kLowSpeedBytes) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, kLowSpeedSeconds) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4.c_str()) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_USERNAME, credentials_.access_key.c_str()) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_PASSWORD, credentials_.secret_key.c_str()) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &collect_body) == CURLE_OK &&
              curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body) == CURLE_OK;
    if (method == "HEAD") {
      ok = ok && curl_easy_setopt(c, CURLOPT_NOBODY, 1L) == CURLE_OK;
    } else if (method == "PUT") {
      // The body from memory, not copied (POSTFIELDS): libcurl signs
      // exactly these bytes.
      UBLKVOL_TRY(append_header(headers, "Content-Type: application/octet-stream"));
      ok = ok && curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data()) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size())) ==
               CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT") == CURLE_OK;
    } else if (method == "DELETE") {
      ok = ok && curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE") == CURLE_OK;
    }
    ok = ok && curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get()) == CURLE_OK;
    if (!ok) {
      return Error(EINVAL, describe() + ": libcurl refused an option of the request " + method +
                               " " + path + " (libcurl without SigV4 support?)");
    }
    const CURLcode code = curl_easy_perform(c);
    if (code != CURLE_OK) {
      const int err = code == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT : EHOSTUNREACH;
      return Error(err, describe() + ": " + method + " " + path +
                            ": endpoint unreachable: " + curl_easy_strerror(code));
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return response;
  }

  S3Location location_;
  std::string endpoint_;
  std::string region_;
  S3Credentials credentials_;
  std::string lock_dir_;
  uint32_t page_keys_;
  std::mutex mutex_;
  std::unique_ptr<CURL, CurlDeleter> curl_;
};

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

Result<S3Credentials> read_s3_credentials(const std::string& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return errno_error("S3 credentials file " + file + ": cannot open it");
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return errno_error("S3 credentials file " + file + ": cannot stat it");
  }
  if ((st.st_mode & 077U) != 0) {
    return Error(EPERM, "S3 credentials file " + file +
                            " may be read by group or others: chmod 600 it (it holds a secret)");
  }
  std::ifstream in(file);
  S3Credentials credentials;
  std::string line;
  std::string section;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const std::string_view text = trim(line);
    if (text.empty() || text.front() == '#' || text.front() == ';') {
      continue;
    }
    if (text.front() == '[') {
      section = std::string(trim(text.substr(1, text.find(']') - 1)));
      continue;
    }
    if (!section.empty() && section != "default") {
      continue;
    }
    const size_t eq = text.find('=');
    if (eq == std::string_view::npos) {
      return Error(EINVAL, "S3 credentials file " + file + " line " + std::to_string(number) +
                               ": expected 'key = value'");
    }
    const std::string_view key = trim(text.substr(0, eq));
    const std::string_view value = trim(text.substr(eq + 1));
    if (key == "aws_access_key_id") {
      credentials.access_key = value;
    } else if (key == "aws_secret_access_key") {
      credentials.secret_key = value;
    }
  }
  if (credentials.access_key.empty() || credentials.secret_key.empty()) {
    return Error(EINVAL, "S3 credentials file " + file +
                             " lacks aws_access_key_id or aws_secret_access_key (outside any "
                             "section or in [default])");
  }
  return credentials;
}

Result<S3Location> parse_s3_url(std::string_view url) {
  const std::string text(url);
  if (!url.starts_with("s3://")) {
    return Error(EINVAL, "'" + text + "' is not an s3://bucket/prefix URL");
  }
  url.remove_prefix(5);
  const size_t slash = url.find('/');
  S3Location location;
  location.bucket = std::string(url.substr(0, slash));
  const bool bucket_ok =
      location.bucket.size() >= 3 && location.bucket.size() <= 63 &&
      std::all_of(location.bucket.begin(), location.bucket.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
      });
  if (!bucket_ok) {
    return Error(EINVAL, "S3 URL '" + text + "': bucket '" + location.bucket +
                             "' is not a bucket name (3-63 of a-z 0-9 . -)");
  }
  if (slash != std::string_view::npos) {
    std::string prefix(url.substr(slash + 1));
    while (!prefix.empty() && prefix.back() == '/') {
      prefix.pop_back();
    }
    if (prefix.find("//") != std::string::npos) {
      return Error(EINVAL, "S3 URL '" + text + "': empty path segment in the prefix");
    }
    location.prefix = prefix.empty() ? "" : prefix + "/";
  }
  return location;
}

Error s3_error(long http_status, std::string_view body, const std::string& what) {
  const std::string code = xml_value(body, "Code");
  const std::string message = xml_value(body, "Message");
  std::string detail = "HTTP " + std::to_string(http_status);
  if (!code.empty()) {
    detail += " " + code;
  }
  if (!message.empty()) {
    detail += ": " + message;
  }
  if (code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" ||
      code == "InvalidSecurity" || code == "ExpiredToken" || code == "InvalidToken") {
    return Error(EACCES, what + ": bad credentials (" + detail + ")");
  }
  // Ceph RGW answers an exceeded quota with 403 QuotaExceeded: the code
  // decides before the status.
  if (http_status == 507 || code == "QuotaExceeded" || code == "XMinioStorageFull" ||
      code == "InsufficientStorage" || code == "EntityTooLarge") {
    return Error(ENOSPC, what + ": no space or quota exceeded (" + detail + ")");
  }
  if (http_status == 401 || http_status == 403) {
    return Error(EACCES, what + ": permission denied (" + detail + ")");
  }
  if (code == "NoSuchBucket") {
    return Error(ENOENT, what + ": the bucket does not exist (" + detail + ")");
  }
  if (http_status == 404) {
    return Error(ENOENT, what + ": no such object (" + detail + ")");
  }
  return Error(EIO, what + ": " + detail);
}

Result<std::unique_ptr<Target>> open_s3_target(std::string_view url, const S3Options& options) {
  UBLKVOL_ASSIGN_OR_RETURN(S3Location location, parse_s3_url(url));
  const std::string region = options.region.empty() ? kDefaultS3Region : options.region;
  std::string endpoint =
      options.endpoint.empty() ? "https://s3." + region + ".amazonaws.com" : options.endpoint;
  while (endpoint.ends_with("/")) {
    endpoint.pop_back();
  }
  if (!endpoint.starts_with("http://") && !endpoint.starts_with("https://")) {
    return Error(EINVAL, "S3 endpoint '" + endpoint + "' is not an http:// or https:// URL");
  }
  const std::string credentials_file =
      options.credentials_file.empty() ? kDefaultS3CredentialsFile : options.credentials_file;
  UBLKVOL_ASSIGN_OR_RETURN(S3Credentials credentials, read_s3_credentials(credentials_file));
  init_curl_once();
  auto target = std::make_unique<S3Target>(
      std::move(location), std::move(endpoint), region, std::move(credentials),
      options.lock_dir.empty() ? "/run/lock" : options.lock_dir, options.list_page_keys);
  if (!target->usable()) {
    return Error(ENOMEM, "cannot create a libcurl handle for " + target->describe());
  }
  UBLKVOL_TRY(target->check_reachable());
  return std::unique_ptr<Target>(std::move(target));
}

}  // namespace ublkvol::backup
