#!/usr/bin/env bash
# Makes sure etcd and etcdctl are installed (see ensure-apt.sh).
exec "$(dirname "$0")/ensure-apt.sh" etcd "command -v etcd && command -v etcdctl" etcd-server etcd-client
