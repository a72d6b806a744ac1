// The kernel ublk driver's user ABI, as the project uses it (Linux 6.12).
//
// Why our own header: the build hosts run Debian 12, whose <linux/ublk_cmd.h>
// is from Linux 6.1 and lacks the ioctl-encoded opcodes (UBLK_U_*), the
// GET_FEATURES and DEL_DEV_ASYNC commands. The layouts below follow the
// kernel's include/uapi/linux/ublk_cmd.h; static_asserts pin every size and
// tests/ublk/uapi_test.cpp checks the encodings against known values and the
// system header's struct layouts.
//
// Only the ioctl-encoded opcodes are defined: every kernel with
// UBLK_F_CMD_IOCTL_ENCODE accepts them, and kernels built without
// CONFIG_BLKDEV_UBLK_LEGACY_OPCODES reject the legacy plain numbers.
#pragma once

#include <cerrno>
#include <cstdint>

namespace ublkvol::ublk::uapi {

// ---------------------------------------------------------------------------
// ioctl-style command encoding (asm-generic layout, as on x86-64 and arm64).
// ---------------------------------------------------------------------------
inline constexpr uint32_t kIocWrite = 1;
inline constexpr uint32_t kIocRead = 2;

constexpr uint32_t ioc(uint32_t dir, uint32_t type, uint32_t nr, uint32_t size) {
  return (dir << 30U) | (size << 16U) | (type << 8U) | nr;
}
// The command number (the kernel's _IOC_NR) of an encoded opcode.
constexpr uint32_t ioc_nr(uint32_t op) { return op & 0xffU; }

inline constexpr uint32_t kIocType = 'u';

// ---------------------------------------------------------------------------
// Structures shared with the driver.
// ---------------------------------------------------------------------------

// Control command, carried in the 80-byte command area of a 128-byte SQE on
// /dev/ublk-control (the driver refuses commands from 64-byte SQEs).
struct CtrlCmd {
  uint32_t dev_id;
  // Must be 0xffff when the command is not for one queue.
  uint16_t queue_id;
  // Length of the buffer at `addr` (in or out, per command).
  uint16_t len;
  uint64_t addr;
  // Inline argument (pid for START_DEV / END_USER_RECOVERY, queue for
  // GET_QUEUE_AFFINITY).
  uint64_t data[1];
  // GET_DEV_INFO2 (and unprivileged devices): `addr` starts with the path of
  // /dev/ublkcN, this many bytes including the NUL.
  uint16_t dev_path_len;
  uint16_t pad;
  uint32_t reserved;
};
static_assert(sizeof(CtrlCmd) == 32);

inline constexpr uint16_t kNoQueue = 0xffff;
// ADD_DEV with this id lets the driver pick the device number.
inline constexpr uint32_t kAutoDevId = 0xffffffffU;

struct CtrlDevInfo {
  uint16_t nr_hw_queues;
  uint16_t queue_depth;
  uint16_t state;  // kDevState*
  uint16_t pad0;
  uint32_t max_io_buf_bytes;
  uint32_t dev_id;
  int32_t ublksrv_pid;
  uint32_t pad1;
  uint64_t flags;  // kF* feature flags, negotiated at ADD_DEV
  // Opaque to the driver: the server may keep its own flags here.
  uint64_t ublksrv_flags;
  uint32_t owner_uid;
  uint32_t owner_gid;
  uint64_t reserved1;
  uint64_t reserved2;
};
static_assert(sizeof(CtrlDevInfo) == 64);

// Per-tag I/O descriptor, in the read-only array the server mmaps from
// /dev/ublkcN (one array per queue).
struct IoDesc {
  // op: bits 0-7 (kOp*), flags: bits 8-31 (kIoF*, defined in place).
  uint32_t op_flags;
  uint32_t nr_sectors;
  uint64_t start_sector;
  // The buffer address the server passed with FETCH / COMMIT_AND_FETCH.
  uint64_t addr;
};
static_assert(sizeof(IoDesc) == 24);

constexpr uint8_t io_desc_op(uint32_t op_flags) { return static_cast<uint8_t>(op_flags & 0xffU); }

// I/O command, carried in the 16-byte command area of a normal 64-byte SQE on
// /dev/ublkcN.
struct IoCmd {
  uint16_t q_id;
  uint16_t tag;
  // COMMIT_AND_FETCH_REQ: bytes done (READ/WRITE), 0, or a negative errno.
  int32_t result;
  // The tag's buffer: the driver copies WRITE data into it before handing
  // the request over, and READ data out of it at commit.
  uint64_t addr;
};
static_assert(sizeof(IoCmd) == 16);

struct ParamBasic {
  uint32_t attrs;  // kAttr*
  uint8_t logical_bs_shift;
  uint8_t physical_bs_shift;
  uint8_t io_opt_shift;
  uint8_t io_min_shift;
  uint32_t max_sectors;
  uint32_t chunk_sectors;
  uint64_t dev_sectors;
  uint64_t virt_boundary_mask;
};
static_assert(sizeof(ParamBasic) == 32);

struct ParamDiscard {
  uint32_t discard_alignment;
  uint32_t discard_granularity;
  uint32_t max_discard_sectors;
  uint32_t max_write_zeroes_sectors;
  // The driver supports single-segment discards only: must be 1 when
  // max_discard_sectors != 0.
  uint16_t max_discard_segments;
  uint16_t reserved0;
};
static_assert(sizeof(ParamDiscard) == 20);

// Read-only: filled by GET_PARAMS (the block device's numbers exist once the
// device is started).
struct ParamDevt {
  uint32_t char_major;
  uint32_t char_minor;
  uint32_t disk_major;
  uint32_t disk_minor;
};
static_assert(sizeof(ParamDevt) == 16);

struct ParamZoned {
  uint32_t max_open_zones;
  uint32_t max_active_zones;
  uint32_t max_zone_append_sectors;
  uint8_t reserved[20];
};
static_assert(sizeof(ParamZoned) == 32);

// The parameter block of SET_PARAMS / GET_PARAMS, as of 6.12. `len` is the
// size the sender knows; the driver copies min(len, its own size), so newer
// and older kernels both accept it.
struct Params {
  uint32_t len;
  uint32_t types;  // kParamType*
  ParamBasic basic;
  ParamDiscard discard;
  ParamDevt devt;
  ParamZoned zoned;
};
static_assert(sizeof(Params) == 112);  // 108 bytes of fields, 8-aligned

// ---------------------------------------------------------------------------
// Control commands (/dev/ublk-control, 128-byte SQEs).
// ---------------------------------------------------------------------------
inline constexpr uint32_t kCmdGetQueueAffinity = ioc(kIocRead, kIocType, 0x01, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdGetDevInfo = ioc(kIocRead, kIocType, 0x02, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdAddDev = ioc(kIocRead | kIocWrite, kIocType, 0x04, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdDelDev = ioc(kIocRead | kIocWrite, kIocType, 0x05, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdStartDev = ioc(kIocRead | kIocWrite, kIocType, 0x06, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdStopDev = ioc(kIocRead | kIocWrite, kIocType, 0x07, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdSetParams =
    ioc(kIocRead | kIocWrite, kIocType, 0x08, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdGetParams = ioc(kIocRead, kIocType, 0x09, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdStartUserRecovery =
    ioc(kIocRead | kIocWrite, kIocType, 0x10, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdEndUserRecovery =
    ioc(kIocRead | kIocWrite, kIocType, 0x11, sizeof(CtrlCmd));
inline constexpr uint32_t kCmdGetDevInfo2 = ioc(kIocRead, kIocType, 0x12, sizeof(CtrlCmd));
// Linux >= 6.5. Older drivers answer -EOPNOTSUPP (or -ENODEV: they look the
// device id up first).
inline constexpr uint32_t kCmdGetFeatures = ioc(kIocRead, kIocType, 0x13, sizeof(CtrlCmd));
// Linux >= 6.9: DEL_DEV that does not wait for the last reference to go.
inline constexpr uint32_t kCmdDelDevAsync = ioc(kIocRead, kIocType, 0x14, sizeof(CtrlCmd));

// Linux >= 6.16 (UBLK_F_UPDATE_SIZE): data[0] = the new size in 512-byte
// sectors of a live device.
inline constexpr uint32_t kCmdUpdateSize =
    ioc(kIocRead | kIocWrite, kIocType, 0x15, sizeof(CtrlCmd));
// Linux >= 6.16 (UBLK_F_QUIESCE, with USER_RECOVERY): data[0] = timeout in ms;
// parks a live device for a server hand-over (EBUSY if the server still holds
// requests when it expires).
inline constexpr uint32_t kCmdQuiesceDev =
    ioc(kIocRead | kIocWrite, kIocType, 0x16, sizeof(CtrlCmd));

// GET_FEATURES writes exactly this many bytes.
inline constexpr uint32_t kFeaturesLen = 8;

// ---------------------------------------------------------------------------
// I/O commands (/dev/ublkcN, 64-byte SQEs).
// ---------------------------------------------------------------------------
inline constexpr uint32_t kIoFetchReq = ioc(kIocRead | kIocWrite, kIocType, 0x20, sizeof(IoCmd));
inline constexpr uint32_t kIoCommitAndFetchReq =
    ioc(kIocRead | kIocWrite, kIocType, 0x21, sizeof(IoCmd));

// CQE results of FETCH / COMMIT_AND_FETCH.
inline constexpr int kIoResOk = 0;
inline constexpr int kIoResNeedGetData = 1;
// The device is stopping (or the server is being torn down): the command is
// returned without a request and must not be re-issued.
inline constexpr int kIoResAbort = -ENODEV;

// ---------------------------------------------------------------------------
// Feature flags (ctrl dev_info.flags and GET_FEATURES).
// ---------------------------------------------------------------------------
inline constexpr uint64_t kFSupportZeroCopy = 1ULL << 0;
inline constexpr uint64_t kFUringCmdCompInTask = 1ULL << 1;
inline constexpr uint64_t kFNeedGetData = 1ULL << 2;
// Devices survive the server's exit; I/O queues until a new server attaches.
inline constexpr uint64_t kFUserRecovery = 1ULL << 3;
// With kFUserRecovery: requests the dead server held are re-issued to the
// next one (so writes may repeat) instead of failing with EIO.
inline constexpr uint64_t kFUserRecoveryReissue = 1ULL << 4;
inline constexpr uint64_t kFUnprivilegedDev = 1ULL << 5;
inline constexpr uint64_t kFCmdIoctlEncode = 1ULL << 6;
inline constexpr uint64_t kFUserCopy = 1ULL << 7;
inline constexpr uint64_t kFZoned = 1ULL << 8;
// Linux >= 6.13.
inline constexpr uint64_t kFUserRecoveryFailIo = 1ULL << 9;
// Linux >= 6.16: UPDATE_SIZE resizes a live device; AUTO_BUF_REG registers the
// request's pages as the io buffer (zero copy); QUIESCE_DEV parks a live
// device for a server hand-over; PER_IO_DAEMON lets any task serve any tag.
inline constexpr uint64_t kFUpdateSize = 1ULL << 10;
inline constexpr uint64_t kFAutoBufReg = 1ULL << 11;
inline constexpr uint64_t kFQuiesce = 1ULL << 12;
inline constexpr uint64_t kFPerIoDaemon = 1ULL << 13;
// Linux >= 6.17.
inline constexpr uint64_t kFBufRegOffDaemon = 1ULL << 14;

// Device states (ctrl dev_info.state).
inline constexpr uint16_t kDevStateDead = 0;
inline constexpr uint16_t kDevStateLive = 1;
// The server is gone and the device waits for a new one (user recovery).
inline constexpr uint16_t kDevStateQuiesced = 2;
inline constexpr uint16_t kDevStateFailIo = 3;

// I/O operations (IoDesc op).
inline constexpr uint8_t kOpRead = 0;
inline constexpr uint8_t kOpWrite = 1;
inline constexpr uint8_t kOpFlush = 2;
inline constexpr uint8_t kOpDiscard = 3;
inline constexpr uint8_t kOpWriteSame = 4;
inline constexpr uint8_t kOpWriteZeroes = 5;

// I/O flags, as bits of IoDesc::op_flags (not shifted).
inline constexpr uint32_t kIoFFailfastDev = 1U << 8;
inline constexpr uint32_t kIoFFailfastTransport = 1U << 9;
inline constexpr uint32_t kIoFFailfastDriver = 1U << 10;
inline constexpr uint32_t kIoFMeta = 1U << 11;
inline constexpr uint32_t kIoFFua = 1U << 13;
inline constexpr uint32_t kIoFNoUnmap = 1U << 15;
inline constexpr uint32_t kIoFSwap = 1U << 16;
// UBLK_F_AUTO_BUF_REG with kAutoBufRegFallback: the driver could not register
// the request's pages in the ring; the server serves it another way (6.16+).
inline constexpr uint32_t kIoFNeedRegBuf = 1U << 17;

// Parameter types and basic attributes.
inline constexpr uint32_t kParamTypeBasic = 1U << 0;
inline constexpr uint32_t kParamTypeDiscard = 1U << 1;
inline constexpr uint32_t kParamTypeDevt = 1U << 2;
inline constexpr uint32_t kParamTypeZoned = 1U << 3;

inline constexpr uint32_t kAttrReadOnly = 1U << 0;
inline constexpr uint32_t kAttrRotational = 1U << 1;
inline constexpr uint32_t kAttrVolatileCache = 1U << 2;
inline constexpr uint32_t kAttrFua = 1U << 3;

// ---------------------------------------------------------------------------
// UBLK_F_AUTO_BUF_REG (6.16+): FETCH_REQ / COMMIT_AND_FETCH_REQ carry, in
// IoCmd::addr, where the driver registers the next request's pages - buffer
// `index` of the io_uring the command came from - instead of a buffer address:
// bits 0-15 index, 16-23 flags, 24-63 reserved (must be 0).
// ---------------------------------------------------------------------------
inline constexpr uint8_t kAutoBufRegFallback = 1U << 0;
constexpr uint64_t auto_buf_reg_addr(uint16_t index, uint8_t flags) {
  return uint64_t{index} | (uint64_t{flags} << 16U);
}

// UBLK_F_USER_COPY: pread/pwrite on /dev/ublkcN at this offset (plus the byte
// offset inside the request) copy out of / into the request's pages.
inline constexpr uint64_t kIoBufOffset = 0x80000000ULL;
inline constexpr unsigned kIoBufBits = 25;
inline constexpr unsigned kTagBits = 16;
constexpr uint64_t user_copy_offset(uint16_t queue, uint16_t tag) {
  return kIoBufOffset + (uint64_t{queue} << (kIoBufBits + kTagBits)) +
         (uint64_t{tag} << kIoBufBits);
}

// ---------------------------------------------------------------------------
// Limits and the /dev/ublkcN mmap layout.
// ---------------------------------------------------------------------------
inline constexpr unsigned kMaxQueueDepth = 4096;
inline constexpr unsigned kMaxNrQueues = 4096;
// The largest single-request buffer the driver's offsets can address.
inline constexpr uint32_t kMaxIoBufBytes = 32U << 20U;

// Queue q's descriptor array starts at q * (room for the deepest queue,
// rounded up to pages); it is `depth * sizeof(IoDesc)` rounded up to pages.
inline constexpr uint64_t kCmdBufOffset = 0;
constexpr uint64_t round_up(uint64_t value, uint64_t to) { return (value + to - 1) / to * to; }
constexpr uint64_t io_desc_array_bytes(unsigned depth, uint64_t page_size) {
  return round_up(uint64_t{depth} * sizeof(IoDesc), page_size);
}
constexpr uint64_t io_desc_mmap_offset(unsigned queue, uint64_t page_size) {
  return kCmdBufOffset + uint64_t{queue} * io_desc_array_bytes(kMaxQueueDepth, page_size);
}

}  // namespace ublkvol::ublk::uapi
