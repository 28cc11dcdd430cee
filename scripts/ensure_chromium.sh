#!/usr/bin/env bash
# Debian's chromium for the real-browser tests (tests/test_browser.py drives it with Playwright,
# never a browser download). Installed when missing and this user can (root, apt-get); otherwise
# the browser tests skip and say why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests..." >&2
    if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
        exit 0
    fi
    echo "could not install chromium; the browser tests will be skipped" >&2
else
    echo "chromium is missing (install it: apt-get install chromium); the browser tests will be skipped" >&2
fi
exit 0
