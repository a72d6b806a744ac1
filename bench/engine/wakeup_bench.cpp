// wakeup_bench: what one cross-thread wake-up costs, eventfd against
// IORING_OP_MSG_RING (issue 4: "eventfd or IORING_OP_MSG_RING - measure").
//
//   wakeup_bench [--runtime 2] [--rounds 3] [--json]
//
// Two threads ping-pong: each sleeps until the other wakes it, then wakes
// the other - the worst case for the engine, where every request finds its
// store thread asleep and every completion finds its queue thread asleep
// (QD 1). Busy threads skip wake-ups altogether (store_thread.h), so this
// bounds what the choice of mechanism can change. Mechanisms:
//
//   eventfd        sleep in poll(2) on an eventfd, read(2) it; wake with
//                  write(2) - what a queue thread waiting on wake_fd() does.
//   eventfd+ring   the store thread's shape today: sleep in ppoll(2) on the
//                  doorbell eventfd plus an (idle) io_uring's completion
//                  eventfd, read(2) the doorbell, one io_uring_enter to
//                  collect completions (as FileDevice::poll does), wake the
//                  other side with write(2).
//   msg_ring       each thread owns an io_uring (SINGLE_ISSUER|DEFER_TASKRUN
//                  like FileDevice's); wake = an IORING_OP_MSG_RING SQE to
//                  the other ring (CQE_SKIP_SUCCESS), submitted in the same
//                  io_uring_enter that then sleeps for this thread's next
//                  CQE. One syscall per wake-and-sleep instead of three.
//
// Reported: round trips per second and CPU time (both threads) per wake-up;
// medians over --rounds, mechanisms alternating within each round.
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

[[noreturn]] void die(const std::string& what) {
  (void)std::fprintf(stderr, "wakeup_bench: %s\n", what.c_str());
  // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
  std::exit(1);
}

struct Sample {
  double round_trips_per_s = 0;
  double cpu_us_per_wake = 0;
};

// Runs `side(0)` and `side(1)` on two threads until `stop`; side 0 starts
// the ping-pong. Each side returns the number of wake-ups it received.
template <typename Side>
Sample run_pair(double seconds, Side&& side) {
  std::atomic<bool> stop{false};
  uint64_t received[2] = {0, 0};
  const double cpu0 = cpu_seconds();
  const auto t0 = Clock::now();
  std::thread other([&] { received[1] = side(1, stop); });
  std::thread timer([&] {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop.store(true);
  });
  received[0] = side(0, stop);
  timer.join();
  other.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = cpu_seconds() - cpu0;
  const double wakes = static_cast<double>(std::max<uint64_t>(received[0] + received[1], 1));
  return {wakes / 2 / elapsed, cpu * 1e6 / wakes};
}

void write_fd(int fd) {
  uint64_t one = 1;
  if (::write(fd, &one, sizeof(one)) != sizeof(one)) {
    die("eventfd write failed");
  }
}

// True if the eventfd had been signalled (and is now reset).
bool read_fd(int fd) {
  uint64_t value = 0;
  return ::read(fd, &value, sizeof(value)) == sizeof(value);
}

