#!/usr/bin/env bash
# Install (or remove) the edge agent on a device as a systemd service.
#
#   sudo deploy/install-device.sh --device-id kitchen --broker mqtts://broker.lan:8883
#   sudo ./install-device.sh --bundle edge-slm-bundle-rpi4-2gb-aarch64.tar --device-id kitchen
#
# --bundle FILE installs offline from `edge-agent bundle` (built on a workstation): the
# bundle is unpacked into a scratch folder and its SHA256SUMS checked before anything is
# changed (a bad hash, a missing or an unlisted file stops it there); then its wheels go
# in with `pip install --no-index` (no network at all), its models into the model cache,
# and its profile table and unit are used instead of this checkout's. Its profile and
# model are the defaults for --profile and --model.
#
# What it does, in order, each step skipped when already done (rerunning changes nothing):
#   1. mosquitto from apt when missing (not with --no-apt, nor into a --prefix)
#   2. picks a device profile (deploy/profiles.toml; --profile auto detects the board)
#   3. a venv at $PREFIX/opt/edge-slm/venv, created once, and the edge-slm package in it
#      (base install: no torch, no builder; devices never build models)
#   4. the model, if --import-model DIR is given, or a bundle's models (into
#      $PREFIX/var/lib/edge-slm/models)
#   5. $PREFIX/etc/edge-slm/agent.toml from the flags and the profile (0640 root:<the unit's
#      Group=/User=>; 0644 when the unit runs as a DynamicUser, which no group can reach;
#      it holds no secrets) and the empty tls/ the unit's LoadCredential= needs; an edited
#      or outdated agent.toml is kept as agent.toml.bak
#   6. systemd/edge-agent.service, the profile's accelerator drop-ins from
#      systemd/drop-ins/, and a drop-in with the profile's MemoryMax
#   7. `edge-agent run --config ... --check-config`; on failure nothing is enabled
#   8. systemctl daemon-reload && systemctl enable --now edge-agent (restart when changed)
#
# Getting the model onto the device. check-config fails until the configured model is in
# the cache ($PREFIX/var/lib/edge-slm/models, the unit's StateDirectory). Either
#   - download a prebuilt hub model on the device:
#       STATE_DIRECTORY=/var/lib/edge-slm /opt/edge-slm/venv/bin/edge-agent models download NAME
#   - or build on a workstation (`edge-agent models build NAME`, needs the [build] extra
#     and GBs of RAM), copy the folder over, and pass --import-model DIR here (it runs
#     `edge-agent models import DIR --name NAME`),
#   - or point the agent at a folder in place with --model-path DIR (written to agent.toml).
# The environment is passed through to check-config, so EDGE_AGENT_MODEL__PATH works too.
#
# Run with --help for the flags. Exit codes: 0 done, 2 bad usage, 1 a step failed.
set -euo pipefail

readonly SELF="install-device"
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT

DEVICE_ID=""
BROKER="mqtt://127.0.0.1:1883"
MODEL=""
EMBEDDER=""
MODEL_PATH=""
IMPORT_MODEL=""
PROFILE=""
BUNDLE=""
PROVIDER=""
SOURCE=""
WHEEL=""
PYTHON="python3"
PIP_OPTS=()
PREFIX="/"
NO_SYSTEMD=0
NO_APT=0
UNINSTALL=0
PURGE=0
DRY_RUN=0

