// Transmission phase: requests checked, turned into VolumeIo on the export's
// queue (straight into / out of the slot's buffer) and answered.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "connection.h"
#include "loop.h"

namespace ublkvol::nbd {

using proto::get16;
using proto::get32;
using proto::get64;
using proto::put16;
using proto::put32;
using proto::put64;

namespace {
// A refused WRITE's payload is read and dropped up to this size; a larger
// one closes the connection (reading it would only feed a hostile client).
constexpr uint64_t kMaxSkipBytes = 64ULL << 20U;
// Extents in one BLOCK_STATUS reply (the client asks again for the rest).
constexpr size_t kMaxExtents = 1024;

uint32_t nbd_error(int negative_errno) {
  switch (-negative_errno) {
    case EPERM:
    case EIO:
    case ENOMEM:
    case EINVAL:
    case ENOSPC:
    case EOVERFLOW:
    case ENOTSUP:
    case ESHUTDOWN:
      return static_cast<uint32_t>(-negative_errno);
    default:
      return proto::kEio;
  }
}
}  // namespace

bool Connection::take_slot_for_header() {
  if (free_.empty()) {
    return false;
  }
  reading_ = &slots_[free_.back()];
  free_.pop_back();
  ++busy_;
  expect(Phase::kRequestHeader, small_.data(), proto::kRequestBytes);
  return true;
}

void Connection::release_slot(Slot& s) {
  --busy_;
  free_.push_back(s.index);
}

uint32_t Connection::check_request(const Slot& s) const {
  const engine::VolumeInfo& info = loop_.info();
  uint16_t allowed = 0;
  bool mutating = false;
  switch (s.type) {
    case proto::kCmdRead:
      allowed = structured_ ? proto::kCmdFlagDf : 0;
      break;
    case proto::kCmdWrite:
      allowed = proto::kCmdFlagFua;
      mutating = true;
      break;
    case proto::kCmdFlush:
      break;
    case proto::kCmdTrim:
      if (!info.supports_discard) {
        return proto::kEinval;
      }
      allowed = proto::kCmdFlagFua;
      mutating = true;
      break;
    case proto::kCmdWriteZeroes:
      if (!info.supports_write_zeroes) {
        return proto::kEinval;
      }
      allowed = proto::kCmdFlagFua | proto::kCmdFlagNoHole;
      mutating = true;
      break;
    case proto::kCmdBlockStatus:
      if (!base_allocation_) {
        return proto::kEinval;  // no meta context negotiated
      }
      allowed = proto::kCmdFlagReqOne;
      break;
    default:
      return proto::kEinval;  // unknown command
  }
  if ((s.flags & ~allowed) != 0) {
    return proto::kEinval;
  }
  if (mutating && loop_.options().read_only) {
    return proto::kEperm;
  }
  if (s.type == proto::kCmdFlush) {
    return 0;  // offset and length carry nothing
  }
  if (s.length == 0) {
    return proto::kEinval;
  }
  if (s.offset > info.size_bytes || s.length > info.size_bytes - s.offset) {
    return s.type == proto::kCmdWrite || s.type == proto::kCmdWriteZeroes ? proto::kEnospc
                                                                          : proto::kEinval;
  }
  if (s.type == proto::kCmdBlockStatus) {
    return 0;  // any range: extents are cut at the request's bounds
  }
  if (s.offset % info.block_size != 0 || s.length % info.block_size != 0) {
    return proto::kEinval;
  }
  if ((s.type == proto::kCmdRead || s.type == proto::kCmdWrite) && s.length > loop_.max_payload()) {
    return s.type == proto::kCmdRead && structured_ ? proto::kEoverflow : proto::kEinval;
  }
  return 0;
}

void Connection::handle_request_header() {
  Slot& s = *reading_;
  if (get32(small_.data()) != proto::kRequestMagic) {
    fail("bad request magic", true);
    return;
  }
  s.flags = get16(small_.data() + 4);
  s.type = get16(small_.data() + 6);
  s.cookie = get64(small_.data() + 8);
  s.offset = get64(small_.data() + 16);
  s.length = get32(small_.data() + 24);
  if (s.type == proto::kCmdDisc) {
    reading_ = nullptr;
    release_slot(s);
    close_gracefully();  // replies to earlier requests still go out
    return;
  }
  const uint32_t err = check_request(s);
  if (s.type == proto::kCmdWrite) {
    if (err != 0) {
      if (s.length > kMaxSkipBytes) {
        fail("WRITE of " + std::to_string(s.length) + " bytes refused and too large to skip", true);
        return;
      }
      s.error = err;
      skip_left_ = s.length;
      phase_ = Phase::kSkipPayload;
      return;
    }
    expect(Phase::kRequestPayload, s.buffer, s.length);
    return;
  }
  reading_ = nullptr;
  expect(Phase::kRequestHeader, nullptr, 0);
  if (err != 0) {
    reply_error(s, err);
  } else {
    start_request(s);
  }
}

void Connection::start_request(Slot& s) {
  engine::VolumeIo& io = s.io;
  io.on_complete = &Connection::on_volume_complete;
  io.user_data = &s;
  io.fua = (s.flags & proto::kCmdFlagFua) != 0;
  io.buffer = s.buffer;
  io.offset = s.offset;
  io.length = s.length;
  switch (s.type) {
    case proto::kCmdRead:
      io.op = engine::VolumeOp::kRead;
      io.fua = false;
      break;
    case proto::kCmdWrite:
      io.op = engine::VolumeOp::kWrite;
      break;
    case proto::kCmdFlush:
      io.op = engine::VolumeOp::kFlush;
      io.offset = 0;
      io.length = 0;
      break;
    case proto::kCmdTrim:
    case proto::kCmdWriteZeroes:
      s.chain_next = s.offset;
      s.chain_end = s.offset + s.length;
      if ((s.flags & proto::kCmdFlagNoHole) != 0) {
        // Allocated zeros: plain writes from a zeroed buffer.
        std::memset(s.buffer, 0, std::min<uint64_t>(s.length, loop_.max_payload()));
      }
      submit_next_chunk(s);
      return;
    case proto::kCmdBlockStatus:
      reply_block_status(s);
      return;
    default:
      reply_error(s, proto::kEinval);
      return;
  }
  loop_.queue().submit(io);
}

void Connection::submit_next_chunk(Slot& s) {
  engine::VolumeIo& io = s.io;
  const auto chunk =
      static_cast<uint32_t>(std::min<uint64_t>(s.chain_end - s.chain_next, loop_.max_payload()));
  io.offset = s.chain_next;
  io.length = chunk;
  io.buffer = s.buffer;
  if (s.type == proto::kCmdTrim) {
    io.op = engine::VolumeOp::kDiscard;
  } else if ((s.flags & proto::kCmdFlagNoHole) != 0) {
    io.op = engine::VolumeOp::kWrite;
  } else {
    io.op = engine::VolumeOp::kWriteZeroes;
  }
  s.chain_next += chunk;
  loop_.queue().submit(io);
}

void Connection::on_volume_complete(engine::VolumeIo& io, int result) {
  Slot& s = *static_cast<Slot*>(io.user_data);
  Connection& c = *s.conn;
  if (c.failed_) {
    c.release_slot(s);
    return;
  }
  if (result < 0) {
    c.reply_error(s, nbd_error(result));
    return;
  }
  if ((s.type == proto::kCmdTrim || s.type == proto::kCmdWriteZeroes) &&
      s.chain_next < s.chain_end) {
    c.submit_next_chunk(s);
    return;
  }
  if (s.type == proto::kCmdRead) {
    c.reply_read(s);
  } else {
    c.reply_done(s);
  }
}

void Connection::queue_reply(Slot& s) {
  loop_.count_request();
  s.sent = 0;
  s.next_reply = -1;
  if (reply_tail_ >= 0) {
    slots_[static_cast<size_t>(reply_tail_)].next_reply = static_cast<int32_t>(s.index);
  } else {
    reply_head_ = static_cast<int32_t>(s.index);
  }
  reply_tail_ = static_cast<int32_t>(s.index);
}

void Connection::reply_done(Slot& s) {
  put32(s.header.data(), proto::kSimpleReplyMagic);
  put32(s.header.data() + 4, 0);
  put64(s.header.data() + 8, s.cookie);
  s.header_len = proto::kSimpleReplyBytes;
  s.data = nullptr;
  s.data_len = 0;
  queue_reply(s);
}

void Connection::reply_error(Slot& s, uint32_t error) {
  s.data = nullptr;
  s.data_len = 0;
  if (structured_ && (s.type == proto::kCmdRead || s.type == proto::kCmdBlockStatus)) {
    // These must be answered with structured chunks once negotiated.
    put32(s.header.data(), proto::kStructuredReplyMagic);
    put16(s.header.data() + 4, proto::kReplyFlagDone);
    put16(s.header.data() + 6, proto::kReplyTypeError);
    put64(s.header.data() + 8, s.cookie);
    put32(s.header.data() + 16, 6);
    put32(s.header.data() + 20, error);
    put16(s.header.data() + 24, 0);  // no message
    s.header_len = proto::kStructuredReplyBytes + 6;
  } else {
    put32(s.header.data(), proto::kSimpleReplyMagic);
    put32(s.header.data() + 4, error);
    put64(s.header.data() + 8, s.cookie);
    s.header_len = proto::kSimpleReplyBytes;
  }
  queue_reply(s);
}

void Connection::reply_read(Slot& s) {
  if (structured_) {
    // One data chunk for the whole read (hence NBD_FLAG_SEND_DF).
    put32(s.header.data(), proto::kStructuredReplyMagic);
    put16(s.header.data() + 4, proto::kReplyFlagDone);
    put16(s.header.data() + 6, proto::kReplyTypeOffsetData);
    put64(s.header.data() + 8, s.cookie);
    put32(s.header.data() + 16, 8 + s.length);
    put64(s.header.data() + 20, s.offset);
    s.header_len = proto::kStructuredReplyBytes + 8;
  } else {
    put32(s.header.data(), proto::kSimpleReplyMagic);
    put32(s.header.data() + 4, 0);
    put64(s.header.data() + 8, s.cookie);
    s.header_len = proto::kSimpleReplyBytes;
  }
  s.data = s.buffer;
  s.data_len = s.length;
  queue_reply(s);
}

void Connection::reply_block_status(Slot& s) {
  const uint64_t end = s.offset + s.length;  // checked against the size
  MappedRanges mapped;
  if (const AllocationQuery& query = loop_.options().allocation; query) {
    auto found = query(s.offset, s.length);
    if (!found.ok()) {
      spdlog::warn("nbd export '{}': block status: {}", loop_.options().name,
                   found.error().to_string());
      reply_error(s, proto::kEio);
      return;
    }
    mapped = std::move(*found);
  } else {
    mapped.emplace_back(s.offset, s.length);
  }
  const size_t max_extents = (s.flags & proto::kCmdFlagReqOne) != 0
                                 ? 1
                                 : std::min<size_t>(kMaxExtents, (loop_.max_payload() - 4) / 8);
  std::byte* out = s.buffer;
  put32(out, proto::kBaseAllocationId);
  size_t n = 0;
  bool full = false;
  uint32_t last_flags = 0;
  const auto add = [&](uint64_t len, uint32_t flags) {
    if (len == 0 || full) {
      return;
    }
    if (n > 0 && last_flags == flags) {
      std::byte* prev = out + 4 + (n - 1) * 8;
      put32(prev, static_cast<uint32_t>(get32(prev) + len));  // within one 32-bit request
      return;
    }
    if (n == max_extents) {
      full = true;  // the reply covers a prefix; the client asks again
      return;
    }
    put32(out + 4 + n * 8, static_cast<uint32_t>(len));
    put32(out + 4 + n * 8 + 4, flags);
    last_flags = flags;
    ++n;
  };
  uint64_t pos = s.offset;
  for (const auto& [off, len] : mapped) {
    const uint64_t a = std::max(off, pos);
    const uint64_t b = std::min(off + len, end);
    if (b <= a) {
      continue;
    }
    add(a - pos, proto::kStateHole | proto::kStateZero);
    add(b - a, 0);
    pos = b;
  }
  add(end - pos, proto::kStateHole | proto::kStateZero);
  put32(s.header.data(), proto::kStructuredReplyMagic);
  put16(s.header.data() + 4, proto::kReplyFlagDone);
  put16(s.header.data() + 6, proto::kReplyTypeBlockStatus);
  put64(s.header.data() + 8, s.cookie);
  put32(s.header.data() + 16, static_cast<uint32_t>(4 + n * 8));
  s.header_len = proto::kStructuredReplyBytes;
  s.data = s.buffer;
  s.data_len = static_cast<uint32_t>(4 + n * 8);
  queue_reply(s);
}

}  // namespace ublkvol::nbd
