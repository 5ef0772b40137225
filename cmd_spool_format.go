package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/gwenrelay/gwenrelay/relay"
)

// Output of the spool commands. It is made from the views alone, so it is
// the same whether they came from the daemon or from the file.

func formatStats(w io.Writer, v relay.StatsView, source string, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("spool", "%s", v.Spool)
	row("source", "%s", source)
	row("pending", "%d records, %s", v.Pending, formatBytes(v.PendingBytes))
	row("dead", "%d records, %s", v.Dead, formatBytes(v.DeadBytes))
	if v.OldestPendingAt != nil {
		row("oldest pending", "%s ago (%s)", formatAge(now.Sub(*v.OldestPendingAt)), v.OldestPendingAt.UTC().Format(time.RFC3339))
	} else {
		row("oldest pending", "-")
	}
	row("file size", "%s", formatBytes(v.FileSize))
	row("dedup keys", "%d", v.DedupKeys)
	var hist []string
	for _, a := range v.Attempts {
		hist = append(hist, fmt.Sprintf("%s: %d", a.Attempts, a.Records))
	}
	row("attempts", "%s", strings.Join(hist, "  "))
	if d := v.Delivery; d != nil {
		state := "delivering"
		if d.BackingOff {
			state = "backing off after a failure"
		}
		row("delivery", "%s; since start: %d delivered, %d failed attempts, %d dead-lettered; %d in flight", state, d.Delivered, d.Failed, d.DeadLettered, d.InFlight)
	}
	return tw.Flush()
}

// recordTable writes records as an aligned table.
type recordTable struct {
	tw  *tabwriter.Writer
	now time.Time
}

func newRecordTable(w io.Writer, now time.Time) *recordTable {
	t := &recordTable{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0), now: now}
	fmt.Fprintln(t.tw, "ID\tAGE\tTYPE\tUSER\tATTEMPTS\tLAST ERROR")
	return t
}

func (t *recordTable) add(v relay.RecordView) {
	typ, user, lastErr := v.Type, v.UserID, v.LastError
	if v.Unreadable != "" {
		typ, lastErr = "?", "unreadable: "+v.Unreadable
	}
	fmt.Fprintf(t.tw, "%d\t%s\t%s\t%s\t%d\t%s\n", v.ID, formatAge(t.now.Sub(v.ReceivedAt)),
		cell(typ, 32), cell(user, 40), v.Attempts, cell(lastErr, 80))
}

func (t *recordTable) flush() error { return t.tw.Flush() }

// printable replaces control characters (which webhook senders control:
// an escape sequence in a userId must not reach the operator's terminal).
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// cell makes s fit one table cell: one line, at most n runes, "-" if empty.
func cell(s string, n int) string {
	s = printable(strings.Join(strings.Fields(s), " "))
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func formatShow(w io.Writer, v relay.ShowView, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", k, printable(fmt.Sprintf(format, args...)))
	}
	row("id", "%d", v.ID)
	row("state", "%s", v.State)
	row("kind", "%s", v.Kind)
	row("received", "%s (%s ago)", v.ReceivedAt.UTC().Format(time.RFC3339Nano), formatAge(now.Sub(v.ReceivedAt)))
	row("type", "%s", orDash(v.Type))
	row("user", "%s", orDash(v.UserID))
	row("message id", "%s", orDash(v.MessageID))
	row("attempts", "%d", v.Attempts)
	if v.LastAttemptAt != nil {
		row("last attempt", "%s (%s ago)", v.LastAttemptAt.UTC().Format(time.RFC3339Nano), formatAge(now.Sub(*v.LastAttemptAt)))
	} else {
		row("last attempt", "-")
	}
	row("last error", "%s", orDash(v.LastError))
	if v.Unreadable != "" {
		row("unreadable", "%s", v.Unreadable)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nevent:\n%s\n", indentJSON(v.Event))
	if v.MessageError != "" {
		fmt.Fprintf(w, "\nsegment message: cannot be made: %s\n", v.MessageError)
	} else {
		fmt.Fprintf(w, "\nsegment message:\n%s\n", indentJSON(v.Message))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func indentJSON(b []byte) string {
	var out bytes.Buffer
	if json.Indent(&out, b, "  ", "  ") != nil {
		return "  " + printable(string(b))
	}
	// JSON escapes C0 controls in strings, but not C1 ones.
	lines := strings.Split(out.String(), "\n")
	for i := range lines {
		lines[i] = printable(lines[i])
	}
	return "  " + strings.Join(lines, "\n")
}

// formatAge is a duration in at most two units: 45s, 3m12s, 5h4m, 2d3h.
func formatAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

// formatBytes is a size in binary units, exact below 1 KiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// progress draws a one-line progress report on a terminal. A nil
// *progress draws nothing, so callers need not check.
type progress struct {
	w     io.Writer
	verb  string
	total int64
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, verb string, total int64) *progress {
	return &progress{w: w, verb: verb, total: total, start: time.Now()}
}

func (p *progress) update(n int64) {
	if p == nil || n%1000 != 0 || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.draw(n, "\r")
}

func (p *progress) draw(n int64, end string) {
	const width = 30
	filled := width
	pct := 100.0
	if p.total > 0 {
		pct = min(100, 100*float64(n)/float64(p.total))
		filled = int(pct / 100 * width)
	}
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "\r[%s%s] %3.0f%%  %d/%d records %s  %.0f/s\x1b[K%s", strings.Repeat("#", filled), strings.Repeat(".", width-filled), pct, n, p.total, p.verb, rate, end)
}

func (p *progress) done(n int64) {
	if p == nil {
		return
	}
	p.draw(n, "\n")
}
