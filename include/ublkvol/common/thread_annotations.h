// Clang thread-safety analysis (-Wthread-safety): capability attributes and
// an annotated mutex. Under GCC (or any compiler without the attributes) the
// macros expand to nothing and Mutex is a plain std::mutex wrapper, so the
// annotations cost nothing at run time. The `thread-safety` configure preset
// builds with clang++ and -Werror=thread-safety (scripts/test.sh runs it).
//
// libstdc++'s std::mutex / std::lock_guard carry no annotations, hence the
// wrappers: a field marked GUARDED_BY(m) may only be touched while a
// MutexLock / UniqueLock on m (or m.lock()) is held, and a function marked
// REQUIRES(m) may only be called with m held.
#pragma once

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define UBLKVOL_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define UBLKVOL_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) UBLKVOL_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY UBLKVOL_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) UBLKVOL_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) UBLKVOL_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) UBLKVOL_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) UBLKVOL_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) UBLKVOL_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define ACQUIRE(...) UBLKVOL_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) UBLKVOL_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) UBLKVOL_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) UBLKVOL_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) UBLKVOL_THREAD_ANNOTATION(assert_capability(x))
#define RETURN_CAPABILITY(x) UBLKVOL_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS UBLKVOL_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace ublkvol {

// std::mutex with capability annotations.
class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ACQUIRE() { m_.lock(); }
  void unlock() RELEASE() { m_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return m_.try_lock(); }

  // The wrapped mutex, for UniqueLock's std::unique_lock only.
  std::mutex& native() RETURN_CAPABILITY(this) { return m_; }

 private:
  std::mutex m_;
};

// Tag for MutexLock's constructor that takes over a mutex already locked
// (after a successful try_lock()).
struct AdoptLock {};
inline constexpr AdoptLock kAdoptLock{};

// lock_guard for Mutex.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& m) ACQUIRE(m) : m_(m) { m_.lock(); }
  MutexLock(Mutex& m, AdoptLock /*tag*/) REQUIRES(m) : m_(m) {}
  ~MutexLock() RELEASE() { m_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& m_;
};

// unique_lock for Mutex, for condition-variable waits and for code that
// drops the lock for a while (unlock() ... lock()). A std::condition_variable
// needs a std::unique_lock<std::mutex>: wait through native(). The analysis
// cannot see that a wait releases and re-takes the mutex; it treats the lock
// as held throughout, which is what the code after the wait (and the wait's
// predicate, run under the lock) relies on. Predicates that read guarded
// fields are marked REQUIRES(m) so the analysis checks them too.
class SCOPED_CAPABILITY UniqueLock {
 public:
  explicit UniqueLock(Mutex& m) ACQUIRE(m) : lock_(m.native()) {}
  ~UniqueLock() RELEASE() = default;
  UniqueLock(const UniqueLock&) = delete;
  UniqueLock& operator=(const UniqueLock&) = delete;

  void lock() ACQUIRE() { lock_.lock(); }
  void unlock() RELEASE() { lock_.unlock(); }

  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace ublkvol
