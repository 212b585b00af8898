#!/bin/busybox sh
# /init of the serial bind lab guest (tests/lab/lab-bind-serial.toml): run /lab.sh, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /etc /var/lib
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "@@ boot uptime=$(cut -d' ' -f1 /proc/uptime)"
modprobe e1000e; modprobe e1000
sh /lab.sh 2>&1
echo "@@ done"
poweroff -f
