package relay

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/analytics-go/v3"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// mappingTestReceivedAt is a receive time in a non-UTC zone, so the tests
// also check that Map converts to UTC.
var mappingTestReceivedAt = time.Date(2024, 6, 3, 14, 30, 0, 123000000, time.FixedZone("CEST", 2*3600))

func TestMapping_Golden(t *testing.T) {
	m := DefaultMapping("test")
	for name, raw := range loadExamples(t) {
		t.Run(name, func(t *testing.T) {
			ev, err := ParseEvent(raw, eventTestNow)
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			msg, err := m.Map(ev, mappingTestReceivedAt, "gwenrelay-test-"+name)
			if err != nil {
				t.Fatalf("Map: %v", err)
			}
			enc, err := MarshalMessage(msg)
			if err != nil {
				t.Fatalf("MarshalMessage: %v", err)
			}
			var got bytes.Buffer
			if err := json.Indent(&got, enc, "", "  "); err != nil {
				t.Fatalf("MarshalMessage output is not JSON: %v\n%s", err, enc)
			}
			got.WriteByte('\n')

			path := filepath.Join("testdata", "golden", name+".json")
			if *updateGolden {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./relay -run TestMapping_Golden -update to create it)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("%s differs from the golden file (rerun with -update if the change is intended)\ngot:\n%s\nwant:\n%s", name, got.Bytes(), want)
			}
		})
	}
}

func TestMapping_GoldenCarriesExampleValues(t *testing.T) {
	// The golden files are compared byte for byte; this checks independently
	// that what they hold is right: the table's event name, and state and
	// updates equal, as JSON, to what GWEN sent.
	wantNames := map[string]string{
		"achievement_update":   "Achievement Update",
		"progression_update":   "Progression Update",
		"mission_update":       "Mission Update",
		"shop_item_update":     "Shop Item Update",
		"wallet_update":        "Wallet Update",
		"webhook_verification": "Webhook verification",
	}
	for name, raw := range loadExamples(t) {
		t.Run(name, func(t *testing.T) {
			ev, err := ParseEvent(raw, eventTestNow)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := DefaultMapping("test").Map(ev, mappingTestReceivedAt, "id")
			if err != nil {
				t.Fatal(err)
			}
			enc, err := MarshalMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			var out struct {
				Type       string                     `json:"type"`
				Event      string                     `json:"event"`
				UserID     string                     `json:"userId"`
				Timestamp  time.Time                  `json:"timestamp"`
				Properties map[string]json.RawMessage `json:"properties"`
			}
			if err := json.Unmarshal(enc, &out); err != nil {
				t.Fatal(err)
			}
			var in map[string]json.RawMessage
			if err := json.Unmarshal(raw, &in); err != nil {
				t.Fatal(err)
			}
			if out.Type != "track" || out.Event != wantNames[name] {
				t.Errorf("type %q event %q, want track %q", out.Type, out.Event, wantNames[name])
			}
			if !out.Timestamp.Equal(ev.Timestamp) {
				t.Errorf("timestamp %v, want %v", out.Timestamp, ev.Timestamp)
			}
			if len(out.Properties) != 5 {
				t.Errorf("properties has %d keys, want 5 (type, segmentId, productId, state, updates)", len(out.Properties))
			}
			for _, k := range []string{"type", "segmentId", "productId", "state", "updates"} {
				if !jsonEqual(t, out.Properties[k], in[k]) {
					t.Errorf("properties.%s = %s, want %s", k, out.Properties[k], in[k])
				}
			}
		})
	}
}

// jsonEqual compares two JSON texts ignoring layout (and, within objects, order).
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y bytes.Buffer
	if err := json.Compact(&x, a); err != nil {
		t.Fatalf("compact %s: %v", a, err)
	}
	if err := json.Compact(&y, b); err != nil {
		t.Fatalf("compact %s: %v", b, err)
	}
	var xv, yv any
	dx := json.NewDecoder(&x)
	dx.UseNumber()
	dy := json.NewDecoder(&y)
	dy.UseNumber()
	if dx.Decode(&xv) != nil || dy.Decode(&yv) != nil {
		return false
	}
	return reflect.DeepEqual(xv, yv)
}

