package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/spool"
)

// How the binary behaves as a systemd service, shown without systemd: the
// notify protocol on a unixgram socket as systemd binds it, a listener
// passed as socket activation passes it, SIGHUP, and TLS.

// notifySocket is a fake systemd notify socket: every datagram with the
// pid of its sender (SO_PASSCRED), as NotifyAccess=main checks it.
type notifySocket struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []notifyMsg
	got  chan struct{}
}

type notifyMsg struct {
	pid   int32
	state string
	at    time.Time
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	n := &notifySocket{path: path, conn: conn, got: make(chan struct{}, 1)}
	go n.read()
	t.Cleanup(func() { conn.Close() })
	return n
}

func (n *notifySocket) read() {
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		k, oobn, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var pid int32 = -1
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
					pid = cred.Pid
				}
			}
		}
		n.mu.Lock()
		for _, line := range strings.Split(string(buf[:k]), "\n") {
			n.msgs = append(n.msgs, notifyMsg{pid: pid, state: line, at: time.Now()})
		}
		n.mu.Unlock()
		select {
		case n.got <- struct{}{}:
		default:
		}
	}
}

// since returns the messages from index i on.
func (n *notifySocket) since(i int) []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	if i > len(n.msgs) {
		return nil
	}
	return append([]notifyMsg(nil), n.msgs[i:]...)
}

func (n *notifySocket) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.msgs)
}

// waitState waits (20 s at most) for a message that starts with state
// after index from; it returns the message and the index after it.
func (n *notifySocket) waitState(t *testing.T, from int, state string) (notifyMsg, int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		for i, m := range n.since(from) {
			if strings.HasPrefix(m.state, state) {
				return m, from + i + 1
			}
		}
		select {
		case <-n.got:
		case <-deadline:
			t.Fatalf("no %q from the relay within 20s; got %v", state, n.since(from))
		}
	}
}

