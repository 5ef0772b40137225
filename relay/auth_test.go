package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"testing"
)

const (
	errMissingCredential = "missing credential: send Authorization: Bearer <token> or Basic with the token as user name"
	errBadCredential     = "credential not accepted: check the token the sender uses against --inbound-token / --inbound-token-file"
)

func authTestBasic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func authTestHMAC(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func authTestNew(t *testing.T, tokens []string, insecure bool, secret []byte, header string) *Auth {
	t.Helper()
	a, err := NewAuth(tokens, insecure, secret, header)
	if err != nil {
		t.Fatalf("NewAuth: %v", err)
	}
	return a
}

// want401 checks a refusal for a credential: 401, the text, the challenge,
// and nothing stored.
func authTestWant401(t *testing.T, e *ingestEnv, r ingestReply, msg string) {
	t.Helper()
	wantError(t, r, http.StatusUnauthorized, msg)
	if got := r.header.Get("WWW-Authenticate"); got != `Basic realm="gwenrelay", Bearer` {
		t.Errorf("WWW-Authenticate %q", got)
	}
	if st := spoolStats(t, e.sp); st.Pending != 0 || st.DedupKeys != 0 {
		t.Errorf("refused request stored something: %+v", st)
	}
}

func TestNewAuth(t *testing.T) {
	const noCred = "no inbound credential: set --inbound-token or --inbound-token-file (or --insecure-no-auth for a trusted network)"
	for _, tc := range []struct {
		name   string
		tokens []string
	}{
		{"no tokens", nil},
		{"only blank tokens", []string{"", "  ", "\n"}},
	} {
		t.Run(tc.name+" and not insecure", func(t *testing.T) {
			a, err := NewAuth(tc.tokens, false, nil, "")
			if err == nil || err.Error() != noCred {
				t.Fatalf("NewAuth = %v, %v; want error %q", a, err, noCred)
			}
			if a != nil {
				t.Errorf("NewAuth returned an Auth with its error")
			}
		})
	}
	t.Run("tokens are trimmed and counted", func(t *testing.T) {
		a := authTestNew(t, []string{" a ", "", "b\n"}, false, nil, "")
		if a.Tokens() != 2 {
			t.Errorf("Tokens() = %d, want 2", a.Tokens())
		}
	})
	t.Run("insecure without tokens", func(t *testing.T) {
		a := authTestNew(t, nil, true, nil, "")
		if a.Tokens() != 0 {
			t.Errorf("Tokens() = %d", a.Tokens())
		}
	})
	t.Run("default HMAC header", func(t *testing.T) {
		if a := authTestNew(t, []string{"x"}, false, []byte("s"), ""); a.hmacHeader != DefaultHMACHeader {
			t.Errorf("hmacHeader %q, want %q", a.hmacHeader, DefaultHMACHeader)
		}
	})
}

func TestIngest_Auth(t *testing.T) {
	body := ingestEvent(1)
	send := func(t *testing.T, e *ingestEnv, authz string) ingestReply {
		return e.post(t, body, map[string]string{"Authorization": authz})
	}

	t.Run("insecure without tokens accepts no credential", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, nil, true, nil, "")})
		wantAccepted(t, send(t, e, ""), http.StatusAccepted, 1, 0)
	})
	t.Run("insecure with tokens still checks them", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, []string{ingestTestToken}, true, nil, "")})
		authTestWant401(t, e, send(t, e, ""), errMissingCredential)
		wantAccepted(t, send(t, e, "Bearer "+ingestTestToken), http.StatusAccepted, 1, 0)
	})

	for _, tc := range []struct {
		name  string
		authz string
	}{
		{"Bearer", "Bearer " + ingestTestToken},
		{"bearer in lower case", "bearer " + ingestTestToken},
		{"Bearer with extra spaces", "Bearer   " + ingestTestToken + " "},
		{"Basic with the token as user and no password", authTestBasic(ingestTestToken, "")},
		{"Basic with any password", authTestBasic(ingestTestToken, "whatever:with:colons")},
		{"Basic without the colon", "Basic " + base64.StdEncoding.EncodeToString([]byte(ingestTestToken))},
	} {
		t.Run("accepted "+tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			wantAccepted(t, send(t, e, tc.authz), http.StatusAccepted, 1, 0)
		})
	}

	for _, tc := range []struct {
		name  string
		authz string
		msg   string
	}{
		{"missing", "", errMissingCredential},
		{"wrong Bearer", "Bearer not-the-token", errBadCredential},
		{"Bearer with a token prefix", "Bearer " + ingestTestToken[:len(ingestTestToken)-1], errBadCredential},
		{"empty Bearer", "Bearer ", errBadCredential},
		{"scheme only", "Bearer", errBadCredential},
		{"bare token", ingestTestToken, errBadCredential},
		{"unknown scheme", "Token " + ingestTestToken, errBadCredential},
		{"Basic with wrong user", authTestBasic("someone-else", ingestTestToken), errBadCredential},
		{"Basic with the token as password", authTestBasic("", ingestTestToken), errBadCredential},
		{"Basic not base64", "Basic !!!" + ingestTestToken, errBadCredential},
		{"Basic with no user", authTestBasic("", ""), errBadCredential},
	} {
		t.Run("401 "+tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			authTestWant401(t, e, send(t, e, tc.authz), tc.msg)
		})
	}

	t.Run("two tokens active at once", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, []string{"old-token", "new-token"}, false, nil, "")})
		wantAccepted(t, e.post(t, ingestEvent(1), map[string]string{"Authorization": "Bearer old-token"}), http.StatusAccepted, 1, 0)
		wantAccepted(t, e.post(t, ingestEvent(2), map[string]string{"Authorization": authTestBasic("new-token", "")}), http.StatusAccepted, 1, 0)
		wantError(t, e.post(t, ingestEvent(3), map[string]string{"Authorization": "Bearer old-tokennew-token"}), http.StatusUnauthorized, errBadCredential)
	})

	t.Run("SetAuth swaps tokens live", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, []string{"old-token"}, false, nil, "")})
		oldH := map[string]string{"Authorization": "Bearer old-token"}
		newH := map[string]string{"Authorization": "Bearer new-token"}
		wantAccepted(t, e.post(t, ingestEvent(1), oldH), http.StatusAccepted, 1, 0)
		wantError(t, e.post(t, ingestEvent(2), newH), http.StatusUnauthorized, errBadCredential)

		// Rotation: both, then only the new one.
		e.ingest.SetAuth(authTestNew(t, []string{"old-token", "new-token"}, false, nil, ""))
		wantAccepted(t, e.post(t, ingestEvent(2), oldH), http.StatusAccepted, 1, 0)
		wantAccepted(t, e.post(t, ingestEvent(3), newH), http.StatusAccepted, 1, 0)
		e.ingest.SetAuth(authTestNew(t, []string{"new-token"}, false, nil, ""))
		wantError(t, e.post(t, ingestEvent(4), oldH), http.StatusUnauthorized, errBadCredential)
		wantAccepted(t, e.post(t, ingestEvent(4), newH), http.StatusAccepted, 1, 0)
		if st := spoolStats(t, e.sp); st.Pending != 4 {
			t.Errorf("%d pending, want 4", st.Pending)
		}
	})
}

