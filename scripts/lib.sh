# Shared helpers for dockhand's scripts. Source it: . "$(dirname "$0")/lib.sh"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MUSL_TARGET=x86_64-unknown-linux-musl
ARM64_TARGET=aarch64-unknown-linux-musl
STATIC_DIR="$ROOT/target/static"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: installs the Debian packages that are missing (needs root).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_musl() {
  apt_install musl-tools file
  rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" || {
    say "adding the Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET"
  }
}

# The venv with the Python tools: moto (S3 test server), kubernetes-validate, and zig
# with cargo-zigbuild (the ARM64 cross build). DOCKHAND_DEMO_ONLY=1: moto alone (what
# the demo uses).
ensure_venv() {
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    say "creating .venv"
    python3 -m venv "$ROOT/.venv" || { apt_install python3-venv; python3 -m venv "$ROOT/.venv"; }
  fi
  local want=()
  [ -x "$ROOT/.venv/bin/moto_server" ] || want+=('moto[server]>=5,<6')
  if [ "${DOCKHAND_DEMO_ONLY:-}" != 1 ]; then
    [ -x "$ROOT/.venv/bin/kubernetes-validate" ] || want+=('kubernetes-validate>=1.31')
    [ -x "$ROOT/.venv/bin/cargo-zigbuild" ] || want+=('cargo-zigbuild>=0.19')
    "$ROOT/.venv/bin/python" -c 'import ziglang' 2>/dev/null || want+=('ziglang>=0.13,<0.14')
  fi
  if [ ${#want[@]} -gt 0 ]; then
    say "installing into .venv: ${want[*]}"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "${want[@]}"
  fi
}

ensure_arm64() {
  DOCKHAND_DEMO_ONLY= ensure_venv
  rustup target list --installed 2>/dev/null | grep -qx "$ARM64_TARGET" || {
    say "adding the Rust target $ARM64_TARGET"
    rustup target add "$ARM64_TARGET"
  }
}
