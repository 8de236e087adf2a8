#!/usr/bin/env bash
# ensure-apt.sh <what> <check command> <debian package>...
# Runs the check; when it fails, installs the packages (as root, with apt-get, without
# recommends) or says what to install and exits non-zero.
set -euo pipefail
what=$1
check=$2
shift 2
if bash -c "$check" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "spanfeed: installing $what (apt-get install $*)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  exit 0
fi
echo "spanfeed: $what is not installed. Install it, for example: sudo apt-get install --no-install-recommends $*" >&2
exit 1
