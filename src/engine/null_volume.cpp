// The null backend: every well-formed I/O succeeds at once, on the submitting
// thread, without touching data. It measures the frontend alone.
#include <memory>

#include "ublkvol/engine/volume.h"

#include "simple_volume.h"

namespace ublkvol::engine {
namespace {

class NullQueue final : public VolumeQueue {
 public:
  explicit NullQueue(const VolumeInfo& info) : info_(info) {}

  void submit(VolumeIo& io) override { completions_.push(io, detail::check_io(info_, io)); }
  void kick() override {}
  unsigned reap() override { return completions_.run(); }
  [[nodiscard]] int wake_fd() const override { return -1; }
  [[nodiscard]] unsigned in_flight() const override { return completions_.in_flight(); }

 private:
  const VolumeInfo& info_;
  detail::CompletionList completions_;
};

class NullVolume final : public Volume {
 public:
  NullVolume(VolumeInfo info, unsigned queues) : info_(std::move(info)), queues_(queues) {}

  [[nodiscard]] const VolumeInfo& info() const override { return info_; }

  Result<std::unique_ptr<VolumeQueue>> open_queue(unsigned index) override {
    if (index >= queues_) {
      return Error(EINVAL, "null volume '" + info_.name + "': queue " + std::to_string(index) +
                               " does not exist (the volume has " + std::to_string(queues_) + ")");
    }
    return std::unique_ptr<VolumeQueue>(std::make_unique<NullQueue>(info_));
  }

 private:
  VolumeInfo info_;
  unsigned queues_;
};

}  // namespace

Result<std::unique_ptr<Volume>> make_null_volume(const SimpleVolumeOptions& options) {
  UBLKVOL_TRY(detail::check_simple_options(options, "null"));
  if (!options.backing_file.empty()) {
    return Error(EINVAL, "null volume '" + options.name +
                             "': a backing file makes no sense for the null backend");
  }
  VolumeInfo info = detail::simple_volume_info(options);
  // Reads return whatever the buffer held, so discarded blocks do not read as
  // zeros.
  info.discard_zeroes = false;
  return std::unique_ptr<Volume>(std::make_unique<NullVolume>(std::move(info), options.queues));
}

}  // namespace ublkvol::engine
