#!/usr/bin/env bash
# Prove the device path on the boards' architecture: an offline aarch64 bundle, installed
# and answering inside an emulated arm64 Debian (qemu-user), not part of scripts/test.sh.
#
#   scripts/test-arm64.sh            # the whole run (~10 min the first time, as root)
#   scripts/test-arm64.sh --prepare  # only the tools and the cached arm64 root
#
# Steps:
#   1. qemu-user-static, binfmt-support and debootstrap from apt when missing; the
#      binfmt handler for aarch64 registered (binfmt_misc mounted when it is not)
#   2. a minimal bookworm arm64 root, built once per user and cached under
#      ${XDG_CACHE_HOME:-~/.cache}/edge-slm/arm64-root/<recipe key>; a copy of it is used
#      per run, so the cache stays clean
#   3. `edge-agent bundle --arch aarch64` of the default model and the skills' embedder
#      (wheels downloaded on the host: pip in the chroot does not trust this host's
#      proxy CA, and a device may have no network at all)
#   4. `install-device.sh --bundle ... --no-systemd --no-apt` inside the root, twice (the
#      second run must change nothing)
#   5. the installed agent started in the root (/proc and /sys mounted for it: onnxruntime
#      needs procfs to load external data; the host's CPU list in /sys is masked, see
#      below) against a mosquitto on the host's loopback
#   6. from the host with the stock mosquitto_rr: a classify (label and confidence), an
#      answer, an extract with a schema (constrained decoding: the object must have exactly
#      the schema's fields and types) and a bad request (a typed error); the retained
#      status must say aarch64
#      and provider cpu
#   7. SIGTERM: the agent drains and leaves an `offline` status; its peak RSS (VmHWM of
#      the qemu process, which overstates the guest's own) against the Pi profile's
#      MemoryMax
# Mounts, the broker and the agent are undone on any exit (trap), success or failure;
# EDGE_SLM_KEEP_WORK=1 keeps the scratch folder (root copy, logs) for a post-mortem.
#
# Emulated timings prove that it works, never how fast a board is (BENCHMARKS.md).
set -euo pipefail

readonly SELF="test-arm64"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
# Bump when the root's recipe (suite, variant, packages) changes: a new cache key.
readonly ROOT_RECIPE=1
readonly SUITE=bookworm
readonly ROOT_PACKAGES="python3,python3-venv,ca-certificates"
readonly ROOT_KEY="$SUITE-arm64-minbase-r$ROOT_RECIPE"
readonly CACHE_BASE="${XDG_CACHE_HOME:-$HOME/.cache}/edge-slm"
readonly ROOT_CACHE="$CACHE_BASE/arm64-root/$ROOT_KEY"
readonly MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly PROFILE=rpi4-2gb
readonly MODEL=smollm2-135m-instruct
readonly EMBEDDER=minilm-l6-v2-int8
readonly DEVICE_ID=arm64-emu
readonly NICE=(nice -n 15)

PREPARE_ONLY=0
for arg in "$@"; do
	case $arg in
	--prepare) PREPARE_ONLY=1 ;;
	-h | --help)
		sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		printf '%s: unknown argument %s\n' "$SELF" "$arg" >&2
		exit 2
		;;
	esac
done

say() { printf '%s: %s\n' "$SELF" "$*"; }
die() {
	printf '%s: FAIL: %s\n' "$SELF" "$*" >&2
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, mounts)"
[[ $(uname -m) == x86_64 || $(uname -m) == aarch64 ]] || die "unsupported host $(uname -m)"
T_ALL=$(now)

# --- cleanup: everything started or mounted is undone on any exit ----------------

