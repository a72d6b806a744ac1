// The S3 target against a real S3-compatible server (s3rver on loopback):
// put/get/list/remove, and errors that name the problem - unreachable
// endpoint, refused credentials, a missing bucket, a missing key, a
// credentials file others may read. The answers a test server cannot give
// (access denied, quota) are checked on s3_error with S3's own error bodies.
#include "ublkvol/backup/s3_target.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "ublkvol/backup/repository.h"
#include "ublkvol/common/unique_fd.h"

#include "s3_server.h"
#include "temp_dir.h"

namespace ublkvol::backup {
namespace {

using testing::S3Server;
using testing::TempDir;

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s)); }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class S3TargetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<S3Server>();
    server_error_ = server_->start();
  }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override { ASSERT_EQ(server_error_, "") << "the S3 test server did not start"; }

  S3Options options() const {
    S3Options s3;
    s3.endpoint = server_->endpoint();
    s3.credentials_file = server_->credentials_file();
    s3.lock_dir = scratch_.path();
    return s3;
  }

  static inline std::unique_ptr<S3Server> server_;
  static inline std::string server_error_;
  TempDir scratch_;
};

TEST_F(S3TargetTest, PutGetListRemove) {
  auto opened = open_target(std::string("s3://") + S3Server::kBucket + "/some/prefix/", options());
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  Target& t = **opened;
  EXPECT_EQ(t.describe(), "s3 " + server_->endpoint() + " bucket ublkvol-test prefix some/prefix/");
  EXPECT_FALSE(*t.exists("backups/a.manifest"));
  const std::string binary("\0\1\2 data with a NUL\0", 21);
  ASSERT_TRUE(t.put("backups/a.manifest", bytes(binary)).ok());
  ASSERT_TRUE(t.put("chunks/ab/ab01", bytes("chunk")).ok());
  // A key that needs encoding in the URL (backup names may hold it).
  ASSERT_TRUE(t.put("backups/n a+m&e%.manifest", bytes("x")).ok());
  EXPECT_TRUE(*t.exists("backups/a.manifest"));
  auto got = t.get("backups/a.manifest");
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got->data()), got->size()), binary);
  EXPECT_EQ(*t.list("backups/"),
            (std::vector<std::string>{"backups/a.manifest", "backups/n a+m&e%.manifest"}));
  EXPECT_EQ(*t.list("chunks/"), (std::vector<std::string>{"chunks/ab/ab01"}));
  ASSERT_TRUE(t.remove("chunks/ab/ab01").ok());
  EXPECT_TRUE(t.remove("chunks/ab/ab01").ok()) << "removing a missing object is not an error";
  EXPECT_TRUE(t.list("chunks/")->empty());

  // A listing longer than a page is followed through its continuation tokens.
  S3Options paged = options();
  paged.list_page_keys = 2;
  auto small_pages = open_target(std::string("s3://") + S3Server::kBucket + "/some/prefix", paged);
  ASSERT_TRUE(small_pages.ok()) << small_pages.error().to_string();
  std::vector<std::string> expected;
  for (int i = 0; i < 7; ++i) {
    expected.push_back("chunks/c" + std::to_string(i));
    ASSERT_TRUE(t.put(expected.back(), bytes("c")).ok());
  }
  auto listed = (*small_pages)->list("chunks/");
  ASSERT_TRUE(listed.ok()) << listed.error().to_string();
  EXPECT_EQ(*listed, expected);

  // The prefix is a namespace of its own: the bucket's root does not see it
  // as its own keys, and another prefix sees nothing.
  auto other = open_target(std::string("s3://") + S3Server::kBucket + "/other", options());
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE((*other)->list("backups/")->empty());

  auto missing = t.get("backups/none.manifest");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(contains(missing.error().message(), "GET backups/none.manifest: no such object"))
      << missing.error().message();
  // The repository's own "missing" message works on S3 as on a directory.
  Repository repo(t);
  auto manifest = repo.get_manifest("none");
  ASSERT_FALSE(manifest.ok());
  EXPECT_EQ(manifest.error().kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(contains(manifest.error().message(), "no backup 'none'"))
      << manifest.error().message();
}

