#!/bin/sh -x
# Prestart OCI hook from the Kata Containers NVIDIA GPU guide: Kata runs every executable
# under <guest_hook_path>/prestart in the guest before the container starts.
/usr/bin/nvidia-container-toolkit -debug "$@"
