#!/usr/bin/env bash
# The system test (docs/deploy.md, "Verified"): the arm64 .deb installed on a booted
# Debian bookworm under full-system emulation, run by systemd, then upgraded, removed and
# purged, while a mosquitto on this host checks what the node publishes and answers.
#
#   scripts/system-test.sh            # everything, and a -M raspi3b boot that reads its
#                                     # thermal sensor (about 7 minutes, cached image)
#   scripts/system-test.sh --quick    # boot, install, active, health, a command
#   scripts/system-test.sh --raspi    # only the -M raspi3b boot and its sensor check
#
# The machine is qemu-system-aarch64 -M virt (TCG, 2 vCPUs, 1 GiB) with Debian's own
# kernel. Its root filesystem is built from Debian packages and cached under
# target/system-test/ (a few minutes, once): debootstrap's first stage runs here, its
# second stage inside the emulated machine itself (this host has no binfmt_misc), booted
# through a small initramfs of busybox and the kernel's virtio and ext4 modules. Test
# runs boot the cached image with -snapshot, so it stays clean.
#
# The guest drives itself: a test disk (label "systest") carries the packages and
# guest-run.sh, which a unit in the image runs at boot. The guest reaches this host at
# 10.0.2.2 (user-mode networking); the two sides meet on the mosquitto this script starts.
# A failure prints the guest's console, which has the journal of the agent.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
arch=arm64
rust_target=aarch64-unknown-linux-gnu
cache=target/system-test/$arch
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump to rebuild cached images after changing how they are built.
image_version=4
t0=$(date +%s)
say() { echo "== system test: $*"; }
die() { echo "error: system test: $*" >&2; exit 1; }
case ${1:-} in
  "") ;;
  --quick) mode=quick ;;
  --raspi) mode=raspi ;;
  *) die "unknown option ${1}; usage: scripts/system-test.sh [--quick | --raspi]" ;;
esac

# The host tools, command:package. Installed in passes: installing one can remove
# another (on a machine with a backported qemu-utils, Debian's qemu-system-arm replaces it
# without installing its own, and qemu-img is gone), so the check runs again after each.
tools=(qemu-system-aarch64:qemu-system-arm qemu-img:qemu-utils debootstrap:debootstrap cpio:cpio
       mke2fs:e2fsprogs mosquitto:mosquitto mosquitto_sub:mosquitto-clients)
