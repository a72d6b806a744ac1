// A connection's byte stream: reading messages into their targets, writing
// queued handshake output and replies, closing.
#include "connection.h"

#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>
#include <system_error>

#include "loop.h"
#include "tls_session.h"

namespace ublkvol::nbd {

namespace {
// Messages handled per readiness event before other connections get a turn.
constexpr int kReadBudget = 64;
// Option data beyond this closes the connection (the largest legitimate
// option, SET_META_CONTEXT with a few 4 KiB queries, is far smaller).
constexpr size_t kMaxOptionBytes = size_t{16} << 10U;
// Replies gathered into one sendmsg.
constexpr int kMaxReplyIov = 32;
}  // namespace

Connection::Connection(NbdExport::Loop& loop, UniqueFd fd, bool tcp)
    : loop_(loop), fd_(std::move(fd)), tcp_(tcp), transport_(make_socket_transport(fd_.get())) {}

Connection::~Connection() {
  if (pool_ != nullptr) {
    ::munmap(pool_, pool_bytes_);
  }
}

void Connection::expect(Phase phase, std::byte* buf, size_t len) {
  phase_ = phase;
  rd_ptr_ = buf;
  rd_want_ = len;
  rd_got_ = 0;
}

void Connection::ctl_append(const std::byte* data, size_t len) {
  ctl_out_.insert(ctl_out_.end(), data, data + len);
}

void Connection::start() {
  std::array<std::byte, 18> greeting{};
  proto::put64(greeting.data(), proto::kNbdMagic);
  proto::put64(greeting.data() + 8, proto::kIHaveOpt);
  proto::put16(greeting.data() + 16, proto::kFlagFixedNewstyle | proto::kFlagNoZeroes);
  ctl_append(greeting.data(), greeting.size());
  expect(Phase::kClientFlags, small_.data(), 4);
}

void Connection::on_readable() {
  for (int budget = 0; budget < kReadBudget; ++budget) {
    if (phase_ == Phase::kClosing) {
      return;
    }
    if (phase_ == Phase::kTlsHandshake) {
      if (ctl_out_.empty()) {
        drive_tls();
      }
      if (phase_ == Phase::kTlsHandshake) {
        return;
      }
      continue;
    }
    if (phase_ == Phase::kRequestHeader && reading_ == nullptr && !take_slot_for_header()) {
      return;  // every slot busy: read on once one is free
    }
    if (phase_ == Phase::kSkipPayload) {
      if (skip_left_ == 0) {
        Slot& s = *reading_;
        reading_ = nullptr;
        phase_ = Phase::kRequestHeader;
        reply_error(s, s.error);
        continue;
      }
      const size_t chunk = std::min<uint64_t>(skip_left_, loop_.max_payload());
      const ssize_t n = transport_->recv(reading_->buffer, chunk);
      if (n == -EAGAIN) {
        return;
      }
      if (n <= 0) {
        fail(n == 0 ? "client closed the connection"
                    : std::generic_category().message(static_cast<int>(-n)));
        return;
      }
      skip_left_ -= static_cast<uint64_t>(n);
      continue;
    }
    if (rd_got_ < rd_want_) {
      const ssize_t n = transport_->recv(rd_ptr_ + rd_got_, rd_want_ - rd_got_);
      if (n == -EAGAIN) {
        return;
      }
      if (n <= 0) {
        fail(n == 0 ? "client closed the connection"
                    : std::generic_category().message(static_cast<int>(-n)));
        return;
      }
      rd_got_ += static_cast<size_t>(n);
      if (rd_got_ < rd_want_) {
        continue;
      }
    }
    switch (phase_) {
      case Phase::kClientFlags:
        handle_client_flags();
        break;
      case Phase::kOptionHeader: {
        const uint64_t magic = proto::get64(small_.data());
        option_ = proto::get32(small_.data() + 8);
        const uint32_t len = proto::get32(small_.data() + 12);
        if (magic != proto::kIHaveOpt) {
          fail("bad option magic", true);
          return;
        }
        if (len > kMaxOptionBytes) {
          fail("option " + std::to_string(option_) + " carries " + std::to_string(len) +
                   " bytes, more than the limit of " + std::to_string(kMaxOptionBytes),
               true);
          return;
        }
        option_data_.resize(len);
        expect(Phase::kOptionData, option_data_.data(), len);
        break;
      }
      case Phase::kOptionData:
        handle_option();
        break;
      case Phase::kRequestHeader:
        handle_request_header();
        break;
      case Phase::kRequestPayload: {
        Slot& s = *reading_;
        reading_ = nullptr;
        phase_ = Phase::kRequestHeader;
        start_request(s);
        break;
      }
      case Phase::kSkipPayload:
      case Phase::kTlsHandshake:
      case Phase::kClosing:
        break;
    }
  }
}

bool Connection::flush() {
  while (!failed_) {
    std::array<iovec, kMaxReplyIov> iov{};
    int count = 0;
    if (ctl_sent_ < ctl_out_.size()) {
      iov[0] = {ctl_out_.data() + ctl_sent_, ctl_out_.size() - ctl_sent_};
      count = 1;
    } else {
      for (int32_t i = reply_head_; i >= 0 && count + 2 <= kMaxReplyIov;
           i = slots_[static_cast<size_t>(i)].next_reply) {
        Slot& s = slots_[static_cast<size_t>(i)];
        if (s.sent < s.header_len) {
          iov[static_cast<size_t>(count++)] = {s.header.data() + s.sent, s.header_len - s.sent};
        }
        const uint32_t data_done = s.sent > s.header_len ? s.sent - s.header_len : 0;
        if (data_done < s.data_len) {
          // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): iovec is not const-correct
          iov[static_cast<size_t>(count++)] = {const_cast<std::byte*>(s.data) + data_done,
                                               s.data_len - data_done};
        }
      }
    }
    if (count == 0) {
      break;
    }
    const ssize_t n = transport_->sendv(iov.data(), count);
    if (n == -EAGAIN) {
      break;
    }
    if (n < 0) {
      fail(std::string("send: ") + std::generic_category().message(static_cast<int>(-n)));
      break;
    }
    auto left = static_cast<size_t>(n);
    if (ctl_sent_ < ctl_out_.size()) {
      ctl_sent_ += left;
      if (ctl_sent_ == ctl_out_.size()) {
        ctl_out_.clear();
        ctl_sent_ = 0;
      }
      continue;
    }
    while (left > 0 && reply_head_ >= 0) {
      Slot& s = slots_[static_cast<size_t>(reply_head_)];
      const size_t rest = s.header_len + s.data_len - s.sent;
      const size_t used = std::min(rest, left);
      s.sent += static_cast<uint32_t>(used);
      left -= used;
      if (used == rest) {
        reply_head_ = s.next_reply;
        if (reply_head_ < 0) {
          reply_tail_ = -1;
        }
        release_slot(s);
      }
    }
  }
  if (phase_ == Phase::kTlsHandshake && ctl_out_.empty() && !failed_) {
    drive_tls();  // the STARTTLS ACK is out: the client starts its handshake
  }
  return !finished();
}

void Connection::close_gracefully() {
  phase_ = Phase::kClosing;
  close_after_output_ = true;
}

void Connection::fail(const std::string& why, bool protocol_error) {
  if (failed_) {
    return;
  }
  failed_ = true;
  phase_ = Phase::kClosing;
  if (protocol_error) {
    loop_.count_protocol_error();
    spdlog::warn("nbd export '{}': closing a client connection: {}", loop_.options().name, why);
  } else {
    spdlog::debug("nbd export '{}': connection closed: {}", loop_.options().name, why);
  }
  ctl_out_.clear();
  ctl_sent_ = 0;
  while (reply_head_ >= 0) {
    Slot& s = slots_[static_cast<size_t>(reply_head_)];
    reply_head_ = s.next_reply;
    release_slot(s);
  }
  reply_tail_ = -1;
  if (reading_ != nullptr) {
    release_slot(*reading_);
    reading_ = nullptr;
  }
  // The peer learns at once; the fd closes when no request of ours is left
  // in the volume (their buffers are this connection's).
  ::shutdown(fd_.get(), SHUT_RDWR);
}

bool Connection::has_buffered_input() const {
  return !failed_ && phase_ != Phase::kClosing && transport_->has_buffered_input();
}

uint32_t Connection::wanted_events() const {
  if (failed_) {
    return 0;
  }
  uint32_t events = 0;
  if (phase_ == Phase::kTlsHandshake) {
    if (!ctl_out_.empty()) {
      return EPOLLOUT;
    }
    return tls_wants_write_ ? EPOLLOUT : EPOLLIN;
  }
  const bool paused = phase_ == Phase::kRequestHeader && reading_ == nullptr && free_.empty();
  if (phase_ != Phase::kClosing && !paused) {
    events |= EPOLLIN;
  }
  if (ctl_sent_ < ctl_out_.size() || reply_head_ >= 0) {
    events |= EPOLLOUT;
  }
  return events;
}

bool Connection::finished() const {
  if (failed_) {
    return busy_ == 0;
  }
  return close_after_output_ && busy_ == 0 && ctl_out_.empty() && reply_head_ < 0;
}

}  // namespace ublkvol::nbd
