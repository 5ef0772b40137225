package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// eventTemplate is relay/testdata/examples/achievement_update.json, compacted,
// with a third tier and a longer description (the padding) so that one body is
// eventSize bytes. userId is a placeholder replaced per request; timestamp is
// set when the template is built.
const eventTemplate = `{"type":"achievement_update","userId":"@USER@","timestamp":@TS@,` +
	`"segmentId":"a1d2e3f4-0000-4000-8000-000000000001","productId":"b7c8d9e0-0000-4000-8000-000000000002",` +
	`"state":{"id":"ach-7f1e","behaviorId":"beh-login","title":"Regular","description":"@PAD@","active":true,"tag":"engagement",` +
	`"tiers":[{"title":"Bronze","description":"Log in 3 days","amount":3,"progress":3,"completedAt":"2024-06-03T12:00:00.000Z","rewards":[{"currency":"coin","amount":50}]},` +
	`{"title":"Silver","description":"Log in 7 days","amount":7,"progress":3,"rewards":[{"currency":"xp","amount":200}]},` +
	`{"title":"Gold","description":"Log in 30 days","amount":30,"progress":3,"rewards":[{"currency":"vipcurrency","amount":5},{"currency":"coin","amount":500}]}]},` +
	`"updates":[{"tierIndex":0,"progressFrom":2,"progressTo":3,"completed":true,"rewards":[{"currency":"coin","amount":50}]}]}`

// eventSize is the size of every request body.
const eventSize = 1024

// uuidLen is the length of a textual UUID, the userId of every event.
const uuidLen = 36

const padText = "Log in on consecutive days to climb the tiers; missing a day resets the streak but keeps earned rewards. "

// eventBody splits a size-byte event into the bytes before and after its
// userId, so a unique body is prefix + uuid + suffix.
type eventBody struct {
	prefix, suffix []byte
}

// newEventBody builds the template for bodies of exactly size bytes.
func newEventBody(size int, ts time.Time) (eventBody, error) {
	t := strings.Replace(eventTemplate, "@TS@", strconv.FormatInt(ts.Unix(), 10), 1)
	bare := len(t) - len("@USER@") + uuidLen - len("@PAD@")
	padLen := size - bare
	if padLen < 1 {
		return eventBody{}, fmt.Errorf("event size %d is below the template's %d bytes", size, bare+1)
	}
	pad := strings.Repeat(padText, padLen/len(padText)+1)[:padLen]
	pad = strings.TrimRight(pad, " ")
	pad += strings.Repeat(".", padLen-len(pad))
	t = strings.Replace(t, "@PAD@", pad, 1)
	before, after, _ := strings.Cut(t, "@USER@")
	b := eventBody{prefix: []byte(before), suffix: []byte(after)}
	if n := len(b.build(0, 0, 0)); n != size {
		return eventBody{}, fmt.Errorf("internal error: event body is %d bytes, want %d", n, size)
	}
	if !json.Valid(b.build(0, 0, 0)) {
		return eventBody{}, fmt.Errorf("internal error: event body is not valid JSON")
	}
	return b, nil
}

// build returns a fresh body whose userId is a UUID made of nonce, worker and
// seq, so no two (nonce, worker, seq) give the same event.
func (b eventBody) build(nonce uint32, worker uint16, seq uint64) []byte {
	out := make([]byte, 0, len(b.prefix)+uuidLen+len(b.suffix))
	out = append(out, b.prefix...)
	out = appendUUID(out, nonce, worker, seq)
	return append(out, b.suffix...)
}

// appendUUID appends a version-4-shaped UUID whose bits are nonce (32),
// worker (16) and all 64 bits of seq, so distinct inputs give distinct ids.
func appendUUID(dst []byte, nonce uint32, worker uint16, seq uint64) []byte {
	var raw [16]byte
	raw[0], raw[1], raw[2], raw[3] = byte(nonce>>24), byte(nonce>>16), byte(nonce>>8), byte(nonce)
	raw[4], raw[5] = byte(worker>>8), byte(worker)
	raw[6], raw[7] = 0x40, byte(seq>>56)
	raw[8], raw[9] = 0x80, byte(seq>>48)
	for i := 0; i < 6; i++ {
		raw[10+i] = byte(seq >> (40 - 8*uint(i)))
	}
	var h [32]byte
	hex.Encode(h[:], raw[:])
	dst = append(dst, h[0:8]...)
	dst = append(dst, '-')
	dst = append(dst, h[8:12]...)
	dst = append(dst, '-')
	dst = append(dst, h[12:16]...)
	dst = append(dst, '-')
	dst = append(dst, h[16:20]...)
	dst = append(dst, '-')
	return append(dst, h[20:32]...)
}