missing_tools() {
  need=()
  for c in "${tools[@]}"; do
    command -v "${c%%:*}" >/dev/null || need+=("${c##*:}")
  done
}
for pass in 1 2 3; do
  missing_tools
  ((${#need[@]})) || break
  say "installing ${need[*]} (pass $pass)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
done
missing_tools
((${#need[@]} == 0)) || die "still missing after installing: ${need[*]}"

# Boots the emulated machine until it powers off or `timeout` seconds pass.
#   boot LOG TIMEOUT INIT EXTRA_QEMU_ARGS...
boot() {
  local log=$1 timeout=$2 init=$3
  shift 3
  timeout --foreground "$timeout" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyAMA0 panic=-1 init=$init" \
    -drive if=none,id=root,file="$cache/root.img",format=raw -device virtio-blk-device,drive=root \
    -netdev user,id=net -device virtio-net-device,netdev=net \
    -display none -monitor none -serial file:"$log" -no-reboot "$@"
}

# Writes an initramfs to OUT with busybox, the kernel modules named (a name or the end of
# a path under the kernel's modules, loaded in this order) and an init that mounts the
# disk labelled ddc-root, copies in what an appended archive put under /payload, and
# switches to init= (default /sbin/init).
#   make_initrd WORK OUT MODULE...
make_initrd() {
  local work=$1 out=$2 ir m f
  shift 2
  ir=$(mktemp -d "$work/initrd.XXXX")
  mkdir -p "$ir"/{bin,dev,proc,sys,root,lib/modules}
  cp "$work/busybox/bin/busybox" "$ir/bin/"
  for m in "$@"; do
    f=$(find "$work/kernel/lib/modules" -path "*/$m.ko" | head -n 1)
    [[ -n $f ]] || die "kernel module $m not found in the kernel package"
    cp "$f" "$ir/lib/modules/"
    echo "${m##*/}" >> "$ir/lib/modules/order"
  done
  cat > "$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "initramfs: loading $m failed"
done
init=/sbin/init
for a in $(cat /proc/cmdline); do
  case $a in init=*) init=${a#init=} ;; esac
done
root=
for i in $(seq 1 100); do
  root=$(findfs LABEL=ddc-root 2>/dev/null) && break
  sleep 0.1
done
mount -t ext4 -o rw "$root" /root || { echo "initramfs: cannot mount the root disk ($root)"; exec sh; }
[ -d /payload ] && cp -a /payload/. /root/
mount --move /dev /root/dev
umount /proc /sys
exec switch_root /root "$init"
INIT
  chmod 0755 "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -9) > "$out"
  rm -rf "$ir"
}

build_image() {
  local work=$cache/build
  rm -rf "$work" && mkdir -p "$work"
  say "building the bookworm $arch root filesystem (debootstrap, first stage)"
  debootstrap --foreign --arch="$arch" --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,adduser,kmod,iproute2,mosquitto-clients,busybox-static,linux-image-arm64 \
    bookworm "$work/root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log"; die "debootstrap failed"; }
  local debs=$work/root/var/cache/apt/archives
  local kdebs=("$debs"/linux-image-[0-9]*-"$arch"_*.deb) bbdebs=("$debs"/busybox-static_*.deb)
  local kdeb=${kdebs[0]}
  dpkg-deb -x "$kdeb" "$work/kernel"
  dpkg-deb -x "${bbdebs[0]}" "$work/busybox"
  cp "$work"/kernel/boot/vmlinuz-* "$cache/vmlinuz"
  # The kernel and busybox were only wanted as files: installing the kernel in the guest
  # would build its initramfs under TCG (more than ten minutes). Its modules are copied
  # in instead (depmod runs in the second stage), so udev can load what it needs.
  local drop=" linux-image-arm64 linux-base initramfs-tools initramfs-tools-core klibc-utils libklibc busybox-static "
  local base="" pkgs
  read -ra pkgs < "$work/root/debootstrap/base"
  for p in "${pkgs[@]}"; do
    [[ $drop == *" $p "* || $p == linux-image-[0-9]* ]] || base+="$p "
  done
  echo "${base% }" > "$work/root/debootstrap/base"
  mkdir -p "$work/root/usr/lib/modules"
  cp -a "$work"/kernel/lib/modules/* "$work/root/usr/lib/modules/"

  # The Raspberry Pi 3 device tree, for the -M raspi3b boot.
  local dtb
  dtb=$(find "$work/kernel" -name bcm2837-rpi-3-b.dtb | head -n 1)
  [[ -n $dtb ]] || die "bcm2837-rpi-3-b.dtb not found in $kdeb"
  cp "$dtb" "$cache/bcm2837-rpi-3-b.dtb"

  # Two initramfs, one per machine: busybox, the modules its root disk (and network)
  # need, and an init that mounts the disk labelled ddc-root and hands over to init=
  # (default /sbin/init).
  make_initrd "$work" "$cache/initrd.gz" \
    crc16 mbcache jbd2 crc32c_generic ext4 virtio_mmio virtio_blk failover net_failover virtio_net
  make_initrd "$work" "$cache/initrd-raspi.gz" \
    crc16 mbcache jbd2 crc32c_generic ext4 sdhci sdhci-pltfm sdhci-iproc mmc/host/bcm2835

  # The second stage runs as init in the emulated machine, then configures the system
  # the tests boot: DHCP on the virtio NIC, the test runner unit, no apt timers.
  cat > "$work/root/stage2.sh" <<'STAGE2'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
if /debootstrap/debootstrap --second-stage; then
  depmod -a "$(ls /usr/lib/modules | head -n 1)"
  echo ddc-systest > /etc/hostname
  echo 'LABEL=ddc-root / ext4 defaults 0 1' > /etc/fstab
  passwd -d root
  mkdir -p /etc/systemd/network
  printf '[Match]\nName=e*\n\n[Network]\nDHCP=yes\n' > /etc/systemd/network/10-wired.network
  systemctl enable systemd-networkd.service systemd-networkd-wait-online.service
  systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null
  cat > /etc/systemd/system/systest.service <<'UNIT'
[Unit]
Description=ddc-edge system test runner (scripts/system-test.sh)
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /mnt/t && mount -o ro LABEL=systest /mnt/t && exec sh /mnt/t/guest-run.sh'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
  systemctl enable systest.service
  apt-get clean
  echo STAGE2-OK
else
  echo STAGE2-FAILED
  tail -n 40 /debootstrap/debootstrap.log
fi
sync
# A clean file system (no journal to replay), so the image can be edited offline.
mount -o remount,ro / 2>/dev/null
echo o > /proc/sysrq-trigger
sleep 60
STAGE2
  chmod 0755 "$work/root/stage2.sh"
  say "making the disk image"
  rm -f "$cache/root.img"
  mke2fs -q -t ext4 -L ddc-root -d "$work/root" "$cache/root.img" 3G
  say "second stage inside the emulated machine (several minutes under TCG)"
  local log=$cache/stage2.log
  boot "$log" 2400 /stage2.sh || true
  if ! grep -q STAGE2-OK "$log"; then
    tail -n 60 "$log"
    rm -f "$cache/root.img"
    die "the second stage did not finish (console above, all of it in $log)"
  fi
  rm -rf "$work"
  echo "$image_version" > "$cache/image-version"
}

mkdir -p "$cache"
if [[ ! -f $cache/root.img || $(cat "$cache/image-version" 2>/dev/null) != "$image_version" ]]; then
  build_image
fi
t1=$(date +%s)
say "image ready ($((t1 - t0)) s)"

# The packages: the one scripts/package.sh builds, and the same with a higher version
# for the upgrade.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
run=$cache/run
rm -rf "$run" && mkdir -p "$run/disk"
say "packages"
cp "$(scripts/package.sh "$rust_target" | tail -n 1)" "$run/disk/a.deb"
# Fails the test, with the end of the guest's console ($log).
fail() {
  echo "---- guest console (last 150 lines; all of it in $log) ----" >&2
  tail -n 150 "$log" >&2 || true
  die "$*"
}
qpid=
cleanup() {
  [[ -n $qpid ]] && kill "$qpid" 2>/dev/null
  [[ -n ${mpid:-} ]] && kill "$mpid" 2>/dev/null
  [[ -n ${spid:-} ]] && kill "$spid" 2>/dev/null
  true
}
trap cleanup EXIT

# The agent on -M virt, under systemd, talking to a mosquitto on this host.
virt_test() {
b=$(DDC_EDGE_DEB_VERSION="$version+systest" scripts/package.sh "$rust_target" | tail -n 1)
# Only the test needs this one: keep it out of target/package, which CI ships.
mv "$b" "$run/disk/b.deb"
cargo build -q --bin ddc-edge
ddc=target/debug/ddc-edge

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$run/mosquitto.conf"
mosquitto -c "$run/mosquitto.conf" > "$run/mosquitto.log" 2>&1 &
mpid=$!
for _ in $(seq 50); do mosquitto_pub -h 127.0.0.1 -p "$port" -t systest/ping -m x 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -h 127.0.0.1 -p "$port" -v -t '#' > "$run/mqtt.log" 2>&1 &
spid=$!

operator=$("$ddc" ctl --key "$run/operator.key" --public-key)
cat > "$run/disk/env" <<ENV
PORT=$port
OPERATOR=$operator
MODE=$mode
VERSION_B=$version+systest
ENV
cp scripts/system-test-guest.sh "$run/disk/guest-run.sh"
mke2fs -q -t ext4 -L systest -d "$run/disk" "$run/disk.img" 64M

log=$run/console.log
say "booting the image (console: $log)"
tb=$(date +%s)
boot "$log" 1800 /sbin/init -snapshot \
  -drive if=none,id=t,file="$run/disk.img",format=raw,readonly=on -device virtio-blk-device,drive=t &
qpid=$!

# The guest installs, provisions and starts the agent, then says so.
msg=$(mosquitto_sub -h 127.0.0.1 -p "$port" -t systest/guest/active -C 1 -W 1200) \
  || fail "the agent never became active in the guest"
id=${msg#active }
say "agent active in the guest after $(( $(date +%s) - tb )) s: node $id"
health=$(mosquitto_sub -h 127.0.0.1 -p "$port" -t "ddc/nodes/$id/health" -C 1 -W 120) \
  || fail "no health from node $id"
python3 - "$health" <<'PY' || fail "health from the guest is not what the VM has"
import json, sys
h = json.loads(sys.argv[1])
assert h["board"] == "rpi4", h["board"]
# -M virt has no thermal zone: unknown is null, not an error or a made-up value.
assert h["cpu_temp_c"] is None, h["cpu_temp_c"]
assert h["disk"]["offered_bytes"] > 0, h["disk"]
print("health:", {k: h[k] for k in ("board", "cpu_temp_c", "battery_percent", "level", "version")})
PY
mosquitto_sub -h 127.0.0.1 -p "$port" -t "homeassistant/device/ddc_$id/config" -C 1 -W 60 > /dev/null \
  || fail "no Home Assistant discovery from node $id"
say "health and Home Assistant discovery arrived"
"$ddc" ctl --broker "mqtt://127.0.0.1:$port" --key "$run/operator.key" --timeout 60s "$id" status \
  || fail "the signed status command got no good reply"
say "a signed command was answered"
head -c 3000000 /dev/urandom > "$run/file"
file_id=$("$ddc" put "$run/file" --to "$id" --key "$run/operator.key" --broker "mqtt://127.0.0.1:$port" | tail -n 1) \
  || fail "storing a file on the guest over WebRTC failed"
"$ddc" get "$file_id" --from "$id" --out "$run/file.back" --key "$run/operator.key" --broker "mqtt://127.0.0.1:$port" \
  || fail "reading the file back from the guest failed"
cmp -s "$run/file" "$run/file.back" || fail "the file read back differs"
say "a 3 MB file stored on the guest over WebRTC (through its NAT) and read back"
mosquitto_pub -h 127.0.0.1 -p "$port" -r -q 1 -t systest/host/checked -m ok

wait "$qpid" || true
qpid=
grep -a "SYSTEST" "$log" | sed 's/^/   guest: /'
grep -aq "SYSTEST DONE 0" "$log" || fail "the guest's checks failed"
}


# The same image on an emulated Raspberry Pi 3 (-M raspi3b, the SD card as root, the Pi 3
# device tree from Debian's kernel package). QEMU emulates the SoC's thermal sensor, so
# the agent's sensor path reads a real cpu-thermal zone through the kernel's
# bcm2835_thermal driver. This machine has no network without a USB NIC and no PSCI
# power-off: the check prints a line and the host stops the machine.
raspi_test() {
say "booting the image on -M raspi3b"
r=$run/raspi
mkdir -p "$r/payload/usr/local/bin" "$r/deb"
dpkg-deb -x "$run/disk/a.deb" "$r/deb"
cp "$r/deb/usr/bin/ddc-edge" "$r/payload/usr/local/bin/ddc-edge"
cat > "$r/payload/raspi-check.sh" <<'CHECK'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "RASPI model: $(tr -d '\0' < /proc/device-tree/model)"
modprobe bcm2835_thermal || echo "RASPI modprobe bcm2835_thermal failed"
for z in /sys/class/thermal/thermal_zone*; do echo "RASPI zone $z $(cat "$z/type") $(cat "$z/temp")"; done
echo "RASPI sensors: $(/usr/local/bin/ddc-edge sensors --config /dev/null --json 2>&1)"
echo RASPI-DONE
sync
sleep 600
CHECK
chmod 0755 "$r/payload/raspi-check.sh"
(cd "$r" && find payload | cpio -o -H newc --quiet | gzip -1) > "$r/payload.gz"
# The kernel unpacks concatenated archives in turn; init copies /payload into the root.
cat "$cache/initrd-raspi.gz" "$r/payload.gz" > "$r/initrd.gz"
# An SD card's size must be a power of two: a 4 GiB overlay on the cached 3 GiB image.
qemu-img create -q -f qcow2 -F raw -b "$PWD/$cache/root.img" "$r/sd.qcow2" 4G
rlog=$r/console.log
tr0=$(date +%s)
timeout --foreground 900 qemu-system-aarch64 -M raspi3b -kernel "$cache/vmlinuz" -initrd "$r/initrd.gz" \
  -dtb "$cache/bcm2837-rpi-3-b.dtb" \
  -append "console=ttyAMA0 earlycon=pl011,0x3f201000 panic=-1 init=/raspi-check.sh" \
  -drive file="$r/sd.qcow2",if=sd,format=qcow2 \
  -display none -monitor none -serial file:"$rlog" -no-reboot &
qpid=$!
while kill -0 "$qpid" 2>/dev/null && ! grep -aq -e RASPI-DONE -e "Kernel panic" "$rlog" 2>/dev/null; do
  sleep 1
done
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true
qpid=
log=$rlog
grep -aq RASPI-DONE "$rlog" || fail "the raspi3b boot did not reach the check"
grep -a "^RASPI" "$rlog" | sed 's/^/   raspi3b: /'
python3 - "$(grep -a '^RASPI sensors: ' "$rlog" | sed 's/^RASPI sensors: //')" <<'PY' \
  || fail "the agent did not read the raspi3b's cpu-thermal zone"
import json, sys
s = json.loads(sys.argv[1])
assert "cpu-thermal" in s["sources"]["cpu_temp"], s["sources"]
t = s["cpu_temp_c"]
assert t is not None and 0 < t < 100, t
assert s["level"] == "full", s["level"]
PY
say "raspi3b: the agent read cpu-thermal $(( $(date +%s) - tr0 )) s after power-on"
}

t2=$t1
if [[ $mode != raspi ]]; then
  virt_test
  t2=$(date +%s)
  say "-M virt ($mode) passed in $((t2 - t1)) s"
fi
t3=$t2
if [[ $mode != quick ]]; then
  raspi_test
  t3=$(date +%s)
  say "-M raspi3b passed in $((t3 - t2)) s"
fi
say "passed ($mode): image $((t1 - t0)) s, -M virt $((t2 - t1)) s, -M raspi3b $((t3 - t2)) s, total $((t3 - t0)) s"