// A side stops after `stop` is seen and sends one last wake-up so the other
// side, asleep waiting for it, also gets out (the sleeps also time out after
// 100 ms once `stop` is set, in case a last wake-up crossed the stop).
Sample bench_eventfd(double seconds) {
  int fds[2] = {::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  if (fds[0] < 0 || fds[1] < 0) {
    die("eventfd");
  }
  Sample s = run_pair(seconds, [&](int me, std::atomic<bool>& stop) {
    uint64_t got = 0;
    if (me == 0) {
      write_fd(fds[1]);
    }
    while (true) {
      pollfd p{fds[me], POLLIN, 0};
      // The timeout only matters at the end, when the peer has stopped.
      if (::poll(&p, 1, 100) == 0 && stop.load()) {
        break;
      }
      if (!read_fd(fds[me])) {
        continue;
      }
      ++got;
      write_fd(fds[1 - me]);
      if (stop.load(std::memory_order_relaxed)) {
        break;
      }
    }
    return got;
  });
  ::close(fds[0]);
  ::close(fds[1]);
  return s;
}

void setup_ring(io_uring& ring) {
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                 IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int rc = io_uring_queue_init_params(64, &ring, &params);
  if (rc < 0) {
    die("io_uring setup: " + std::to_string(rc));
  }
}

Sample bench_eventfd_ring(double seconds) {
  int doorbell[2] = {::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC),
                     ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  if (doorbell[0] < 0 || doorbell[1] < 0) {
    die("eventfd");
  }
  Sample s = run_pair(seconds, [&](int me, std::atomic<bool>& stop) {
    io_uring ring{};
    setup_ring(ring);
    int completion_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (completion_fd < 0 || io_uring_register_eventfd(&ring, completion_fd) < 0) {
      die("eventfd registration");
    }
    uint64_t got = 0;
    uint64_t spurious = 0;
    if (me == 0) {
      write_fd(doorbell[1]);
    }
    while (true) {
      pollfd p[2] = {{doorbell[me], POLLIN, 0}, {completion_fd, POLLIN, 0}};
      const timespec end_check{0, 100'000'000};
      if (::ppoll(p, 2, &end_check, nullptr) == 0 && stop.load()) {
        break;
      }
      if ((p[1].revents & POLLIN) != 0) {
        read_fd(completion_fd);
      }
      io_uring_get_events(&ring);  // the store's poll() collecting completions
      if (!read_fd(doorbell[me])) {
        ++spurious;
        continue;
      }
      ++got;
      write_fd(doorbell[1 - me]);
      if (stop.load(std::memory_order_relaxed)) {
        break;
      }
    }
    io_uring_queue_exit(&ring);
    ::close(completion_fd);
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
    if (std::getenv("WAKEUP_BENCH_DEBUG") != nullptr) {
      (void)std::fprintf(stderr, "side %d: %llu wakes, %llu spurious\n", me,
                         static_cast<unsigned long long>(got),
                         static_cast<unsigned long long>(spurious));
    }
    return got;
  });
  ::close(doorbell[0]);
  ::close(doorbell[1]);
  return s;
}

Sample bench_msg_ring(double seconds) {
  std::atomic<int> ring_fds[2] = {-1, -1};
  std::atomic<int> done{0};
  Sample s = run_pair(seconds, [&](int me, std::atomic<bool>& stop) {
    io_uring ring{};
    setup_ring(ring);
    ring_fds[me].store(ring.ring_fd);
    while (ring_fds[1 - me].load() < 0) {
      std::this_thread::yield();
    }
    const int peer = ring_fds[1 - me].load();
    auto send = [&] {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      if (sqe == nullptr) {
        die("no free SQE");  // one message in flight per side: cannot happen
      }
      io_uring_prep_msg_ring(sqe, peer, 0, /*data=*/1, 0);
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    };
    uint64_t got = 0;
    if (me == 0) {
      send();
    }
    while (true) {
      // Sends the pending wake-up (if any) and sleeps in the same call.
      __kernel_timespec end_check{0, 100'000'000};
      io_uring_cqe* first = nullptr;
      int rc = io_uring_submit_and_wait_timeout(&ring, &first, 1, &end_check, nullptr);
      if (rc == -ETIME) {
        if (stop.load()) {
          break;
        }
        continue;
      }
      if (rc < 0 && rc != -EINTR) {
        die("io_uring_submit_and_wait: " + std::to_string(rc));
      }
      io_uring_cqe* cqe = nullptr;
      unsigned seen = 0;
      unsigned head = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        if (cqe->res < 0 && cqe->user_data != 1) {
          die("MSG_RING failed: " + std::to_string(cqe->res));
        }
        ++seen;
      }
      io_uring_cq_advance(&ring, seen);
      got += seen;
      if (seen == 0) {
        continue;
      }
      if (stop.load(std::memory_order_relaxed)) {
        // Last wake-up for the peer, sent without waiting for more.
        send();
        io_uring_submit(&ring);
        break;
      }
      send();
    }
    // Both sides have sent their last message before either ring goes away.
    done.fetch_add(1);
    while (done.load() < 2) {
      std::this_thread::yield();
    }
    io_uring_queue_exit(&ring);
    return got;
  });
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"cross-thread wake-up cost: eventfd vs IORING_OP_MSG_RING"};
  double runtime = 2;
  unsigned rounds = 3;
  bool json = false;
  app.add_option("--runtime", runtime, "seconds per measurement")->check(CLI::Range(0.1, 600.0));
  app.add_option("--rounds", rounds, "rounds (mechanisms alternate; medians)")
      ->check(CLI::Range(1, 100));
  app.add_flag("--json", json, "print JSON");
  CLI11_PARSE(app, argc, argv);

  struct Mechanism {
    const char* name;
    Sample (*run)(double);
    std::vector<double> rate, cpu;
  };
  std::vector<Mechanism> mechanisms = {{"eventfd", bench_eventfd, {}, {}},
                                       {"eventfd+ring", bench_eventfd_ring, {}, {}},
                                       {"msg_ring", bench_msg_ring, {}, {}}};
  for (unsigned round = 0; round < rounds; ++round) {
    for (Mechanism& m : mechanisms) {
      Sample s = m.run(runtime);
      // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
      if (std::getenv("WAKEUP_BENCH_DEBUG") != nullptr) {
        (void)std::fprintf(stderr, "%s: %.0f round trips/s\n", m.name, s.round_trips_per_s);
      }
      m.rate.push_back(s.round_trips_per_s);
      m.cpu.push_back(s.cpu_us_per_wake);
    }
  }
  nlohmann::json out;
  out["runtime_s"] = runtime;
  out["rounds"] = rounds;
  for (const Mechanism& m : mechanisms) {
    out["results"].push_back({{"mechanism", m.name},
                              {"round_trips_per_s", median(m.rate)},
                              {"us_per_round_trip", 1e6 / median(m.rate)},
                              {"cpu_us_per_wake", median(m.cpu)},
                              {"round_trips_per_s_runs", m.rate}});
  }
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("ping-pong between two sleeping threads, %.1f s per run, median of %u rounds\n",
              runtime, rounds);
  std::printf("%-14s %14s %14s %16s\n", "mechanism", "round trips/s", "us/round trip",
              "CPU us per wake");
  for (const auto& row : out["results"]) {
    std::printf("%-14s %14.0f %14.2f %16.2f\n", row["mechanism"].get<std::string>().c_str(),
                row["round_trips_per_s"].get<double>(), row["us_per_round_trip"].get<double>(),
                row["cpu_us_per_wake"].get<double>());
  }
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "wakeup_bench: error: %s\n", e.what());
  return 1;
}
