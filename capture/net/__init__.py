"""The capture kernel's network: the plan from dracut's ``ip=`` arguments or
KDUMP_NETCONFIG (:mod:`.plan`), and bringing it up with iproute2 and a DHCP
client (:mod:`.bringup`).  Runs in the capture kernel; the production side
only renders plans into kernel arguments."""
