#!/bin/busybox sh
# /init of the nested (L2) guest: list PCI devices as `@@ pci BDF VENDOR:DEVICE DRIVER`.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
for d in /sys/bus/pci/devices/*; do
  v=$(cat "$d/vendor"); p=$(cat "$d/device")
  drv=none
  [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  echo "@@ pci ${d##*/} ${v#0x}:${p#0x} $drv"
done
echo "@@ l2-done"
poweroff -f
