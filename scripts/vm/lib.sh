# shellcheck shell=bash disable=SC2034  # settings read by the scripts that source this
# Shared settings and the boot step of the VM test beds (sourced by fetch-kernel.sh,
# run.sh and systemd/run.sh).
# Keep every list the bed depends on here, in one place.

# Where the fetched kernel, its modules and the cached initramfs base live.
UBLKVOL_VM_CACHE="${UBLKVOL_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-volumed/vm}"

# The test kernels, pinned: every version and checksum the beds boot is recorded here and
# nowhere else. UBLKVOL_VM_KERNEL (or a runner's --kernel) picks one:
#   6.12  Debian trixie's cloud kernel: the project's floor (USER_RECOVERY|REISSUE).
#   7     trixie-backports' 7.3 cloud kernel: GET_FEATURES 0x1fffff (UPDATE_SIZE, QUIESCE,
#         AUTO_BUF_REG, BATCH_IO, ...). Since 6.19 Debian splits the kernel in two packages:
#         vmlinuz in linux-binary-*, the modules in linux-modules-*.
# Each entry of UBLKVOL_VM_KERNEL_DEBS is "package=version sha256"; the .debs are fetched
# from the suite's signed index (apt verifies them against it) and must also match the
# sha256 here. The entry with the modules comes last. When the mirror drops a pinned
# version, fetch-kernel.sh fails naming it and prints the newest candidate to pin instead.
UBLKVOL_VM_KERNELS=(6.12 7)
UBLKVOL_VM_KERNEL="${UBLKVOL_VM_KERNEL:-6.12}"

# ublkvol_vm_select_kernel NAME: sets UBLKVOL_VM_KERNEL, UBLKVOL_VM_KERNEL_SUITE,
# UBLKVOL_VM_KERNEL_DEBS, UBLKVOL_VM_KERNEL_CANDIDATES (apt-cache pkgnames prefix + ERE of
# the newer packages fetch-kernel.sh suggests) and UBLKVOL_VM_KERNEL_CACHE (the kernel's
# own cache directory: vmlinuz, modules/, initramfs bases, systemd image).
ublkvol_vm_select_kernel() {
  case "$1" in
    6.12)
      UBLKVOL_VM_KERNEL_SUITE=trixie
      UBLKVOL_VM_KERNEL_DEBS=(
        "linux-image-6.12.117+deb13-cloud-amd64-unsigned=6.12.117-1 4113a615a1f1535ed4356ca03d428c74536b00f6ccb58e049a2ffd6a1cb3f1ad"
      )
      UBLKVOL_VM_KERNEL_CANDIDATES=(linux-image-6.12 '^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-unsigned$')
      # The first kernel's cache is the top directory (as before there were two).
      UBLKVOL_VM_KERNEL_CACHE="$UBLKVOL_VM_CACHE"
      ;;
    7)
      UBLKVOL_VM_KERNEL_SUITE=trixie-backports
      UBLKVOL_VM_KERNEL_DEBS=(
        "linux-binary-7.3.4+deb13-cloud-amd64=7.3.4-1~bpo13+1 c4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0"
        "linux-modules-7.3.4+deb13-cloud-amd64=7.3.4-1~bpo13+1 359f04c363b7d3c5f9ce999ccb7351e00cc8eec0a30d6bc1cda37734987fc43d"
      )
      UBLKVOL_VM_KERNEL_CANDIDATES=(linux-binary-7 '^linux-binary-7\.[0-9]+\.[0-9]+\+deb13-cloud-amd64$')
      UBLKVOL_VM_KERNEL_CACHE="$UBLKVOL_VM_CACHE/kernel-7"
      ;;
    *)
      ublkvol_vm_die "unknown VM kernel '$1' (UBLKVOL_VM_KERNEL or --kernel): choose one of ${UBLKVOL_VM_KERNELS[*]}"
      ;;
  esac
  UBLKVOL_VM_KERNEL="$1"
}

# Kernel modules copied out of the kernel package (paths under kernel/, without .ko.xz).
# ublk_drv is loaded by /init; the others are there for tests that want a loop device,
# null_blk, brd, a virtio disk or a veth pair between network namespaces (load them with
# `vm-load-module NAME` in the guest). Their dependencies (modinfo "depends") are copied
# too. fetch-kernel.sh fetches the kernel again when its cache lacks one of them.
UBLKVOL_VM_MODULES=(
  drivers/block/ublk_drv
  drivers/block/loop
  drivers/block/null_blk/null_blk
  drivers/block/brd
  drivers/block/virtio_blk
  drivers/net/veth
)

