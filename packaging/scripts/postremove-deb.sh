#!/bin/sh
# gwenrelay postrm for Debian (remove|purge|upgrade|...).
#
# purge deletes the configuration (/etc/gwenrelay, with the write key and the
# tokens) and the spool -- but the spool only if it held no undelivered event
# when the package was removed (see prerm); otherwise it stays, and we say so.
# The gwenrelay user stays: files it owns may remain, and its uid must not be
# reused for someone else.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi

if [ "$1" = purge ]; then
	rm -rf /etc/gwenrelay
	rm -f /etc/default/gwenrelay.dpkg-old /etc/default/gwenrelay.dpkg-dist \
		/etc/default/gwenrelay.dpkg-new /etc/default/gwenrelay.ucf-old
	if [ -d /var/lib/gwenrelay ]; then
		if [ ! -e /var/lib/gwenrelay/spool.db ] || [ -e /var/lib/gwenrelay/.spool-empty-at-removal ]; then
			rm -rf /var/lib/gwenrelay
		else
			echo "gwenrelay: kept /var/lib/gwenrelay: its spool may hold undelivered events. To drop them: rm -r /var/lib/gwenrelay"
		fi
	fi
fi
exit 0
