#!/bin/sh
# Runs as root in the booted guest, from the test disk, started by systest.service
# (scripts/system-test.sh builds the disk). Prints SYSTEST lines on the console; the last
# is "SYSTEST DONE <status>". Talks to the host's mosquitto at 10.0.2.2.
set -u
T=/mnt/t
# shellcheck source=/dev/null
. "$T/env"
export DEBIAN_FRONTEND=noninteractive
started=$(date +%s)

done_() {
  echo "SYSTEST DONE $1"
  sync
  systemctl poweroff --no-block
  exit "$1"
}
fail() {
  echo "SYSTEST FAIL $*"
  journalctl -u ddc-edge --no-pager -n 60 -o short-monotonic
  done_ 1
}
pass() { echo "SYSTEST PASS $* (t+$(( $(date +%s) - started )) s)"; }
# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds.
wait_for() {
  n=$1 what=$2
  shift 2
  i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -ge "$n" ] && fail "$what: not within $n s"
    sleep 1
  done
}
# Retained, so neither side can miss the other's message.
tell_host() { mosquitto_pub -h 10.0.2.2 -p "$PORT" -r -q 1 -t "systest/guest/$1" -m "$2"; }
host_says() { mosquitto_sub -h 10.0.2.2 -p "$PORT" -t "systest/host/$1" -C 1 -W "$2" >/dev/null; }
main_pid() { systemctl show -p MainPID --value ddc-edge; }

echo "SYSTEST START $(uname -m) $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
wait_for 120 "the host's broker reachable at 10.0.2.2:$PORT" mosquitto_pub -h 10.0.2.2 -p "$PORT" -t systest/hello -m up

apt-get install -y -q "$T/a.deb" > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get install ./a.deb"; }
pass "apt-get install ./ddc-edge_$(dpkg-query -W -f '${Version}_${Architecture}' ddc-edge).deb"
getent passwd ddc-edge >/dev/null || fail "no ddc-edge system user"

# First-boot provisioning, as docs/deploy.md pre-seeds a card: the board profile, then
# the broker (and here the host's key, as operator and as writer).
ddc-edge init --board rpi4 --out /etc/ddc-edge/config.toml --force || fail "ddc-edge init --board rpi4"
sed -i "s|^broker = .*|broker = \"mqtt://10.0.2.2:$PORT\"|" /etc/ddc-edge/config.toml
sed -i "s|^operators = .*|operators = [\"$OPERATOR\"]|" /etc/ddc-edge/config.toml
sed -i "s|^allowed_writers = .*|allowed_writers = [\"$OPERATOR\"]|" /etc/ddc-edge/config.toml
systemctl restart ddc-edge
wait_for 240 "ddc-edge.service active" systemctl is-active --quiet ddc-edge
pass "ddc-edge.service active (running): Type=notify, READY=1 received"
id=$(ddc-edge id --data-dir /var/lib/ddc-edge) || fail "ddc-edge id"
tell_host active "active $id"
host_says checked 600 || fail "the host never confirmed health, discovery, a command and a file"
pass "the host got health and discovery, a command reply, and stored and read a file"

# The host stored a file here over WebRTC and read it back: the sandbox let the agent
# bind its UDP sockets and write its store. No thermal zone is "unknown", not an error
# loop.
chunks=$(find /var/lib/ddc-edge -path '*/chunks/*' -type f | wc -l)
[ "$chunks" -gt 0 ] || fail "no chunk in the store after the host's put"
[ "$(find /var/lib/ddc-edge -path '*/chunks/*' -type f ! -user ddc-edge | wc -l)" -eq 0 ] \
  || fail "chunks not owned by ddc-edge"
errors=$(journalctl -u ddc-edge -o cat | grep -c ' ERROR ' || true)
[ "$errors" -eq 0 ] || fail "$errors ERROR lines in the agent's journal"
journalctl -u ddc-edge -o cat | grep -m 1 'sensor sources' | sed 's/^/SYSTEST INFO /'
pass "$chunks chunks stored by the sandboxed agent, sensors read without errors"

if [ "$MODE" = quick ]; then
  done_ 0
fi

# The watchdog: a stopped agent pets nothing; systemd kills and restarts it.
pid=$(main_pid)
t=$(date +%s)
kill -STOP "$pid"
wait_for 150 "a restart after SIGSTOP (WatchdogSec=60, RestartSec=10)" \
  sh -c "[ \"\$(systemctl show -p MainPID --value ddc-edge)\" != $pid ] && [ \"\$(systemctl show -p MainPID --value ddc-edge)\" != 0 ]"
took=$(( $(date +%s) - t ))
journalctl -u ddc-edge -o cat | grep -q 'Watchdog timeout' || fail "restarted, but not by the watchdog"
wait_for 240 "active again after the watchdog" systemctl is-active --quiet ddc-edge
pass "the watchdog restarted a SIGSTOPped agent after $took s"

# Upgrade over an edited conffile: the edit and the data stay, the service restarts once.
echo "# edited on this device" >> /etc/ddc-edge/config.toml
conf=$(md5sum < /etc/ddc-edge/config.toml)
key=$(md5sum < /var/lib/ddc-edge/node.key)
data=$(find /var/lib/ddc-edge -path '*/chunks/*' -type f -exec md5sum {} + | sort | md5sum)
before=$(systemctl show -p InvocationID --value ddc-edge)
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
apt-get install -y -q -o Dpkg::Options::=--force-confold "$T/b.deb" > /tmp/apt.log 2>&1 \
  || { cat /tmp/apt.log; fail "apt-get install ./b.deb (the upgrade)"; }
[ "$(dpkg-query -W -f '${Version}' ddc-edge)" = "$VERSION_B" ] || fail "not upgraded to $VERSION_B"
[ "$(md5sum < /etc/ddc-edge/config.toml)" = "$conf" ] || fail "the edited conffile was replaced"
[ "$(md5sum < /var/lib/ddc-edge/node.key)" = "$key" ] || fail "the node key changed"
[ "$(find /var/lib/ddc-edge -path '*/chunks/*' -type f -exec md5sum {} + | sort | md5sum)" = "$data" ] \
  || fail "the stored chunks changed"
wait_for 240 "active after the upgrade" systemctl is-active --quiet ddc-edge
[ "$(systemctl show -p InvocationID --value ddc-edge)" != "$before" ] || fail "not restarted by the upgrade"
starts=$(journalctl -u ddc-edge --since "$since" -o cat | grep -c '^Started ddc-edge' || true)
[ "$starts" -eq 1 ] || fail "started $starts times by the upgrade, not once"
pass "upgraded to $VERSION_B: conffile edit and data kept, one restart"

apt-get remove -y -q ddc-edge > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get remove"; }
systemctl is-active --quiet ddc-edge && fail "still running after remove"
[ -f /etc/ddc-edge/config.toml ] || fail "remove deleted the config"
[ -f /var/lib/ddc-edge/node.key ] || fail "remove deleted the data"
pass "apt-get remove: stopped, config and data kept"
apt-get purge -y -q ddc-edge > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get purge"; }
[ -e /etc/ddc-edge ] && fail "purge left /etc/ddc-edge"
[ -e /var/lib/ddc-edge ] && fail "purge left /var/lib/ddc-edge"
getent passwd ddc-edge >/dev/null && fail "purge left the ddc-edge user"
pass "apt-get purge: config, data and the system user gone"
done_ 0
