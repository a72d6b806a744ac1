// SHA-256 through OpenSSL's EVP interface (libcrypto, Debian's libssl-dev).
#include "ublkvol/backup/hash.h"

#include <cerrno>
#include <memory>
#include <openssl/evp.h>

#include "ublkvol/common/hex.h"

namespace ublkvol::backup {

namespace {

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

}  // namespace

std::string ChunkHash::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4U];
    out[2 * i + 1] = kDigits[bytes[i] & 0xFU];
  }
  return out;
}

Result<ChunkHash> ChunkHash::parse_hex(std::string_view text) {
  ChunkHash hash;
  if (text.size() != hash.bytes.size() * 2) {
    return Error(EINVAL, "'" + std::string(text) + "' is not a chunk hash (64 hex digits)");
  }
  for (size_t i = 0; i < hash.bytes.size(); ++i) {
    const int hi = hex_digit_value(text[2 * i]);
    const int lo = hex_digit_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Error(EINVAL, "'" + std::string(text) + "' is not a chunk hash (64 hex digits)");
    }
    hash.bytes[i] = static_cast<uint8_t>((hi << 4) | lo);
  }
  return hash;
}

ChunkHash sha256(std::initializer_list<std::span<const std::byte>> parts) {
  // EVP_MD_CTX_new fails only when the process is out of memory; there is no
  // sensible value to return then.
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    std::abort();
  }
  for (const auto& part : parts) {
    EVP_DigestUpdate(ctx.get(), part.data(), part.size());
  }
  ChunkHash hash;
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), hash.bytes.data(), &length);
  return hash;
}

}  // namespace ublkvol::backup
