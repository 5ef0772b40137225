package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

// TestScripts runs testdata/script/*.txtar: the built gwenrelay binary
// driven as an operator would drive it, against a fake Segment in the test
// process. Besides testscript's own commands the scripts have:
//
//	fakesegment accept|reject|pause   start the fake (first call) or change how it answers;
//	                                  sets $SEGMENT. reject: 400 for every batch (records
//	                                  end up dead); pause: 429 with Retry-After: 300.
//	post N TYPE                       POST N GWEN events of TYPE to the relay on $PORT,
//	                                  one a request, userIds $TYPE-1..N; every answer must be 202
//	waitstats SOCKET FIELD N          poll the daemon's stats until FIELD (pending, dead,
//	                                  delivered) is N (30 s at most)
//	waitsocket SOCKET                 wait until a daemon answers on SOCKET (30 s at most)
//	segmentgot N                      wait until the fake has accepted N distinct messages
//	cmpexcept REGEXP FILE1 FILE2      compare two files leaving out the lines REGEXP matches
//	cmpjson FILE1 FILE2 [KEY...]      compare two JSON objects leaving out top-level KEYs
//	cmpsize lt|eq FILE1 FILE2         compare two files' sizes
//	genexport N STATE FILE            write an export of N records (1 KiB GWEN events) in STATE
//	mark / within DURATION            start a stopwatch / fail if more than DURATION passed
//	asnobody PROG ARGS...             run PROG as user nobody (when root), putting its
//	                                  stdout and stderr in files asnobody.stdout/.stderr;
//	                                  ! asnobody expects a failure
func TestScripts(t *testing.T) {
	bin := e2eBinary(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(bin)+string(os.PathListSeparator)+env.Getenv("PATH"))
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			env.Setenv("PORT", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
			l.Close()
			env.Setenv("BIN", bin)
			// Scripts run side by side: no relay may take the default
			// metrics port.
			env.Setenv("GWENRELAY_ADMIN_LISTEN", "127.0.0.1:0")
			// Sockets go in a short path (sun_path holds 108 bytes) that
			// another user may traverse, for the permission test.
			sockDir, err := os.MkdirTemp("", "gwr-sock-")
			if err != nil {
				return err
			}
			env.Defer(func() { os.RemoveAll(sockDir) })
			if err := os.Chmod(sockDir, 0o755); err != nil {
				return err
			}
			env.Setenv("SOCKDIR", sockDir)
			env.Values[scriptStateKey{}] = &scriptState{}
			return nil
		},
		Condition: func(cond string) (bool, error) {
			if cond == "root" {
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"fakesegment": cmdFakeSegment,
			"post":        cmdPost,
			"postsegment": cmdPostSegment,
			"waitstats":   cmdWaitStats,
			"waitsocket":  cmdWaitSocket,
			"segmentgot":  cmdSegmentGot,
			"segmentmsg":  cmdSegmentMsg,
			"cmpexcept":   cmdCmpExcept,
			"cmpjson":     cmdCmpJSON,
			"cmpsize":     cmdCmpSize,
			"mark":        cmdMark,
			"genexport":   cmdGenExport,
			"within":      cmdWithin,
			"asnobody":    cmdAsNobody,
		},
	})
}

type scriptStateKey struct{}

// scriptState is what a script's custom commands keep between calls.
type scriptState struct {
	fake *scriptFake
	mark time.Time
}

func state(ts *testscript.TestScript) *scriptState {
	return ts.Value(scriptStateKey{}).(*scriptState)
}

// scriptFake is a script's fake Segment; mode switches how it answers.
type scriptFake struct {
	*segmenttest.Server
	front  *http.Server
	url    string
	mode   atomic.Value // string
	reject atomic.Bool
}

const scriptWriteKey = "script-write-key"

func cmdFakeSegment(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: fakesegment accept|reject|pause")
	}
	mode := args[0]
	switch mode {
	case "accept", "reject", "pause":
	default:
		ts.Fatalf("fakesegment: unknown mode %q", mode)
	}
	f := state(ts).fake
	if f == nil {
		f = &scriptFake{Server: segmenttest.New(scriptWriteKey)}
		f.Reject = func(map[string]any) bool { return f.reject.Load() }
		l, err := net.Listen("tcp", "127.0.0.1:0")
		ts.Check(err)
		f.front = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if f.mode.Load() == "pause" {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Retry-After", "300")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			f.Server.Config.Handler.ServeHTTP(w, r)
		})}
		go func() { _ = f.front.Serve(l) }()
		f.url = "http://" + l.Addr().String()
		ts.Defer(func() {
			f.front.Close()
			f.Server.Close()
		})
		state(ts).fake = f
		ts.Setenv("SEGMENT", f.url)
		ts.Setenv("WRITE_KEY", scriptWriteKey)
	}
	f.mode.Store(mode)
	f.reject.Store(mode == "reject")
}

