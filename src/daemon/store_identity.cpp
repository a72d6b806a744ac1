#include "store_identity.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string_view>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/format.h"

namespace ublkvol::daemon {
namespace {

std::string uuid_text(const uint8_t (&bytes)[16]) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out += '-';
    }
    out += kHex[bytes[i] >> 4U];
    out += kHex[bytes[i] & 15U];
  }
  return out;
}

// A superblock copy is valid if it has the magic and its CRC matches (the
// same test Store::open starts with; geometry is Store::open's business).
bool valid_superblock(std::span<const std::byte> block, dbs::format::Superblock& out) {
  std::memcpy(&out, block.data(), sizeof(out));
  if (out.magic != dbs::format::kSuperblockMagic) {
    return false;
  }
  std::array<std::byte, dbs::format::kBlockSize> copy{};
  std::memcpy(copy.data(), block.data(), copy.size());
  const uint32_t zero = 0;
  std::memcpy(copy.data() + offsetof(dbs::format::Superblock, crc), &zero, sizeof(zero));
  return crc32c(copy) == out.crc;
}

struct AlignedFree {
  void operator()(std::byte* p) const {
    ::operator delete[](p, std::align_val_t(dbs::kIoAlignment));
  }
};

}  // namespace

FileIdentity identity_of(const struct stat& st) {
  if (S_ISBLK(st.st_mode)) {
    return {true, static_cast<uint64_t>(st.st_rdev), 0};
  }
  return {false, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

Result<FileIdentity> identity_of_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return errno_error("cannot stat " + path);
  }
  return identity_of(st);
}

std::string describe(const FileIdentity& identity) {
  const auto dev = static_cast<dev_t>(identity.dev);
  const std::string majmin = std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
  if (identity.block) {
    return "block device " + majmin;
  }
  return "file " + majmin + " inode " + std::to_string(identity.ino);
}

Result<StoreWatch> StoreWatch::open(const std::string& path) {
  StoreWatch watch;
  watch.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!watch.fd_) {
    return errno_error(path + ": cannot open");
  }
  struct stat st {};
  if (::fstat(watch.fd_.get(), &st) != 0) {
    return errno_error(path + ": cannot stat");
  }
  watch.identity_ = identity_of(st);
  return watch;
}

std::string StoreWatch::check(const std::string& path) const {
  if (!fd_) {
    return "";
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) {
    return errno_error(path + ": cannot stat the open store file").to_string();
  }
  const bool unlinked = !S_ISBLK(st.st_mode) && st.st_nlink == 0;
  auto now = identity_of_path(path);
  if (now.ok() && !(*now == identity_)) {
    return path + " now names another file (" + describe(*now) +
           ") than the one the store was opened on (" + describe(identity_) + ")" +
           (unlinked ? ", which was deleted" : "");
  }
  if (unlinked) {
    return path +
           " was deleted while the store was open (its data now lives only in the "
           "daemon's open file and is lost when the store is closed)";
  }
  if (!now.ok()) {
    return path + " is gone while the store was open: " + now.error().to_string();
  }
  return "";
}

Result<std::string> read_store_uuid(dbs::BlockDevice& device) {
  const size_t bytes = size_t{2} * dbs::format::kBlockSize;
  if (device.size_bytes() < bytes) {
    return Error(EINVAL, std::string(device.name()) + " is too small to hold a DBS store");
  }
  std::unique_ptr<std::byte[], AlignedFree> buffer(new (std::align_val_t(dbs::kIoAlignment))
                                                       std::byte[bytes]);
  UBLKVOL_TRY(dbs::read_sync(device, 0, {buffer.get(), bytes}));
  for (size_t copy = 0; copy < 2; ++copy) {
    dbs::format::Superblock sb{};
    if (valid_superblock({buffer.get() + copy * dbs::format::kBlockSize, dbs::format::kBlockSize},
                         sb)) {
      return uuid_text(sb.uuid);
    }
  }
  return Error(EINVAL, std::string(device.name()) + " holds no valid DBS superblock");
}

std::string describe_contents(int fd) {
  // Enough for every signature below (btrfs sits at 64 KiB + 64).
  constexpr size_t kProbe = size_t{68} * 1024;
  std::vector<unsigned char> head(kProbe, 0);
  const ssize_t got = ::pread(fd, head.data(), head.size(), 0);
  if (got <= 0) {
    return "";
  }
  const auto n = static_cast<size_t>(got);
  auto at = [&](size_t offset, std::string_view magic) {
    return offset + magic.size() <= n &&
           std::memcmp(head.data() + offset, magic.data(), magic.size()) == 0;
  };
  if (n >= size_t{2} * dbs::format::kBlockSize) {
    for (size_t copy = 0; copy < 2; ++copy) {
      dbs::format::Superblock sb{};
      if (valid_superblock(
              {reinterpret_cast<const std::byte*>(head.data()) + copy * dbs::format::kBlockSize,
               dbs::format::kBlockSize},
              sb)) {
        return "a DBS store (uuid " + uuid_text(sb.uuid) + ")";
      }
    }
  }
  if (at(0, "UBLKDBS1")) {
    return "a damaged DBS store";
  }
  if (at(1080, "\x53\xef")) {
    return "an ext2/3/4 filesystem";
  }
  if (at(0, "XFSB")) {
    return "an XFS filesystem";
  }
  if (at(0x10040, "_BHRfS_M")) {
    return "a btrfs filesystem";
  }
  if (at(4096 - 10, "SWAPSPACE2") || at(4096 - 10, "SWAP-SPACE")) {
    return "swap space";
  }
  if (at(0, "LUKS\xba\xbe")) {
    return "a LUKS volume";
  }
  if (at(512, "EFI PART") || at(510, "\x55\xaa")) {
    return "a partition table";
  }
  return "";
}

}  // namespace ublkvol::daemon