func TestService_NotifyProtocol(t *testing.T) {
	ns := newNotifySocket(t)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("token-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := e2eStartOpts(t, e2eStartOptions{Env: []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=2000000"}},
		filepath.Join(dir, "spool.db"), "--inbound-token-file", tokens)
	if err != nil {
		t.Fatal(err)
	}
	pid := int32(p.cmd.Process.Pid)
	checkPid := func(m notifyMsg) {
		t.Helper()
		if m.pid != pid {
			t.Errorf("%q came from pid %d, want the main process %d (NotifyAccess=main)", m.state, m.pid, pid)
		}
	}
	m, i := ns.waitState(t, 0, "READY=1")
	checkPid(m)
	if m, _ := ns.waitState(t, 0, "STATUS="); !strings.Contains(m.state, "0 pending") {
		t.Errorf("first STATUS = %q, want the pending count", m.state)
	}
	// The watchdog is pinged at half its interval (here 1 s).
	first, i := ns.waitState(t, i, "WATCHDOG=1")
	checkPid(first)
	second, i := ns.waitState(t, i, "WATCHDOG=1")
	// (Loose bounds: the machine running the tests may be busy.)
	if gap := second.at.Sub(first.at); gap < 300*time.Millisecond || gap > 3*time.Second {
		t.Errorf("watchdog pings %s apart, want about 1s", gap)
	}

	post := func(token string) int {
		req, _ := http.NewRequest(http.MethodPost, p.URL+"/webhook", strings.NewReader(string(e2eEvent(fmt.Sprintf("n-%d", time.Now().UnixNano()), 200))))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := e2eClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if a, b := post("token-one"), post("token-two"); a != http.StatusAccepted || b != http.StatusUnauthorized {
		t.Fatalf("before reload: token-one %d, token-two %d; want 202 and 401", a, b)
	}

	// SIGHUP: the token file is read again, between RELOADING=1 and READY=1.
	if err := os.WriteFile(tokens, []byte("token-two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	m, i = ns.waitState(t, i, "RELOADING=1")
	checkPid(m)
	if mono, _ := ns.waitState(t, i-1, "MONOTONIC_USEC="); mono.state == "MONOTONIC_USEC=" {
		t.Errorf("RELOADING=1 without a MONOTONIC_USEC value")
	}
	m, i = ns.waitState(t, i, "READY=1")
	checkPid(m)
	if a, b := post("token-one"), post("token-two"); a != http.StatusUnauthorized || b != http.StatusAccepted {
		t.Errorf("after reload: token-one %d, token-two %d; want 401 and 202", a, b)
	}

	// A reload that fails keeps what is in force, and says so.
	if err := os.WriteFile(tokens, []byte("# nothing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	_, i = ns.waitState(t, i, "RELOADING=1")
	_, i = ns.waitState(t, i, "READY=1")
	m, i = ns.waitState(t, i, "STATUS=")
	if !strings.Contains(m.state, "reload failed at") || !strings.Contains(m.state, "holds no token") {
		t.Errorf("failed reload status %q does not say why", m.state)
	}
	// It stays in the status line (systemctl status) until a reload works.
	if m, _ := ns.waitState(t, i, "STATUS="); !strings.Contains(m.state, "holds no token") {
		t.Errorf("the next status line %q forgot the failed reload", m.state)
	}
	if b := post("token-two"); b != http.StatusAccepted {
		t.Errorf("after a failed reload: token-two %d, want 202 (old settings kept)", b)
	}
	// A reload that works clears it.
	if err := os.WriteFile(tokens, []byte("token-two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	_, i = ns.waitState(t, i, "RELOADING=1")
	_, i = ns.waitState(t, i, "READY=1")
	if m, _ := ns.waitState(t, i, "STATUS="); strings.Contains(m.state, "reload failed") {
		t.Errorf("status after a good reload still reports the failed one: %q", m.state)
	}

	p.Signal(syscall.SIGTERM)
	m, _ = ns.waitState(t, i, "STOPPING=1")
	checkPid(m)
	if st := p.Wait(30 * time.Second); !st.Success() {
		t.Errorf("exit after SIGTERM: %v", st)
	}
}

// makeCert writes a self-signed certificate for 127.0.0.1 and its key.
func makeCert(t *testing.T, dir, name string, serial int64) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "gwenrelay test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

func TestService_TLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool1 := makeCert(t, dir, "live", 1)
	p := e2eStart(t, filepath.Join(dir, "spool.db"), "--insecure-no-auth", "--tls-cert", certFile, "--tls-key", keyFile)
	url := "https://" + p.Addr + "/webhook"

	client := func(pool *x509.CertPool, maxVersion uint16) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: maxVersion}, DisableKeepAlives: true,
		}}
	}
	post := func(c *http.Client) (*http.Response, error) {
		resp, err := c.Post(url, "application/json", strings.NewReader(string(e2eEvent(fmt.Sprintf("tls-%d", time.Now().UnixNano()), 200))))
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	resp, err := post(client(pool1, 0))
	if err != nil || resp.StatusCode != http.StatusAccepted || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("HTTPS post: %v %v", resp, err)
	}
	if _, err := post(client(pool1, tls.VersionTLS11)); err == nil {
		t.Errorf("a TLS 1.1 client was served; want TLS 1.2 or later only")
	}
	if resp, err := http.Post("http://"+p.Addr+"/webhook", "application/json", strings.NewReader("{}")); err == nil && resp.StatusCode == http.StatusAccepted {
		t.Errorf("plain HTTP was accepted on a TLS listener")
	}

	// SIGHUP re-reads the certificate: new handshakes get the new one.
	newCert, newKey, pool2 := makeCert(t, dir, "next", 2)
	for src, dst := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mark := len(p.LogLines("reloaded"))
	p.Signal(syscall.SIGHUP)
	waitLogN(t, p, "reloaded", mark+1)
	resp, err = post(client(pool2, 0))
	if err != nil || resp.StatusCode != http.StatusAccepted || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 2 {
		t.Fatalf("after reload: %v %v, want the new certificate (serial 2)", resp, err)
	}
	if _, err := post(client(pool1, 0)); err == nil {
		t.Errorf("after reload the old certificate is still served")
	}
	p.StopClean(30 * time.Second)
}

// Socket activation: the listener belongs to the service manager (here the
// test), so while the relay restarts, connections wait in its backlog
// instead of being refused, and every acknowledged event is kept.
func TestService_SocketActivationRestart(t *testing.T) {
	dir := t.TempDir()
	sp := filepath.Join(dir, "spool.db")
	l, lf := e2eHeldListener(t)
	url := "http://" + l.Addr().String()

	start := func() *e2eRelay {
		p, err := e2eStartOpts(t, e2eStartOptions{Listeners: []*os.File{lf}}, sp, "--insecure-no-auth", "--listen", "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		if p.Addr != l.Addr().String() {
			t.Fatalf("relay listens on %s, want the inherited %s", p.Addr, l.Addr())
		}
		return p
	}
	p := start()

	var (
		ledger  e2eLedger
		stop    atomic.Bool
		refused atomic.Int64
		wg      sync.WaitGroup
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := e2eClient()
			for i := 0; !stop.Load(); i++ {
				o := e2ePost(c, url, []string{fmt.Sprintf("sa-%d-%d", w, i)}, 300, true, "load")
				ledger.add(o)
				if o.Err != nil && (errors.Is(o.Err, syscall.ECONNREFUSED) || strings.Contains(o.Err.Error(), "connection refused")) {
					refused.Add(1)
				}
				if !o.ok() {
					time.Sleep(20 * time.Millisecond) // a client's retry pause after a 503
				}
			}
		}(w)
	}
	waitAcks := func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		for countAcked(ledger.all()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d events acknowledged within 20s", n)
			}
			time.Sleep(20 * time.Millisecond) // polling the load's progress
		}
	}
	for round := 1; round <= 3; round++ {
		waitAcks(round * 200)
		p.StopClean(30 * time.Second) // as systemctl restart: stop, then start
		p = start()
	}
	waitAcks(4 * 200)
	stop.Store(true)
	wg.Wait()
	p.StopClean(30 * time.Second)

	if n := refused.Load(); n != 0 {
		t.Errorf("%d posts saw a refused connection across 3 restarts", n)
	}
	tally := e2eVerify(t, ledger.all(), e2eReadSpool(t, sp))
	t.Logf("3 restarts under 8 clients: %v", tally)
}

