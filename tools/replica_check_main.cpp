// ublkvol-replica-check: an independent check of what ublkvol-serve's
// replicated backend left in its replica files (run with the server stopped).
//
//   ublkvol-replica-check --replica-file /dev/shm/r0 --replica-file /dev/shm/r1 ...
//       opens each DBS store (DBS's own consistency check must be clean), reads
//       the volume from every replica and compares them 1 MiB at a time;
//       prints the size, the generation and a CRC32C of the content, and every
//       range where replicas differ. Exit 0: all replicas agree; 1: they differ
//       or a store is inconsistent; 2: bad arguments or unreadable files.
//   ublkvol-replica-check --replica-file F --dump
//       writes the volume's content to stdout (e.g. | sha256sum, to compare
//       with what /dev/ublkbN showed).
//
// It uses DBS directly, not the engine: a bug that made the engine agree with
// itself would still show up here as different bytes.
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/common/result.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"

namespace ublkvol::ublk {
namespace {

constexpr int kExitDiffer = 1;
constexpr int kExitUsage = 2;
constexpr uint64_t kChunk = 1ULL << 20U;

struct Replica {
  std::string file;
  std::unique_ptr<dbs::FileDevice> device;
  std::unique_ptr<dbs::Store> store;
  dbs::VolumeId volume = 0;
  dbs::VolumeInfo info;
};

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte, AlignedFree>;

Buffer make_buffer() {
  return Buffer(static_cast<std::byte*>(std::aligned_alloc(dbs::kIoAlignment, kChunk)));
}

int usage_error(const std::string& message) {
  (void)std::fprintf(stderr, "ublkvol-replica-check: error: %s\n", message.c_str());
  return kExitUsage;
}

bool write_all(int fd, const std::byte* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n <= 0) {
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

int run(const std::vector<std::string>& files, const std::string& volume_name, bool dump) {
  if (files.empty()) {
    return usage_error("give at least one --replica-file");
  }
  if (dump && files.size() != 1) {
    return usage_error("--dump takes exactly one --replica-file");
  }
  std::vector<Replica> replicas;
  int status = 0;
  for (const std::string& file : files) {
    Replica r;
    r.file = file;
    dbs::FileDeviceOptions options;
    options.read_only = true;
    auto device = dbs::FileDevice::open(file, options);
    if (!device) {
      return usage_error(device.error().to_string());
    }
    r.device = std::move(*device);
    auto store = dbs::Store::open(*r.device);
    if (!store) {
      return usage_error(file + ": " + store.error().to_string());
    }
    r.store = std::move(*store);
    for (const std::string& problem : r.store->check()) {
      (void)std::fprintf(stderr, "%s: DBS check: %s\n", file.c_str(), problem.c_str());
      status = kExitDiffer;
    }
    auto volume = r.store->find_volume(volume_name);
    if (!volume) {
      return usage_error(std::string(file).append(": no volume '").append(volume_name).append("'"));
    }
    r.volume = *volume;
    auto info = r.store->volume_info(r.volume);
    if (!info) {
      return usage_error(file + ": " + info.error().to_string());
    }
    r.info = *info;
    if (!replicas.empty() && r.info.size_bytes != replicas[0].info.size_bytes) {
      (void)std::fprintf(stderr, "%s: volume size %llu differs from %s's %llu\n", file.c_str(),
                         static_cast<unsigned long long>(r.info.size_bytes),
                         replicas[0].file.c_str(),
                         static_cast<unsigned long long>(replicas[0].info.size_bytes));
      return kExitDiffer;
    }
    if (!replicas.empty() && r.info.generation != replicas[0].info.generation) {
      (void)std::fprintf(stderr, "%s: generation %#llx differs from %s's %#llx\n", file.c_str(),
                         static_cast<unsigned long long>(r.info.generation),
                         replicas[0].file.c_str(),
                         static_cast<unsigned long long>(replicas[0].info.generation));
      status = kExitDiffer;
    }
    replicas.push_back(std::move(r));
  }

  const uint64_t size = replicas[0].info.size_bytes;
  std::vector<Buffer> buffers;
  for (size_t i = 0; i < replicas.size(); ++i) {
    buffers.push_back(make_buffer());
    if (!buffers.back()) {
      return usage_error("out of memory");
    }
  }
  uint32_t crc = 0;
  uint64_t differing_bytes = 0;
  unsigned reported = 0;
  for (uint64_t offset = 0; offset < size; offset += kChunk) {
    const uint64_t length = std::min(kChunk, size - offset);
    for (size_t i = 0; i < replicas.size(); ++i) {
      Status s = replicas[i].store->read(replicas[i].volume, offset, {buffers[i].get(), length});
      if (!s.ok()) {
        return usage_error(replicas[i].file + ": read at " + std::to_string(offset) + ": " +
                           s.error().to_string());
      }
    }
    if (dump && !write_all(STDOUT_FILENO, buffers[0].get(), length)) {
      return usage_error("cannot write to stdout");
    }
    crc = crc32c_extend(crc, {buffers[0].get(), length});
    for (size_t i = 1; i < replicas.size(); ++i) {
      if (std::memcmp(buffers[0].get(), buffers[i].get(), length) == 0) {
        continue;
      }
      for (uint64_t b = 0; b < length; b += 4096) {
        if (std::memcmp(buffers[0].get() + b, buffers[i].get() + b, 4096) != 0) {
          differing_bytes += 4096;
          if (++reported <= 16) {
            (void)std::fprintf(stderr, "%s and %s differ in block at byte %" PRIu64 "\n",
                               replicas[0].file.c_str(), replicas[i].file.c_str(), offset + b);
          }
        }
      }
    }
  }
  if (differing_bytes != 0) {
    (void)std::fprintf(stderr, "replicas differ in %llu bytes\n",
                       static_cast<unsigned long long>(differing_bytes));
    status = kExitDiffer;
  }
  FILE* out = dump ? stderr : stdout;
  (void)std::fprintf(
      out, "%s: %zu replica(s), volume '%s', %llu bytes, generation %#llx, crc32c %#010x\n",
      status == 0 ? (replicas.size() > 1 ? "agree" : "ok") : "MISMATCH", replicas.size(),
      volume_name.c_str(), static_cast<unsigned long long>(size),
      static_cast<unsigned long long>(replicas[0].info.generation), crc);
  return status;
}

}  // namespace
}  // namespace ublkvol::ublk

// Three options, parsed by hand (CLI11's split() trips GCC 12's
// -Wnull-dereference in this translation unit).
int main(int argc, char** argv) try {
  std::vector<std::string> files;
  std::string volume_name = "ublkvol";
  bool dump = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--dump") {
      dump = true;
    } else if ((arg == "--replica-file" || arg == "--volume-name") && i + 1 < argc) {
      (arg == "--replica-file" ? files.emplace_back() : volume_name) = argv[++i];
    } else if (arg == "--help" || arg == "-h") {
      std::printf(
          "usage: ublkvol-replica-check --replica-file F [--replica-file F ...] "
          "[--volume-name N] [--dump]\n"
          "Compares the replicas ublkvol-serve --backend replicated left in its store files\n"
          "(exit 0 agree, 1 differ or inconsistent, 2 bad arguments / unreadable); --dump\n"
          "writes the single replica's volume content to stdout.\n");
      return 0;
    } else {
      (void)std::fprintf(
          stderr, "ublkvol-replica-check: error: unknown or incomplete option '%s'\n", arg.c_str());
      return 2;
    }
  }
  return ublkvol::ublk::run(files, volume_name, dump);
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "ublkvol-replica-check: error: %s\n", e.what());
  return ublkvol::ublk::kExitUsage;
}
