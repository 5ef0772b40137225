#!/bin/sh
# gwenrelay preinst (deb: install|upgrade; rpm %pre: 1|2).
#
# Creates the system user before the files are unpacked, so that
# /etc/gwenrelay and its config file get their group (gwenrelay).
set -e

# The same line as /usr/lib/sysusers.d/gwenrelay.conf, which is not unpacked yet.
SYSUSERS_LINE='u gwenrelay - "gwenrelay webhook relay" /var/lib/gwenrelay /usr/sbin/nologin'

if ! getent passwd gwenrelay >/dev/null 2>&1; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		printf '%s\n' "$SYSUSERS_LINE" |
			systemd-sysusers --replace=/usr/lib/sysusers.d/gwenrelay.conf -
	else
		# useradd: passwd on Debian, shadow-utils on RHEL, both always installed.
		if getent group gwenrelay >/dev/null 2>&1; then
			group_opt="--gid gwenrelay"
		else
			group_opt="--user-group"
		fi
		# shellcheck disable=SC2086
		useradd --system $group_opt --home-dir /var/lib/gwenrelay --no-create-home \
			--shell /usr/sbin/nologin --comment "gwenrelay webhook relay" gwenrelay
	fi
fi
exit 0