func countAcked(outs []*e2eOutcome) int {
	n := 0
	for _, o := range outs {
		if o.ok() {
			n++
		}
	}
	return n
}

// wedgedStore blocks the drainer's reads once wedged, as a deadlock would.
type wedgedStore struct {
	relay.DrainStore
	wedged  atomic.Bool
	release chan struct{}
}

func (w *wedgedStore) ReadPending(after uint64, limit int) ([]spool.Record, error) {
	if w.wedged.Load() {
		<-w.release
	}
	return w.DrainStore.ReadPending(after, limit)
}

// A wedged drainer stops the watchdog pings (systemd then kills and
// restarts the process); STATUS goes on, and pings resume with progress.
func TestService_WatchdogStopsWhenDrainerWedged(t *testing.T) {
	clearServeEnv(t)
	ns := newNotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", ns.path)
	t.Setenv("WATCHDOG_USEC", "2000000")
	ws := &wedgedStore{release: make(chan struct{})}
	wrapDrainStore = func(s relay.DrainStore) relay.DrainStore { ws.DrainStore = s; return ws }
	t.Cleanup(func() { wrapDrainStore = nil })

	dir := t.TempDir()
	srv := startServe(t, "--insecure-no-auth", "--listen", "127.0.0.1:0", "--spool", filepath.Join(dir, "spool.db"),
		"--dry-run", "--dry-run-file", filepath.Join(dir, "out.ndjson"), "--admin-socket", "")
	_, i := ns.waitState(t, 0, "READY=1")
	_, i = ns.waitState(t, i, "WATCHDOG=1")

	ws.wedged.Store(true)
	if code := postEvent(t, srv.Addr, ""); code != http.StatusAccepted {
		t.Fatalf("post: %d", code) // wakes the drainer into the wedged read
	}
	// Once the drainer has not gone round for the stall bound (3 s), the
	// pings stop while STATUS lines keep coming.
	wedgedAt := time.Now()
	deadline := time.After(20 * time.Second)
	var lastPing time.Time
	statusAfter := 0
	for statusAfter < 4 {
		select {
		case <-ns.got:
		case <-deadline:
			t.Fatalf("no run of STATUS lines without pings within 20s: %v", ns.since(i))
		}
		for _, m := range ns.since(i) {
			i++
			switch {
			case m.state == "WATCHDOG=1":
				lastPing, statusAfter = m.at, 0
			case strings.HasPrefix(m.state, "STATUS="):
				statusAfter++
			}
		}
	}
	if lastPing.Sub(wedgedAt) > 8*time.Second {
		t.Errorf("pings went on %s after the drainer wedged", lastPing.Sub(wedgedAt))
	}
	if !strings.Contains(srv.Stderr.String(), "not pinging the watchdog") {
		t.Errorf("no log line says why the pings stopped:\n%s", srv.Stderr)
	}
	// Unwedged, it pings again.
	ws.wedged.Store(false)
	close(ws.release)
	ns.waitState(t, i, "WATCHDOG=1")
	srv.Stop(t)
}