// mapJSON parses body, maps it with m and returns the marshalled message.
func mapJSON(t *testing.T, m *Mapping, body string) (analytics.Message, string) {
	t.Helper()
	ev, err := ParseEvent([]byte(body), eventTestNow)
	if err != nil {
		t.Fatalf("ParseEvent(%s): %v", body, err)
	}
	msg, err := m.Map(ev, mappingTestReceivedAt, "mid-1")
	if err != nil {
		t.Fatalf("Map(%s): %v", body, err)
	}
	if err := msg.Validate(); err != nil {
		t.Fatalf("mapped message does not validate: %v", err)
	}
	enc, err := MarshalMessage(msg)
	if err != nil {
		t.Fatalf("MarshalMessage: %v", err)
	}
	return msg, string(enc)
}

func TestMapping_Track(t *testing.T) {
	const ctx = `"context":{"library":{"name":"gwenrelay","version":"v1.2.3"}}`
	m := DefaultMapping("v1.2.3")
	tests := []struct {
		name string
		body string
		want string
	}{
		{
			name: "unknown type: event name is the type as given",
			body: `{"type":"Level Up!","userId":"u1","timestamp":1717416000}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Level Up!","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"Level Up!"}}`,
		},
		{
			name: "spelling variants map to the table",
			body: `{"type":"Shop Item Update","userId":"u1","timestamp":1717416000}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Shop Item Update","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"Shop Item Update"}}`,
		},
		{
			name: "short spelling",
			body: `{"type":"verification","userId":"u1","timestamp":1717416000}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Webhook verification","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"verification"}}`,
		},
		{
			name: "no timestamp: receive time in UTC",
			body: `{"type":"wallet","userId":"u1"}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Wallet Update","timestamp":"2024-06-03T12:30:00.123Z",` + ctx + `,"properties":{"type":"wallet"}}`,
		},
		{
			name: "millisecond timestamp keeps its fraction",
			body: `{"type":"wallet","userId":"u1","timestamp":1717416000123}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Wallet Update","timestamp":"2024-06-03T12:00:00.123Z",` + ctx + `,"properties":{"type":"wallet"}}`,
		},
		{
			name: "nulls stay null, numbers keep their text, extras carried",
			body: `{"type":"mission","userId":"u1","timestamp":1717416000,"segmentId":null,"productId":12345678901234567890,"state":null,"updates":[1.50,1e400],"zeta":{"k":0.10},"alpha":null}`,
			want: `{"type":"track","messageId":"mid-1","userId":"u1","event":"Mission Update","timestamp":"2024-06-03T12:00:00Z",` + ctx +
				`,"properties":{"alpha":null,"productId":12345678901234567890,"segmentId":null,"state":null,"type":"mission","updates":[1.50,1e400],"zeta":{"k":0.10}}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, got := mapJSON(t, m, tt.body)
			if _, ok := msg.(analytics.Track); !ok {
				t.Errorf("Map returned %T, want analytics.Track", msg)
			}
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestMapping_Overrides(t *testing.T) {
	const config = `
listen: ":8080"
rate: 500
mapping:
  achievement_update:
    event: Badge Earned
  Wallet Update:
    call: identify
  shop:
    call: GROUP
  progression:
    call: page
    event: Progress Screen
  mission:
    call: page
`
	m, err := ParseMappingConfig([]byte(config), "v9")
	if err != nil {
		t.Fatalf("ParseMappingConfig: %v", err)
	}
	const ctx = `"context":{"library":{"name":"gwenrelay","version":"v9"}}`
	const state = `{"coins":150,"ratio":0.50}`
	tests := []struct {
		name     string
		body     string
		wantType reflect.Type
		want     string
	}{
		{
			name:     "track with a new event name",
			body:     `{"type":"Achievement Update","userId":"u1","timestamp":1717416000}`,
			wantType: reflect.TypeFor[analytics.Track](),
			want:     `{"type":"track","messageId":"mid-1","userId":"u1","event":"Badge Earned","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"Achievement Update"}}`,
		},
		{
			name:     "identify: state becomes traits",
			body:     `{"type":"wallet_update","userId":"u1","timestamp":1717416000,"segmentId":"s","state":` + state + `,"updates":[]}`,
			wantType: reflect.TypeFor[analytics.Identify](),
			want:     `{"type":"identify","messageId":"mid-1","userId":"u1","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"traits":{"coins":150,"ratio":0.50}}`,
		},
		{
			name:     "identify: null state, no traits",
			body:     `{"type":"wallet","userId":"u1","timestamp":1717416000,"state":null}`,
			wantType: reflect.TypeFor[analytics.Identify](),
			want:     `{"type":"identify","messageId":"mid-1","userId":"u1","timestamp":"2024-06-03T12:00:00Z",` + ctx + `}`,
		},
		{
			name:     "group: segmentId string",
			body:     `{"type":"shop_item_update","userId":"u1","timestamp":1717416000,"segmentId":"seg-1","productId":"prod-1","state":` + state + `}`,
			wantType: reflect.TypeFor[analytics.Group](),
			want:     `{"type":"group","messageId":"mid-1","userId":"u1","groupId":"seg-1","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"traits":{"coins":150,"ratio":0.50}}`,
		},
		{
			name:     "override on an alias covers every spelling",
			body:     `{"type":"ShopItem","userId":"u1","timestamp":1717416000,"productId":"prod-1"}`,
			wantType: reflect.TypeFor[analytics.Group](),
			want:     `{"type":"group","messageId":"mid-1","userId":"u1","groupId":"prod-1","timestamp":"2024-06-03T12:00:00Z",` + ctx + `}`,
		},
		{
			name:     "group: segmentId number keeps its text",
			body:     `{"type":"shop","userId":"u1","timestamp":1717416000,"segmentId":12345678901234567890}`,
			wantType: reflect.TypeFor[analytics.Group](),
			want:     `{"type":"group","messageId":"mid-1","userId":"u1","groupId":"12345678901234567890","timestamp":"2024-06-03T12:00:00Z",` + ctx + `}`,
		},
		{
			name:     "group: null segmentId falls back to productId",
			body:     `{"type":"shop","userId":"u1","timestamp":1717416000,"segmentId":null,"productId":"prod-1"}`,
			wantType: reflect.TypeFor[analytics.Group](),
			want:     `{"type":"group","messageId":"mid-1","userId":"u1","groupId":"prod-1","timestamp":"2024-06-03T12:00:00Z",` + ctx + `}`,
		},
		{
			name:     "group: empty segmentId falls back to productId",
			body:     `{"type":"shop","userId":"u1","timestamp":1717416000,"segmentId":"","productId":42}`,
			wantType: reflect.TypeFor[analytics.Group](),
			want:     `{"type":"group","messageId":"mid-1","userId":"u1","groupId":"42","timestamp":"2024-06-03T12:00:00Z",` + ctx + `}`,
		},
		{
			name:     "page with a name",
			body:     `{"type":"progression_update","userId":"u1","timestamp":1717416000,"state":{"a":1},"extra":true}`,
			wantType: reflect.TypeFor[analytics.Page](),
			want:     `{"type":"page","messageId":"mid-1","userId":"u1","name":"Progress Screen","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"extra":true,"state":{"a":1},"type":"progression_update"}}`,
		},
		{
			name:     "page without a name: the type as given",
			body:     `{"type":"Mission-Update","userId":"u1","timestamp":1717416000}`,
			wantType: reflect.TypeFor[analytics.Page](),
			want:     `{"type":"page","messageId":"mid-1","userId":"u1","name":"Mission-Update","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"Mission-Update"}}`,
		},
		{
			name:     "types without an override keep the default",
			body:     `{"type":"webhook_verification","userId":"u1","timestamp":1717416000}`,
			wantType: reflect.TypeFor[analytics.Track](),
			want:     `{"type":"track","messageId":"mid-1","userId":"u1","event":"Webhook verification","timestamp":"2024-06-03T12:00:00Z",` + ctx + `,"properties":{"type":"webhook_verification"}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, got := mapJSON(t, m, tt.body)
			if reflect.TypeOf(msg) != tt.wantType {
				t.Errorf("Map returned %T, want %v", msg, tt.wantType)
			}
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}

	t.Run("group without segmentId or productId is an error", func(t *testing.T) {
		for _, body := range []string{
			`{"type":"shop","userId":"u1"}`,
			`{"type":"shop","userId":"u1","segmentId":null,"productId":null}`,
			`{"type":"shop","userId":"u1","segmentId":"","productId":" "}`,
		} {
			ev, err := ParseEvent([]byte(body), eventTestNow)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := m.Map(ev, mappingTestReceivedAt, "mid-1")
			if err == nil {
				t.Fatalf("Map(%s) = %+v, want an error", body, msg)
			}
			const want = "group call needs a segmentId or productId (a non-empty string or number); the event has neither"
			if err.Error() != want {
				t.Errorf("error = %q, want %q", err, want)
			}
		}
	})
}

func TestMapping_HandBuiltUnknownCall(t *testing.T) {
	m := &Mapping{Overrides: map[string]Override{"wallet": {Call: "alias"}}}
	_, err := m.Map(Event{Type: "wallet", UserID: "u"}, mappingTestReceivedAt, "id")
	const want = `map "wallet": unknown call "alias" (allowed: track, identify, group, page)`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}

func TestMapping_ZeroValue(t *testing.T) {
	var m Mapping
	msg, err := m.Map(Event{Type: "mission", UserID: "u"}, mappingTestReceivedAt, "id")
	if err != nil {
		t.Fatal(err)
	}
	if tr, ok := msg.(analytics.Track); !ok || tr.Event != "Mission Update" {
		t.Errorf("zero Mapping gave %+v, want a Mission Update track", msg)
	}
}

func TestMapping_ParseConfig(t *testing.T) {
	t.Run("no mapping section gives the defaults", func(t *testing.T) {
		for _, cfg := range []string{``, `listen: ":8080"`, "mapping:\n", "# only a comment\n"} {
			m, err := ParseMappingConfig([]byte(cfg), "v")
			if err != nil {
				t.Fatalf("ParseMappingConfig(%q): %v", cfg, err)
			}
			if len(m.Overrides) != 0 || m.LibraryVersion != "v" {
				t.Errorf("ParseMappingConfig(%q) = %+v, want no overrides and version v", cfg, m)
			}
		}
	})
	t.Run("keys normalised, calls lower-cased, defaults filled", func(t *testing.T) {
		cfg := "unknown_flag: [1, 2]\nmapping:\n  Achievement Update: {call: ' Track ', event: Badge}\n  shopItemUpdate: {call: identify}\n  verification: {call: page}\n  custom-thing:\n  wallet: {}\n"
		m, err := ParseMappingConfig([]byte(cfg), "v")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Override{
			"achievement":          {Call: "track", Event: "Badge"},
			"shop_item":            {Call: "identify"},
			"webhook_verification": {Call: "page"},
			"custom_thing":         {Call: "track"},
			"wallet":               {Call: "track"},
		}
		if !reflect.DeepEqual(m.Overrides, want) {
			t.Errorf("Overrides = %+v\nwant        %+v", m.Overrides, want)
		}
	})
	tests := []struct {
		name string
		cfg  string
		want string
	}{
		{"unknown call", "mapping:\n  wallet_update:\n    call: alias\n",
			`config: mapping: type "wallet_update": unknown call "alias" (allowed: track, identify, group, page)`},
		{"unknown key", "mapping:\n  wallet:\n    evnet: X\n",
			`config: mapping: type "wallet": unknown key "evnet" (allowed: call, event)`},
		{"event on identify", "mapping:\n  wallet:\n    call: identify\n    event: X\n",
			`config: mapping: type "wallet": event "X" is only used by track and page calls, not identify`},
		{"event on group", "mapping:\n  shop:\n    call: group\n    event: X\n",
			`config: mapping: type "shop": event "X" is only used by track and page calls, not group`},
		{"two spellings of one type", "mapping:\n  wallet: {}\n  Wallet Update: {call: identify}\n",
			`config: mapping: types "Wallet Update" and "wallet" are the same type ("wallet") once normalised; keep one`},
		{"two aliases of one type", "mapping:\n  shop: {}\n  shop_item_update: {call: identify}\n",
			`config: mapping: types "shop" and "shop_item_update" are the same type ("shop_item") once normalised; keep one`},
		{"empty type", "mapping:\n  '_update': {}\n",
			`config: mapping: type "_update" is empty once normalised`},
		{"mapping is a list", "mapping:\n  - wallet\n",
			"config: mapping must map GWEN types to {call, event}: yaml: unmarshal errors:\n  line 2: cannot unmarshal !!seq into map[string]map[string]string"},
		{"override is a string", "mapping:\n  wallet: identify\n",
			"config: mapping must map GWEN types to {call, event}: yaml: unmarshal errors:\n  line 2: cannot unmarshal !!str `identify` into map[string]string"},
		{"not YAML", "mapping: [\n", "parse config: yaml: line 1: did not find expected node content"},
		{"top level is a list", "- a\n", "parse config: yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into struct { Mapping yaml.Node \"yaml:\\\"mapping\\\"\" }"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMappingConfig([]byte(tt.cfg), "v")
			if err == nil {
				t.Fatalf("ParseMappingConfig = %+v, want error %q", m, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q\nwant    %q", err, tt.want)
			}
		})
	}
}

func TestMapping_KnownType(t *testing.T) {
	for _, typ := range []string{"achievement", "progression", "mission", "shop_item", "shopitem", "shop", "wallet", "webhook_verification", "verification"} {
		if !KnownType(typ) {
			t.Errorf("KnownType(%q) = false, want true", typ)
		}
	}
	for _, typ := range []string{"", "achievement_update", "Achievement", "level_up"} {
		if KnownType(typ) {
			t.Errorf("KnownType(%q) = true, want false", typ)
		}
	}
}

func TestMapping_MarshalMessage(t *testing.T) {
	ts := time.Date(2024, 6, 3, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		msg  analytics.Message
		want string
	}{
		{"track value", analytics.Track{UserId: "u", Event: "E", Timestamp: ts, MessageId: "m"},
			`{"type":"track","messageId":"m","userId":"u","event":"E","timestamp":"2024-06-03T12:00:00Z"}`},
		{"track pointer, Type overwritten", &analytics.Track{Type: "bogus", UserId: "u", Event: "E", Timestamp: ts},
			`{"type":"track","userId":"u","event":"E","timestamp":"2024-06-03T12:00:00Z"}`},
		{"identify", &analytics.Identify{UserId: "u", Timestamp: ts}, `{"type":"identify","userId":"u","timestamp":"2024-06-03T12:00:00Z"}`},
		{"group", analytics.Group{UserId: "u", GroupId: "g", Timestamp: ts}, `{"type":"group","userId":"u","groupId":"g","timestamp":"2024-06-03T12:00:00Z"}`},
		{"page", analytics.Page{UserId: "u", Name: "P", Timestamp: ts}, `{"type":"page","userId":"u","name":"P","timestamp":"2024-06-03T12:00:00Z"}`},
		{"screen", analytics.Screen{UserId: "u", Name: "S", Timestamp: ts}, `{"type":"screen","userId":"u","name":"S","timestamp":"2024-06-03T12:00:00Z"}`},
		{"alias", &analytics.Alias{UserId: "u", PreviousId: "p", Timestamp: ts}, `{"type":"alias","previousId":"p","userId":"u","timestamp":"2024-06-03T12:00:00Z"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MarshalMessage(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	t.Run("pointer is not modified", func(t *testing.T) {
		tr := &analytics.Track{UserId: "u", Event: "E"}
		if _, err := MarshalMessage(tr); err != nil {
			t.Fatal(err)
		}
		if tr.Type != "" {
			t.Errorf("MarshalMessage set Type on the caller's message: %q", tr.Type)
		}
	})
	t.Run("unsupported", func(t *testing.T) {
		for _, msg := range []analytics.Message{nil, (*analytics.Track)(nil), fakeMessage{}} {
			if b, err := MarshalMessage(msg); err == nil || !strings.HasPrefix(err.Error(), "marshal message: analytics-go cannot enqueue a ") {
				t.Errorf("MarshalMessage(%#v) = %s, %v; want a cannot-enqueue error", msg, b, err)
			}
		}
	})
}

type fakeMessage struct{}

func (fakeMessage) Validate() error { return nil }

// TestMapping_MessageSizeBound: the bound ingest uses to skip encoding a
// message is never below the real size, for every call and for events full
// of characters encoding/json escapes.
func TestMapping_MessageSizeBound(t *testing.T) {
	m, err := ParseMappingConfig([]byte("mapping:\n  wallet: {call: identify}\n  mission: {call: group}\n  progression: {call: page}\n  achievement: {event: \""+strings.Repeat("<", 300)+"\"}\n"), "1.2.3-<dev>")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2024, 6, 10, 12, 0, 0, 0, time.UTC)
	nasty := strings.Repeat("<>&\u2028", 50)
	for _, typ := range []string{"achievement", "wallet", "mission", "progression", "shop_item", nasty} {
		for _, pad := range []string{"", nasty, strings.Repeat("x", 3000)} {
			raw := fmt.Appendf(nil, `{"type":%q,"userId":%q,"segmentId":%q,"productId":7,"state":{"k":%q},"updates":[%q],"extra":%q}`, typ, "u"+pad, "s"+pad, pad, pad, pad)
			ev, err := ParseEvent(raw, now)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := m.Map(ev, now, messageIDFor([]byte("k")))
			if err != nil {
				t.Fatal(err)
			}
			enc, err := MarshalMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			if b := m.messageSizeBound(len(raw)); b < len(enc) {
				t.Errorf("type %.20q, %d-byte event: bound %d under the message's %d bytes", typ, len(raw), b, len(enc))
			}
		}
	}
}