usage() {
	cat <<'EOF'
Usage: install-device.sh --device-id ID [options]
       install-device.sh --uninstall [--purge] [--prefix DIR] [--no-systemd] [--dry-run]

Install:
  --device-id ID        this device's id: one MQTT topic segment, [A-Za-z0-9._-], <= 64 (required)
  --bundle FILE         install offline from this `edge-agent bundle` tar (checked first)
  --broker URL          mqtt://host:port or mqtts://host:port (default mqtt://127.0.0.1:1883)
  --profile NAME|auto   device profile from deploy/profiles.toml (default auto: detect the board)
  --model NAME          catalog model (default: the profile's; see `edge-agent models list`)
  --embedder NAME       the skills' sentence encoder (default: the profile's)
  --provider P          auto|cpu|cuda|qnn|dml (default: the profile's)
  --model-path DIR      serve this onnxruntime-genai folder (written to agent.toml as model.path)
  --import-model DIR    copy this built model folder into the device's model cache
  --source DIR          pip install this source tree (default: this checkout)
  --wheel FILE          pip install this wheel instead
  --python PY           interpreter (>= 3.11) that creates the venv (default python3)
  --pip-opt ARG         extra argument for pip install, repeatable (e.g. --pip-opt=--no-index
                        --pip-opt=--find-links=/media/wheels for an offline device)
  --prefix DIR          install under DIR instead of / (an image or chroot); skips systemd
  --no-systemd          do not run systemctl (daemon-reload, enable, start)
  --no-apt              do not install mosquitto with apt-get
  --dry-run             print what would change, change nothing

Remove:
  --uninstall           stop and disable the service; remove the unit, venv and agent.toml;
                        keep /var/lib/edge-slm (models, outbox)
  --purge               with --uninstall: also remove /var/lib/edge-slm and /etc/edge-slm
EOF
}

say() { printf '%s: %s\n' "$SELF" "$*"; }
warn() { printf '%s: warning: %s\n' "$SELF" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$SELF" "$1" >&2
	exit "${2:-1}"
}
usage_error() {
	printf '%s: error: %s\n' "$SELF" "$1" >&2
	printf "Run '%s --help' for usage.\n" "$0" >&2
	exit 2
}

# --- arguments ----------------------------------------------------------------

need_value() {
	# $1 flag, $2 number of remaining args (including the flag)
	[[ $2 -ge 2 ]] || usage_error "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
	arg=$1
	value=""
	if [[ $arg == --*=* ]]; then
		value=${arg#*=}
		arg=${arg%%=*}
		set -- "$arg" "$value" "${@:2}"
	fi
	case $arg in
	--device-id | --broker | --model | --embedder | --model-path | --import-model | \
		--profile | --provider | --source | --wheel | --python | --pip-opt | --prefix | --bundle)
		need_value "$arg" $#
		value=$2
		shift 2
		case $arg in
		--device-id) DEVICE_ID=$value ;;
		--broker) BROKER=$value ;;
		--model) MODEL=$value ;;
		--embedder) EMBEDDER=$value ;;
		--model-path) MODEL_PATH=$value ;;
		--import-model) IMPORT_MODEL=$value ;;
		--profile) PROFILE=$value ;;
		--provider) PROVIDER=$value ;;
		--source) SOURCE=$value ;;
		--wheel) WHEEL=$value ;;
		--python) PYTHON=$value ;;
		--pip-opt) PIP_OPTS+=("$value") ;;
		--prefix) PREFIX=$value ;;
		--bundle) BUNDLE=$value ;;
		esac
		;;
	--no-systemd) NO_SYSTEMD=1 && shift ;;
	--no-apt) NO_APT=1 && shift ;;
	--uninstall) UNINSTALL=1 && shift ;;
	--purge) PURGE=1 && shift ;;
	--dry-run) DRY_RUN=1 && shift ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown argument '$arg'" ;;
	esac
done