TEST_F(S3TargetTest, LocksExcludeAcrossTargetObjects) {
  // S3 has no locks: two target objects on one bucket prefix share a local
  // lock file (flock), as two jobs of one daemon do.
  const std::string url = std::string("s3://") + S3Server::kBucket + "/locks";
  auto a = open_target(url, options());
  auto b = open_target(url, options());
  ASSERT_TRUE(a.ok() && b.ok());
  auto shared1 = (*a)->lock(false);
  auto shared2 = (*b)->lock(false);
  ASSERT_TRUE(shared1.ok() && shared2.ok()) << "shared locks go together";
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(scratch_.path())) {
    files.push_back(entry.path().string());
  }
  ASSERT_EQ(files.size(), 1U) << "one lock file for the one prefix";
  UniqueFd probe(::open(files[0].c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(probe);
  EXPECT_NE(::flock(probe.get(), LOCK_EX | LOCK_NB), 0) << "exclusive while shared are held";
  shared1->reset();
  shared2->reset();
  auto exclusive = (*b)->lock(true);
  ASSERT_TRUE(exclusive.ok());
  EXPECT_NE(::flock(probe.get(), LOCK_SH | LOCK_NB), 0) << "shared while exclusive is held";
  exclusive->reset();
  EXPECT_EQ(::flock(probe.get(), LOCK_EX | LOCK_NB), 0);
}

TEST_F(S3TargetTest, ErrorsNameTheProblem) {
  const std::string url = std::string("s3://") + S3Server::kBucket + "/errors";

  // Nothing listens on the port (bound, not listening: refused at once).
  const int sock = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(sock, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  S3Options dead = options();
  dead.endpoint = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  auto unreachable = open_target(url, dead);
  ::close(sock);
  ASSERT_FALSE(unreachable.ok());
  EXPECT_TRUE(contains(unreachable.error().message(),
                       "s3 " + dead.endpoint + " bucket ublkvol-test prefix errors/"))
      << unreachable.error().message();
  EXPECT_TRUE(contains(unreachable.error().message(), "endpoint unreachable"))
      << unreachable.error().message();

  // An access key the server does not know.
  const std::string bad_file = scratch_.path() + "/bad-credentials";
  {
    std::ofstream out(bad_file);
    out << "aws_access_key_id = NOBODY\naws_secret_access_key = x\n";
  }
  ::chmod(bad_file.c_str(), 0600);
  S3Options bad = options();
  bad.credentials_file = bad_file;
  auto refused = open_target(url, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errno_value(), EACCES);
  EXPECT_TRUE(contains(refused.error().message(), "bad credentials (HTTP 403 InvalidAccessKeyId"))
      << refused.error().message();

  // A credentials file others may read is refused, naming it.
  ::chmod(bad_file.c_str(), 0644);
  auto readable = open_target(url, bad);
  ASSERT_FALSE(readable.ok());
  EXPECT_TRUE(contains(readable.error().message(),
                       "S3 credentials file " + bad_file + " may be read by group or others"))
      << readable.error().message();
  auto no_file = read_s3_credentials(scratch_.path() + "/none");
  ASSERT_FALSE(no_file.ok());
  EXPECT_EQ(no_file.error().kind(), ErrorKind::kNotFound);

  // A bucket that does not exist.
  auto no_bucket = open_target("s3://no-such-bucket/x", options());
  ASSERT_FALSE(no_bucket.ok());
  EXPECT_EQ(no_bucket.error().kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(contains(no_bucket.error().message(), "bucket no-such-bucket"));
  EXPECT_TRUE(contains(no_bucket.error().message(), "the bucket does not exist"))
      << no_bucket.error().message();

  // Bad URLs and endpoints.
  EXPECT_TRUE(contains(open_target("s3://B_ad/x", options()).error().message(),
                       "bucket 'B_ad' is not a bucket name"));
  S3Options ftp = options();
  ftp.endpoint = "ftp://127.0.0.1";
  EXPECT_TRUE(contains(open_target(url, ftp).error().message(), "is not an http:// or https://"));
}

TEST(S3Error, AnswersBecomeErrorsNamingTheProblem) {
  const std::string what = "s3 http://h bucket b: PUT chunks/ab/ab12";
  auto denied = s3_error(403,
                         "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>"
                         "<Message>Access Denied</Message></Error>",
                         what);
  EXPECT_EQ(denied.errno_value(), EACCES);
  EXPECT_EQ(denied.message(), what + ": permission denied (HTTP 403 AccessDenied: Access Denied)");
  auto signature = s3_error(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>", what);
  EXPECT_EQ(signature.message(), what + ": bad credentials (HTTP 403 SignatureDoesNotMatch)");
  // Ceph RGW's answer to an exceeded quota.
  auto quota = s3_error(403, "<Error><Code>QuotaExceeded</Code></Error>", what);
  EXPECT_EQ(quota.errno_value(), ENOSPC);
  EXPECT_EQ(quota.message(), what + ": no space or quota exceeded (HTTP 403 QuotaExceeded)");
  auto full =
      s3_error(507, "<Error><Code>XMinioStorageFull</Code><Message>full</Message></Error>", what);
  EXPECT_EQ(full.errno_value(), ENOSPC);
  EXPECT_EQ(full.message(),
            what + ": no space or quota exceeded (HTTP 507 XMinioStorageFull: full)");
  auto missing = s3_error(404, "", what);
  EXPECT_EQ(missing.kind(), ErrorKind::kNotFound);
  EXPECT_EQ(missing.message(), what + ": no such object (HTTP 404)");
  auto server = s3_error(500,
                         "<Error><Code>InternalError</Code><Message>oops &amp; more</Message>"
                         "</Error>",
                         what);
  EXPECT_EQ(server.errno_value(), EIO);
  EXPECT_EQ(server.message(), what + ": HTTP 500 InternalError: oops & more");
}

TEST(S3Url, BucketAndPrefix) {
  auto root = parse_s3_url("s3://bucket");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->bucket, "bucket");
  EXPECT_EQ(root->prefix, "");
  auto nested = parse_s3_url("s3://my.bucket-1/a/b//");
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(nested->prefix, "a/b/");
  EXPECT_FALSE(parse_s3_url("s3://ab/x").ok());
  EXPECT_FALSE(parse_s3_url("s3://bucket/a//b").ok());
  EXPECT_FALSE(parse_s3_url("http://bucket").ok());
}

}  // namespace
}  // namespace ublkvol::backup
