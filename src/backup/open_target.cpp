// open_target: the target an operator names (include/ublkvol/backup/target.h).
#include <cerrno>

#include "ublkvol/backup/s3_target.h"
#include "ublkvol/backup/target.h"

namespace ublkvol::backup {

Result<std::unique_ptr<Target>> open_target(std::string_view url, const S3Options& s3) {
  if (url.starts_with("s3://")) {
    return open_s3_target(url, s3);
  }
  if (url.starts_with("dir:")) {
    url.remove_prefix(4);
  }
  if (!url.starts_with("/")) {
    return Error(EINVAL, "backup target '" + std::string(url) +
                             "' is not supported: give an absolute directory path, dir:/path "
                             "or s3://bucket/prefix");
  }
  std::string root(url);
  while (root.size() > 1 && root.back() == '/') {
    root.pop_back();
  }
  return open_directory_target(root);
}

}  // namespace ublkvol::backup
