#!/usr/bin/env bash
# Builds the arm64 and armhf packages and checks them: metadata, file lists, conffiles,
# maintainer scripts (shellcheck), the systemd unit (systemd-analyze verify), and the
# arm64 binary from the package run under qemu: --version, check-config on the shipped
# config, and init --board rpi4 into a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "error: $*" >&2; exit 1; }

echo "== shellcheck maintainer scripts"
shellcheck -s sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm
shellcheck scripts/*.sh .ci/run

arm64_deb=
for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  deb=$(scripts/package.sh "$target" | tail -n 1)
  [ "$target" = aarch64-unknown-linux-gnu ] && arm64_deb=$deb
  echo "== $deb"
  info=$(dpkg-deb -I "$deb")
  want_arch=arm64; [ "$target" = armv7-unknown-linux-gnueabihf ] && want_arch=armhf
  grep -q "^ Architecture: $want_arch\$" <<<"$info" || fail "$deb: architecture is not $want_arch"
  grep -q "^ Package: ddc-edge\$" <<<"$info" || fail "$deb: package name"
  grep -q "^ Depends: libc6 (>= 2\.[0-9]*), adduser\$" <<<"$info" || fail "$deb: depends"
  [ "$(dpkg-deb -f "$deb" Version)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ] || fail "$deb: version"
  files=$(dpkg-deb -c "$deb")
  for f in ./usr/bin/ddc-edge ./etc/ddc-edge/config.toml ./lib/systemd/system/ddc-edge.service \
           ./usr/lib/sysctl.d/60-ddc-edge.conf ./usr/share/doc/ddc-edge/copyright ./usr/share/doc/ddc-edge/docs/deploy.md \
           ./usr/share/man/man1/ddc-edge.1.gz ./usr/share/bash-completion/completions/ddc-edge \
           ./usr/share/zsh/vendor-completions/_ddc-edge ./usr/share/fish/vendor_completions.d/ddc-edge.fish \
           ./usr/share/doc/ddc-edge/examples/grafana-dashboard.json; do
    grep -q " $f\$" <<<"$files" || fail "$deb lacks $f"
  done
  grep -q 'root/root .* ./usr/bin/ddc-edge$' <<<"$files" || fail "$deb: files must be owned by root"
  ctl=$(mktemp -d)
  dpkg-deb -e "$deb" "$ctl"
  [ "$(cat "$ctl/conffiles")" = /etc/ddc-edge/config.toml ] || fail "$deb: conffiles"
  for s in postinst prerm postrm; do
    [ -x "$ctl/$s" ] || fail "$deb: $s is missing or not executable"
  done
  rm -rf "$ctl"
  echo "   $(grep -E '^ (Architecture|Version|Installed-Size|Depends):' <<<"$info" | tr -s ' ' | tr '\n' ';')"
done

echo "== the arm64 package, extracted and run under qemu"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$arm64_deb" "$root"
run() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$root/usr/bin/ddc-edge" "$@"; }
v=$(run --version)
[[ $v == "ddc-edge "* ]] || fail "--version said: $v"
echo "   $v"
run check-config --config "$root/etc/ddc-edge/config.toml"
run init --board rpi4 --out "$root/tmp-init/config.toml"
run check-config --config "$root/tmp-init/config.toml"
run init --board rpi4 --out "$root/tmp-init/config.toml" 2>&1 | grep -q "nothing to do" || fail "init is not idempotent"
grep -q '^open_writes = false' "$root/etc/ddc-edge/config.toml" || fail "the shipped config must be closed for writes"
bash -n "$root/usr/share/bash-completion/completions/ddc-edge" || fail "the bash completions do not parse"
grep -q ' ctl ' "$root/usr/share/bash-completion/completions/ddc-edge" || fail "the bash completions lack ctl"
[ -f "$root/usr/share/man/man1/ddc-edge-ctl.1.gz" ] || fail "no man page for ddc-edge ctl"
for page in "$root"/usr/share/man/man1/ddc-edge*.1.gz; do
  warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1) || fail "$page does not render"
  [ -z "$warnings" ] || fail "$page renders with warnings: $warnings"
done

echo "== systemd-analyze verify"
# The unit as shipped, with ExecStart pointed at the extracted binary (verify checks that
# the command exists and is executable; the host has no /usr/bin/ddc-edge).
unit_dir=$(mktemp -d)
sed "s|^ExecStart=/usr/bin/ddc-edge|ExecStart=$root/usr/bin/ddc-edge|" "$root/lib/systemd/system/ddc-edge.service" > "$unit_dir/ddc-edge.service"
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$unit_dir/ddc-edge.service"
rm -rf "$unit_dir"
echo "== package checks passed"
