package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"
)

// TestFakeSegmentCounts sends batches the way the relay does (analytics-go,
// messageIds "gwenrelay-<sha256 hex>", one repeated) and checks the fake's
// cheap count against what was sent.
func TestFakeSegmentCounts(t *testing.T) {
	const n = 600
	f, err := newFakeSegment(true, n)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	c, err := analytics.NewWithConfig(drainWriteKey, analytics.Config{Endpoint: f.URL, Interval: 50 * time.Millisecond, BatchSize: 250})
	if err != nil {
		t.Fatal(err)
	}
	id := func(i int) string {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		return "gwenrelay-" + hex.EncodeToString(h[:])
	}
	for i := 0; i < n; i++ {
		// A property holding the needle's text must not be counted: inside a
		// JSON string its quotes are escaped.
		if err := c.Enqueue(analytics.Track{MessageId: id(i), UserId: fmt.Sprintf("u%d", i), Event: "x",
			Properties: analytics.NewProperties().Set("note", `"messageId":"gwenrelay-0000000000000000"`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Enqueue(analytics.Track{MessageId: id(7), UserId: "u7", Event: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("done was not closed")
	}
	got := f.counts()
	if got.Messages != n+1 || got.Distinct != n || got.Dups != 1 || got.UnknownID != 0 || got.BadAuth != 0 || got.BadBody != 0 {
		t.Fatalf("counts %+v; want %d messages, %d distinct, 1 repeat", got, n+1, n)
	}
	if f.arrived() != n {
		t.Fatalf("decoded %d userIds, want %d", f.arrived(), n)
	}
	var sum int64
	for _, v := range f.histogram() {
		sum += v
	}
	if sum != n+1 {
		t.Fatalf("histogram holds %d messages, want %d", sum, n+1)
	}

	bad, err := analytics.NewWithConfig("wrong", analytics.Config{Endpoint: f.URL, Interval: 10 * time.Millisecond,
		RetryAfter: func(int) time.Duration { return time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.Enqueue(analytics.Track{MessageId: id(1), UserId: "u", Event: "x"})
	_ = bad.Close()
	if got := f.counts(); got.BadAuth == 0 || got.Messages != n+1 {
		t.Fatalf("a wrong write key: %+v", got)
	}
}

func TestRelayLog(t *testing.T) {
	l := newRelayLog()
	_, _ = l.Write([]byte(`{"time":"x","level":"INFO","msg":"spool open"}` + "\n" + `{"level":"INFO","msg":"listening","addr":"127.0.0.1:1234","version":"bench"}` + "\n{\"level\":\"WARN\",\"msg\":\"delivery"))
	_, _ = l.Write([]byte(" failed\"}\n{\"level\":\"WARN\",\"msg\":\"delivery failed\"}\ngwenrelay: boom\n"))
	select {
	case a := <-l.listening:
		if a != "127.0.0.1:1234" {
			t.Fatalf("addr %q", a)
		}
	default:
		t.Fatal("no listening addr")
	}
	s := l.summary()
	if len(s) != 2 || s[0] != "2× WARN delivery failed" || s[1] != "1× TEXT gwenrelay: boom" {
		t.Fatalf("summary %q", s)
	}
}

func TestHistStats(t *testing.T) {
	lo, mid, hi := histStats([]int64{5, 10, 30, 20, 1})
	if lo != 10 || mid != 20 || hi != 30 {
		t.Fatalf("got %d %d %d", lo, mid, hi)
	}
	if i := medianIndex([]float64{3, 1, 2}); i != 2 {
		t.Fatalf("medianIndex = %d", i)
	}
}
