// Fixed newstyle handshake: the client's flags and option negotiation, up to
// NBD_OPT_EXPORT_NAME / NBD_OPT_GO (doc/proto.md "Option haggling").
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>

#include "connection.h"
#include "loop.h"
#include "tls_session.h"

namespace ublkvol::nbd {

using proto::get16;
using proto::get32;
using proto::put16;
using proto::put32;
using proto::put64;

namespace {
std::string as_string(const std::byte* p, size_t len) {
  return {reinterpret_cast<const char*>(p), len};
}
}  // namespace

bool Connection::name_matches(const std::string& name) const {
  // "" is the default export; this server has one.
  return name.empty() || name == loop_.options().name;
}

uint16_t Connection::transmission_flags() const {
  const engine::VolumeInfo& info = loop_.info();
  uint16_t flags =
      proto::kTxHasFlags | proto::kTxSendFlush | proto::kTxSendFua | proto::kTxCanMultiConn;
  if (info.supports_discard) {
    flags |= proto::kTxSendTrim;
  }
  if (info.supports_write_zeroes) {
    flags |= proto::kTxSendWriteZeroes;
  }
  if (structured_) {
    flags |= proto::kTxSendDf;  // a read is always answered in one chunk
  }
  if (loop_.options().read_only) {
    flags |= proto::kTxReadOnly;
  }
  return flags;
}

void Connection::handle_client_flags() {
  const uint32_t flags = get32(small_.data());
  if ((flags & ~(proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes)) != 0) {
    fail("unknown client flags " + std::to_string(flags), true);
    return;
  }
  if ((flags & proto::kClientFlagFixedNewstyle) == 0) {
    fail("the client does not speak fixed newstyle negotiation", true);
    return;
  }
  no_zeroes_ = (flags & proto::kClientFlagNoZeroes) != 0;
  expect(Phase::kOptionHeader, small_.data(), 16);
}

void Connection::option_reply(uint32_t reply, const std::byte* data, size_t len) {
  std::array<std::byte, 20> h{};
  put64(h.data(), proto::kOptReplyMagic);
  put32(h.data() + 8, option_);
  put32(h.data() + 12, reply);
  put32(h.data() + 16, static_cast<uint32_t>(len));
  ctl_append(h.data(), h.size());
  if (len > 0) {
    ctl_append(data, len);
  }
}

void Connection::option_error(uint32_t reply, const std::string& message) {
  option_reply(reply, reinterpret_cast<const std::byte*>(message.data()), message.size());
}

void Connection::handle_option() {
  const size_t len = option_data_.size();
  if (loop_.tls_required() && !tls_active_ && option_ != proto::kOptStartTls &&
      option_ != proto::kOptAbort) {
    if (option_ == proto::kOptExportName) {
      // No error reply exists for EXPORT_NAME: the spec says close.
      fail("NBD_OPT_EXPORT_NAME before TLS: TLS is required", true);
      return;
    }
    option_error(proto::kRepErrTlsReqd,
                 "TLS is required on this export: negotiate NBD_OPT_STARTTLS first");
    expect(Phase::kOptionHeader, small_.data(), 16);
    return;
  }
  switch (option_) {
    case proto::kOptExportName:
      handle_export_name();
      return;
    case proto::kOptAbort:
      option_reply(proto::kRepAck, nullptr, 0);
      close_gracefully();
      return;
    case proto::kOptList:
      if (len != 0) {
        option_error(proto::kRepErrInvalid, "NBD_OPT_LIST carries no data");
        break;
      } else {
        const std::string& name = loop_.options().name;
        std::vector<std::byte> d(4 + name.size());
        put32(d.data(), static_cast<uint32_t>(name.size()));
        std::memcpy(d.data() + 4, name.data(), name.size());
        option_reply(proto::kRepServer, d.data(), d.size());
        option_reply(proto::kRepAck, nullptr, 0);
      }
      break;
    case proto::kOptStartTls:
      handle_starttls();
      return;
    case proto::kOptInfo:
    case proto::kOptGo:
      handle_info_go(option_ == proto::kOptGo);
      return;
    case proto::kOptStructuredReply:
      if (len != 0) {
        option_error(proto::kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data");
      } else {
        structured_ = true;
        option_reply(proto::kRepAck, nullptr, 0);
      }
      break;
    case proto::kOptListMetaContext:
    case proto::kOptSetMetaContext:
      handle_meta_context(option_ == proto::kOptSetMetaContext);
      break;
    default:
      option_error(proto::kRepErrUnsup, "option " + std::to_string(option_) + " is not supported");
      break;
  }
  if (phase_ == Phase::kOptionData) {
    expect(Phase::kOptionHeader, small_.data(), 16);
  }
}

void Connection::handle_export_name() {
  const std::string name = as_string(option_data_.data(), option_data_.size());
  if (!name_matches(name)) {
    fail("NBD_OPT_EXPORT_NAME of unknown export '" + name + "'", false);
    return;
  }
  std::array<std::byte, 10 + 124> r{};
  put64(r.data(), loop_.info().size_bytes);
  put16(r.data() + 8, transmission_flags());
  ctl_append(r.data(), no_zeroes_ ? 10 : r.size());
  enter_transmission();
}

void Connection::handle_info_go(bool go) {
  const std::byte* d = option_data_.data();
  const size_t len = option_data_.size();
  const char* what = go ? "NBD_OPT_GO" : "NBD_OPT_INFO";
  if (len < 6) {
    option_error(proto::kRepErrInvalid, std::string(what) + ": data too short");
    expect(Phase::kOptionHeader, small_.data(), 16);
    return;
  }
  const uint32_t name_len = get32(d);
  if (name_len > len - 6) {
    option_error(proto::kRepErrInvalid, std::string(what) + ": name length beyond the data");
    expect(Phase::kOptionHeader, small_.data(), 16);
    return;
  }
  const std::string name = as_string(d + 4, name_len);
  const uint16_t requests = get16(d + 4 + name_len);
  if (4 + name_len + 2 + 2 * static_cast<size_t>(requests) != len) {
    option_error(proto::kRepErrInvalid,
                 std::string(what) + ": information request count does not match the length");
    expect(Phase::kOptionHeader, small_.data(), 16);
    return;
  }
  if (!name_matches(name)) {
    option_error(proto::kRepErrUnknown, "no export named '" + name + "' here");
    expect(Phase::kOptionHeader, small_.data(), 16);
    return;
  }
  bool wants_name = false;
  for (uint16_t i = 0; i < requests; ++i) {
    wants_name =
        wants_name || get16(d + 4 + name_len + 2 + 2 * static_cast<size_t>(i)) == proto::kInfoName;
  }
  const engine::VolumeInfo& info = loop_.info();
  std::array<std::byte, 14> e{};
  put16(e.data(), proto::kInfoExport);
  put64(e.data() + 2, info.size_bytes);
  put16(e.data() + 10, transmission_flags());
  option_reply(proto::kRepInfo, e.data(), 12);
  // Sent whether asked or not: requests must be aligned to the volume's
  // block and fit one buffer (else EINVAL).
  put16(e.data(), proto::kInfoBlockSize);
  put32(e.data() + 2, info.block_size);
  put32(e.data() + 6, info.block_size);
  put32(e.data() + 10, loop_.max_payload());
  option_reply(proto::kRepInfo, e.data(), 14);
  if (wants_name) {
    const std::string& own = loop_.options().name;
    std::vector<std::byte> n(2 + own.size());
    put16(n.data(), proto::kInfoName);
    std::memcpy(n.data() + 2, own.data(), own.size());
    option_reply(proto::kRepInfo, n.data(), n.size());
  }
  option_reply(proto::kRepAck, nullptr, 0);
  if (go) {
    enter_transmission();
  } else {
    expect(Phase::kOptionHeader, small_.data(), 16);
  }
}

void Connection::handle_meta_context(bool set) {
  const char* what = set ? "NBD_OPT_SET_META_CONTEXT" : "NBD_OPT_LIST_META_CONTEXT";
  const std::byte* d = option_data_.data();
  const size_t len = option_data_.size();
  if (set && !structured_) {
    option_error(proto::kRepErrInvalid,
                 std::string(what) + " needs NBD_OPT_STRUCTURED_REPLY negotiated first");
    return;
  }
  if (len < 8 || get32(d) > len - 8) {
    option_error(proto::kRepErrInvalid, std::string(what) + ": malformed data");
    return;
  }
  const uint32_t name_len = get32(d);
  const std::string name = as_string(d + 4, name_len);
  const uint32_t count = get32(d + 4 + name_len);
  // Validate every query before answering any.
  std::vector<std::string_view> queries;
  size_t pos = 8 + name_len;
  for (uint32_t i = 0; i < count; ++i) {
    if (len - pos < 4 || get32(d + pos) > len - pos - 4) {
      option_error(proto::kRepErrInvalid,
                   std::string(what) + ": query " + std::to_string(i) + " runs beyond the data");
      return;
    }
    const uint32_t qlen = get32(d + pos);
    queries.emplace_back(reinterpret_cast<const char*>(d + pos + 4), qlen);
    pos += 4 + qlen;
  }
  if (pos != len) {
    option_error(proto::kRepErrInvalid, std::string(what) + ": trailing bytes after the queries");
    return;
  }
  if (!name_matches(name)) {
    option_error(proto::kRepErrUnknown, "no export named '" + name + "' here");
    return;
  }
  const std::string_view base = proto::kBaseAllocation;
  bool match = !set && queries.empty();
  for (const std::string_view q : queries) {
    match = match || q == base || (!set && q == "base:");
  }
  if (set) {
    base_allocation_ = match;
  }
  if (match) {
    std::vector<std::byte> r(4 + base.size());
    put32(r.data(), set ? proto::kBaseAllocationId : 0);
    std::memcpy(r.data() + 4, base.data(), base.size());
    option_reply(proto::kRepMetaContext, r.data(), r.size());
  }
  option_reply(proto::kRepAck, nullptr, 0);
}

void Connection::enter_transmission() {
  const size_t count = loop_.options().requests_per_connection;
  const size_t payload = loop_.max_payload();
  pool_bytes_ = count * payload;
  // One mapping for all buffers; pages are touched only as requests use them.
  void* p = ::mmap(nullptr, pool_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    pool_ = nullptr;
    fail("no memory for " + std::to_string(count) + " request buffers");
    return;
  }
  pool_ = p;
  slots_.resize(count);
  free_.reserve(count);
  for (size_t i = count; i-- > 0;) {
    Slot& s = slots_[i];
    s.conn = this;
    s.index = static_cast<uint32_t>(i);
    s.buffer = static_cast<std::byte*>(pool_) + i * payload;
    free_.push_back(static_cast<uint32_t>(i));
  }
  phase_ = Phase::kRequestHeader;
  rd_want_ = 0;
  rd_got_ = 0;
}

void Connection::handle_starttls() {
  if (loop_.tls() == nullptr) {
    option_error(proto::kRepErrUnsup, "TLS is not configured on this export");
  } else if (tls_active_) {
    option_error(proto::kRepErrInvalid, "TLS is already negotiated");
  } else if (!option_data_.empty()) {
    option_error(proto::kRepErrInvalid, "NBD_OPT_STARTTLS carries no data");
  } else {
    // The ACK goes out in plain text, then the handshake (drive_tls).
    option_reply(proto::kRepAck, nullptr, 0);
    phase_ = Phase::kTlsHandshake;
    return;
  }
  expect(Phase::kOptionHeader, small_.data(), 16);
}

void Connection::drive_tls() {
  if (!tls_) {
    auto t = TlsTransport::create(*loop_.tls(), fd_.get());
    if (!t.ok()) {
      fail(t.error().to_string(), true);
      return;
    }
    tls_ = std::move(*t);
  }
  switch (tls_->handshake()) {
    case TlsTransport::Step::kDone:
      spdlog::info("nbd export '{}': TLS client: {}", loop_.options().name, tls_->peer());
      transport_ = std::move(tls_);
      tls_active_ = true;
      expect(Phase::kOptionHeader, small_.data(), 16);
      return;
    case TlsTransport::Step::kWantRead:
      tls_wants_write_ = false;
      return;
    case TlsTransport::Step::kWantWrite:
      tls_wants_write_ = true;
      return;
    case TlsTransport::Step::kFailed:
      loop_.count_tls_failure();
      fail(tls_->error(), true);
      return;
  }
}

}  // namespace ublkvol::nbd