# Host programs every guest gets (with the libraries ldd lists). A test that needs more
# passes them with --binary. Required ones must exist on the host (scripts/setup.sh
# installs them); optional ones are included when present.
# bash is the guest's /bin/sh: Debian's busybox-static shell runs its own applets in
# preference to PATH (FEATURE_SH_STANDALONE), so under it `losetup` or `blkdiscard` would
# silently be busybox's cut-down versions instead of the real tools listed here.
UBLKVOL_VM_REQUIRED_TOOLS=(bash fio mkfs.ext4 e2fsck blkdiscard blockdev losetup)
# ip is iproute2's (busybox's has no netns nor veth): the remote replica e2e test's namespace.
UBLKVOL_VM_OPTIONAL_TOOLS=(mke2fs dumpe2fs debugfs resize2fs lsblk strace ip)

# Busybox must be the static build (busybox-static): it provides the guest's coreutils,
# mount, insmod, poweroff, ... (as symlinks; a tool listed above replaces its applet).
UBLKVOL_VM_BUSYBOX="${UBLKVOL_VM_BUSYBOX:-/bin/busybox}"

ublkvol_vm_die() {
  echo "${0##*/}: error: $*" >&2
  exit "${UBLKVOL_VM_DIE_STATUS:-1}"
}

ublkvol_vm_log() {
  echo "${0##*/}: $*" >&2
}

# ublkvol_vm_boot LOG TOKEN HEADER_LINES [BEFORE_RETRY]
# Boots the VM once: "$qemu" "${qemu_args[@]}" under timeout(1) with "$timeout_s",
# console appended to LOG (whose first HEADER_LINES lines are the runner's own header)
# and streamed to stdout while QEMU runs. Sets qemu_status and elapsed (seconds);
# qemu_pid holds QEMU's pid while it runs, for the caller's exit trap.
# QEMU's multi-threaded TCG occasionally crashes the guest kernel while it boots (seen:
# an int3 Oops in sched_clock_cpu during early initcalls, i.e. code patching racing the
# emulator's translation cache) - before the initramfs' /init printed its marker
# "@@ublkvol-vm-init token=TOKEN@@", so before anything of the bed or the test ran. Such a
# boot is retried once (after running BEFORE_RETRY, e.g. to recreate a disk overlay); the
# failed attempt's console stays in LOG.boot1. A crash after /init started, a timeout
# (status 124/137) or a clean failure is never retried.
ublkvol_vm_boot() {
  local log="$1" token="$2" header_lines="$3" before_retry="${4:-}"
  _ublkvol_vm_boot_once "$log" "$header_lines"
  if ! tr -d '\r' <"$log" | grep -q "@@ublkvol-vm-init token=$token@@" &&
    [[ $qemu_status != 124 && $qemu_status != 137 ]] && grep -qE 'Kernel panic|Oops:' "$log"; then
    echo "run.sh: the guest kernel crashed while booting, before /init ran (emulator fault: $(tr -d '\r' <"$log" | grep -m1 -E 'Kernel panic|Oops:')); booting again, first attempt's console in $log.boot1" >&2
    mv -f "$log" "$log.boot1"
    head -n "$header_lines" "$log.boot1" >"$log"
    if [[ -n "$before_retry" ]]; then "$before_retry"; fi
    _ublkvol_vm_boot_once "$log" "$header_lines"
  fi
}

_ublkvol_vm_boot_once() {
  local log="$1" header_lines="$2" boot_started=$SECONDS tail_pid
  # timeout(1) runs QEMU in its own process group and SIGKILLs it 5 s after SIGTERM if it
  # does not exit; the caller's trap also stops it if the runner is interrupted.
  # shellcheck disable=SC2154  # timeout_s, qemu, qemu_args: set by the runner
  timeout -k 5 "$timeout_s" "$qemu" "${qemu_args[@]}" </dev/null >>"$log" 2>&1 &
  qemu_pid=$!
  # Stream the console while QEMU runs (tail stops when QEMU's timeout wrapper exits).
  tail -n "+$((header_lines + 1))" -s 0.2 --pid="$qemu_pid" -f "$log" &
  tail_pid=$!
  set +e
  wait "$qemu_pid"
  qemu_status=$?
  set -e
  qemu_pid=""
  wait "$tail_pid" 2>/dev/null || true
  elapsed=$((SECONDS - boot_started))
}

