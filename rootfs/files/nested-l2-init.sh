#!/bin/busybox sh
# /init of the nested (L2) guest: list PCI devices as `@@ pci BDF VENDOR:DEVICE DRIVER`.
# Booted with `l2.stay` on the kernel command line (an L2 started by `vfioctl vm up` in
# L1, which hotplugs into it over QMP), it stays up after `@@ l2-ready` and prints each
# device that appears later as `@@ hot BDF VENDOR:DEVICE DRIVER`; else it powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
line() {
  v=$(cat "$1/vendor"); p=$(cat "$1/device")
  drv=none
  [ -e "$1/driver" ] && drv=$(basename "$(readlink "$1/driver")")
  echo "${1##*/} ${v#0x}:${p#0x} $drv"
}
seen=" "
for d in /sys/bus/pci/devices/*; do
  echo "@@ pci $(line "$d")"
  seen="$seen${d##*/} "
done
echo "@@ l2-done"
grep -q 'l2.stay' /proc/cmdline || poweroff -f
echo "@@ l2-ready"
while :; do
  for d in /sys/bus/pci/devices/*; do
    case "$seen" in *" ${d##*/} "*) continue ;; esac
    # the driver binds a moment after the device appears
    sleep 1
    echo "@@ hot $(line "$d")"
    seen="$seen${d##*/} "
  done
  sleep 1
done
