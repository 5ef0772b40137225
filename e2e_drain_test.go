package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

// TestDrain_KillDashNine posts events to a relay that delivers them to a
// fake Segment, kills it with SIGKILL at random moments while it is
// delivering, restarts it on the same spool each time, and then checks that
// every acknowledged event reached Segment at least once, that a repeat
// always carries the messageId of the first delivery, and that the spool
// ends empty.
func TestDrain_KillDashNine(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	rng := rand.New(rand.NewPCG(e2eSeed(t), 7))
	fake := segmenttest.New("drain-write-key")
	defer fake.Close()
	path := filepath.Join(t.TempDir(), "spool.db")
	start := func() *e2eRelay {
		// A modest rate keeps the drainer busy long enough for the kills to
		// land mid-delivery; batches of 50 keep several uploads in flight.
		return e2eStartRaw(t, "serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--spool", path,
			"--insecure-no-auth", "--write-key", "drain-write-key", "--segment-endpoint", fake.URL,
			"--rate", "3000", "--burst", "50")
	}

	const (
		clients   = 8
		perClient = 40
		perReq    = 10
	)
	relayP := start()
	// The current relay's URL, and a channel closed when it is replaced.
	var mu sync.Mutex
	url := relayP.URL
	replaced := make(chan struct{})
	var ledger e2eLedger
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := e2eClient()
			for r := range perClient {
				users := make([]string, perReq)
				for i := range users {
					users[i] = fmt.Sprintf("drain-c%d-r%d-e%d", c, r, i)
				}
				mu.Lock()
				u, next := url, replaced
				mu.Unlock()
				o := e2ePost(hc, u, users, 600, false, "load")
				ledger.add(o)
				if o.noAnswer() {
					// The relay is being restarted: wait for the new one.
					select {
					case <-next:
					case <-time.After(10 * time.Second):
					}
				}
			}
		}()
	}

	kills := 0
	for kills < 4 {
		delay := 80*time.Millisecond + time.Duration(rng.Int64N(int64(320*time.Millisecond)))
		time.Sleep(delay) // run for a random while before the kill: the point of the test
		delivered := len(fake.Delivered())
		relayP.Kill()
		relayP.Wait(10 * time.Second)
		kills++
		t.Logf("kill -9 #%d after %v; %d distinct messages delivered so far", kills, delay.Round(time.Millisecond), delivered)
		relayP = start()
		mu.Lock()
		url = relayP.URL
		close(replaced)
		replaced = make(chan struct{})
		mu.Unlock()
	}
	wg.Wait()

	// Which events were acknowledged.
	acked := map[string]bool{}
	tally := map[string]int{}
	for _, o := range ledger.all() {
		switch {
		case o.ok():
			tally["2xx"]++
			for _, u := range o.Users {
				acked[u] = true
			}
		case o.noAnswer():
			tally["no answer"]++
		default:
			tally[fmt.Sprintf("%d", o.Status)]++
		}
	}
	t.Logf("requests: %v; %d events acknowledged", tally, len(acked))
	if len(acked) < clients*perReq {
		t.Fatalf("only %d events acknowledged: the load did not run", len(acked))
	}

	// Wait until every acknowledged event has reached the fake.
	byUser := func() map[string]map[string]int {
		out := map[string]map[string]int{}
		ok := map[int]bool{}
		for i, r := range fake.Requests() {
			ok[i] = r.Status == http.StatusOK
		}
		for _, m := range fake.Messages() {
			if !ok[m.Request] {
				continue
			}
			var msg struct {
				UserID string `json:"userId"`
			}
			if err := json.Unmarshal(m.Raw, &msg); err != nil {
				t.Fatalf("fake received a message that is not JSON: %v", err)
			}
			if out[msg.UserID] == nil {
				out[msg.UserID] = map[string]int{}
			}
			out[msg.UserID][m.MessageID]++
		}
		return out
	}
	deadline := time.Now().Add(60 * time.Second)
	var got map[string]map[string]int
	for {
		got = byUser()
		missing := 0
		for u := range acked {
			if len(got[u]) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged events never reached Segment", missing, len(acked))
		}
		fake.WaitDelivered(len(fake.Delivered())+1, time.Second)
	}
	relayP.StopClean(20 * time.Second)

	repeats := 0
	for u, ids := range got {
		if len(ids) != 1 {
			t.Errorf("event %s reached Segment under %d messageIds %v: a redelivery must reuse the messageId", u, len(ids), ids)
		}
		for _, n := range ids {
			repeats += n - 1
		}
	}
	t.Logf("%d events delivered, %d repeat deliveries (same messageId: Segment drops them)", len(got), repeats)
	if p := fake.Problems(); len(p) > 0 {
		t.Errorf("the fake Segment saw protocol problems: %v", p)
	}

	if st := stoppedSpoolStats(t, path); st.Pending != 0 || st.Dead != 0 {
		t.Errorf("after delivering everything the spool holds %d pending and %d dead records, want 0 and 0", st.Pending, st.Dead)
	}
}

// e2eStartRaw starts the relay with exactly args.
func e2eStartRaw(t *testing.T, args ...string) *e2eRelay {
	t.Helper()
	p, err := e2eStartOpts(t, e2eStartOptions{Raw: true}, "", args...)
	if err != nil {
		t.Fatalf("starting relay: %v", err)
	}
	return p
}
