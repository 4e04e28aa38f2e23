#!/usr/bin/env bash
# Run a benchmark on storage like a POS device's instead of this machine's fast virtual disk.
#
#   sudo bash bench/slow_disk.sh [WRITE_IOPS] -- python bench/bench_terminal.py --dir /mnt/offterm-slow
#
# Makes a 1 GiB ext4 filesystem on a loop device (a file on the host disk) and mounts it at
# /mnt/offterm-slow.  Without WRITE_IOPS, that alone gives write+fsync latencies near an eMMC's
# (~0.9 ms here).  With WRITE_IOPS (say 300, an SD card's order), the command runs in a blkio cgroup
# that throttles writes to the loop device to that many per second (~3 ms per write+fsync).
# Needs root and cgroup v1 blkio (Linux).  Undo: umount /mnt/offterm-slow; losetup -d the device.
set -euo pipefail
iops=""
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then iops=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
mnt=/mnt/offterm-slow
img=${OFFTERM_SLOW_DISK_IMAGE:-/var/tmp/offterm-slow-disk.img}
if ! mountpoint -q "$mnt"; then
  truncate -s 1G "$img"
  mkfs.ext4 -q -F "$img"
  mkdir -p "$mnt"
  mount "$(losetup -f --show "$img")" "$mnt"
fi
dev=$(findmnt -n -o SOURCE "$mnt")
chmod 1777 "$mnt"
if [[ -n "$iops" ]]; then
  cg=/sys/fs/cgroup/blkio/offterm-slow
  mkdir -p "$cg"
  echo "$((16#$(stat -L -c '%t' "$dev"))):$((16#$(stat -L -c '%T' "$dev"))) $iops" > "$cg/blkio.throttle.write_iops_device"
  echo $$ > "$cg/cgroup.procs"
fi
exec "$@"