func cmdPost(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: post N TYPE")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	typ := args[1]
	url := "http://127.0.0.1:" + ts.Getenv("PORT") + "/webhook"
	c := e2eClient()
	for i := 1; i <= n; i++ {
		body := fmt.Sprintf(`{"type":%q,"userId":"%s-%d","segmentId":"seg-1","productId":7,"state":{"points":%d}}`, typ, typ, i, i*10)
		resp, err := c.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			ts.Fatalf("post %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			ts.Fatalf("post %d: %d %s", i, resp.StatusCode, b)
		}
	}
}

// cmdPostSegment posts FILE to Segment's API at /v1/CALL, as a Segment
// library does, and expects 200.
func cmdPostSegment(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: postsegment CALL FILE")
	}
	body := readScriptFile(ts, args[1])
	url := "http://127.0.0.1:" + ts.Getenv("PORT") + "/v1/" + args[0]
	resp, err := e2eClient().Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		ts.Fatalf("postsegment: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		ts.Fatalf("postsegment: %d %s", resp.StatusCode, b)
	}
}

// poll calls f until it returns true, for at most 30 s.
func poll(ts *testscript.TestScript, what string, f func() (bool, string)) {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s: not reached within 30s (last: %s)", what, last)
		}
		<-tick.C
	}
}

func cmdWaitStats(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: waitstats SOCKET FIELD N")
	}
	want, err := strconv.ParseInt(args[2], 10, 64)
	ts.Check(err)
	sock := ts.MkAbs(args[0])
	poll(ts, "waitstats "+strings.Join(args, " "), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ac, err := relay.DialAdmin(ctx, sock)
		if err != nil {
			return false, err.Error()
		}
		v, err := ac.Stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		var got int64
		switch args[1] {
		case "pending":
			got = v.Pending
		case "dead":
			got = v.Dead
		case "delivered":
			if v.Delivery != nil {
				got = v.Delivery.Delivered
			}
		default:
			ts.Fatalf("waitstats: unknown field %q", args[1])
		}
		return got == want, fmt.Sprintf("%s=%d", args[1], got)
	})
}

func cmdWaitSocket(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitsocket SOCKET")
	}
	sock := ts.MkAbs(args[0])
	poll(ts, "waitsocket "+args[0], func() (bool, string) {
		_, err := relay.DialAdmin(context.Background(), sock)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

func cmdSegmentGot(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: segmentgot N")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	f := state(ts).fake
	if f == nil {
		ts.Fatalf("segmentgot: no fakesegment started")
	}
	poll(ts, "segmentgot "+args[0], func() (bool, string) {
		got := len(f.Delivered())
		return got == n, fmt.Sprintf("%d delivered", got)
	})
}

// cmdSegmentMsg writes to FILE the message with MESSAGEID as the fake
// Segment received it (the last copy answered 200), indented.
func cmdSegmentMsg(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: segmentmsg MESSAGEID FILE")
	}
	f := state(ts).fake
	if f == nil {
		ts.Fatalf("segmentmsg: no fakesegment started")
	}
	ok := map[int]bool{}
	for i, r := range f.Requests() {
		ok[i] = r.Status == http.StatusOK
	}
	var raw []byte
	for _, m := range f.Messages() {
		if m.MessageID == args[0] && ok[m.Request] {
			raw = m.Raw
		}
	}
	if raw == nil {
		ts.Fatalf("segmentmsg: %s was not delivered", args[0])
	}
	var out bytes.Buffer
	ts.Check(json.Indent(&out, raw, "", "  "))
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), append(out.Bytes(), '\n'), 0o644))
}

func readScriptFile(ts *testscript.TestScript, name string) string {
	if name == "stdout" || name == "stderr" {
		return ts.ReadFile(name)
	}
	b, err := os.ReadFile(ts.MkAbs(name))
	ts.Check(err)
	return string(b)
}

