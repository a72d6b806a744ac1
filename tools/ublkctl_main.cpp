// ublkvol-ublkctl: look at and remove ublk devices from scripts and tests.
//
//   ublkvol-ublkctl features [--json]     what the kernel's ublk_drv offers
//   ublkvol-ublkctl list [--json]         every ublk device (/sys/class/ublk-char)
//   ublkvol-ublkctl info --id N [--json]  state, server pid, queues, size
//   ublkvol-ublkctl del --id N [--wait]   delete (DEL_DEV_ASYNC unless --wait)
#include <dirent.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/features.h"

namespace ublkvol::ublk {
namespace {

int fail(const Error& error) {
  (void)std::fprintf(stderr, "ublkvol-ublkctl: error: %s\n", error.message().c_str());
  return 1;
}

Result<nlohmann::json> describe(ControlDevice& control, uint32_t id) {
  auto info = control.get_device_info(id);
  if (!info) {
    return info.error();
  }
  nlohmann::json j = {{"dev_id", info->dev_id},
                      {"state", device_state_name(info->state)},
                      {"server_pid", info->ublksrv_pid},
                      {"queues", info->nr_hw_queues},
                      {"queue_depth", info->queue_depth},
                      {"max_io_bytes", info->max_io_buf_bytes},
                      {"features", describe_features(info->flags)}};
  auto params = control.get_params(id);
  if (params) {
    j["size_bytes"] = params->basic.dev_sectors << 9U;
    j["block_size"] = 1U << params->basic.logical_bs_shift;
  }
  return j;
}

void print_info(const nlohmann::json& j) {
  std::printf("ublkb%u: state %s, server pid %d, %u queues x %u tags, max I/O %u, %s",
              j["dev_id"].get<unsigned>(), j["state"].get<std::string>().c_str(),
              j["server_pid"].get<int>(), j["queues"].get<unsigned>(),
              j["queue_depth"].get<unsigned>(), j["max_io_bytes"].get<unsigned>(),
              j["features"].get<std::string>().c_str());
  if (j.contains("size_bytes")) {
    std::printf(", %llu bytes in %u-byte blocks",
                static_cast<unsigned long long>(j["size_bytes"].get<uint64_t>()),
                j["block_size"].get<unsigned>());
  }
  std::printf("\n");
}

std::vector<uint32_t> device_ids() {
  std::vector<uint32_t> ids;
  DIR* dir = ::opendir("/sys/class/ublk-char");
  if (dir == nullptr) {
    return ids;
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): this DIR stream is never shared between threads
  while (dirent* e = ::readdir(dir)) {
    unsigned id = 0;
    if (std::sscanf(e->d_name, "ublkc%u", &id) == 1) {
      ids.push_back(id);
    }
  }
  ::closedir(dir);
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace
}  // namespace ublkvol::ublk

int main(int argc, char** argv) try {
  using namespace ublkvol::ublk;  // NOLINT(google-build-using-namespace): tool main
  CLI::App app{"Inspect and remove ublk devices"};
  app.require_subcommand(1);
  bool json = false;
  uint32_t id = 0;
  bool wait = false;
  auto* features = app.add_subcommand("features", "what the kernel's ublk_drv offers");
  features->add_flag("--json", json);
  auto* list = app.add_subcommand("list", "every ublk device");
  list->add_flag("--json", json);
  auto* info = app.add_subcommand("info", "one device");
  info->add_option("--id", id, "device number")->required();
  info->add_flag("--json", json);
  auto* del = app.add_subcommand("del", "delete a device");
  del->add_option("--id", id, "device number")->required();
  del->add_flag("--wait", wait, "wait until the id is free (DEL_DEV instead of DEL_DEV_ASYNC)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  auto control = ControlDevice::open();
  if (!control) {
    return fail(control.error());
  }
  if (features->parsed()) {
    auto f = control->get_features();
    if (!f) {
      return fail(f.error());
    }
    if (json) {
      std::printf("%s\n",
                  nlohmann::json({{"flags", *f}, {"names", describe_features(*f)}}).dump().c_str());
    } else {
      std::printf("0x%llx %s\n", static_cast<unsigned long long>(*f),
                  describe_features(*f).c_str());
    }
    return 0;
  }
  if (list->parsed()) {
    nlohmann::json all = nlohmann::json::array();
    for (uint32_t dev : device_ids()) {
      auto j = describe(*control, dev);
      if (!j) {
        continue;  // deleted meanwhile
      }
      if (json) {
        all.push_back(*j);
      } else {
        print_info(*j);
      }
    }
    if (json) {
      std::printf("%s\n", all.dump().c_str());
    }
    return 0;
  }
  if (info->parsed()) {
    auto j = describe(*control, id);
    if (!j) {
      return fail(j.error());
    }
    if (json) {
      std::printf("%s\n", j->dump().c_str());
    } else {
      print_info(*j);
    }
    return 0;
  }
  ublkvol::Status s = control->delete_device(id, wait ? DeleteMode::kWait : DeleteMode::kAsync);
  if (!s.ok()) {
    return fail(s.error());
  }
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "ublkvol-ublkctl: error: %s\n", e.what());
  return 1;
}
