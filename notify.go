package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks systemd's notify protocol (Type=notify): READY=1 once the
// spool is open and the listener bound, RELOADING=1/READY=1 around a reload,
// STOPPING=1, STATUS= lines, and WATCHDOG=1 while the process is making
// progress. Outside systemd (no $NOTIFY_SOCKET) it does nothing.
type notifier struct {
	log *slog.Logger
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{log: log}
}

// send passes the states to systemd; without $NOTIFY_SOCKET SdNotify
// sends nothing.
func (n *notifier) send(states ...string) {
	msg := ""
	for i, s := range states {
		if i > 0 {
			msg += "\n"
		}
		msg += s
	}
	if _, err := daemon.SdNotify(false, msg); err != nil {
		n.log.Warn("telling systemd", "state", msg, "error", err)
	}
}

// watchdog pings systemd's watchdog at half its interval, but only while
// alive says the process is making progress: a wedged process must be
// killed and restarted, not kept alive by a ticker. status is sent at each
// round too. It returns when ctx ends.
func (n *notifier) watchdog(ctx context.Context, alive func(stall time.Duration) error, status func() string) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("reading the watchdog settings", "error", err)
	}
	every := interval / 2
	if interval <= 0 {
		every = 5 * time.Second // STATUS only
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		states := []string{"STATUS=" + status()}
		if interval > 0 {
			// The drainer's loop beats once a second, so a stall shorter
			// than a few seconds would be noise, not a wedge.
			if err := alive(max(every, 3*time.Second)); err != nil {
				if !failing {
					n.log.Error("not pinging the watchdog: the process is not making progress; systemd will restart it", "error", err)
				}
				failing = true
				n.send(states...)
				continue
			}
			if failing {
				n.log.Info("progress again; pinging the watchdog")
			}
			failing = false
			states = append(states, "WATCHDOG=1")
		}
		n.send(states...)
	}
}

// describeStatus is the STATUS= line: what is waiting and how delivery goes.
func describeStatus(pending, dead int64, delivering string) string {
	return fmt.Sprintf("%d pending, %d dead-lettered; %s", pending, dead, delivering)
}
