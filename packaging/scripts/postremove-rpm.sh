#!/bin/sh
# gwenrelay %postun for RPM (0: erased, 1+: upgraded).
#
# RPM keeps /var/lib/gwenrelay (the spool) on erase, and saves a modified
# config file as .rpmsave; prerm said what the spool still holds.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ "${1:-0}" -ge 1 ]; then
		# An upgrade: the new files are in place; restart it only if it runs.
		systemctl try-restart gwenrelay.service || true
	fi
fi
exit 0
