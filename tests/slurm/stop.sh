#!/usr/bin/env bash
# Stop the daemons started by tests/slurm/start.sh (by their PIDs).
STATE=${SLURM_TEST_STATE:-/tmp/diffmem-slurm}
[ -f "$STATE/pids" ] || exit 0
tac "$STATE/pids" | while read -r pid; do kill "$pid" 2>/dev/null || true; done
sleep 1
tac "$STATE/pids" | while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done
rm -f "$STATE/pids"
