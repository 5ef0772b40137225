package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/analytics-go/v3"
	"gopkg.in/yaml.v3"
)

// The Segment calls an override may choose.
const (
	CallTrack    = "track"
	CallIdentify = "identify"
	CallGroup    = "group"
	CallPage     = "page"
)

// allowedCalls lists the calls in the order error messages name them.
var allowedCalls = []string{CallTrack, CallIdentify, CallGroup, CallPage}

// defaultEventNames holds the documented GWEN events, keyed by normalised
// type, with the event names Segment's GWEN source uses, so that a relayed
// event looks the same downstream as one from the native source.
var defaultEventNames = map[string]string{
	"achievement":          "Achievement Update",
	"progression":          "Progression Update",
	"mission":              "Mission Update",
	"shop_item":            "Shop Item Update",
	"shopitem":             "Shop Item Update",
	"shop":                 "Shop Item Update",
	"wallet":               "Wallet Update",
	"webhook_verification": "Webhook verification",
	"verification":         "Webhook verification",
}

// typeAliases folds the alternative spellings of a documented type onto one
// name, so that an override written for any of them applies to all: GWEN's
// exact type strings are not published, and an operator who configures
// "shop_item_update" means the shop event however GWEN spells it.
var typeAliases = map[string]string{
	"shopitem":     "shop_item",
	"shop":         "shop_item",
	"verification": "webhook_verification",
}

// overrideKey is the key of the Overrides map for a GWEN type.
func overrideKey(typ string) string {
	norm := NormalizeType(typ)
	if canon, ok := typeAliases[norm]; ok {
		return canon
	}
	return norm
}

// libraryName goes into context.library.name of every mapped message, so
// Segment shows which events came through the relay.
const libraryName = "gwenrelay"

// Override changes how one GWEN type is sent to Segment.
type Override struct {
	Call  string `yaml:"call"`  // track (default), identify, group, page
	Event string `yaml:"event"` // event name for track; page name for page
}

// Mapping turns GWEN events into Segment messages: the default table plus the
// per-type overrides of the config file. Its zero value maps with the
// defaults and an empty library version. It is read-only once built, so one
// Mapping may serve many goroutines.
type Mapping struct {
	Overrides      map[string]Override // key: a GWEN type, normalised with NormalizeType when loaded (aliases folded: "shop" → "shop_item")
	LibraryVersion string              // goes into context.library.version
}

// messageSizeBound is an upper bound on the encoded size of the Segment
// message Map makes of an event of rawLen bytes: every value in it comes from
// the event (the type at most twice: as a property and as the default event
// name), from the overrides' event names or from LibraryVersion, and
// encoding/json spells a byte of it as at most six (\u003c for <); the
// fixed keys, messageId, timestamp and library name take well under 1 KiB.
// Ingest encodes a message to check Segment's limit only when this bound is
// over it.
func (m *Mapping) messageSizeBound(rawLen int) int {
	longest := 0
	for _, o := range m.Overrides {
		longest = max(longest, len(o.Event))
	}
	return 6*(2*rawLen+longest+len(m.LibraryVersion)) + 1024
}

// DefaultMapping returns the mapping with no overrides: every event becomes a
// track call named after the default table, or after its type when unknown.
func DefaultMapping(libraryVersion string) *Mapping {
	return &Mapping{Overrides: map[string]Override{}, LibraryVersion: libraryVersion}
}

