#!/bin/bash
# The systemd bed's test runner, shipped on each run's payload disk (/opt/test/bed) and
# started by ublkvol-bed.service (via /usr/local/sbin/ublkvol-bed-boot, which mounted the
# payload) once multi-user.target is reached.
#
# Installs the payload's overlay/ onto / (libraries the image lacks, files for /etc, ...),
# loads ublk_drv, runs /opt/test/test.sh with bash in /tmp as root, prints the exit
# marker run.sh looks for and powers the VM off (a clean systemd shutdown):
#   @@ublkvol-vm-exit token=<token> stage=<setup|test> status=<N>@@
export PATH=/opt/test/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp

# shellcheck disable=SC1091  # written by run.sh onto the payload
. /opt/test/env

finish() {
  echo
  echo "@@ublkvol-vm-exit token=$UBLKVOL_VM_TOKEN stage=$1 status=$2@@"
  sync
  # The test has checked whatever stop behaviour it cares about; power off without
  # stopping every unit (processes are killed, file systems unmounted): saves ~15 s of TCG.
  systemctl poweroff --force || poweroff --force --force
  exit 0
}

setup_failed() {
  echo "bed: error: $*"
  finish setup 125
}

if [[ -d /opt/test/overlay ]] && [[ -n "$(ls -A /opt/test/overlay)" ]]; then
  cp -a /opt/test/overlay/. / || setup_failed "cannot install the payload overlay onto /"
  ldconfig || setup_failed "ldconfig failed"
fi
modprobe ublk_drv || setup_failed "cannot load ublk_drv (modprobe)"
[[ -c /dev/ublk-control ]] || setup_failed "ublk_drv loaded but /dev/ublk-control is missing"
failed_units="$(systemctl list-units --failed --no-legend --plain 2>/dev/null)"

export UBLKVOL_IN_VM=1 UBLKVOL_VM_SYSTEMD=1
cd /tmp || setup_failed "cd /tmp"
read -r uptime_s _ </proc/uptime
echo "bed: kernel $(uname -r), systemd $(systemctl --version | awk 'NR == 1 { print $2 }'), $(nproc) CPUs," \
  "booted in ${uptime_s}s; running the test"
[[ -z "$failed_units" ]] || echo "bed: note: units that failed during boot: $failed_units"
bash /opt/test/test.sh </dev/null
status=$?
read -r end_s _ </proc/uptime
echo "bed: test exited with status $status (guest time ${uptime_s}s -> ${end_s}s)"
finish test "$status"