func cmdCmpExcept(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: cmpexcept REGEXP FILE1 FILE2")
	}
	re, err := regexp.Compile(args[0])
	ts.Check(err)
	keep := func(s string) string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if !re.MatchString(l) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	a, b := keep(readScriptFile(ts, args[1])), keep(readScriptFile(ts, args[2]))
	if (a == b) == neg {
		ts.Fatalf("%s and %s (without lines matching %s): equal=%v\n--- %s\n%s\n--- %s\n%s", args[1], args[2], args[0], a == b, args[1], a, args[2], b)
	}
}

func cmdCmpJSON(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: cmpjson FILE1 FILE2 [KEY...]")
	}
	load := func(name string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(readScriptFile(ts, name)), &m); err != nil {
			ts.Fatalf("%s: %v", name, err)
		}
		for _, k := range args[2:] {
			delete(m, k)
		}
		return m
	}
	a, b := load(args[0]), load(args[1])
	if reflect.DeepEqual(a, b) == neg {
		ts.Fatalf("%s and %s (without %v): equal=%v\n%v\n%v", args[0], args[1], args[2:], !neg, a, b)
	}
}

func cmdCmpSize(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: cmpsize lt|eq FILE1 FILE2")
	}
	size := func(name string) int64 {
		fi, err := os.Stat(ts.MkAbs(name))
		ts.Check(err)
		return fi.Size()
	}
	a, b := size(args[1]), size(args[2])
	ok := false
	switch args[0] {
	case "lt":
		ok = a < b
	case "eq":
		ok = a == b
	default:
		ts.Fatalf("cmpsize: want lt or eq")
	}
	ts.Logf("%s: %d bytes, %s: %d bytes", args[1], a, args[2], b)
	if !ok {
		ts.Fatalf("want size(%s) %s size(%s): %d vs %d", args[1], args[0], args[2], a, b)
	}
}

func cmdMark(ts *testscript.TestScript, neg bool, args []string) {
	state(ts).mark = time.Now()
}

func cmdWithin(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: within DURATION")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	start := state(ts).mark
	if start.IsZero() {
		ts.Fatalf("within: no mark")
	}
	if took := time.Since(start); took > d {
		ts.Fatalf("took %s, want at most %s", took.Round(time.Millisecond), d)
	} else {
		ts.Logf("took %s", took.Round(time.Millisecond))
	}
}

// cmdAsNobody runs a program as another user than the daemon's. Run as
// root (CI), it switches to nobody, with a copy of the binary that nobody
// may run; otherwise it runs as the current user (the script then takes
// the permission away from the socket instead).
func cmdAsNobody(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 1 {
		ts.Fatalf("usage: asnobody PROG ARGS...")
	}
	prog := args[0]
	if prog == "gwenrelay" {
		prog = ts.Getenv("BIN")
	}
	cmd := exec.Command(prog, args[1:]...)
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = []string{"PATH=" + ts.Getenv("PATH"), "HOME=/"}
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "gwenrelay-nobody-")
		ts.Check(err)
		ts.Defer(func() { os.RemoveAll(dir) })
		ts.Check(os.Chmod(dir, 0o755))
		copyTo := filepath.Join(dir, filepath.Base(prog))
		b, err := os.ReadFile(prog)
		ts.Check(err)
		ts.Check(os.WriteFile(copyTo, b, 0o755))
		cmd.Path = copyTo
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	ts.Check(os.WriteFile(ts.MkAbs("asnobody.stdout"), stdout.Bytes(), 0o644))
	ts.Check(os.WriteFile(ts.MkAbs("asnobody.stderr"), stderr.Bytes(), 0o644))
	if (err != nil) != neg {
		ts.Fatalf("asnobody %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
}

func cmdGenExport(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: genexport N pending|dead FILE")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	var b bytes.Buffer
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for i := 1; i <= n; i++ {
		v := relay.RecordView{
			ID: uint64(i), State: args[1], Kind: "gwen", ReceivedAt: at.Add(time.Duration(i) * time.Second),
			MessageID: fmt.Sprintf("gen-%d", i), Event: e2eEvent(fmt.Sprintf("gen-%d", i), 1024),
		}
		if args[1] == "dead" {
			v.Attempts, v.LastError = 1, "rejected by Segment: 400 Bad Request"
			la := v.ReceivedAt.Add(time.Minute)
			v.LastAttemptAt = &la
		}
		line, err := relay.MarshalRecordLine(v)
		ts.Check(err)
		b.Write(line)
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), b.Bytes(), 0o644))
}
