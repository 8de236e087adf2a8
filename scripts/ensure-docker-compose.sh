#!/usr/bin/env bash
# Makes sure docker-compose is installed, to validate docker-compose.yml (see ensure-apt.sh).
exec "$(dirname "$0")/ensure-apt.sh" docker-compose "command -v docker-compose" docker-compose