WORK=""
ROOT=""
MOUNTS=()
BROKER_PID=""
AGENT_PID=""
cleanup() {
	local rc=$?
	set +e
	if [[ -n $AGENT_PID ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
		kill -KILL "$AGENT_PID" 2>/dev/null
		wait "$AGENT_PID" 2>/dev/null
	fi
	if [[ -n $BROKER_PID ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
		kill "$BROKER_PID" 2>/dev/null
		wait "$BROKER_PID" 2>/dev/null
	fi
	local i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null
	done
	if [[ -n $WORK && ${EDGE_SLM_KEEP_WORK:-0} == 1 ]]; then
		printf '%s: kept %s (EDGE_SLM_KEEP_WORK=1)\n' "$SELF" "$WORK" >&2
	elif [[ -n $WORK ]]; then
		# Never delete through a mount that failed to go away.
		if grep -q " $WORK/" /proc/mounts; then
			printf '%s: left %s in place: something is still mounted under it\n' "$SELF" "$WORK" >&2
		else
			rm -rf "$WORK"
		fi
	fi
	if [[ $rc -ne 0 ]]; then
		printf '%s: FAILED (exit %s) after %ss\n' "$SELF" "$rc" "$(since "$T_ALL")" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_in() {
	# mount_in TYPE DIR: mount a pseudo filesystem for the time of the run
	mkdir -p "$2"
	mount -t "$1" "$1" "$2"
	MOUNTS+=("$2")
}

# --- 1. tools -------------------------------------------------------------------

missing=()
command -v qemu-aarch64-static >/dev/null 2>&1 || [[ $(uname -m) == aarch64 ]] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v mosquitto_rr >/dev/null 2>&1 || missing+=(mosquitto-clients)
if [[ ${#missing[@]} -gt 0 ]]; then
	say "installing ${missing[*]} (apt)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
else
	say "qemu-user-static, binfmt-support, debootstrap, mosquitto: installed"
fi

if [[ $(uname -m) != aarch64 ]]; then
	if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
		# Kernel-wide and harmless to leave: it is what binfmt-support does at boot.
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
		say "mounted binfmt_misc"
	fi
	if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
		update-binfmts --enable qemu-aarch64
		say "registered the qemu-aarch64 binfmt handler"
	fi
	# F (fix binary): the kernel opens the interpreter now, so it works inside a chroot
	# that has no qemu of its own.
	grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
		die "the qemu-aarch64 binfmt handler lacks the F flag; chroots cannot use it"
fi

# --- 2. the cached arm64 root ---------------------------------------------------

if [[ -f $ROOT_CACHE/.edge-slm-root ]]; then
	say "arm64 root: cached ($ROOT_CACHE)"
else
	t=$(now)
	mkdir -p "$(dirname "$ROOT_CACHE")"
	staging=$(mktemp -d "$ROOT_CACHE.staging-XXXX")
	say "arm64 root: debootstrap $SUITE arm64 minbase into $staging (about 4 minutes)"
	if ! "${NICE[@]}" debootstrap --arch=arm64 --variant=minbase --include="$ROOT_PACKAGES" \
		"$SUITE" "$staging" "$MIRROR" >"$staging.log" 2>&1; then
		tail -n 20 "$staging.log" >&2
		rm -rf "$staging"
		die "debootstrap failed (log above)"
	fi
	rm -f "$staging.log"
	chroot "$staging" apt-get clean
	printf 'recipe %s: debootstrap --arch=arm64 --variant=minbase --include=%s %s\n' \
		"$ROOT_RECIPE" "$ROOT_PACKAGES" "$SUITE" >"$staging/.edge-slm-root"
	rm -rf "$ROOT_CACHE"
	mv "$staging" "$ROOT_CACHE"
	say "arm64 root: built in $(since "$t")s"
fi
[[ $(chroot "$ROOT_CACHE" uname -m) == aarch64 ]] || die "the root does not run as aarch64"
say "arm64 root: $(chroot "$ROOT_CACHE" python3 -c 'import platform; print(platform.machine(), "Python", platform.python_version())')"

if [[ $PREPARE_ONLY -eq 1 ]]; then
	say "prepared in $(since "$T_ALL")s"
	exit 0
fi

# --- 3. the aarch64 bundle, made on the host ------------------------------------

WORK=$(mktemp -d -p "${TMPDIR:-/var/tmp}" edge-slm-arm64.XXXXXX)
MODELS=${EDGE_SLM_MODELS:-$CACHE_BASE/models}
for m in "$MODEL" "$EMBEDDER"; do
	[[ -f $MODELS/$m/manifest.json ]] || die "model $m is not in $MODELS: run scripts/bootstrap.sh first"
done
t=$(now)
if [[ -x $REPO/.venv/bin/edge-agent ]]; then
	HOST_PY=$REPO/.venv/bin/python
else
	# A fresh clone: a lean venv with the base install (the bundle needs no build extra).
	say "host venv: base install of this checkout into $WORK/venv"
	python3 -m venv "$WORK/venv"
	"${NICE[@]}" "$WORK/venv/bin/pip" install -q --disable-pip-version-check 'setuptools>=77' wheel
	"${NICE[@]}" "$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation -e "$REPO"
	HOST_PY=$WORK/venv/bin/python
fi
BUNDLE=$WORK/edge-slm-bundle-$PROFILE-aarch64.tar
"${NICE[@]}" "$HOST_PY" -m agent.cli bundle --arch aarch64 --python 3.11 --profile "$PROFILE" \
	--model "$MODEL" --model "$EMBEDDER" --cache-dir "$MODELS" --project "$REPO" -o "$BUNDLE" |
	sed "s/^/$SELF: bundle: /"
T_BUNDLE=$(since "$t")
say "bundle: made in ${T_BUNDLE}s"

# --- 4. installed inside a copy of the root --------------------------------------

ROOT=$WORK/root
cp -a "$ROOT_CACHE" "$ROOT"
mount_in proc "$ROOT/proc"
mount_in sysfs "$ROOT/sys"
# qemu-user shows the guest the host's sysfs, so /sys/devices/system/cpu describes x86
# cores; onnxruntime's cpuinfo reads it as an Arm topology and segfaults when the library
# loads. An empty folder over it makes cpuinfo fall back to /proc (a board has its own).
mkdir -p "$ROOT/sys/devices/system/cpu"
mount -t tmpfs -o size=64k,mode=0555 tmpfs "$ROOT/sys/devices/system/cpu"
MOUNTS+=("$ROOT/sys/devices/system/cpu")
cp "$BUNDLE" "$ROOT/tmp/bundle.tar"
# A clean environment inside: none of the host's pip settings (paths that are not there).
CHROOT=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" /usr/bin/env)
tar -xf "$BUNDLE" -C "$ROOT/tmp" edge-slm-bundle/deploy/install-device.sh
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
install_args=(--bundle /tmp/bundle.tar --device-id "$DEVICE_ID" --broker "mqtt://127.0.0.1:$PORT"
	--no-systemd --no-apt)
t=$(now)
"${NICE[@]}" "${CHROOT[@]}" /tmp/edge-slm-bundle/deploy/install-device.sh "${install_args[@]}" \
	>"$WORK/install1.log" 2>&1 || {
	cat "$WORK/install1.log" >&2
	die "install-device.sh --bundle failed inside the arm64 root"
}
T_INSTALL=$(since "$t")
grep -v '^    ' "$WORK/install1.log" | sed "s/^/$SELF: [arm64] /"
grep -q -- '--no-index' "$WORK/install1.log" || die "pip did not run with --no-index"
say "install: ${T_INSTALL}s (emulated)"
t=$(now)
"${NICE[@]}" "${CHROOT[@]}" /tmp/edge-slm-bundle/deploy/install-device.sh "${install_args[@]}" \
	>"$WORK/install2.log" 2>&1 || {
	cat "$WORK/install2.log" >&2
	die "the second install failed"
}
grep -q 'done: everything unchanged' "$WORK/install2.log" || {
	cat "$WORK/install2.log" >&2
	die "the second install changed something (not idempotent)"
}
T_REINSTALL=$(since "$t")
say "reinstall: everything unchanged (${T_REINSTALL}s)"

# --- 5. the agent in the root, the broker on the host ----------------------------

cat >"$WORK/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
CONF
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$MOSQ" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 50); do
	mosquitto_pub -p "$PORT" -t probe -n 2>/dev/null && break
	sleep 0.1
done
say "mosquitto on 127.0.0.1:$PORT"

holds() {
	# holds PYTHON-EXPR JSON: whether the expression over the parsed JSON `r` is true
	python3 -c 'import json, sys
try:
    r = json.loads(sys.argv[2])
    sys.exit(0 if eval(sys.argv[1]) else 1)
except (ValueError, KeyError, TypeError):
    sys.exit(1)' "$1" "$2"
}
STATUS_TOPIC="slm/$DEVICE_ID/status"
t=$(now)
"${NICE[@]}" "${CHROOT[@]}" STATE_DIRECTORY=/var/lib/edge-slm PYTHONFAULTHANDLER=1 \
	/opt/edge-slm/venv/bin/edge-agent run --config /etc/edge-slm/agent.toml \
	>"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
status=""
for _ in $(seq 120); do
	kill -0 "$AGENT_PID" 2>/dev/null || {
		cat "$WORK/agent.log" >&2
		die "the agent exited while starting"
	}
	status=$(mosquitto_sub -p "$PORT" -t "$STATUS_TOPIC" -C 1 -W 5 2>/dev/null || true)
	holds "r['state'] == 'online' and r['model_state']['loaded']" "$status" && break
	sleep 1
done
[[ $status == *'"online"'* ]] || {
	tail -n 30 "$WORK/agent.log" >&2
	die "no online status from the agent"
}
T_START=$(since "$t")
say "agent online after ${T_START}s (emulated); status: $status"

# --- 6. requests with the stock mosquitto_rr --------------------------------------

check() {
	# check NAME PYTHON-EXPR REPLY: the expression over the reply `r` must hold
	holds "$2" "$3" || die "$1: unexpected reply: $3"
}
ask() {
	# ask NAME PAYLOAD: print the reply, timed
	local t0 reply
	t0=$(now)
	reply=$(mosquitto_rr -V mqttv5 -p "$PORT" -t "slm/$DEVICE_ID/request" -e "test/arm64/$1" \
		-W 600 -m "$2") || die "$1: no reply"
	say "$1 ($(since "$t0")s emulated): $reply" >&2
	printf '%s' "$reply"
}
status_check="r['state'] == 'online' and r['arch'] == 'aarch64' and r['provider'] == 'cpu'"
check status "$status_check" "$status"
say "status: arch aarch64, provider cpu"

reply=$(ask classify '{"v":1,"id":"c1","kind":"voice","text":"turn off the lights in the kitchen","task":"classify","labels":["lights_on","lights_off","set_temperature"]}')
check classify "r['ok'] and r['label'] in ('lights_on', 'lights_off', 'set_temperature') and 0 <= r['confidence'] <= 1" "$reply"
reply=$(ask answer '{"v":1,"id":"a1","text":"What is the capital of France? Answer in one word.","task":"answer","max_tokens":16,"cloud":"never"}')
check answer "r['ok'] and r['source'] == 'edge' and r['answer'].strip() != ''" "$reply"
# llguidance in the aarch64 onnxruntime-genai wheel: a schema-constrained extract on the edge.
reply=$(ask extract '{"v":1,"id":"e1","text":"Alice is 31 and lives in Lyon.","task":"extract","cloud":"never","schema":{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"],"additionalProperties":false}}')
check extract "r['ok'] and r['source'] == 'edge' and set(r['data']) == {'name', 'age'} and isinstance(r['data']['name'], str) and type(r['data']['age']) is int and 0 <= r['confidence'] <= 1" "$reply"
reply=$(ask bad-request '{"v":1,"id":"b1","text":"hi","task":"classify"}')
check bad-request "not r['ok'] and r['error']['code'] == 'invalid_request'" "$reply"

# --- 7. SIGTERM drains; peak RSS against the profile's MemoryMax -------------------

# qemu-user's own RSS (the guest's memory plus the translator): above what a Pi would use.
HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$AGENT_PID/status")
t=$(now)
kill -TERM "$AGENT_PID"
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=""
T_STOP=$(since "$t")
[[ $rc -eq 0 ]] || {
	tail -n 20 "$WORK/agent.log" >&2
	die "the agent exited $rc on SIGTERM"
}
status=$(mosquitto_sub -p "$PORT" -t "$STATUS_TOPIC" -C 1 -W 5) || die "no status after stop"
check stop "r['state'] == 'offline'" "$status"
say "SIGTERM: drained and stopped in ${T_STOP}s; status: $status"

MEM_MAX=$(python3 - "$REPO/deploy/profiles.toml" "$PROFILE" <<'PY'
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["profiles"][sys.argv[2]]["memory_max"])
PY
)
verdict=$(python3 - "$HWM_KB" "$MEM_MAX" <<'PY'
import sys
kb, limit = int(sys.argv[1]), sys.argv[2]
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
cap = float(limit[:-1]) * units[limit[-1]] if limit[-1] in units else float(limit)
used = kb * 1024
print(f"peak RSS {used / (1 << 20):.0f} MiB (qemu process) vs MemoryMax {limit} "
      f"({100 * used / cap:.0f}%): {'within' if used <= cap else 'OVER'}")
PY
)
say "$PROFILE: $verdict"
say "passed in $(since "$T_ALL")s: bundle ${T_BUNDLE}s, install ${T_INSTALL}s, reinstall ${T_REINSTALL}s, agent start ${T_START}s, stop ${T_STOP}s (emulated, not board speed)"
