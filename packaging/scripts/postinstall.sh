#!/bin/sh
# gwenrelay postinst (deb: configure [OLD-VERSION]; rpm %post: 1 install, 2 upgrade).
#
# Enables the service on the first install, and starts it only once the
# Segment write key is in place: without it the service cannot deliver.
set -e

case "$1" in
configure) if [ -z "$2" ]; then action=install; else action=upgrade; fi ;;
1) action=install ;;
[0-9]*) action=rpm-upgrade ;; # the old package's %postun restarts it
*) exit 0 ;;                  # abort-upgrade, abort-remove, ...
esac

# The user normally exists already (preinst); this also covers a user
# deleted by hand since.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers gwenrelay.conf
elif ! getent passwd gwenrelay >/dev/null 2>&1; then
	if getent group gwenrelay >/dev/null 2>&1; then
		group_opt="--gid gwenrelay"
	else
		group_opt="--user-group"
	fi
	# shellcheck disable=SC2086
	useradd --system $group_opt --home-dir /var/lib/gwenrelay --no-create-home \
		--shell /usr/sbin/nologin --comment "gwenrelay webhook relay" gwenrelay
fi

if [ "$action" = install ]; then
	# In case the group did not exist yet when the files were unpacked.
	for f in /etc/gwenrelay /etc/gwenrelay/gwenrelay.yaml; do
		if [ -e "$f" ]; then chown root:gwenrelay "$f"; fi
	done
	if [ -d /etc/gwenrelay ]; then chmod 0750 /etc/gwenrelay; fi
fi
# A reinstall forgets what an earlier removal noted about the spool.
rm -f /var/lib/gwenrelay/.spool-empty-at-removal

# What was enabled when the package was removed (not purged), to restore it
# on this reinstall; see prerm.
enable_units=
if [ -f /etc/gwenrelay/.enabled-at-removal ]; then
	enable_units=$(cat /etc/gwenrelay/.enabled-at-removal)
	rm -f /etc/gwenrelay/.enabled-at-removal
	action=reinstall
elif [ "$action" = install ]; then
	enable_units=gwenrelay.service
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
# Enabling works without a running systemd too (an image build, a chroot):
# it only makes the symlinks. Not on upgrades: an operator's
# `systemctl disable` stays.
if [ -n "$enable_units" ] && command -v systemctl >/dev/null 2>&1; then
	# shellcheck disable=SC2086
	systemctl --quiet enable $enable_units >/dev/null 2>&1 || true
fi

# Never started without the write key: it could not deliver. An upgrade
# restarts a running service whatever the key (a drop-in may give it another).
running_systemd=false
if [ -d /run/systemd/system ]; then running_systemd=true; fi
if [ ! -e /etc/gwenrelay/write-key ]; then
	if ! { [ "$action" = upgrade ] && $running_systemd && systemctl --quiet is-active gwenrelay.service; }; then
		echo "gwenrelay: not started: put the Segment write key in /etc/gwenrelay/write-key (root:root 0600) and the senders' tokens in /etc/gwenrelay/inbound-tokens, then run: systemctl start gwenrelay"
	fi
fi
case "$action" in
install | reinstall)
	if [ -e /etc/gwenrelay/write-key ] && [ -n "$enable_units" ]; then
		if $running_systemd; then
			# shellcheck disable=SC2086
			systemctl start $enable_units ||
				echo "gwenrelay: the service did not start; see: journalctl -u gwenrelay"
		else
			echo "gwenrelay: not started: systemd is not running here"
		fi
	fi
	;;
upgrade)
	if $running_systemd; then
		# Only if it runs: an operator's stop stays a stop.
		systemctl try-restart gwenrelay.service ||
			echo "gwenrelay: the service did not restart; see: journalctl -u gwenrelay"
	fi
	;;
esac
exit 0
