# Benchmark, run inside the lab guest by scripts/bench-bind: `vfioctl bind` (plan, safety
# scan, ledger, override, unbind, probe, verify, /dev/vfio check) against the raw shell
# sequence of the Kata guide on the same device, alternating, N rounds each. Times come
# from the kernel's monotonic clock (/proc/timer_list "now at N nsecs"); the give-back
# between rounds is not timed.
E=${E:-0000:01:00.0}
N=${N:-20}
ns() { sed -n 's/^now at \([0-9]*\) nsecs$/\1/p;/^now at/q' /proc/timer_list; }
drv() { l=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$l" || echo none; }
modprobe e1000e
modprobe vfio-pci   # loaded up front for both sides, so neither pays for the module load
tv=0; tr=0; i=0
while [ $i -lt $N ]; do
  a=$(ns); vfioctl bind $E >/dev/null || echo "@@ error vfioctl_bind round=$i"; b=$(ns)
  [ "$(drv $E)" = vfio-pci ] || echo "@@ error vfioctl_not_bound round=$i"
  vfioctl unbind $E >/dev/null || echo "@@ error vfioctl_unbind round=$i"
  c=$(ns)
  echo vfio-pci > /sys/bus/pci/devices/$E/driver_override
  echo $E > /sys/bus/pci/devices/$E/driver/unbind
  echo $E > /sys/bus/pci/drivers_probe
  d=$(ns)
  [ "$(drv $E)" = vfio-pci ] || echo "@@ error raw_not_bound round=$i"
  echo > /sys/bus/pci/devices/$E/driver_override
  echo $E > /sys/bus/pci/devices/$E/driver/unbind
  echo $E > /sys/bus/pci/drivers_probe
  tv=$((tv + (b - a) / 1000)); tr=$((tr + (d - c) / 1000))
  echo "@@ round i=$i vfioctl_us=$(((b - a) / 1000)) raw_us=$(((d - c) / 1000))"
  i=$((i + 1))
done
echo "@@ bench n=$N vfioctl_mean_us=$((tv / N)) raw_mean_us=$((tr / N)) ratio_x1000=$((tv * 1000 / tr))"
