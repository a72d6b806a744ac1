// The NBD wire protocol as the export speaks it: the constants of
// https://github.com/NetworkBlockDevice/nbd doc/proto.md (fixed newstyle
// handshake, options, transmission requests and simple/structured replies)
// and big-endian field helpers. Every multi-byte field is network byte order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ublkvol::nbd::proto {

// ---- handshake ----
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ULL;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ULL;

inline constexpr uint16_t kFlagFixedNewstyle = 1U << 0U;
inline constexpr uint16_t kFlagNoZeroes = 1U << 1U;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1U << 0U;
inline constexpr uint32_t kClientFlagNoZeroes = 1U << 1U;

// Options.
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// Option replies.
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrBit = 1U << 31U;
inline constexpr uint32_t kRepErrUnsup = kRepErrBit | 1U;
inline constexpr uint32_t kRepErrPolicy = kRepErrBit | 2U;
inline constexpr uint32_t kRepErrInvalid = kRepErrBit | 3U;
inline constexpr uint32_t kRepErrPlatform = kRepErrBit | 4U;
inline constexpr uint32_t kRepErrTlsReqd = kRepErrBit | 5U;
inline constexpr uint32_t kRepErrUnknown = kRepErrBit | 6U;
inline constexpr uint32_t kRepErrShutdown = kRepErrBit | 7U;
inline constexpr uint32_t kRepErrTooBig = kRepErrBit | 9U;

// NBD_REP_INFO types.
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags.
inline constexpr uint16_t kTxHasFlags = 1U << 0U;
inline constexpr uint16_t kTxReadOnly = 1U << 1U;
inline constexpr uint16_t kTxSendFlush = 1U << 2U;
inline constexpr uint16_t kTxSendFua = 1U << 3U;
inline constexpr uint16_t kTxSendTrim = 1U << 5U;
inline constexpr uint16_t kTxSendWriteZeroes = 1U << 6U;
inline constexpr uint16_t kTxSendDf = 1U << 7U;
inline constexpr uint16_t kTxCanMultiConn = 1U << 8U;

// ---- transmission ----
inline constexpr uint32_t kRequestMagic = 0x25609513U;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698U;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33efU;
inline constexpr size_t kRequestBytes = 28;
inline constexpr size_t kSimpleReplyBytes = 16;
inline constexpr size_t kStructuredReplyBytes = 20;

// Commands.
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

// Command flags.
inline constexpr uint16_t kCmdFlagFua = 1U << 0U;
inline constexpr uint16_t kCmdFlagNoHole = 1U << 1U;
inline constexpr uint16_t kCmdFlagDf = 1U << 2U;
inline constexpr uint16_t kCmdFlagReqOne = 1U << 3U;

// Structured reply chunks.
inline constexpr uint16_t kReplyFlagDone = 1U << 0U;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = (1U << 15U) | 1U;

// base:allocation extent flags.
inline constexpr uint32_t kStateHole = 1U << 0U;
inline constexpr uint32_t kStateZero = 1U << 1U;
inline constexpr const char* kBaseAllocation = "base:allocation";
// The one meta context the export offers.
inline constexpr uint32_t kBaseAllocationId = 1;

// Error values on the wire (the spec's, equal to Linux errno numbers).
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// Strings (export names, queries) the spec bounds at 4096 bytes.
inline constexpr size_t kMaxStringBytes = 4096;

inline void put16(std::byte* p, uint16_t v) {
  p[0] = static_cast<std::byte>(v >> 8U);
  p[1] = static_cast<std::byte>(v);
}
inline void put32(std::byte* p, uint32_t v) {
  put16(p, static_cast<uint16_t>(v >> 16U));
  put16(p + 2, static_cast<uint16_t>(v));
}
inline void put64(std::byte* p, uint64_t v) {
  put32(p, static_cast<uint32_t>(v >> 32U));
  put32(p + 4, static_cast<uint32_t>(v));
}
inline uint16_t get16(const std::byte* p) {
  return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8U) |
                               std::to_integer<uint16_t>(p[1]));
}
inline uint32_t get32(const std::byte* p) {
  return (static_cast<uint32_t>(get16(p)) << 16U) | get16(p + 2);
}
inline uint64_t get64(const std::byte* p) {
  return (static_cast<uint64_t>(get32(p)) << 32U) | get32(p + 4);
}

}  // namespace ublkvol::nbd::proto
