#!/usr/bin/env bash
# Makes sure the openssl command is installed, for `spanfeed certs create` (see ensure-apt.sh).
exec "$(dirname "$0")/ensure-apt.sh" openssl "command -v openssl" openssl