// ParseMappingConfig reads the `mapping:` section of the YAML --config file: a
// map from GWEN type to Override. Keys are normalised with NormalizeType and
// the aliases of a documented type folded onto one name ("shop" and
// "shopitem" onto "shop_item", "verification" onto "webhook_verification"),
// so any accepted spelling of a type may be used and covers the others. Other top-level keys are
// ignored because the same file holds the serve flags. An unknown call, an
// unknown key inside an override, an event name on a call that has none, or
// two keys that normalise to the same type are errors that name the type.
// A file without a mapping section yields DefaultMapping.
func ParseMappingConfig(yamlBytes []byte, libraryVersion string) (*Mapping, error) {
	var doc struct {
		Mapping yaml.Node `yaml:"mapping"`
	}
	if err := yaml.Unmarshal(yamlBytes, &doc); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	m := DefaultMapping(libraryVersion)
	if doc.Mapping.Kind == 0 { // no mapping section
		return m, nil
	}
	// Decoding into strings, not into Override, lets a typo such as "evnet"
	// be reported instead of silently falling back to the default.
	var raw map[string]map[string]string
	if err := doc.Mapping.Decode(&raw); err != nil {
		return nil, fmt.Errorf("config: mapping must map GWEN types to {call, event}: %w", err)
	}

	// Sorted so that, of several mistakes, the same one is reported each run.
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	seen := make(map[string]string, len(raw)) // normalised → key as written
	for _, key := range keys {
		fields := raw[key]
		norm := overrideKey(key)
		if norm == "" {
			return nil, fmt.Errorf("config: mapping: type %q is empty once normalised", key)
		}
		if prev, dup := seen[norm]; dup {
			return nil, fmt.Errorf("config: mapping: types %q and %q are the same type (%q) once normalised; keep one", prev, key, norm)
		}
		seen[norm] = key

		for f := range fields {
			if f != "call" && f != "event" {
				return nil, fmt.Errorf("config: mapping: type %q: unknown key %q (allowed: call, event)", key, f)
			}
		}
		o := Override{
			Call:  strings.ToLower(strings.TrimSpace(fields["call"])),
			Event: strings.TrimSpace(fields["event"]),
		}
		if o.Call == "" {
			o.Call = CallTrack
		}
		if !slices.Contains(allowedCalls, o.Call) {
			return nil, fmt.Errorf("config: mapping: type %q: unknown call %q (allowed: %s)",
				key, fields["call"], strings.Join(allowedCalls, ", "))
		}
		if o.Event != "" && (o.Call == CallIdentify || o.Call == CallGroup) {
			return nil, fmt.Errorf("config: mapping: type %q: event %q is only used by track and page calls, not %s",
				key, o.Event, o.Call)
		}
		m.Overrides[norm] = o
	}
	return m, nil
}

// KnownType reports whether the normalised type is one of the six documented
// GWEN events (in any of their accepted spellings).
func KnownType(normalised string) bool {
	_, ok := defaultEventNames[normalised]
	return ok
}

// Map turns an event into the analytics-go message the drainer will Enqueue:
// an analytics.Track, Identify, Group or Page value (not a pointer), with
// MessageId set to messageID and Timestamp to the event's time, or receivedAt
// when the event has none, in UTC. JSON values are carried as json.RawMessage
// so that Segment receives exactly the bytes GWEN sent. The result passes
// msg.Validate(); a group call on an event with neither segmentId nor
// productId is an error.
func (m *Mapping) Map(ev Event, receivedAt time.Time, messageID string) (analytics.Message, error) {
	norm := NormalizeType(ev.Type)
	o := m.Overrides[overrideKey(ev.Type)]
	ts := ev.Timestamp
	if ts.IsZero() {
		ts = receivedAt
	}
	ts = ts.UTC()
	// Set per message: analytics-go would otherwise stamp its own library
	// name on the batch, hiding that the events came through the relay.
	ctx := &analytics.Context{Library: analytics.LibraryInfo{Name: libraryName, Version: m.LibraryVersion}}

	var msg analytics.Message
	switch o.Call {
	case "", CallTrack:
		name := o.Event
		if name == "" {
			name = defaultEventNames[norm]
		}
		if name == "" {
			name = ev.Type
		}
		msg = analytics.Track{
			MessageId:  messageID,
			UserId:     ev.UserID,
			Event:      name,
			Timestamp:  ts,
			Context:    ctx,
			Properties: eventProperties(ev),
		}
	case CallIdentify:
		traits, err := stateTraits(ev.State)
		if err != nil {
			return nil, err
		}
		msg = analytics.Identify{
			MessageId: messageID,
			UserId:    ev.UserID,
			Timestamp: ts,
			Context:   ctx,
			Traits:    traits,
		}
	case CallGroup:
		groupID, err := eventGroupID(ev)
		if err != nil {
			return nil, err
		}
		traits, err := stateTraits(ev.State)
		if err != nil {
			return nil, err
		}
		msg = analytics.Group{
			MessageId: messageID,
			UserId:    ev.UserID,
			GroupId:   groupID,
			Timestamp: ts,
			Context:   ctx,
			Traits:    traits,
		}
	case CallPage:
		name := o.Event
		if name == "" {
			name = ev.Type
		}
		msg = analytics.Page{
			MessageId:  messageID,
			UserId:     ev.UserID,
			Name:       name,
			Timestamp:  ts,
			Context:    ctx,
			Properties: eventProperties(ev),
		}
	default:
		// Only reachable with a Mapping built by hand: ParseMappingConfig
		// rejects unknown calls.
		return nil, fmt.Errorf("map %q: unknown call %q (allowed: %s)", ev.Type, o.Call, strings.Join(allowedCalls, ", "))
	}
	if err := msg.Validate(); err != nil {
		return nil, fmt.Errorf("map %q: %w", ev.Type, err)
	}
	return msg, nil
}

