#!/usr/bin/env bash
# Builds the release binary for TARGET and a .deb around it, without Docker; prints the
# .deb's path on its last line.
#
#   scripts/package.sh aarch64-unknown-linux-gnu        # -> ddc-edge_<version>_arm64.deb
#   scripts/package.sh armv7-unknown-linux-gnueabihf    # -> ddc-edge_<version>_armhf.deb
#
# The package is assembled with dpkg-deb, which every Debian has, rather than cargo-deb:
# no extra tool to install, and the maintainer scripts, conffiles and the glibc
# dependency stay in plain sight (packaging/).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: scripts/package.sh TARGET (aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf)}
case "$target" in
  aarch64-unknown-linux-gnu) arch=arm64 board=rpi4 objdump=aarch64-linux-gnu-objdump qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
  armv7-unknown-linux-gnueabihf) arch=armhf board=rpi-armv7 objdump=arm-linux-gnueabihf-objdump qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
  *) echo "error: unsupported target $target" >&2; exit 2 ;;
esac
# DDC_EDGE_DEB_VERSION overrides the package version (the system test builds a higher
# one to test upgrades).
version=${DDC_EDGE_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}

bin=$(scripts/build-release.sh "$target" | tail -n 1)
stage=target/package/$arch
rm -rf "$stage"
root=$stage/root
install -D -m 0755 "$bin" "$root/usr/bin/ddc-edge"
install -D -m 0644 "boards/$board.toml" "$root/etc/ddc-edge/config.toml"
install -D -m 0644 packaging/ddc-edge.service "$root/lib/systemd/system/ddc-edge.service"
install -D -m 0644 packaging/60-ddc-edge.conf "$root/usr/lib/sysctl.d/60-ddc-edge.conf"
install -D -m 0644 packaging/debian/copyright "$root/usr/share/doc/ddc-edge/copyright"
install -D -m 0644 README.md "$root/usr/share/doc/ddc-edge/README.md"
for d in docs/*.md; do install -D -m 0644 "$d" "$root/usr/share/doc/ddc-edge/$d"; done
install -D -m 0644 packaging/mosquitto/ddc-edge.acl "$root/usr/share/doc/ddc-edge/examples/mosquitto.acl"
install -D -m 0644 packaging/grafana/ddc-edge-fleet.json "$root/usr/share/doc/ddc-edge/examples/grafana-dashboard.json"
# Shell completions and the man page, from the packaged binary itself (under qemu-user),
# so they always match the options it has.
"${qemu[@]}" "$bin" completions bash > "$stage/ddc-edge.bash"
"${qemu[@]}" "$bin" completions zsh > "$stage/_ddc-edge"
"${qemu[@]}" "$bin" completions fish > "$stage/ddc-edge.fish"
"${qemu[@]}" "$bin" man --dir "$stage/man1"
install -D -m 0644 "$stage/ddc-edge.bash" "$root/usr/share/bash-completion/completions/ddc-edge"
install -D -m 0644 "$stage/_ddc-edge" "$root/usr/share/zsh/vendor-completions/_ddc-edge"
install -D -m 0644 "$stage/ddc-edge.fish" "$root/usr/share/fish/vendor_completions.d/ddc-edge.fish"
for page in "$stage"/man1/*.1; do
  gzip -9n < "$page" > "$page.gz"
  install -D -m 0644 "$page.gz" "$root/usr/share/man/man1/$(basename "$page").gz"
done
mkdir -p "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
echo /etc/ddc-edge/config.toml > "$root/DEBIAN/conffiles"

# The newest glibc symbol version the binary needs is its real libc6 dependency.
glibc=$("$objdump" -T "$root/usr/bin/ddc-edge" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: ddc-edge
Version: $version
Architecture: $arch
Maintainer: ddc-edge developers <ddc-edge@localhost>
Installed-Size: $size
Depends: libc6 (>= ${glibc:-2.31}), adduser
Section: net
Priority: optional
Homepage: https://example.invalid/ddc-edge
Description: edge agent for a decentralized data center
 Turns a Raspberry Pi-class board into a node of a decentralized data center:
 offers spare disk (a content-addressed chunk store with a quota) and bandwidth
 over WebRTC, replicates chunks to other nodes, reports health and takes
 commands over MQTT, and throttles its background work by CPU temperature and
 battery level.
CONTROL

deb=target/package/ddc-edge_${version}_${arch}.deb
dpkg-deb --build --root-owner-group "$root" "$deb" >&2
echo "$deb"
