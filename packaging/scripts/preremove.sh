#!/bin/sh
# gwenrelay prerm (deb: remove|upgrade|...; rpm %preun: 0 erase, 1+ upgrade).
#
# On removal: stops and disables the service, then says what the spool still
# holds: undelivered events are never deleted without a word.
set -e

case "$1" in
remove | 0) ;;
*) exit 0 ;; # an upgrade: the new package restarts the running service
esac

if [ -d /run/systemd/system ]; then
	systemctl stop gwenrelay.socket gwenrelay.service || true
fi
if command -v systemctl >/dev/null 2>&1; then
	if [ "$1" = remove ] && [ -d /etc/gwenrelay ]; then
		# dpkg keeps the configuration until a purge: remember what was
		# enabled, so that a reinstall enables it again (see postinst).
		enabled=
		for unit in gwenrelay.service gwenrelay.socket; do
			if systemctl --quiet is-enabled "$unit" 2>/dev/null; then
				enabled="$enabled $unit"
			fi
		done
		if [ -n "$enabled" ]; then
			echo "${enabled# }" >/etc/gwenrelay/.enabled-at-removal
		fi
	fi
	systemctl --quiet disable gwenrelay.service gwenrelay.socket >/dev/null 2>&1 || true
fi

spool=/var/lib/gwenrelay/spool.db
marker=/var/lib/gwenrelay/.spool-empty-at-removal
rm -f "$marker"
[ -e "$spool" ] || exit 0
# The service is stopped, so this reads the file itself (read-only); a
# gwenrelay still running outside systemd answers on its admin socket.
if stats=$(gwenrelay spool stats --json --spool "$spool" 2>&1); then
	pending=$(printf '%s\n' "$stats" | sed -n 's/.*"pending":\([0-9][0-9]*\).*/\1/p')
	dead=$(printf '%s\n' "$stats" | sed -n 's/.*"dead":\([0-9][0-9]*\).*/\1/p')
fi
if [ -n "${pending:-}" ] && [ -n "${dead:-}" ]; then
	if [ "$pending" -eq 0 ] && [ "$dead" -eq 0 ]; then
		# Nothing undelivered: a purge may delete the spool.
		: >"$marker"
	else
		echo "gwenrelay: $spool still holds undelivered events (pending: $pending, dead letters: $dead), so it is kept (a purge keeps it too): reinstall gwenrelay to deliver them, or drop them with: rm -r /var/lib/gwenrelay"
	fi
else
	echo "gwenrelay: could not read the spool $spool, so it is kept (also on purge): ${stats:-}"
fi
exit 0