# This machine's Debian mirror: UBLKVOL_VM_MIRROR, else the first non-security URIs line
# of the deb822 sources, else the first such 'deb' line of sources.list, else
# deb.debian.org.
ublkvol_vm_find_mirror() {
  local line uri u f
  if [[ -n "${UBLKVOL_VM_MIRROR:-}" ]]; then
    echo "$UBLKVOL_VM_MIRROR"; return
  fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    while read -r line; do
      uri="${line#URIs:}"
      for u in $uri; do
        [[ "$u" == *security* ]] && continue
        [[ "$u" == http*://* ]] && { echo "$u"; return; }
      done
    done < <(grep -E '^URIs:' "$f")
  done
  if [[ -r /etc/apt/sources.list ]]; then
    uri="$(awk '$1 == "deb" && $2 !~ /security/ && $2 ~ /^http/ { print $2; exit }' \
      /etc/apt/sources.list)"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  fi
  echo "http://deb.debian.org/debian"
}

# ublkvol_vm_kernel_apt_update APT_DIR MIRROR LOG
# A PRIVATE apt state (lists, cache, status, sources) in APT_DIR for the selected kernel's
# suite at MIRROR: the system's apt state is never read for packages nor written. Fetches
# the index; its InRelease must carry a good signature from a key in the keyring
# (UBLKVOL_VM_KEYRING, default Debian's archive keyring), or this dies. Sets
# ublkvol_vm_apt_opts for apt-get/apt-cache calls on that state.
ublkvol_vm_kernel_apt_update() {
  local apt_dir="$1" mirror="$2" log="$3" suite="$UBLKVOL_VM_KERNEL_SUITE"
  local keyring="${UBLKVOL_VM_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
  [[ -r "$keyring" ]] ||
    ublkvol_vm_die "$keyring missing: install debian-archive-keyring (it holds the key signing $suite)"
  mkdir -p "$apt_dir"/lists/partial "$apt_dir"/cache/archives/partial
  : >"$apt_dir/status"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$suite" "$keyring" >"$apt_dir/kernel.sources"
  # apt drops root privileges to _apt for downloads; let it write our private lists.
  if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
    chmod 755 "$apt_dir" "$(dirname "$apt_dir")"
    chown -R _apt "$apt_dir/lists"
  fi
  ublkvol_vm_apt_opts=(
    -o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::SourceList=$apt_dir/kernel.sources" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Architectures::=amd64" -o "Acquire::Languages=none" -o "Acquire::Retries=2"
  )
  # Any warning fails, except apt's note that it downloads as root because _apt cannot
  # reach a directory under a private home (the systemd image builds under ~/.cache).
  if ! apt-get "${ublkvol_vm_apt_opts[@]}" update >"$log" 2>&1 ||
     grep -E '^(W|E|Err):' "$log" | grep -qv 'Download is performed unsandboxed as root'; then
    cat "$log" >&2
    if grep -qiE 'NO_PUBKEY|not signed|signature|EXPKEYSIG|BADSIG' "$log"; then
      ublkvol_vm_die "the $suite index from $mirror failed signature verification" \
        "against $keyring (update debian-archive-keyring?). Refusing to continue unverified."
    fi
    ublkvol_vm_die "cannot fetch the $suite index from mirror $mirror" \
      "(unreachable? set UBLKVOL_VM_MIRROR=http://.../debian to use another one)"
  fi
  ls "$apt_dir"/lists/*_dists_"${suite}"_InRelease >/dev/null 2>&1 ||
    ublkvol_vm_die "no signed InRelease for $suite from $mirror"
}

# ublkvol_vm_kernel_download ENTRY DEST_DIR LOG
# Downloads one pinned .deb (ENTRY: "package=version sha256" from UBLKVOL_VM_KERNEL_DEBS)
# into DEST_DIR with the state of ublkvol_vm_kernel_apt_update (apt checks it against the
# signed index) and checks it against the pinned sha256. Prints the .deb's path.
ublkvol_vm_kernel_download() {
  local entry="$1" dest="$2" log="$3" pkgver sha pkg newest deb
  pkgver="${entry%% *}" sha="${entry##* }" pkg="${entry%%=*}"
  mkdir -p "$dest"
  if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$dest"; fi
  if ! (cd "$dest" && apt-get "${ublkvol_vm_apt_opts[@]}" download "$pkgver") >"$log" 2>&1; then
    cat "$log" >&2
    newest="$(apt-cache "${ublkvol_vm_apt_opts[@]}" pkgnames "${UBLKVOL_VM_KERNEL_CANDIDATES[0]}" |
      grep -E "${UBLKVOL_VM_KERNEL_CANDIDATES[1]}" | sort -V | tail -n1 || true)"
    ublkvol_vm_die "the pinned VM kernel package $pkgver is not in $UBLKVOL_VM_KERNEL_SUITE" \
      "at this mirror (superseded?): pin a current one in scripts/vm/lib.sh" \
      "(ublkvol_vm_select_kernel $UBLKVOL_VM_KERNEL; newest candidate: ${newest:-none})"
  fi
  deb="$(ls "$dest/${pkg}_"*.deb)"
  [[ "$(sha256sum "$deb" | cut -d' ' -f1)" == "$sha" ]] ||
    ublkvol_vm_die "$pkgver: the downloaded .deb's sha256 is not the one pinned in" \
      "scripts/vm/lib.sh ($sha): refusing it"
  echo "$deb"
}
