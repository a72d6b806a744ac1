// S3Target: backups in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW,
// s3rver), through libcurl with its AWS SigV4 signing (CURLOPT_AWS_SIGV4).
//
// The Target contract on object storage (docs/backup-format.md, "Targets"):
// a PUT stores an object whole or not at all, so put() is atomic without a
// temporary; the repository's writing order (chunks before the manifest that
// names them, the manifest last) does the rest. S3 has no locks: lock() takes
// flock(2) on a local file named after the endpoint, bucket and prefix, so
// the jobs of one daemon (one host) exclude each other; two hosts writing
// one prefix are not supported (docs).
//
// The URL is s3://bucket/prefix; the endpoint, region and the file holding
// the credentials come in S3Options (never credentials on a command line).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/backup/target.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

inline constexpr const char* kDefaultS3CredentialsFile = "/etc/ublk-volumed/s3-credentials";
inline constexpr const char* kDefaultS3Region = "us-east-1";

struct S3Credentials {
  std::string access_key;
  std::string secret_key;
};

// Reads an AWS-style credentials file: `aws_access_key_id = ...` and
// `aws_secret_access_key = ...` lines, outside any section or in
// [default]. Refused: missing keys, a file that group or others may read
// (a secret), a file that does not open - each naming the file.
Result<S3Credentials> read_s3_credentials(const std::string& file);

// Splits "s3://bucket/some/prefix" into the bucket and "some/prefix/" (""
// for the bucket's root). EINVAL naming the URL for a bad bucket name.
struct S3Location {
  std::string bucket;
  std::string prefix;
};
Result<S3Location> parse_s3_url(std::string_view url);

// Opens the target and checks it answers: one listing of the prefix, so an
// unreachable endpoint, a missing bucket or refused credentials are reported
// at once, not by the first chunk of a job.
Result<std::unique_ptr<Target>> open_s3_target(std::string_view url, const S3Options& options);

// The error for an S3 answer that is not a success, from the HTTP status and
// the <Error><Code> of the body: EACCES for refused credentials (bad key,
// bad signature) and for denied permission, ENOENT for a missing key or
// bucket, ENOSPC for a full store or exceeded quota, EIO otherwise.
// `what` names the request ("s3 http://h:9000 bucket b: PUT backups/x").
Error s3_error(long http_status, std::string_view body, const std::string& what);

}  // namespace ublkvol::backup
