package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

func TestCanonicalJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"keys sorted, spaces dropped", `{ "b" : 1 , "a" : [ 1 , { "d":true, "c":null } ] }`, `{"a":[1,{"c":null,"d":true}],"b":1}`},
		{"numbers keep their text", `{"p":1.50,"big":12345678901234567890,"e":1E+2,"z":-0.0}`, `{"big":12345678901234567890,"e":1E+2,"p":1.50,"z":-0.0}`},
		{"escapes normalised", `{"s":"\u0041\/\u00e9"}`, `{"s":"A/é"}`},
		{"HTML not escaped", `{"s":"<a&b>"}`, `{"s":"<a&b>"}`},
		{"a bare scalar", `"x"`, `"x"`},
		{"last duplicate key wins", `{"a":1,"a":2}`, `{"a":2}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := canonicalJSON([]byte(tc.in))
			if err != nil {
				t.Fatalf("canonicalJSON: %v", err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			again, err := canonicalJSON(got)
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("not idempotent: %s -> %s (%v)", got, again, err)
			}
		})
	}
}

func TestDedupKeyAndMessageID(t *testing.T) {
	canon := []byte(`{"type":"t","userId":"u"}`)
	k := dedupKey("", 0, canon)
	if !bytes.Equal(k, dedupKey("", 5, canon)) {
		t.Error("without a header the index changes the key")
	}
	if bytes.Equal(k, dedupKey("", 0, []byte(`{"type":"t","userId":"v"}`))) {
		t.Error("different events share a key")
	}
	if bytes.Equal(dedupKey("k", 0, canon), dedupKey("k", 1, canon)) {
		t.Error("array index does not change a header key")
	}
	if !bytes.Equal(dedupKey("k", 0, canon), dedupKey("k", 0, []byte(`{}`))) {
		t.Error("the body changes a header key")
	}
	if bytes.Equal(dedupKey("k1", 0, canon), dedupKey("k", 10, canon)) {
		t.Error(`"k1"+0 and "k"+10 collide`)
	}
	id := messageIDFor(k)
	if len(id) >= 100 || !strings.HasPrefix(id, "gwenrelay-") || id != messageIDFor(k) {
		t.Errorf("messageIDFor = %q (%d chars)", id, len(id))
	}
}

func TestIngest_Idempotency(t *testing.T) {
	a, b, c := ingestEvent(1), ingestEvent(2), ingestEvent(3)
	key := func(k string) map[string]string { return map[string]string{"Idempotency-Key": k} }

	t.Run("same body twice", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		ids := wantAccepted(t, e.post(t, a, nil), http.StatusAccepted, 1, 0)
		again := wantAccepted(t, e.post(t, a, nil), http.StatusOK, 0, 1)
		if again[0] != ids[0] {
			t.Errorf("duplicate answered id %d, first copy is %d", again[0], ids[0])
		}
		if st := spoolStats(t, e.sp); st.Pending != 1 || st.DedupKeys != 1 {
			t.Errorf("stats %+v, want one record and one key", st)
		}
	})

	t.Run("same body under two keys is two events", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		wantAccepted(t, e.post(t, a, key("delivery-1")), http.StatusAccepted, 1, 0)
		wantAccepted(t, e.post(t, a, key("delivery-2")), http.StatusAccepted, 1, 0)
		wantAccepted(t, e.post(t, a, key("delivery-2")), http.StatusOK, 0, 1)
		recs := pendingRecords(t, e.sp)
		if len(recs) != 2 {
			t.Fatalf("%d records, want 2", len(recs))
		}
		for i, k := range []string{"delivery-1", "delivery-2"} {
			want := dedupKey(k, 0, nil)
			if !bytes.Equal(recs[i].Key, want) || recs[i].MessageID != messageIDFor(want) {
				t.Errorf("record %d: key %x messageId %q, want key of %q", i, recs[i].Key, recs[i].MessageID, k)
			}
			if !bytes.Equal(recs[i].Event, mustCanonical(t, a)) {
				t.Errorf("record %d event %s", i, recs[i].Event)
			}
		}
	})

	t.Run("the key wins over a different body", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		ids := wantAccepted(t, e.post(t, a, key("k")), http.StatusAccepted, 1, 0)
		again := wantAccepted(t, e.post(t, b, key("k")), http.StatusOK, 0, 1)
		if again[0] != ids[0] {
			t.Errorf("duplicate id %d, want %d", again[0], ids[0])
		}
		recs := pendingRecords(t, e.sp)
		if len(recs) != 1 || !bytes.Equal(recs[0].Event, mustCanonical(t, a)) {
			t.Fatalf("records %+v, want only the first body", recs)
		}
		// Without the header, the other body is its own event.
		wantAccepted(t, e.post(t, b, nil), http.StatusAccepted, 1, 0)
	})

	t.Run("header applies per array index", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		// Two equal bodies under one header are two events: index 0 and 1.
		ids := wantAccepted(t, e.post(t, ingestJSONArray(a, a), key("batch-7")), http.StatusAccepted, 2, 0)
		if ids[0] == ids[1] {
			t.Errorf("ids %v: equal bodies at two indexes collapsed", ids)
		}
		recs := pendingRecords(t, e.sp)
		for i, rec := range recs {
			if want := dedupKey("batch-7", i, nil); !bytes.Equal(rec.Key, want) || rec.MessageID != messageIDFor(want) {
				t.Errorf("record %d key %x, want index %d of batch-7", i, rec.Key, i)
			}
		}
		// A retry of the batch, whatever its bodies, is a duplicate at each index.
		again := wantAccepted(t, e.post(t, ingestJSONArray(b, c), key("batch-7")), http.StatusOK, 0, 2)
		if again[0] != ids[0] || again[1] != ids[1] {
			t.Errorf("retry ids %v, want %v", again, ids)
		}
		// A longer retry adds only the new index.
		more := wantAccepted(t, e.post(t, ingestJSONArray(a, a, c), key("batch-7")), http.StatusAccepted, 1, 2)
		if more[0] != ids[0] || more[1] != ids[1] || more[2] == ids[0] || more[2] == ids[1] {
			t.Errorf("ids %v after %v", more, ids)
		}
		if st := spoolStats(t, e.sp); st.Pending != 3 {
			t.Errorf("%d pending, want 3", st.Pending)
		}
	})

	t.Run("mixed seen and new", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		first := wantAccepted(t, e.post(t, a, nil), http.StatusAccepted, 1, 0)
		ids := wantAccepted(t, e.post(t, ingestJSONArray(a, b), nil), http.StatusAccepted, 1, 1)
		if ids[0] != first[0] || ids[1] == first[0] {
			t.Errorf("ids %v, want [%d, new]", ids, first[0])
		}
		recs := pendingRecords(t, e.sp)
		if len(recs) != 2 {
			t.Fatalf("%d records, want 2", len(recs))
		}
		wantRecord(t, recs[0], a)
		wantRecord(t, recs[1], b)
	})

	t.Run("repeat inside one request", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		ids := wantAccepted(t, e.post(t, ingestJSONArray(a, b, a), nil), http.StatusAccepted, 2, 1)
		if ids[2] != ids[0] {
			t.Errorf("ids %v: the repeat does not point at the first copy", ids)
		}
	})

	t.Run("key order and whitespace do not matter", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		one := []byte(`{"type":"wallet_update","userId":"u","state":{"coins":5,"vip":false},"updates":[{"a":1,"b":2}]}`)
		two := []byte("{\n  \"updates\": [ { \"b\": 2, \"a\": 1 } ],\n  \"state\": {\"vip\":false, \"coins\":5},\n  \"userId\": \"\\u0075\",\n  \"type\": \"wallet_update\"\n}\n")
		ids := wantAccepted(t, e.post(t, one, nil), http.StatusAccepted, 1, 0)
		again := wantAccepted(t, e.post(t, two, nil), http.StatusOK, 0, 1)
		if again[0] != ids[0] {
			t.Errorf("ids %v and %v", ids, again)
		}
		if !bytes.Equal(mustCanonical(t, one), mustCanonical(t, two)) {
			t.Error("canonical forms differ")
		}
		wantRecord(t, pendingRecords(t, e.sp)[0], one)
	})

	t.Run("numbers keep their literal text", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		body := []byte(`{"type":"shop_item_update","userId":"u","productId":12345678901234567890,"state":{"price":1.50,"big":12345678901234567890,"tiny":1e-7,"exp":2E+3,"neg":-0.0}}`)
		wantAccepted(t, e.post(t, body, nil), http.StatusAccepted, 1, 0)
		rec := pendingRecords(t, e.sp)[0]
		want := `{"productId":12345678901234567890,"state":{"big":12345678901234567890,"exp":2E+3,"neg":-0.0,"price":1.50,"tiny":1e-7},"type":"shop_item_update","userId":"u"}`
		if string(rec.Event) != want {
			t.Errorf("stored event\n%s\nwant\n%s", rec.Event, want)
		}
		// And the mapped message carries them unchanged.
		ev, err := ParseEvent(rec.Event, ingestTestNow)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := DefaultMapping("").Map(ev, rec.ReceivedAt, rec.MessageID)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := MarshalMessage(msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, lit := range []string{`1.50`, `12345678901234567890`, `1e-7`, `2E+3`} {
			if !bytes.Contains(enc, []byte(lit)) {
				t.Errorf("message lost %s: %s", lit, enc)
			}
		}
	})

	t.Run("messageId derives from the key", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		wantAccepted(t, e.post(t, ingestJSONArray(a, b), nil), http.StatusAccepted, 2, 0)
		wantAccepted(t, e.post(t, c, key(strings.Repeat("k", 500))), http.StatusAccepted, 1, 0)
		seen := map[string]bool{}
		for _, rec := range pendingRecords(t, e.sp) {
			if rec.MessageID != messageIDFor(rec.Key) {
				t.Errorf("record %d messageId %q, want %q", rec.ID, rec.MessageID, messageIDFor(rec.Key))
			}
			if n := len(rec.MessageID); n == 0 || n >= 100 {
				t.Errorf("record %d messageId is %d chars", rec.ID, n)
			}
			if seen[rec.MessageID] {
				t.Errorf("messageId %q repeated", rec.MessageID)
			}
			seen[rec.MessageID] = true
		}
	})

	t.Run("still a duplicate after delivery", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		ids := wantAccepted(t, e.post(t, a, nil), http.StatusAccepted, 1, 0)
		kids := wantAccepted(t, e.post(t, b, key("k")), http.StatusAccepted, 1, 0)
		if err := e.sp.Ack([]uint64{ids[0], kids[0]}); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		if st := spoolStats(t, e.sp); st.Pending != 0 {
			t.Fatalf("%d pending after Ack", st.Pending)
		}
		again := wantAccepted(t, e.post(t, a, nil), http.StatusOK, 0, 1)
		if again[0] != ids[0] {
			t.Errorf("duplicate id %d, want %d", again[0], ids[0])
		}
		wantAccepted(t, e.post(t, c, key("k")), http.StatusOK, 0, 1)
		if st := spoolStats(t, e.sp); st.Pending != 0 {
			t.Errorf("%d pending: a delivered event was spooled again", st.Pending)
		}
	})

	t.Run("spooled again once the window has passed", func(t *testing.T) {
		var clock atomic.Int64
		clock.Store(ingestTestNow.UnixNano())
		e := newIngestEnv(t, ingestEnvConfig{spoolOpt: spool.Options{
			DedupWindow: 24 * time.Hour,
			Now:         func() time.Time { return time.Unix(0, clock.Load()) },
		}})
		wantAccepted(t, e.post(t, a, nil), http.StatusAccepted, 1, 0)
		clock.Add(int64(24*time.Hour - time.Second))
		wantAccepted(t, e.post(t, a, nil), http.StatusOK, 0, 1)
		clock.Add(int64(2 * time.Second))
		wantAccepted(t, e.post(t, a, nil), http.StatusAccepted, 1, 0)
		if st := spoolStats(t, e.sp); st.Pending != 2 || st.DedupKeys != 1 {
			t.Errorf("stats %+v, want 2 records and 1 key", st)
		}
	})
}

// TestCanonicalJSON_SameAsRoundTrip: the direct canonical form is byte for
// byte what decoding and encoding give (stored events and dedup keys of
// earlier versions depend on it), on hand-picked corner cases and on many
// random documents.
func TestCanonicalJSON_SameAsRoundTrip(t *testing.T) {
	cases := []string{
		`{}`, `[]`, `""`, `0`, `-0`, `1.50`, `1e+10`, `-2.5E-3`, `true`, `false`, `null`,
		` { "b" : 1 , "a" : [ 1 , 2 , { } ] } `,
		`{"a":1,"a!":2,"a ":3,"":4,"ab":5}`,        // keys that are prefixes of others
		`{"k":1,"j":2,"k":3}`,                      // a key given twice: the last counts
		`{"k":{"x":1},"k":{"y":2}}`,                // ... also when the values are objects
		`{"s":"a\"b","t":"\u00e9\u0041","u":"\/"}`, // escapes: the round trip spells them its way
		"{\"s\":\"line\\nbreak\",\"\\u00e9\":1}",
		"{\"s\":\"é ü 中文 🎉\",\"é\":\"x\"}", // plain UTF-8 is kept
		"{\"s\":\"\u2028\"}",               // U+2028 is escaped by encoding/json
		`{"html":"<a href='x'>&</a>"}`,     // no HTML escaping
		`[1,[2,[3,[4,{"z":{"y":{"x":[]}}}]]]]`,
	}
	for _, ex := range readIngestExamples(t) {
		cases = append(cases, string(ex))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		cases = append(cases, randomJSON(rng, 0))
	}
	for _, c := range cases {
		if !json.Valid([]byte(c)) {
			t.Fatalf("test case is not valid JSON: %s", c)
		}
		want, err := canonicalJSONRoundTrip([]byte(c))
		if err != nil {
			t.Fatalf("round trip of %s: %v", c, err)
		}
		got, err := canonicalJSON([]byte(c))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("canonicalJSON(%s)\n = %s (%v)\nwant %s", c, got, err, want)
		}
	}
	// The fast path really is taken for a plain event.
	if _, ok := appendCanonical(nil, readIngestExamples(t)[0], 0, 0); !ok {
		t.Error("a plain GWEN event fell back to the round trip")
	}
	// Deep nesting takes the round trip (the direct form rescans each level:
	// depth times size), and the bytes are the same either way.
	for _, depth := range []int{maxCanonicalDepth / 2, maxCanonicalDepth/2 + 1, 5000} {
		doc := strings.Repeat(`{"a":[`, depth) + `"` + strings.Repeat("x", 1<<16) + `"` + strings.Repeat(`]}`, depth)
		_, direct := appendCanonical(nil, []byte(doc), 0, 0)
		if want := depth*2 <= maxCanonicalDepth; direct != want {
			t.Errorf("depth %d: direct form taken %v, want %v", depth*2, direct, want)
		}
		want, err := canonicalJSONRoundTrip([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := canonicalJSON([]byte(doc)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("depth %d: canonicalJSON differs from the round trip (%v)", depth*2, err)
		}
	}
}

// randomJSON writes a random JSON value with random spacing, keys drawn from
// a small set (so that sorting, prefixes and repeats all happen) and strings
// that sometimes need escaping.
func randomJSON(rng *rand.Rand, depth int) string {
	sp := func() string { return []string{"", "", " ", "\n  ", "\t"}[rng.IntN(5)] }
	keys := []string{"a", "b", "ab", "a!", "a ", "B", "é", "type", "userId", "x-y", ""}
	strs := []string{"", "v", "a b", "é", "中", "q\\\"q", "back\\\\slash", "\\u0041", "tab\\t", "<&>", "🎉"}
	switch k := rng.IntN(10); {
	case depth < 4 && k < 3:
		n := rng.IntN(5)
		var b strings.Builder
		b.WriteString("{" + sp())
		for i := range n {
			if i > 0 {
				b.WriteString("," + sp())
			}
			fmt.Fprintf(&b, "%q%s:%s%s", keys[rng.IntN(len(keys))], sp(), sp(), randomJSON(rng, depth+1))
		}
		return b.String() + sp() + "}"
	case depth < 4 && k < 5:
		n := rng.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = sp() + randomJSON(rng, depth+1) + sp()
		}
		return "[" + strings.Join(parts, ",") + "]"
	case k < 7:
		return `"` + strs[rng.IntN(len(strs))] + `"`
	case k < 9:
		return []string{"0", "-1", "3.14", "1e3", "2.50", "-0.0", "12345678901234567890"}[rng.IntN(7)]
	}
	return []string{"true", "false", "null"}[rng.IntN(3)]
}