// waitLogN waits (20 s at most) until the relay has logged msg n times.
func waitLogN(t *testing.T, p *e2eRelay, msg string, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ls := p.LogLines(msg); len(ls) >= n {
			return ls[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q logged %d times within 20s, want %d", msg, len(p.LogLines(msg)), n)
		}
		time.Sleep(20 * time.Millisecond) // polling the log for a condition
	}
}

// SIGHUP also re-reads the mapping overrides and the rate from --config,
// and a keep-alive connection to the relay goes on across it.
func TestService_ReloadMappingAndRate(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gwenrelay.yaml")
	out := filepath.Join(dir, "out.ndjson")
	write := func(event string, rate int) {
		y := fmt.Sprintf("rate: %d\nmapping:\n  achievement: {event: %s}\n", rate, event)
		if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("Badge Earned", 500)
	p := e2eStart(t, filepath.Join(dir, "spool.db"), "--insecure-no-auth", "--config", cfg, "--dry-run", "--dry-run-file", out)

	c := e2eClient()
	var reused []bool
	post := func(user string) {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodPost,
			p.URL+"/webhook", strings.NewReader(string(e2eEvent(user, 200))))
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("post %s: %d", user, resp.StatusCode)
		}
	}
	delivered := func(user string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			b, _ := os.ReadFile(out)
			for _, line := range strings.Split(string(b), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && m["userId"] == user {
					return m
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not delivered within 20s", user)
			}
			time.Sleep(20 * time.Millisecond) // polling the dry-run output
		}
	}
	post("before")
	if ev := delivered("before")["event"]; ev != "Badge Earned" {
		t.Fatalf("before reload: event %v, want the override", ev)
	}

	write("Trophy Won", 50)
	p.Signal(syscall.SIGHUP)
	line := waitLogN(t, p, "reloaded", 1)
	if line["rate"] != float64(50) {
		t.Errorf("reload logged rate %v, want 50", line["rate"])
	}
	post("after")
	if ev := delivered("after")["event"]; ev != "Trophy Won" {
		t.Errorf("after reload: event %v, want the new override", ev)
	}
	if len(reused) != 2 || !reused[1] {
		t.Errorf("connection reuse across the reload: %v, want the second post on the first's connection", reused)
	}
	p.StopClean(30 * time.Second)
}

