package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
)

// Auth is the inbound credential check. Several tokens may be active at once
// so that a sender can be moved to a new one before the old one is retired.
type Auth struct {
	tokens     [][32]byte // SHA-256 of each token: equal lengths, so the comparison leaks nothing
	insecure   bool
	hmacSecret []byte
	hmacHeader string
}

// DefaultHMACHeader is the header that carries the body signature when
// HMAC verification is configured without naming one.
const DefaultHMACHeader = "X-Signature-256"

// NewAuth builds the credential check. With no tokens and insecure false, it
// refuses every request; callers refuse to start in that case instead.
// hmacSecret, when not empty, additionally requires every request to carry
// "sha256=<hex HMAC-SHA256 of the raw body>" in hmacHeader.
func NewAuth(tokens []string, insecure bool, hmacSecret []byte, hmacHeader string) (*Auth, error) {
	a := &Auth{insecure: insecure, hmacSecret: hmacSecret, hmacHeader: hmacHeader}
	for _, t := range tokens {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	if len(a.tokens) == 0 && !insecure {
		return nil, errors.New("no inbound credential: set --inbound-token or --inbound-token-file (or --insecure-no-auth for a trusted network)")
	}
	if a.hmacHeader == "" {
		a.hmacHeader = DefaultHMACHeader
	}
	return a, nil
}

// Tokens reports how many inbound tokens are active.
func (a *Auth) Tokens() int { return len(a.tokens) }

// credential extracts the presented token: "Bearer <token>", or HTTP Basic
// with the token as the user name (how Segment clients send a write key; the
// password is ignored).
func credential(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, rest, ok := strings.Cut(h, " ")
	if !ok {
		return "", false
	}
	rest = strings.TrimSpace(rest)
	switch strings.ToLower(scheme) {
	case "bearer":
		return rest, rest != ""
	case "basic":
		dec, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", false
		}
		user, _, _ := strings.Cut(string(dec), ":")
		return user, user != ""
	}
	return "", false
}

// checkToken reports whether the request carries an active token. Every
// token is compared, in constant time, whatever matches first.
func (a *Auth) checkToken(r *http.Request) bool {
	if a.insecure && len(a.tokens) == 0 {
		return true
	}
	tok, ok := credential(r)
	return ok && a.checkKey(tok)
}

// checkKey reports whether tok is an active token (a header's credential,
// or the writeKey in a Segment API body).
func (a *Auth) checkKey(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	match := 0
	for i := range a.tokens {
		match |= subtle.ConstantTimeCompare(sum[:], a.tokens[i][:])
	}
	return match == 1
}

// checkSignature verifies the optional HMAC over the raw body as received.
func (a *Auth) checkSignature(r *http.Request, raw []byte) error {
	if len(a.hmacSecret) == 0 {
		return nil
	}
	sig := r.Header.Get(a.hmacHeader)
	if sig == "" {
		return errors.New("missing " + a.hmacHeader + " header (sha256=<hex HMAC-SHA256 of the body>)")
	}
	hexSig, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return errors.New(a.hmacHeader + " must be sha256=<hex HMAC-SHA256 of the body>")
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return errors.New(a.hmacHeader + " is not hex")
	}
	m := hmac.New(sha256.New, a.hmacSecret)
	m.Write(raw)
	if !hmac.Equal(got, m.Sum(nil)) {
		return errors.New(a.hmacHeader + " does not match the body")
	}
	return nil
}
