#!/bin/sh
# Installs Debian's chromium, which the report's browser tests drive through Playwright
# (Playwright never downloads a browser here), when it is missing and this machine can:
# apt-get exists and we are root (CI on Debian). Otherwise it says why and leaves it; those
# tests then skip with that reason. An apt-get that fails fails `make install`.
set -e
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install_chromium: no chromium and no apt-get: the browser tests will skip" >&2
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install_chromium: no chromium; as root (sudo) this installs Debian's chromium" \
		"for the browser tests, which skip until then" >&2
	exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
