#!/usr/bin/env bash
# The report test (tests/test_report.py) renders report.html in headless Chromium.
# Installs Debian's chromium when it is missing and this user can (root with apt-get);
# otherwise says what to do. Never fails: the test itself reports a missing browser.
set -uo pipefail
if [ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
   || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the report's browser test..."
  log=$(mktemp -t chromium-install.XXXXXX.log)
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
       >"$log" 2>&1; then
    echo "chromium installed: $(command -v chromium)"; exit 0
  fi
  echo "warning: installing chromium failed (log: $log)" >&2
fi
echo "note: no Chromium; tests/test_report.py will fail unless you install the package" \
     "'chromium', set CHROMIUM=/path/to/chrome, or set REPORT_BROWSER_TEST=skip" >&2
