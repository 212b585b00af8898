# The snapshot lab's guest setup, run inside the guest (busybox sh, vfioctl on PATH) by
# tests/snapshot_lab.rs through the agent. The guest is the bind lab's (tests/bind_lab.rs):
# an e1000e alone in its IOMMU group, two e1000 behind a pcie-pci-bridge (one group), and
# an e1000e that carries the default route. Prints `@@ setup e=.. p1=.. r=..` for the test.
bdf_of_mac() { for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && basename "$(readlink -f $n/device)"; done; }
mkdir -p /tmp /var/lib
E=$(bdf_of_mac 52:54:00:00:01:00)
P1=$(bdf_of_mac 52:54:00:00:03:01)
R=$(bdf_of_mac 52:54:00:00:04:00)
RIF=$(ls /sys/bus/pci/devices/$R/net)
ip link set "$RIF" up
ip addr add 10.0.2.15/24 dev "$RIF"
ip route add default via 10.0.2.2 dev "$RIF"
echo "@@ setup e=$E p1=$P1 r=$R route_if=$RIF"