// The binary serves /metrics on --admin-listen; the counters follow what
// it was sent.
func TestService_Metrics(t *testing.T) {
	dir := t.TempDir()
	p := e2eStart(t, filepath.Join(dir, "spool.db"), "--insecure-no-auth")
	line := p.WaitLog("metrics", 10*time.Second)
	addr, _ := line["addr"].(string)
	if addr == "" {
		t.Fatalf("no metrics address logged: %v", line)
	}
	c := e2eClient()
	for i := 0; i < 3; i++ {
		if o := e2ePost(c, p.URL, []string{fmt.Sprintf("m-%d", i)}, 200, true, "x"); !o.ok() {
			t.Fatalf("post: %d %s", o.Status, o.Body)
		}
	}
	if o := e2ePost(c, p.URL, []string{"m-0"}, 200, true, "x"); o.Status != http.StatusOK {
		t.Fatalf("repeat: %d, want 200", o.Status)
	}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	value := func(name string) float64 {
		f := families[name]
		if f == nil || len(f.GetMetric()) == 0 {
			t.Fatalf("%s missing from /metrics", name)
		}
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	if v := value("gwenrelay_events_spooled_total"); v != 3 {
		t.Errorf("spooled = %v, want 3", v)
	}
	if v := value("gwenrelay_events_duplicate_total"); v != 1 {
		t.Errorf("duplicates = %v, want 1", v)
	}
	if v := value("gwenrelay_spool_pending_records"); v != 3 {
		t.Errorf("pending = %v, want 3 (the Segment endpoint is unreachable)", v)
	}
	if families["process_resident_memory_bytes"] == nil {
		t.Errorf("no process metrics")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		r, err := c.Get("http://" + addr + path)
		if err != nil || r.StatusCode != http.StatusOK {
			t.Errorf("admin %s: %v %v", path, r, err)
		}
		if r != nil {
			r.Body.Close()
		}
	}
	p.StopClean(30 * time.Second)
}

// Every socket systemd passes is served (a socket unit may have several
// ListenStream= lines, e.g. IPv4 and IPv6).
func TestService_SeveralInheritedSockets(t *testing.T) {
	var files []*os.File
	var urls []string
	for i := 0; i < 2; i++ {
		l, f := e2eHeldListener(t)
		files = append(files, f)
		urls = append(urls, "http://"+l.Addr().String())
	}
	p, err := e2eStartOpts(t, e2eStartOptions{Listeners: files}, filepath.Join(t.TempDir(), "spool.db"), "--insecure-no-auth")
	if err != nil {
		t.Fatal(err)
	}
	c := e2eClient()
	for i, u := range urls {
		if o := e2ePost(c, u, []string{fmt.Sprintf("sock-%d", i)}, 200, true, "x"); !o.ok() {
			t.Errorf("post to inherited socket %d (%s): %d %v", i, u, o.Status, o.Err)
		}
	}
	if n := len(p.LogLines("listening")); n != 2 {
		t.Errorf("%d listening lines, want one for each socket", n)
	}
	p.StopClean(30 * time.Second)
}

// A dry run paced by a very low --rate waits for each token inside the
// drainer's loop: that is progress, and the watchdog must go on being
// pinged while the events trickle out.
func TestService_WatchdogAtALowRate(t *testing.T) {
	ns := newNotifySocket(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.ndjson")
	p, err := e2eStartOpts(t, e2eStartOptions{Env: []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=2000000"}},
		filepath.Join(dir, "spool.db"), "--insecure-no-auth", "--dry-run", "--dry-run-file", out, "--rate", "0.3", "--burst", "1")
	if err != nil {
		t.Fatal(err)
	}
	_, i := ns.waitState(t, 0, "READY=1")
	if o := e2ePost(e2eClient(), p.URL, []string{"slow-1", "slow-2", "slow-3", "slow-4"}, 200, false, "x"); !o.ok() {
		t.Fatalf("post: %d %s", o.Status, o.Body)
	}
	// 4 events at 0.3/s: about 10 s, one token every 3.3 s (longer than
	// the 3 s stall bound of a 2 s watchdog).
	deadline := time.Now().Add(40 * time.Second)
	for {
		b, _ := os.ReadFile(out)
		if strings.Count(string(b), "\n") >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("4 events not written within 40s: %q", b)
		}
		ns.waitState(t, i, "WATCHDOG=1") // at least the pings keep coming meanwhile
		i = ns.count()
	}
	if lines := p.LogLines("not pinging the watchdog: the process is not making progress; systemd will restart it"); len(lines) > 0 {
		t.Errorf("the watchdog pings stopped during a slow dry run: %v", lines)
	}
	p.StopClean(30 * time.Second)
}
