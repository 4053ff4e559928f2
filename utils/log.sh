#!/usr/bin/env bash
# Timestamped messages and stage banners for the shell stages.

log() {
  echo "[$(date '+%Y-%m-%d %H:%M:%S')] $*"
}

stage_banner() {
  # stage_banner N "name": the line a user looks for in a long log.
  echo
  log "================ Stage $1: $2 ================"
}
