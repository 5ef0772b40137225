package relay

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// canonicalJSON re-encodes one JSON value with object keys sorted and no
// insignificant whitespace, keeping every number's literal text. Two bodies
// that differ only in key order or spacing give the same bytes, and so the
// same dedup key.
func canonicalJSON(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// dedupKey is what the spool remembers an event by. An Idempotency-Key
// header wins over the body (the same body sent under two keys is two
// events); each element of an array gets its own key through its index.
// Without a header the key is the SHA-256 of the event's canonical JSON.
func dedupKey(idempotencyKey string, index int, canonical []byte) []byte {
	h := sha256.New()
	if idempotencyKey != "" {
		h.Write([]byte("idempotency-key\x00"))
		h.Write([]byte(idempotencyKey))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(index)))
	} else {
		h.Write([]byte("gwen-event\x00"))
		h.Write(canonical)
	}
	return h.Sum(nil)
}

// messageIDFor derives the Segment messageId from the dedup key, so a
// redelivery that slips past the spool's window is still collapsed by
// Segment's own messageId dedup. 74 characters: under Segment's 100.
func messageIDFor(key []byte) string {
	return "gwenrelay-" + hex.EncodeToString(key)
}

// GWENEntry is the spool entry for one raw GWEN event, exactly as ingest
// stores it: the canonical JSON, the dedup key and the messageId derived
// from it. index is the event's position in its request (it matters only
// with an Idempotency-Key). The event is not validated here.
func GWENEntry(raw []byte, idempotencyKey string, index int, receivedAt time.Time) (spool.Entry, error) {
	canon, err := canonicalJSON(raw)
	if err != nil {
		return spool.Entry{}, err
	}
	key := dedupKey(idempotencyKey, index, canon)
	return spool.Entry{Kind: spool.KindGWEN, Key: key, MessageID: messageIDFor(key), ReceivedAt: receivedAt, Event: canon}, nil
}
