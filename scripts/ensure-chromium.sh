#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed, for the dashboard test (see ensure-apt.sh).
exec "$(dirname "$0")/ensure-apt.sh" Chromium "command -v chromium" chromium
