// The plain socket transport.
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

#include "connection.h"

namespace ublkvol::nbd {
namespace {

class SocketTransport final : public Transport {
 public:
  explicit SocketTransport(int fd) : fd_(fd) {}
  ssize_t recv(std::byte* buf, size_t len) override {
    const ssize_t n = ::recv(fd_, buf, len, 0);
    return n >= 0 ? n : -errno;
  }
  ssize_t sendv(const iovec* iov, int count) override {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);  // NOLINT: sendmsg does not write it
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    return n >= 0 ? n : -errno;
  }

 private:
  int fd_;
};

}  // namespace

std::unique_ptr<Transport> make_socket_transport(int fd) {
  return std::make_unique<SocketTransport>(fd);
}

}  // namespace ublkvol::nbd
