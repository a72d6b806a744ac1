#!/usr/bin/env bash
# Builds the Debian package from a configured and built tree into a temporary
# directory and checks it: files and their modes, Depends (from
# dpkg-shlibdeps), conffiles, maintainer scripts, the unit's paths and
# directives, and that the packaged CLI and completion run.
# Usage: package_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
source_dir="$(cd "$2" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-package-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

(cd "$work" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/out" >"$work/cpack.log" 2>&1) ||
  { cat "$work/cpack.log"; fail "cpack -G DEB failed"; }
shopt -s nullglob
debs=("$work"/out/ublk-volumed_*_amd64.deb "$work"/out/ublk-volumed_*.deb)
[[ ${#debs[@]} -ge 1 ]] || fail "no ublk-volumed_*.deb in $work/out: $(ls "$work/out")"
deb="${debs[0]}"
echo "package: $(basename "$deb")"

dpkg-deb -I "$deb" >"$work/info"
dpkg-deb -c "$deb" >"$work/contents"
cat "$work/info"
sed 's/^/  /' "$work/contents"

field() { dpkg-deb -f "$deb" "$1"; }
[[ "$(field Package)" == ublk-volumed ]] || fail "Package is '$(field Package)'"
[[ "$(field Architecture)" == amd64 ]] || fail "Architecture is '$(field Architecture)'"
depends="$(field Depends)"
for dep in libc6 libstdc++6 liburing2 kmod; do
  [[ ", $depends," == *", $dep"[\ ,]* ]] || fail "Depends lacks $dep: $depends"
done
[[ "$(field Recommends)" == *systemd* ]] || fail "Recommends lacks systemd"
[[ "$(field Description)" != *";"* ]] || fail "Description has list separators: $(field Description)"
# Stripped binaries (the Release build keeps -g): a sanity bound on the size.
[[ "$(field Installed-Size)" -lt 20000 ]] || fail "Installed-Size $(field Installed-Size) KiB: binaries not stripped?"

expect_file() {  # path mode
  local line
  line="$(grep -E " \./${1#/}\$" "$work/contents" || true)"
  [[ -n "$line" ]] || fail "$1 is not in the package"
  [[ "$line" == "$2"* ]] || fail "$1 has mode ${line%% *}, want $2"
}
expect_file /usr/bin/ublk-volumed -rwxr-xr-x
expect_file /usr/bin/ublk-volume -rwxr-xr-x
expect_file /usr/lib/systemd/system/ublk-volumed.service -rw-r--r--
expect_file /usr/lib/modules-load.d/ublk-volumed.conf -rw-r--r--
expect_file /usr/lib/sysusers.d/ublk-volumed.conf -rw-r--r--
expect_file /usr/share/bash-completion/completions/ublk-volume -rw-r--r--
expect_file /etc/ublk-volumed/config.json -rw-r--r--
expect_file /usr/share/doc/ublk-volumed/copyright -rw-r--r--
# Nothing outside the expected trees (no build paths, no test binaries).
bad="$(awk '{print $6}' "$work/contents" | grep -vE '^\./(usr/bin|usr/lib/systemd|usr/lib/modules-load\.d|usr/lib/sysusers\.d|usr/share/bash-completion|usr/share/doc/ublk-volumed|etc/ublk-volumed|usr/?$|usr/lib/?$|usr/share/?$|usr/share/doc/?$|etc/?$|$)' || true)"
[[ -z "$bad" ]] || fail "unexpected paths in the package: $bad"

mkdir "$work/control" "$work/root"
dpkg-deb -e "$deb" "$work/control"
dpkg-deb -x "$deb" "$work/root"
grep -qx /etc/ublk-volumed/config.json "$work/control/conffiles" || fail "config.json is not a conffile"
for script in postinst prerm postrm; do
  [[ -x "$work/control/$script" ]] || fail "maintainer script $script missing or not executable"
  sh -n "$work/control/$script" || fail "$script is not valid sh"
done

unit="$work/root/usr/lib/systemd/system/ublk-volumed.service"
grep -qx 'ExecStart=/usr/bin/ublk-volumed --config /etc/ublk-volumed/config.json' "$unit" ||
  fail "unit's ExecStart does not point at /usr/bin/ublk-volumed"
for directive in Type=notify Restart=on-failure WatchdogSec=30s RuntimeDirectory=ublk-volumed \
    StateDirectory=ublk-volumed ConfigurationDirectory=ublk-volumed NoNewPrivileges=yes \
    ProtectSystem=strict ProtectHome=yes PrivateTmp=yes DevicePolicy=closed \
    'DeviceAllow=/dev/ublk-control rw' 'DeviceAllow=char-ublk-char rw' \
    'RestrictAddressFamilies=AF_UNIX AF_NETLINK' MemoryDenyWriteExecute=yes \
    LockPersonality=yes SystemCallArchitectures=native; do
  grep -qx "$directive" "$unit" || fail "unit lacks '$directive'"
done
if command -v systemd-analyze >/dev/null; then
  # Syntax and directive names (the binary path is checked above).
  analysis="$(systemd-analyze verify "$unit" 2>&1 || true)"
  echo "$analysis" | grep -vE 'Command .* is not executable|not found|ublk-volumed\.service: Failed to|Unit is bound' |
    grep -E 'Unknown|unknown|Invalid|invalid|Failed to parse' && fail "systemd-analyze verify: $analysis"
  echo "systemd-analyze verify: no unknown or invalid directives"
fi
grep -qx ublk_drv "$work/root/usr/lib/modules-load.d/ublk-volumed.conf" || fail "modules-load snippet"
grep -qx 'g ublk-volume - -' "$work/root/usr/lib/sysusers.d/ublk-volumed.conf" || fail "sysusers snippet"
# The packaged config is packaging/config.json (cli_daemon_test runs the daemon on it).
cmp "$work/root/etc/ublk-volumed/config.json" "$source_dir/packaging/config.json" ||
  fail "packaged config.json differs from packaging/config.json"

# The packaged binaries run (their libraries are what Depends names) and the
# installed completion script is the one the CLI prints.
"$work/root/usr/bin/ublk-volume" --help >/dev/null || fail "packaged ublk-volume --help failed"
"$work/root/usr/bin/ublk-volumed" --version | grep -q '^ublk-volumed ' || fail "ublk-volumed --version"
cmp <("$work/root/usr/bin/ublk-volume" completion bash) \
    "$work/root/usr/share/bash-completion/completions/ublk-volume" ||
  fail "installed completion differs from 'ublk-volume completion bash'"
echo "package_test: all checks passed"