func TestIngest_HMAC(t *testing.T) {
	secret := []byte("hmac-secret-9f3a")
	body := ingestEvent(1)
	envWith := func(t *testing.T, header string) *ingestEnv {
		return newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, []string{ingestTestToken}, false, secret, header)})
	}

	t.Run("right signature", func(t *testing.T) {
		e := envWith(t, "")
		wantAccepted(t, e.post(t, body, map[string]string{DefaultHMACHeader: authTestHMAC(secret, body)}), http.StatusAccepted, 1, 0)
		wantRecord(t, pendingRecords(t, e.sp)[0], body)
	})
	t.Run("upper-case hex accepted", func(t *testing.T) {
		e := envWith(t, "")
		sig := authTestHMAC(secret, body)
		upper := "sha256=" + string(authTestHexUpper(sig[len("sha256="):]))
		wantAccepted(t, e.post(t, body, map[string]string{DefaultHMACHeader: upper}), http.StatusAccepted, 1, 0)
	})
	t.Run("configured header name", func(t *testing.T) {
		e := envWith(t, "X-Gwen-Signature")
		authTestWant401(t, e, e.post(t, body, map[string]string{DefaultHMACHeader: authTestHMAC(secret, body)}),
			"signature: missing X-Gwen-Signature header (sha256=<hex HMAC-SHA256 of the body>)")
		wantAccepted(t, e.post(t, body, map[string]string{"x-gwen-signature": authTestHMAC(secret, body)}), http.StatusAccepted, 1, 0)
	})
	t.Run("HMAC only, no tokens", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{auth: authTestNew(t, nil, true, secret, "")})
		authTestWant401(t, e, e.post(t, body, map[string]string{"Authorization": ""}),
			"signature: missing X-Signature-256 header (sha256=<hex HMAC-SHA256 of the body>)")
		wantAccepted(t, e.post(t, body, map[string]string{"Authorization": "", DefaultHMACHeader: authTestHMAC(secret, body)}), http.StatusAccepted, 1, 0)
	})
	t.Run("a signature does not replace the token", func(t *testing.T) {
		e := envWith(t, "")
		authTestWant401(t, e, e.post(t, body, map[string]string{"Authorization": "", DefaultHMACHeader: authTestHMAC(secret, body)}), errMissingCredential)
	})

	for _, tc := range []struct {
		name string
		sig  string
		msg  string
	}{
		{"missing", "", "signature: missing X-Signature-256 header (sha256=<hex HMAC-SHA256 of the body>)"},
		{"wrong secret", authTestHMAC([]byte("other"), body), "signature: X-Signature-256 does not match the body"},
		{"other body", authTestHMAC(secret, ingestEvent(2)), "signature: X-Signature-256 does not match the body"},
		{"truncated", authTestHMAC(secret, body)[:21], "signature: X-Signature-256 does not match the body"},
		{"empty hex", "sha256=", "signature: X-Signature-256 does not match the body"},
		{"not hex", "sha256=zz" + authTestHMAC(secret, body)[9:], "signature: X-Signature-256 is not hex"},
		{"odd-length hex", authTestHMAC(secret, body) + "0", "signature: X-Signature-256 is not hex"},
		{"no sha256= prefix", authTestHMAC(secret, body)[len("sha256="):], "signature: X-Signature-256 must be sha256=<hex HMAC-SHA256 of the body>"},
		{"other algorithm", "sha1=" + authTestHMAC(secret, body)[len("sha256="):], "signature: X-Signature-256 must be sha256=<hex HMAC-SHA256 of the body>"},
	} {
		t.Run("401 "+tc.name, func(t *testing.T) {
			e := envWith(t, "")
			authTestWant401(t, e, e.post(t, body, map[string]string{DefaultHMACHeader: tc.sig}), tc.msg)
		})
	}

	t.Run("gzip body signed as sent", func(t *testing.T) {
		e := envWith(t, "")
		wire := ingestGzip(t, body)
		wantAccepted(t, e.post(t, wire, map[string]string{"Content-Encoding": "gzip", DefaultHMACHeader: authTestHMAC(secret, wire)}), http.StatusAccepted, 1, 0)
		wantRecord(t, pendingRecords(t, e.sp)[0], body)
	})
	t.Run("gzip body signed after decompression is refused", func(t *testing.T) {
		e := envWith(t, "")
		wire := ingestGzip(t, body)
		authTestWant401(t, e, e.post(t, wire, map[string]string{"Content-Encoding": "gzip", DefaultHMACHeader: authTestHMAC(secret, body)}),
			"signature: X-Signature-256 does not match the body")
	})
	t.Run("whitespace matters: the signature is over the raw body", func(t *testing.T) {
		e := envWith(t, "")
		spaced := append([]byte(" "), body...)
		authTestWant401(t, e, e.post(t, spaced, map[string]string{DefaultHMACHeader: authTestHMAC(secret, body)}),
			"signature: X-Signature-256 does not match the body")
		wantAccepted(t, e.post(t, spaced, map[string]string{DefaultHMACHeader: authTestHMAC(secret, spaced)}), http.StatusAccepted, 1, 0)
	})
}

func authTestHexUpper(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'f' {
			b[i] = c - 'a' + 'A'
		}
	}
	return b
}