// eventProperties builds track and page properties: the documented fields
// that are present (null kept as null) plus every unknown field.
func eventProperties(ev Event) analytics.Properties {
	p := make(analytics.Properties, 5+len(ev.Extra))
	for k, v := range ev.Extra {
		p[k] = v
	}
	// Set after the extras so a hand-built Event cannot shadow them.
	p["type"] = ev.Type
	for _, f := range []struct {
		key string
		val json.RawMessage
	}{
		{"segmentId", ev.SegmentID},
		{"productId", ev.ProductID},
		{"state", ev.State},
		{"updates", ev.Updates},
	} {
		if f.val != nil {
			p[f.key] = f.val
		}
	}
	return p
}

// stateTraits returns the fields of the state object as traits; a null or
// absent state gives none.
func stateTraits(state json.RawMessage) (analytics.Traits, error) {
	if state == nil || rawJSONKind(state) == "null" {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(state, &fields); err != nil {
		return nil, fmt.Errorf("state: must be an object or null to become traits: %w", err)
	}
	traits := make(analytics.Traits, len(fields))
	for k, v := range fields {
		traits[k] = v
	}
	return traits, nil
}

// errNoGroupID is returned by Map for a group call on an event that names no group.
var errNoGroupID = errors.New("group call needs a segmentId or productId (a non-empty string or number); the event has neither")

// eventGroupID picks the group: segmentId, else productId, as a string; a
// number gives its literal text so that no digit is lost.
func eventGroupID(ev Event) (string, error) {
	for _, v := range []json.RawMessage{ev.SegmentID, ev.ProductID} {
		switch rawJSONKind(v) {
		case "string":
			var s string
			if err := json.Unmarshal(v, &s); err == nil && strings.TrimSpace(s) != "" {
				return s, nil
			}
		case "number":
			return strings.TrimSpace(string(v)), nil
		}
	}
	return "", errNoGroupID
}

// MarshalMessage returns the JSON exactly as analytics-go v3.3.0 would put the
// message into a batch: the Type field set as Enqueue sets it ("track",
// "identify", "group", "page", "screen", "alias"), messageId and timestamp as
// given (Enqueue fills them only when empty, and Map always sets them). Its
// length is what Segment's 32,000-byte message limit applies to. A
// SegmentMessage is its JSON as stored (its sentAt is moved on only when it
// is sent: see Body).
func MarshalMessage(msg analytics.Message) ([]byte, error) {
	switch m := msg.(type) {
	case *SegmentMessage:
		if m != nil {
			return m.Raw, nil
		}
	case analytics.Track:
		m.Type = "track"
		return json.Marshal(m)
	case *analytics.Track:
		if m != nil {
			return MarshalMessage(*m)
		}
	case analytics.Identify:
		m.Type = "identify"
		return json.Marshal(m)
	case *analytics.Identify:
		if m != nil {
			return MarshalMessage(*m)
		}
	case analytics.Group:
		m.Type = "group"
		return json.Marshal(m)
	case *analytics.Group:
		if m != nil {
			return MarshalMessage(*m)
		}
	case analytics.Page:
		m.Type = "page"
		return json.Marshal(m)
	case *analytics.Page:
		if m != nil {
			return MarshalMessage(*m)
		}
	case analytics.Screen:
		m.Type = "screen"
		return json.Marshal(m)
	case *analytics.Screen:
		if m != nil {
			return MarshalMessage(*m)
		}
	case analytics.Alias:
		m.Type = "alias"
		return json.Marshal(m)
	case *analytics.Alias:
		if m != nil {
			return MarshalMessage(*m)
		}
	}
	return nil, fmt.Errorf("marshal message: analytics-go cannot enqueue a %T", msg)
}
