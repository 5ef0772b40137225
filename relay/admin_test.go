package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// The admin tests run a real spool file, the admin API on a real Unix
// socket, and the client the CLI uses; the client's answers must be the
// Inspector's, whichever way they travel.

// adminFixture is a spool with pending and dead records and its admin API.
type adminFixture struct {
	sp      *spool.Spool
	in      *Inspector
	client  *AdminClient
	socket  string
	retried int
	now     time.Time
}

func newAdminFixture(t *testing.T) *adminFixture {
	t.Helper()
	f := &adminFixture{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	f.sp = openIngestSpool(t, "", spool.Options{DedupWindow: time.Hour})
	var entries []spool.Entry
	for i, typ := range []string{"achievement_update", "wallet_update", "achievement_update", "mission_update", "wallet_update", "achievement_update"} {
		raw := []byte(`{"type":"` + typ + `","userId":"u` + string(rune('1'+i)) + `","state":{"n":1}}`)
		e, err := GWENEntry(raw, "", 0, f.now.Add(time.Duration(i)*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	if _, err := f.sp.Append(entries); err != nil {
		t.Fatal(err)
	}
	// 2 and 5 (wallet) and 3 (achievement) are dead letters.
	for _, id := range []uint64{2, 3, 5} {
		if err := f.sp.Dead(id, "rejected by Segment: 400"); err != nil {
			t.Fatal(err)
		}
	}
	f.in = NewInspector(InspectorConfig{
		Store: f.sp, Mapping: func() *Mapping { return DefaultMapping("test") },
		Retried: func() { f.retried++ },
		Now:     func() time.Time { return f.now.Add(time.Hour) },
	})
	f.socket = filepath.Join(t.TempDir(), "admin.sock")
	ln, err := ListenAdminSocket(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeAdmin(ctx, ln, AdminHandler(f.in, drainQuietLog), drainQuietLog) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeAdmin: %v", err)
		}
		ln.Close()
	})
	f.client, err = DialAdmin(context.Background(), f.socket)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func listIDs(t *testing.T, a SpoolAdmin, q ListQuery) []uint64 {
	t.Helper()
	var ids []uint64
	if err := a.List(context.Background(), q, func(v RecordView) error { ids = append(ids, v.ID); return nil }); err != nil {
		t.Fatalf("List(%+v): %v", q, err)
	}
	return ids
}

func exportBytes(t *testing.T, a SpoolAdmin, states ...spool.State) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := a.Export(context.Background(), states, func(l []byte) error { b.Write(l); return nil }); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return b.Bytes()
}

func TestAdmin_ClientAnswersAsInspector(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()
	if f.client.SpoolPath != f.sp.Path() {
		t.Errorf("client learnt spool %q, want %q", f.client.SpoolPath, f.sp.Path())
	}

	local, err := f.in.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := f.client.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(local, remote) {
		t.Errorf("stats differ:\nlocal  %+v\nremote %+v", local, remote)
	}
	if local.Pending != 3 || local.Dead != 3 || local.OldestPendingAt == nil || !local.OldestPendingAt.Equal(f.now) {
		t.Errorf("stats = %+v, want 3 pending, 3 dead, oldest at %v", local, f.now)
	}
	if len(local.Attempts) != spool.AttemptBuckets || local.Attempts[0].Records != 3 || local.Attempts[0].Attempts != "0" {
		t.Errorf("attempts histogram = %+v, want 3 records with 0 attempts first", local.Attempts)
	}
	local.SetAge(f.now.Add(90 * time.Second))
	if local.OldestPendingAgeSeconds != 90 {
		t.Errorf("age = %d, want 90", local.OldestPendingAgeSeconds)
	}

	for _, q := range []ListQuery{
		{}, {Dead: true}, {Type: "achievement"}, {Type: "Achievement Update", Dead: true},
		{User: "u4"}, {Limit: 2}, {After: 1, Limit: 1}, {Dead: true, After: 2}, {Type: "nothing"},
	} {
		a, b := listIDs(t, f.in, q), listIDs(t, f.client, q)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("List(%+v): inspector %v, client %v", q, a, b)
		}
	}
	if got := listIDs(t, f.client, ListQuery{}); !reflect.DeepEqual(got, []uint64{1, 4, 6}) {
		t.Errorf("pending = %v, want [1 4 6]", got)
	}
	if got := listIDs(t, f.client, ListQuery{Type: "achievement", Dead: true}); !reflect.DeepEqual(got, []uint64{3}) {
		t.Errorf("dead achievements = %v, want [3]", got)
	}
	if got := listIDs(t, f.client, ListQuery{After: 1, Limit: 1}); !reflect.DeepEqual(got, []uint64{4}) {
		t.Errorf("page after 1 = %v, want [4]", got)
	}

	ls, err := f.in.Show(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := f.client.Show(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ls, rs) {
		t.Errorf("show differs:\nlocal  %+v\nremote %+v", ls, rs)
	}
	if ls.State != "dead" || ls.Attempts != 1 || !strings.Contains(ls.LastError, "400") || ls.MessageError != "" ||
		!bytes.Contains(ls.Message, []byte(`"event":"Achievement Update"`)) {
		t.Errorf("show 3 = %+v\nmessage %s", ls, ls.Message)
	}
	if _, err := f.client.Show(ctx, 99); !errors.Is(err, spool.ErrNotFound) || !strings.Contains(err.Error(), "record 99") {
		t.Errorf("show 99: %v, want ErrNotFound naming the record", err)
	}

	for _, states := range [][]spool.State{{spool.StatePending}, {spool.StateDead}, {spool.StatePending, spool.StateDead}} {
		a, b := exportBytes(t, f.in, states...), exportBytes(t, f.client, states...)
		if !bytes.Equal(a, b) {
			t.Errorf("export %v differs:\n%s\n%s", states, a, b)
		}
		if n := bytes.Count(a, []byte("\n")); n != 3*len(states) {
			t.Errorf("export %v: %d lines, want %d", states, n, 3*len(states))
		}
	}
}

func TestAdmin_Repairs(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()

	res, err := f.client.Retry(ctx, RetryRequest{IDs: []uint64{2, 4, 99}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed != 1 || !reflect.DeepEqual(res.Missing, []uint64{4, 99}) || f.retried != 1 {
		t.Errorf("retry 2 4 99 = %+v (retried hook %d), want 1 moved, 4 and 99 missing", res, f.retried)
	}
	if got := listIDs(t, f.client, ListQuery{}); !reflect.DeepEqual(got, []uint64{1, 2, 4, 6}) {
		t.Errorf("pending after retry = %v, want 2 back in id order", got)
	}
	res, err = f.client.Retry(ctx, RetryRequest{All: true, Type: "wallet"})
	if err != nil || res.Changed != 1 {
		t.Errorf("retry --all --type wallet = %+v, %v; want 1 (record 5)", res, err)
	}
	if got := listIDs(t, f.client, ListQuery{Dead: true}); !reflect.DeepEqual(got, []uint64{3}) {
		t.Errorf("dead after retries = %v, want [3]", got)
	}
	for _, bad := range []RetryRequest{{}, {IDs: []uint64{3}, Type: "wallet"}} {
		if _, err := f.client.Retry(ctx, bad); err == nil {
			t.Errorf("retry %+v: no error", bad)
		}
	}

	res, err = f.client.Delete(ctx, []uint64{1, 3, 77})
	if err != nil || res.Changed != 2 || !reflect.DeepEqual(res.Missing, []uint64{77}) {
		t.Errorf("delete 1 3 77 = %+v, %v; want 2 deleted, 77 missing", res, err)
	}
	if _, err := f.client.Delete(ctx, nil); err == nil || !strings.Contains(err.Error(), "name the records") {
		t.Errorf("delete of nothing: %v", err)
	}

	// Purge counts from the dead-lettering: the Inspector's clock is an
	// hour after the records were received; they were dead-lettered at the
	// real time of the test, so only a purge of everything removes them.
	for _, id := range []uint64{4, 6} {
		if err := f.sp.Dead(id, "rejected"); err != nil {
			t.Fatal(err)
		}
	}
	res, err = f.client.Purge(ctx, 72*time.Hour)
	if err != nil || res.Changed != 0 {
		t.Errorf("purge --older-than 72h = %+v, %v; want 0", res, err)
	}
	f.now = time.Now().Add(80 * time.Hour) // the Inspector's clock is f.now + 1h
	res, err = f.client.Purge(ctx, 72*time.Hour)
	if err != nil || res.Changed != 2 {
		t.Errorf("purge --older-than 72h, 81h later = %+v, %v; want 2", res, err)
	}
	st, err := f.client.Stats(ctx)
	if err != nil || st.Dead != 0 || st.Pending != 2 {
		t.Errorf("stats after repairs = %+v, %v; want 2 pending (2, 5), 0 dead", st, err)
	}
}

func TestRecordView_RoundTrip(t *testing.T) {
	r := spool.Record{
		ID: 42, Kind: spool.KindGWEN, ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Attempts: 3, LastAttempt: time.Date(2026, 1, 2, 4, 0, 0, 7, time.UTC), LastError: "rejected by Segment: 400",
		MessageID: "gwenrelay-abc", Key: []byte{0, 1, 0xfe}, Event: []byte(`{"type":"wallet_update","userId":"u"}`),
	}
	line, err := MarshalRecordLine(NewRecordView(r, true))
	if err != nil {
		t.Fatal(err)
	}
	var v RecordView
	if err := json.Unmarshal(line, &v); err != nil {
		t.Fatal(err)
	}
	got, st, err := v.Record()
	if err != nil {
		t.Fatal(err)
	}
	if st != spool.StateDead || !reflect.DeepEqual(got, r) {
		t.Errorf("round trip:\ngot  %+v (%v)\nwant %+v (dead)", got, st, r)
	}
	for _, bad := range []string{
		`{"id":1,"state":"lost","received_at":"2026-01-01T00:00:00Z","event":{}}`,
		`{"id":1,"kind":"other","received_at":"2026-01-01T00:00:00Z","event":{}}`,
		`{"id":1,"received_at":"2026-01-01T00:00:00Z","event":null}`,
		`{"id":1,"event":{}}`,
		`{"id":1,"received_at":"2026-01-01T00:00:00Z","dedup_key":"zz","event":{}}`,
		`{"id":1,"received_at":"2026-01-01T00:00:00Z","unreadable":"damaged","event":null}`,
	} {
		var v RecordView
		if err := json.Unmarshal([]byte(bad), &v); err != nil {
			t.Fatal(err)
		}
		if _, _, err := v.Record(); err == nil {
			t.Errorf("%s: imported without complaint", bad)
		}
	}
}

// streamFailer is a SpoolAdmin whose export breaks after one line, as a
// spool read failing half-way would.
type streamFailer struct{ SpoolAdmin }

func (streamFailer) Stats(context.Context) (StatsView, error) { return StatsView{Spool: "x"}, nil }
func (streamFailer) Export(_ context.Context, _ []spool.State, fn func([]byte) error) error {
	if err := fn([]byte(`{"id":1}` + "\n")); err != nil {
		return err
	}
	return errors.New("disk read error")
}

func TestAdmin_StreamCutShort(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := ListenAdminSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ServeAdmin(ctx, ln, AdminHandler(streamFailer{}, drainQuietLog), drainQuietLog) }()
	c, err := DialAdmin(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	err = c.Export(ctx, []spool.State{spool.StatePending}, func([]byte) error { lines++; return nil })
	if err == nil || !strings.Contains(err.Error(), "disk read error") || lines != 1 {
		t.Errorf("export cut short: %d lines, err %v; want 1 line and the daemon's error", lines, err)
	}
}

func TestListenAdminSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")

	ln, err := ListenAdminSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != SocketMode {
		t.Fatalf("socket file: %v, %v; want a socket with mode %o", fi.Mode(), err, SocketMode)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket (no temporary name left)", len(entries))
	}
	// A second daemon on the same path is refused while the first answers.
	first := ln
	go func() {
		for {
			c, err := first.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := ListenAdminSocket(sock); err == nil || !strings.Contains(err.Error(), "in use by another running gwenrelay") {
		t.Errorf("second listener: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want it removed", err)
	}

	// A stale socket (its process was killed) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := DialAdmin(context.Background(), sock); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("DialAdmin on a stale socket: %v, want ErrNoDaemon", err)
	}
	ln, err = ListenAdminSocket(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	// Close leaves alone a socket that another process put there since.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	other, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("Close removed another process's socket: %v", err)
	}
	other.Close()

	// Anything that is not a socket is never replaced.
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenAdminSocket(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep me" {
		t.Errorf("regular file changed to %q", b)
	}
	if _, err := ListenAdminSocket(filepath.Join(dir, "missing", "a.sock")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("in a missing directory: %v", err)
	}
}

func TestDialAdmin_Failures(t *testing.T) {
	dir := t.TempDir()
	if _, err := DialAdmin(context.Background(), filepath.Join(dir, "none.sock")); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("no socket: %v, want ErrNoDaemon", err)
	}

	// A daemon that accepts but never answers (stopped, wedged): an error
	// within the dial timeout, not a hang.
	sock := filepath.Join(dir, "wedged.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	held := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held <- c // kept open, never answered
		}
	}()
	start := time.Now()
	_, err = DialAdmin(context.Background(), sock)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "did not answer") || errors.Is(err, ErrNoDaemon) {
		t.Errorf("wedged daemon: %v", err)
	}
	if took > AdminDialTimeout+2*time.Second {
		t.Errorf("wedged daemon: gave up after %s, want about %s", took, AdminDialTimeout)
	}
}

// An export whose reader stops is cut off after the write timeout, so its
// read transaction (which keeps bbolt from reusing freed pages) ends.
func TestAdmin_StalledExportIsCutOff(t *testing.T) {
	old := streamWriteTimeout
	streamWriteTimeout = 300 * time.Millisecond
	t.Cleanup(func() { streamWriteTimeout = old })

	// Opened here, not with openIngestSpool: the test closes it itself.
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var entries []spool.Entry
	for i := 0; i < 4000; i++ {
		raw := []byte(`{"type":"wallet_update","userId":"u` + strings.Repeat("x", 1000) + `","n":` + fmt.Sprint(i) + `}`)
		e, err := GWENEntry(raw, "", 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	if _, err := sp.Append(entries); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := ListenAdminSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = ServeAdmin(ctx, ln, AdminHandler(NewInspector(InspectorConfig{Store: sp}), drainQuietLog), drainQuietLog)
	}()

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.(*net.UnixConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("GET /v1/export HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// Read nothing for a while: the server blocks on a full socket, then
	// gives up after the write timeout.
	time.Sleep(2 * time.Second) // the stall being tested, not a wait for a condition
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("reading what the server sent before giving up: %v (after %d bytes)", err, n)
	}
	if n >= 4000*1000 {
		t.Errorf("the whole export (%d bytes) arrived; want it cut off", n)
	}
	t.Logf("the server sent %d bytes and closed the connection", n)
	// The read transaction is gone: Close, which needs every transaction
	// to end, returns.
	closed := make(chan error, 1)
	go func() { closed <- sp.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("spool Close still waits for the export's read transaction")
	}
}
