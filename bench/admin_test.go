package main

import (
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestAdminCommandArgv(t *testing.T) {
	cmds := adminCommands(1_000_000)
	got := map[string][]string{}
	for _, c := range cmds {
		got[c.Label] = c.argv("/s.db", "/a.sock")
	}
	want := map[string][]string{
		"version":                      {"version"},
		"stats":                        {"spool", "stats", "--spool", "/s.db", "--admin-socket", "/a.sock"},
		"stats --json":                 {"spool", "stats", "--spool", "/s.db", "--admin-socket", "/a.sock", "--json"},
		"ls --limit 50":                {"spool", "ls", "--spool", "/s.db", "--admin-socket", "/a.sock", "--limit", "50"},
		"ls --limit 50 --after 500000": {"spool", "ls", "--spool", "/s.db", "--admin-socket", "/a.sock", "--limit", "50", "--after", "500000"},
		// Flags before the id: the CLI takes a flag after it for an argument.
		"show 500000": {"spool", "show", "--spool", "/s.db", "--admin-socket", "/a.sock", "500000"},
	}
	if len(got) != len(want) {
		t.Fatalf("labels %q, want %d commands", slices.Sorted(maps.Keys(got)), len(want))
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s: argv %q, want %q", k, got[k], w)
		}
	}
	if cmds[0].Label != "version" || cmds[0].isSpool() {
		t.Errorf("the first command must be the version baseline, got %q", cmds[0].Label)
	}
	var targets []string
	for _, c := range cmds {
		if c.Target {
			targets = append(targets, c.Label)
		}
	}
	if !slices.Equal(targets, []string{"stats", "ls --limit 50"}) {
		t.Errorf("targets %q", targets)
	}
}

func TestAdminChecks(t *testing.T) {
	stats := "spool           /x/admin.db\nsource          live, through /tmp/a.sock\npending         1000000 records, 1.1 GiB\ndead            0 records, 0 B\n"
	if err := checkStatsText(stats, "", 1_000_000, true); err != nil {
		t.Errorf("live stats: %v", err)
	}
	if err := checkStatsText(stats, "", 1_000_000, false); err == nil {
		t.Error("a live answer passed as offline")
	}
	if err := checkStatsText(stats, "", 999_999, true); err == nil {
		t.Error("a wrong pending count passed")
	}
	off := strings.Replace(stats, "live, through /tmp/a.sock", "file (no daemon answering on /tmp/a.sock)", 1)
	if err := checkStatsText(off, "", 1_000_000, false); err != nil {
		t.Errorf("offline stats: %v", err)
	}

	if err := checkStatsJSON(`{"spool":"x","live":true,"pending":7}`, "", 7, true); err != nil {
		t.Errorf("stats --json: %v", err)
	}
	if err := checkStatsJSON(`{"spool":"x","live":false,"pending":7}`, "", 7, true); err == nil {
		t.Error("an offline answer passed as live")
	}

	var ls strings.Builder
	ls.WriteString("ID      AGE   TYPE  USER  ATTEMPTS  LAST ERROR\n")
	for i := 11; i <= 13; i++ {
		ls.WriteString(strconv.Itoa(i) + "      2h    achievement_update  u  0  -\n")
	}
	hint := "(first 3 shown; next page: --after 13)\n"
	if err := checkList(ls.String(), hint, 11, 3); err != nil {
		t.Errorf("ls: %v", err)
	}
	if err := checkList(ls.String(), hint, 12, 3); err == nil {
		t.Error("a wrong first id passed")
	}
	if err := checkList(ls.String(), "", 11, 3); err == nil {
		t.Error("no next-page hint passed")
	}
	if err := checkList(ls.String(), hint, 11, 4); err == nil {
		t.Error("too few rows passed")
	}

	if err := checkShow("id            500000\nstate         pending\n", 500000); err != nil {
		t.Errorf("show: %v", err)
	}
	if err := checkShow("id            500001\n", 500000); err == nil {
		t.Error("a wrong id passed")
	}
}

func TestScanExport(t *testing.T) {
	line := func(id string) string {
		return `{"id":` + id + `,"state":"pending","event":{"a":"` + strings.Repeat("x", 50) + `"}}` + "\n"
	}
	good := line("1") + line("2") + line("3")
	c, err := scanExport(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Lines != 3 || c.First != 1 || c.Last != 3 || !c.Ordered || c.Unterminated || c.Bytes != int64(len(good)) {
		t.Errorf("got %+v", c)
	}
	if err := c.want(3); err != nil {
		t.Error(err)
	}
	if err := c.want(4); err == nil {
		t.Error("3 lines passed for 4 records")
	}

	c, err = scanExport(strings.NewReader(line("1") + line("3") + line("2")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ordered || c.want(3) == nil {
		t.Errorf("out of order passed: %+v", c)
	}

	c, err = scanExport(strings.NewReader(line("1") + strings.TrimSuffix(line("2"), "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Lines != 1 || !c.Unterminated || c.Last != 2 || c.want(2) == nil {
		t.Errorf("an unterminated last line: %+v", c)
	}

	// A line longer than the reader's buffer.
	long := `{"id":2,"event":"` + strings.Repeat("y", 3<<20) + `"}` + "\n"
	c, err = scanExport(strings.NewReader(line("1") + long + line("3")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Lines != 3 || c.First != 1 || c.Last != 3 || !c.Ordered {
		t.Errorf("with a long line: %+v", c)
	}

	if _, err := scanExport(strings.NewReader(`{"state":"pending","id":1}` + "\n")); err == nil {
		t.Error("a line without a leading id passed")
	}
}

func TestStuckSegment(t *testing.T) {
	s, err := newStuckSegment()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	resp, err := http.Post(s.URL+"/v1/batch", "application/json", strings.NewReader(`{"batch":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "300" {
		t.Errorf("answer %d, Retry-After %q; want 429, 300", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	select {
	case <-s.first:
	default:
		t.Error("first was not closed")
	}
	if n := s.requests.Load(); n != 1 {
		t.Errorf("%d requests counted, want 1", n)
	}
}