# Values end up inside TOML strings and unit paths: allow only what needs no escaping.
no_specials() { [[ $2 != *[\"\\\$\`]* && $2 != *$'\n'* ]] || usage_error "$1 must not contain quotes, backslashes, \$, \` or newlines"; }

[[ $PREFIX == /* ]] || usage_error "--prefix must be an absolute path, got '$PREFIX'"
no_specials --prefix "$PREFIX"
[[ $PURGE -eq 0 || $UNINSTALL -eq 1 ]] || usage_error "--purge only goes with --uninstall"
[[ -z $BUNDLE || $UNINSTALL -eq 0 ]] || usage_error "--bundle does not go with --uninstall"

if [[ $UNINSTALL -eq 0 ]]; then
	[[ -n $DEVICE_ID ]] || usage_error "--device-id is required"
	[[ $DEVICE_ID =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] ||
		usage_error "--device-id '$DEVICE_ID' must be 1-64 of [A-Za-z0-9._-] (one topic segment, no / + # \$)"
	no_specials --broker "$BROKER"
	[[ $BROKER =~ ^mqtts?://[^[:space:]/]+/?$ ]] ||
		usage_error "--broker '$BROKER' must look like mqtt://host:port or mqtts://host:port"
	[[ -z $MODEL || $MODEL =~ ^[a-z0-9][a-z0-9._-]*$ ]] ||
		usage_error "--model '$MODEL' is not a catalog name (lowercase letters, digits, . _ -)"
	[[ -z $EMBEDDER || $EMBEDDER =~ ^[a-z0-9][a-z0-9._-]*$ ]] ||
		usage_error "--embedder '$EMBEDDER' is not a catalog name (lowercase letters, digits, . _ -)"
	[[ -z $PROVIDER || $PROVIDER =~ ^(auto|cpu|cuda|qnn|dml)$ ]] ||
		usage_error "--provider must be one of auto, cpu, cuda, qnn, dml (got '$PROVIDER')"
	[[ -z $PROFILE || $PROFILE =~ ^[a-z0-9][a-z0-9._-]*$ ]] || usage_error "--profile '$PROFILE' is not a profile name"
	[[ -z $SOURCE || -z $WHEEL ]] || usage_error "--source and --wheel are mutually exclusive"
	[[ -z $BUNDLE || (-z $SOURCE && -z $WHEEL && -z $IMPORT_MODEL) ]] ||
		usage_error "--bundle brings its own package and models: no --source, --wheel or --import-model"
	[[ -z $BUNDLE || -f $BUNDLE ]] || usage_error "--bundle '$BUNDLE' is not a file"
	[[ -z $SOURCE || -f $SOURCE/pyproject.toml ]] || usage_error "--source '$SOURCE' has no pyproject.toml"
	[[ -z $WHEEL || ($WHEEL == *.whl && -f $WHEEL) ]] || usage_error "--wheel '$WHEEL' is not a .whl file"
	if [[ -n $MODEL_PATH ]]; then
		no_specials --model-path "$MODEL_PATH"
		[[ $MODEL_PATH == /* ]] || usage_error "--model-path must be absolute, got '$MODEL_PATH'"
		[[ -f $MODEL_PATH/genai_config.json ]] ||
			usage_error "--model-path '$MODEL_PATH' is not an onnxruntime-genai folder (no genai_config.json)"
	fi
	[[ -z $IMPORT_MODEL || -f $IMPORT_MODEL/genai_config.json ]] ||
		usage_error "--import-model '$IMPORT_MODEL' is not an onnxruntime-genai folder (no genai_config.json)"
	[[ -z $MODEL_PATH || -z $IMPORT_MODEL ]] || usage_error "--model-path and --import-model are mutually exclusive"
	[[ -n $SOURCE || -n $WHEEL || -n $BUNDLE ]] || SOURCE=$REPO_ROOT
fi

# --- 0. the bundle: unpacked and checked before anything is changed -------------

# Where the installed profile table, unit and drop-ins come from: this checkout, or the bundle.
SRC_ROOT=$REPO_ROOT
# How agent/profiles.py is found before the venv exists.
PROFILES_PATH=$REPO_ROOT
BUNDLE_ID=""
if [[ -n $BUNDLE ]]; then
	command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found; pass --python" 2
	# On disk, not in a RAM /tmp: the models are hundreds of MB.
	BUNDLE_DIR=$(mktemp -d -p "${TMPDIR:-/var/tmp}" edge-slm-bundle.XXXXXX)
	trap 'rm -rf -- "$BUNDLE_DIR"' EXIT
	say "unpacking $BUNDLE into $BUNDLE_DIR"
	tar -x --no-same-owner -f "$BUNDLE" -C "$BUNDLE_DIR" || die "cannot unpack $BUNDLE"
	B=$BUNDLE_DIR/edge-slm-bundle
	[[ -f $B/SHA256SUMS && -f $B/bundle.json ]] ||
		die "$BUNDLE is not an edge-slm bundle (no edge-slm-bundle/SHA256SUMS, bundle.json)"
	[[ -z $(find "$BUNDLE_DIR" ! -type f ! -type d) ]] ||
		die "$BUNDLE holds links or special files; refused, nothing was changed"
	# Every file listed and every listed file intact, before a single change.
	if ! sums_out=$(cd "$B" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
		printf '%s
' "$sums_out" | sed 's/^/    /' >&2
		die "$BUNDLE failed its SHA256SUMS check (above); refused, nothing was changed"
	fi
	unlisted=$(cd "$B" && comm -13 <(sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS | sort) \
		<(find . -type f ! -path ./SHA256SUMS | sed 's|^\./||' | sort))
	[[ -z $unlisted ]] || die "$BUNDLE has files its SHA256SUMS does not list: $unlisted; refused, nothing was changed"
	BUNDLE_ID=$(sha256sum "$B/SHA256SUMS" | cut -d' ' -f1)
	say "bundle checked: every file matches SHA256SUMS"
	bundle_out=$("$PYTHON" - "$B/bundle.json" <<'PY'
import json, platform, sys
info = json.load(open(sys.argv[1]))
here = f"{sys.version_info[0]}.{sys.version_info[1]}"
print(info["arch"], info["python"], info["profile"], info["model"], info["wheel"],
      platform.machine(), here)
PY
	) || die "cannot read bundle.json"
	read -r b_arch b_python b_profile b_model b_wheel my_arch my_python <<<"$bundle_out"
	[[ $b_arch == "$my_arch" && $b_python == "$my_python" ]] ||
		die "the bundle is for $b_arch with Python $b_python, but $PYTHON is $my_arch Python $my_python; build one with edge-agent bundle --arch $my_arch --python $my_python" 2
	say "bundle for $b_arch Python $b_python: profile $b_profile, model $b_model"
	SRC_ROOT=$B
	PROFILES_PATH=$B/wheels/$b_wheel # agent/profiles.py imported from the wheel (a zip)
	WHEEL=$B/wheels/$b_wheel
	PIP_OPTS+=(--no-index "--find-links=$B/wheels")
	PROFILE=${PROFILE:-$b_profile}
	MODEL=${MODEL:-$b_model}
fi
PROFILE=${PROFILE:-auto}

P=${PREFIX%/} # "" for /
readonly P
readonly OPT_DIR="$P/opt/edge-slm"
readonly VENV="$OPT_DIR/venv"
readonly STAMP="$VENV/.edge-slm-installed"
readonly CONF_DIR="$P/etc/edge-slm"
readonly CONF="$CONF_DIR/agent.toml"
readonly UNIT_DIR="$P/etc/systemd/system"
readonly UNIT="$UNIT_DIR/edge-agent.service"
readonly DROPIN_DIR="$UNIT_DIR/edge-agent.service.d"
readonly PROFILE_DROPIN="$DROPIN_DIR/50-profile.conf"
readonly STATE_DIR="$P/var/lib/edge-slm"
readonly UNIT_SRC="$SRC_ROOT/systemd/edge-agent.service"
readonly DROPIN_SRC_DIR="$SRC_ROOT/systemd/drop-ins"
# Target paths (what the running device sees), for agent.toml and messages.
readonly T_CONF="/etc/edge-slm/agent.toml"

CHANGED=0 # anything the running service would notice

# --- helpers: every change goes through these, so --dry-run is complete ---------

act() {
	# act DESCRIPTION CMD...: run CMD, or only describe it under --dry-run
	local what=$1
	shift
	if [[ $DRY_RUN -eq 1 ]]; then
		say "would $what"
	else
		"$@"
		say "$what"
	fi
}

ensure_dir() {
	# ensure_dir DIR MODE
	[[ -d $1 ]] && return 0
	act "create $1" install -d -m "$2" "$1"
}

install_content() {
	# install_content DEST MODE: write stdin to DEST unless identical; keep DEST.bak when
	# replacing. Sets CHANGED=1 when it writes.
	local dest=$1 mode=$2 tmp
	tmp=$(mktemp)
	cat >"$tmp"
	if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
		rm -f "$tmp"
		if [[ $(stat -c %a "$dest") != "${mode#0}" ]]; then
			act "fix mode of $dest to $mode" chmod "$mode" "$dest"
		fi
		say "$dest unchanged"
		return 0
	fi
	if [[ $DRY_RUN -eq 1 ]]; then
		if [[ -f $dest ]]; then
			say "would update $dest (old one kept as $dest.bak); the difference:"
			diff -u "$dest" "$tmp" | sed 's/^/    /' || true
		else
			say "would write $dest"
		fi
		rm -f "$tmp"
		return 0
	fi
	ensure_dir "$(dirname "$dest")" 0755
	if [[ -f $dest ]]; then
		cp -p "$dest" "$dest.bak"
		say "kept the previous $dest as $dest.bak"
	fi
	chmod "$mode" "$tmp"
	mv -f "$tmp" "$dest"
	say "wrote $dest"
	CHANGED=1
}

remove_path() {
	if [[ -e $1 || -L $1 ]]; then
		act "remove $1" rm -rf -- "$1"
	else
		say "$1 absent"
	fi
}

have_systemd() {
	# The systemctl steps run only on the real root of a host booted with systemd.
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		say "skipping systemd steps (--no-systemd)"
		return 1
	fi
	if [[ -n $P ]]; then
		say "skipping systemd steps: installing under --prefix $PREFIX, not the running system"
		return 1
	fi
	if [[ ! -d /run/systemd/system ]]; then # sd_booted(3)
		say "skipping systemd steps: systemd is not running as PID 1 here"
		return 1
	fi
	return 0
}

# Who must read agent.toml. A unit with a static User=/Group= gets 0640 root:<group>.
# Under DynamicUser=yes (with PrivateUsers=yes) no group of ours can reach the service,
# so the file is 0644: it holds no secrets, those come through LoadCredential=.
unit_key() {
	[[ -f $UNIT_SRC ]] || return 0
	sed -n "s/^[[:space:]]*$1=[[:space:]]*//p" "$UNIT_SRC" | tail -n1
}
CONF_GROUP=$(unit_key Group)
CONF_GROUP=${CONF_GROUP:-$(unit_key User)}
CONF_MODE=0640
if [[ -z $CONF_GROUP && $(unit_key DynamicUser) =~ ^(yes|true|1|on)$ ]]; then
	CONF_MODE=0644
fi

# --- uninstall ------------------------------------------------------------------

if [[ $UNINSTALL -eq 1 ]]; then
	if have_systemd; then
		if systemctl cat edge-agent.service >/dev/null 2>&1; then
			act "stop and disable edge-agent" systemctl disable --now edge-agent.service
		else
			say "edge-agent.service is not loaded"
		fi
	fi
	remove_path "$UNIT"
	remove_path "$PROFILE_DROPIN"
	if [[ -d $DROPIN_SRC_DIR ]]; then
		for f in "$DROPIN_SRC_DIR"/*.conf; do
			[[ -e $f ]] || continue
			if [[ -e $DROPIN_DIR/$(basename "$f") ]]; then
				remove_path "$DROPIN_DIR/$(basename "$f")"
			fi
		done
	fi
	if [[ -d $DROPIN_DIR ]] && [[ -z $(ls -A "$DROPIN_DIR") ]]; then
		act "remove empty $DROPIN_DIR" rmdir "$DROPIN_DIR"
	fi
	remove_path "$VENV"
	remove_path "$OPT_DIR/profiles.toml"
	remove_path "$OPT_DIR/systemd"
	if [[ -d $OPT_DIR ]] && [[ -z $(ls -A "$OPT_DIR") ]]; then
		act "remove empty $OPT_DIR" rmdir "$OPT_DIR"
	fi
	remove_path "$CONF"
	remove_path "$CONF.bak"
	if [[ $PURGE -eq 1 ]]; then
		remove_path "$CONF_DIR"
		remove_path "$STATE_DIR"
		# DynamicUser=yes moved the state here (and left a symlink at $STATE_DIR).
		if [[ -e $P/var/lib/private/edge-slm ]]; then
			remove_path "$P/var/lib/private/edge-slm"
		fi
	else
		if [[ -d $STATE_DIR ]]; then
			say "kept $STATE_DIR (models, outbox); --purge removes it"
		fi
		if [[ -d $CONF_DIR/tls ]] && [[ -z $(ls -A "$CONF_DIR/tls") ]]; then
			act "remove empty $CONF_DIR/tls" rmdir "$CONF_DIR/tls"
		fi
		if [[ -d $CONF_DIR ]] && [[ -z $(ls -A "$CONF_DIR") ]]; then
			act "remove empty $CONF_DIR" rmdir "$CONF_DIR"
		fi
	fi
	if have_systemd >/dev/null; then
		act "reload systemd" systemctl daemon-reload
	fi
	say "uninstalled"
	exit 0
fi

# --- 1. mosquitto ---------------------------------------------------------------

if [[ $NO_APT -eq 1 ]]; then
	say "skipping apt (--no-apt)"
elif [[ -n $P ]]; then
	say "skipping apt: it installs into the running system, not --prefix $PREFIX" \
		"(in a chroot: chroot $PREFIX apt-get install mosquitto)"
elif command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then
	say "mosquitto already installed"
else
	command -v apt-get >/dev/null 2>&1 || die "mosquitto is missing and there is no apt-get; install it, or pass --no-apt"
	act "install mosquitto (apt)" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto mosquitto-clients
fi

# --- 2. profile -----------------------------------------------------------------

command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found; pass --python" 2
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
	die "$PYTHON is older than 3.11 (edge-slm needs it; on JetPack 6 / Ubuntu 22.04 install python3.11)" 2

declare -A PROF=()
profile_cmd=(detect --root /)
[[ $PROFILE == auto ]] || profile_cmd=(show "$PROFILE")
# agent/profiles.py needs only the standard library, so it runs before the venv exists.
profile_out=$(PYTHONPATH="$PROFILES_PATH" "$PYTHON" -m agent.profiles \
	--table "$SRC_ROOT/deploy/profiles.toml" "${profile_cmd[@]}" --env) ||
	die "could not choose a profile (see above)" 2
while IFS='=' read -r key val; do
	PROF[$key]=$val
done <<<"$profile_out"
say "profile ${PROF[name]}: ${PROF[description]}${PROF[detected_by]:+ (${PROF[detected_by]})}"

MODEL=${MODEL:-${PROF[model]}}
EMBEDDER=${EMBEDDER:-${PROF[embedder]}}
PROVIDER=${PROVIDER:-${PROF[provider]}}
THREADS=${PROF[threads]}
if [[ $PROVIDER == qnn && -z $MODEL_PATH && -z $IMPORT_MODEL ]]; then
	warn "provider qnn: catalog models are CPU builds, so QNN runs only the parts it supports;" \
		"import a QNN-compiled model for the NPU to do the work"
fi

# --- 3. venv and package -------------------------------------------------------

ensure_dir "$OPT_DIR" 0755
if [[ -x $VENV/bin/python ]]; then
	say "venv $VENV exists"
else
	act "create venv $VENV" "$PYTHON" -m venv "$VENV"
	CHANGED=1
fi

# What is being installed, as a hash: pip is run only when it differs from the last run.
source_hash() {
	if [[ -n $WHEEL ]]; then
		sha256sum "$WHEEL" | cut -d' ' -f1
	elif git -C "$SOURCE" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		# -co: tracked and untracked-but-not-ignored; a deleted tracked file is skipped.
		(cd "$SOURCE" && { git ls-files -z -co --exclude-standard | sort -z |
			xargs -0 -r sha256sum -- 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
	else
		(cd "$SOURCE" && find . \( -name .git -o -name .venv -o -name venv -o -name build \
			-o -name dist -o -name '*.egg-info' -o -name __pycache__ -o -name '.*_cache' \) \
			-prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum -- |
			sha256sum | cut -d' ' -f1)
	fi
}
target=${WHEEL:-$SOURCE}
if [[ -n $BUNDLE ]]; then
	# The bundle's identity, not its scratch path: the same bundle again changes nothing.
	want="$BUNDLE_ID bundle"
else
	want="$(source_hash) $(cd "$(dirname "$target")" && pwd)/$(basename "$target")"
fi
if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/edge-agent ]]; then
	say "edge-slm package unchanged ($target)"
else
	# Uninstall first: pip would skip a wheel of the same version, and a stale build of a
	# source tree must not survive. Base requirements only: no [build] extra, no torch.
	if [[ -x $VENV/bin/edge-agent ]]; then
		act "uninstall the previous edge-slm" "$VENV/bin/pip" uninstall -y -q edge-slm
	fi
	act "pip install edge-slm from $target${PIP_OPTS[*]:+ (${PIP_OPTS[*]})}" "$VENV/bin/pip" install \
		--disable-pip-version-check -q ${PIP_OPTS[@]+"${PIP_OPTS[@]}"} "$target"
	if [[ $DRY_RUN -eq 0 ]]; then
		printf '%s\n' "$want" >"$STAMP"
	fi
	CHANGED=1
fi

# --- 4. model -------------------------------------------------------------------

ensure_dir "$STATE_DIR" 0750
if [[ -n $BUNDLE ]]; then
	# The bundle's models, already checked against SHA256SUMS; a model whose manifest is
	# the same as the installed one's is left alone. Staged beside the cache, then renamed.
	ensure_dir "$STATE_DIR/models" 0755
	for src in "$B"/models/*/; do
		[[ -f $src/manifest.json ]] || continue
		name=$(basename "$src")
		dest=$STATE_DIR/models/$name
		if cmp -s "$src/manifest.json" "$dest/manifest.json"; then
			say "model $name unchanged"
			continue
		fi
		if [[ $DRY_RUN -eq 1 ]]; then
			say "would install model $name into $dest"
			continue
		fi
		stage=$STATE_DIR/models/.staging-$name-bundle
		rm -rf -- "$stage" "$STATE_DIR/models/.trash-$name-bundle"
		cp -r "$src" "$stage"
		[[ ! -e $dest ]] || mv "$dest" "$STATE_DIR/models/.trash-$name-bundle"
		mv "$stage" "$dest"
		rm -rf -- "$STATE_DIR/models/.trash-$name-bundle"
		say "installed model $name into $dest"
		CHANGED=1
	done
elif [[ -n $IMPORT_MODEL ]]; then
	if [[ $DRY_RUN -eq 0 ]] && STATE_DIRECTORY=$STATE_DIR "$VENV/bin/edge-agent" models path "$MODEL" >/dev/null 2>&1; then
		say "model $MODEL already in $STATE_DIR/models"
	else
		act "import $IMPORT_MODEL as model $MODEL" env STATE_DIRECTORY="$STATE_DIR" \
			"$VENV/bin/edge-agent" models import "$IMPORT_MODEL" --name "$MODEL"
	fi
fi

# --- 5. agent.toml -------------------------------------------------------------

ensure_dir "$CONF_DIR" 0755
{
	printf '# %s: written by deploy/install-device.sh from profile %s.\n' "$T_CONF" "${PROF[name]}"
	printf '# Rerunning the installer rewrites it from its flags, keeping the old one as .bak.\n'
	printf '# Every field: agent/config.py. Check: edge-agent run --config %s --check-config\n' "$T_CONF"
	printf 'device_id = "%s"\n\n' "$DEVICE_ID"
	printf '[mqtt]\nbroker = "%s"\n\n' "$BROKER"
	printf '[model]\nname = "%s"\nprovider = "%s"\nthreads = %s\n' "$MODEL" "$PROVIDER" "$THREADS"
	printf 'embedder = "%s"\n' "$EMBEDDER"
	[[ -z $MODEL_PATH ]] || printf 'path = "%s"\n' "$MODEL_PATH"
} | install_content "$CONF" "$CONF_MODE"
if [[ $CONF_MODE == 0644 ]]; then
	say "agent.toml is 0644: the unit runs as a DynamicUser, and agent.toml holds no secrets"
fi
# The unit's LoadCredential=mqtt-tls:/etc/edge-slm/tls needs the directory, even empty.
ensure_dir "$CONF_DIR/tls" 0700

group=$CONF_GROUP
if [[ -n $P ]]; then
	if [[ -n $group ]]; then
		say "leaving $CONF owned by root under --prefix (the target's accounts are not known here)"
	fi
elif [[ -n $group ]] && [[ $DRY_RUN -eq 0 ]]; then
	if ! getent group "$group" >/dev/null; then
		act "create system account $group" useradd --system --user-group --no-create-home \
			--home-dir /var/lib/edge-slm --shell /usr/sbin/nologin "$group"
	fi
	if [[ $(stat -c %G "$CONF") != "$group" ]]; then
		act "give group $group read access to $CONF" chgrp "$group" "$CONF"
	fi
fi

# --- 6. unit, drop-ins, profile copy -------------------------------------------

install_content "$OPT_DIR/profiles.toml" 0644 <"$SRC_ROOT/deploy/profiles.toml"
# The unit's Documentation= points here.
if [[ -f $SRC_ROOT/systemd/README.md ]]; then
	install_content "$OPT_DIR/systemd/README.md" 0644 <"$SRC_ROOT/systemd/README.md"
fi
if [[ -f $UNIT_SRC ]]; then
	install_content "$UNIT" 0644 <"$UNIT_SRC"
else
	warn "$UNIT_SRC is not in this checkout yet: no unit installed"
fi
if [[ -n ${PROF[unit_dropin]} ]]; then
	found=0
	for f in "$DROPIN_SRC_DIR"/*"${PROF[unit_dropin]}"*.conf; do
		[[ -f $f ]] || continue
		found=1
		name=$(basename "$f")
		install_content "$DROPIN_DIR/$name" 0644 <"$f"
	done
	[[ $found -eq 1 ]] || warn "no $DROPIN_SRC_DIR/*${PROF[unit_dropin]}*.conf for the ${PROF[accelerator]} accelerator"
fi
{
	printf '# Written by deploy/install-device.sh from profile %s (deploy/profiles.toml).\n' "${PROF[name]}"
	printf '[Service]\nMemoryMax=%s\n' "${PROF[memory_max]}"
	[[ -z ${PROF[memory_high]} ]] || printf 'MemoryHigh=%s\n' "${PROF[memory_high]}"
} | install_content "$PROFILE_DROPIN" 0644

# --- 7. check-config -----------------------------------------------------------

if [[ $DRY_RUN -eq 1 ]]; then
	say "would run: $VENV/bin/edge-agent run --config $CONF --check-config"
else
	say "checking the configuration: edge-agent run --config $CONF --check-config"
	# STATE_DIRECTORY mirrors the unit's StateDirectory=, where the model cache lives.
	if ! check_out=$(STATE_DIRECTORY=$STATE_DIR "$VENV/bin/edge-agent" run --config "$CONF" --check-config 2>&1); then
		printf '%s\n' "$check_out" | sed 's/^/    /' >&2
		die "check-config failed; the service was not enabled. If the model is missing: copy a built
    model folder here and rerun with --import-model DIR, or run
    STATE_DIRECTORY=$STATE_DIR $VENV/bin/edge-agent models download $MODEL (hub models)"
	fi
	printf '%s\n' "$check_out" | sed 's/^/    /'
fi

# --- 8. systemd -----------------------------------------------------------------

if have_systemd; then
	[[ -f $UNIT ]] || die "$UNIT is missing; cannot enable edge-agent"
	act "reload systemd" systemctl daemon-reload
	if systemctl is-active --quiet edge-agent.service && [[ $CHANGED -eq 1 ]]; then
		act "restart edge-agent (its install changed)" systemctl restart edge-agent.service
	fi
	if systemctl is-enabled --quiet edge-agent.service && systemctl is-active --quiet edge-agent.service; then
		say "edge-agent enabled and running"
	else
		act "enable and start edge-agent" systemctl enable --now edge-agent.service
	fi
fi

if [[ $DRY_RUN -eq 1 ]]; then
	say "dry run: nothing was changed"
elif [[ $CHANGED -eq 0 ]]; then
	say "done: everything unchanged"
else
	say "done"
fi
