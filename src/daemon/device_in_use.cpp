#include "device_in_use.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace ublkvol::daemon {

Result<bool> block_device_in_use(const std::string& block_path) {
  const int fd = ::open(block_path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) {
    ::close(fd);
    return false;
  }
  if (errno == EBUSY) {
    return true;
  }
  if (errno == ENOENT || errno == ENXIO || errno == ENODEV) {
    return false;  // already gone
  }
  return errno_error("cannot check whether " + block_path + " is in use");
}

}  // namespace ublkvol::daemon
