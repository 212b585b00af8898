# The bind lab, run inside the guest (busybox sh, vfioctl on PATH) by tests/bind_lab.rs through the agent, or by scripts/lab-bind on the serial console.
# Each check prints one `@@ name key=value ...` line; tests/bind_lab.rs asserts on them.
# Devices are found by the MAC addresses the QEMU command line gives them, so the test
# does not depend on the bus numbers the guest happens to assign.
bdf_of_mac() { for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && basename "$(readlink -f $n/device)"; done; }
mkdir -p /tmp /var/lib
E=$(bdf_of_mac 52:54:00:00:01:00)    # e1000e alone in its group
P1=$(bdf_of_mac 52:54:00:00:03:01)   # e1000 behind the pcie-pci-bridge
P2=$(bdf_of_mac 52:54:00:00:03:02)   # its neighbour on the same conventional bus
R=$(bdf_of_mac 52:54:00:00:04:00)    # e1000e that gets the default route
BR=$(basename "$(dirname "$(readlink -f /sys/bus/pci/devices/$P1)")")
drv() { l=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$l" || echo none; }
ovr() { cat /sys/bus/pci/devices/$1/driver_override; }
grp() { basename "$(readlink /sys/bus/pci/devices/$1/iommu_group)"; }
led() { if [ -s /var/lib/vfioctl/ledger.json ]; then grep -c '"original_driver"' /var/lib/vfioctl/ledger.json; else echo 0; fi; }

RIF=$(ls /sys/bus/pci/devices/$R/net)
ip link set "$RIF" up
ip addr add 10.0.2.15/24 dev "$RIF"
ip route add default via 10.0.2.2 dev "$RIF"
echo "@@ setup e=$E p1=$P1 p2=$P2 r=$R bridge=$BR route_if=$RIF group_e=$(grp $E) group_p1=$(grp $P1) group_p2=$(grp $P2) group_bridge=$(grp $BR)"

vfioctl --json bind --dry-run $P1 > /tmp/dry.json; rc=$?
echo "@@ dry_run rc=$rc p1=$(drv $P1) p2=$(drv $P2) writes=$(grep -c 'echo ' /tmp/dry.json) companion=$(grep -c '"companion"' /tmp/dry.json) bridge=$(grep -c '"bridge"' /tmp/dry.json) ledger=$(led)"

vfioctl bind $E; rc=$?
echo "@@ bind_e rc=$rc driver=$(drv $E) override=$(ovr $E) node=$(test -c /dev/vfio/$(grp $E) && echo yes || echo no) ledger=$(led)"
vfioctl unbind $E; rc=$?
echo "@@ unbind_e rc=$rc driver=$(drv $E) override=$(ovr $E) ledger=$(led)"

vfioctl bind $P1; rc=$?
echo "@@ bind_pair rc=$rc p1=$(drv $P1) p2=$(drv $P2) bridge=$(drv $BR) node=$(test -c /dev/vfio/$(grp $P1) && echo yes || echo no) ledger=$(led)"
vfioctl unbind $P1; rc=$?
echo "@@ unbind_pair rc=$rc p1=$(drv $P1) p2=$(drv $P2) o1=$(ovr $P1) o2=$(ovr $P2) ledger=$(led)"

vfioctl bind --no-companions $P1 2>/tmp/err; rc=$?
echo "@@ no_companions rc=$rc p1=$(drv $P1) reason=$(grep -c 'not viable without 0000:03:02.0' /tmp/err)"

vfioctl bind $R 2>/tmp/err; rc=$?
echo "@@ route rc=$rc driver=$(drv $R) named=$(grep -c "$RIF is up and carries the default route" /tmp/err) ledger=$(led)"

for step in override unbind probe; do
  VFIOCTL_FAULT_KILL_AFTER=$step vfioctl bind $P1 >/dev/null 2>&1; rc=$?
  mid="p1=$(drv $P1) o1=$(ovr $P1) ledger=$(led)"
  vfioctl restore --all >/dev/null 2>/tmp/err; rrc=$?
  echo "@@ kill_$step rc=$rc $mid restore_rc=$rrc after_p1=$(drv $P1) after_p2=$(drv $P2) after_o1=$(ovr $P1) after_o2=$(ovr $P2) after_ledger=$(led)"
done

# An override set by someone else is put back exactly, and --persist writes driverctl's file.
echo e1000e > /sys/bus/pci/devices/$E/driver_override
vfioctl bind --persist $E >/dev/null; rc=$?
echo "@@ persist rc=$rc driver=$(drv $E) file=$(cat /etc/driverctl.d/pci-$E 2>/dev/null || echo missing)"
vfioctl unbind --persist $E >/dev/null; rc=$?
echo "@@ unpersist rc=$rc driver=$(drv $E) override=$(ovr $E) file=$(test -e /etc/driverctl.d/pci-$E && echo present || echo gone)"
echo > /sys/bus/pci/devices/$E/driver_override
