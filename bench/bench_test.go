package main

import (
	"encoding/json"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	cases := []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(4, 1, 3, 2), 50, 2 * time.Millisecond}, // nearest rank: ceil(0.5*4) = 2nd
		{ms(4, 1, 3, 2), 75, 3 * time.Millisecond},
		{ms(4, 1, 3, 2), 100, 4 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 50, 3 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 1, 1 * time.Millisecond},
	}
	for _, c := range cases {
		if got := percentile(append([]time.Duration(nil), c.in...), c.p); got != c.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", c.in, c.p, got, c.want)
		}
	}
	// 1..100 ms: p50 is 50 ms, p99 is 99 ms.
	var hundred []time.Duration
	for i := 100; i >= 1; i-- {
		hundred = append(hundred, time.Duration(i)*time.Millisecond)
	}
	got := percentiles(hundred, 50, 99, 100)
	if got[0] != 50*time.Millisecond || got[1] != 99*time.Millisecond || got[2] != 100*time.Millisecond {
		t.Errorf("percentiles(1..100 ms, 50, 99, 100) = %v, want [50ms 99ms 100ms]", got)
	}
}

func TestMedian(t *testing.T) {
	cases := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1}, 10},
	}
	for _, c := range cases {
		in := append([]float64(nil), c.in...)
		if got := median(in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Errorf("median modified its input: %v", in)
			}
		}
	}
	if got := medianDuration([]time.Duration{3, 1, 2, 4}); got != 3 { // (2+3)/2 rounded
		t.Errorf("medianDuration = %v, want 3ns", got)
	}
}

func TestEventBody(t *testing.T) {
	b, err := newEventBody(eventSize, time.Unix(1717416000, 0))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, in := range []struct {
		nonce  uint32
		worker uint16
		seq    uint64
	}{{0, 0, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1 << 48}, {0, 0, 1 << 56}, {0, 0, 1 << 63}} {
		body := b.build(in.nonce, in.worker, in.seq)
		if len(body) != eventSize {
			t.Fatalf("body is %d bytes, want %d", len(body), eventSize)
		}
		var ev struct {
			Type   string `json:"type"`
			UserID string `json:"userId"`
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Fatalf("body is not JSON: %v", err)
		}
		if ev.Type != "achievement_update" || len(ev.UserID) != uuidLen {
			t.Fatalf("type %q userId %q", ev.Type, ev.UserID)
		}
		if seen[ev.UserID] {
			t.Fatalf("userId %s repeats for %+v", ev.UserID, in)
		}
		seen[ev.UserID] = true
	}
}

func TestFmtInt(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := fmtInt(in); got != want {
			t.Errorf("fmtInt(%d) = %q, want %q", in, got, want)
		}
	}
}
