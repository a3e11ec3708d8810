#!/usr/bin/env bash
# Create or update the project's virtual environment at .venv (or $VENV).
#
# Triton's python stub embeds the system libpython3.11 and loads the standard
# library of the venv's base interpreter; the two must be the same build, so the
# venv is made from the system's /usr/bin/python3.11 (see FACTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-cpu,openvino,server,export,check,minilm,llm,smollm2,images,dev}"
SYSTEM_PYTHON="${SYSTEM_PYTHON:-/usr/bin/python3.11}"

need_apt=()
[ -x "$SYSTEM_PYTHON" ] || need_apt+=(python3.11)
"$SYSTEM_PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3.11-venv)
# Not grep -q: it exits at the first match, ldconfig then dies of SIGPIPE and pipefail fails the check.
ldconfig -p 2>/dev/null | grep 'libpython3.11.so.1.0' >/dev/null || need_apt+=(libpython3.11)
# The tests run a real Prometheus (the autoscaling signal) and promtool (the rendered rules).
# Its postinst starts the packaged service (init.d, or systemd where it runs) unless policy-rc.d
# forbids it, as Docker's Debian images do (exit 101); the tests use their own ports either way.
if [[ ",$EXTRAS," == *",dev,"* ]] && ! { command -v prometheus && command -v promtool; } >/dev/null; then
  need_apt+=(prometheus)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} (Debian packages: the Triton python stub's, the tests' prometheus)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")'; then
  echo "bootstrap: $VENV was not made from $SYSTEM_PYTHON; recreating it"
  rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$SYSTEM_PYTHON" -m venv "$VENV"

stamp="$VENV/.portable-ep-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints.txt -nt "$stamp" ] || [ "$(cat "$stamp")" != "$EXTRAS" ]; then
  echo "bootstrap: installing portable-ep[$EXTRAS] into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c scripts/constraints.txt -e ".[$EXTRAS]"
  echo "$EXTRAS" > "$stamp"
fi
