//go:build unix

package spool

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestMatchOwner: as root, MatchOwner gives a file the owner and group of
// another; as anyone else it does nothing (and does not fail).
func TestMatchOwner(t *testing.T) {
	dir := t.TempDir()
	like, target := filepath.Join(dir, "like"), filepath.Join(dir, "target")
	for _, p := range []string{like, target} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	owner := func(p string) (uid, gid uint32) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	root := os.Geteuid() == 0
	if root {
		if err := os.Chown(like, 4242, 4343); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(like)
	if err != nil {
		t.Fatal(err)
	}
	u0, g0 := owner(target)
	if err := MatchOwner(target, fi); err != nil {
		t.Fatalf("MatchOwner: %v", err)
	}
	u, g := owner(target)
	switch {
	case root && (u != 4242 || g != 4343):
		t.Fatalf("as root, MatchOwner left the file owned by %d:%d, want 4242:4343", u, g)
	case !root && (u != u0 || g != g0):
		t.Fatalf("as a user, MatchOwner changed the owner from %d:%d to %d:%d", u0, g0, u, g)
	}
	if err := MatchOwner(filepath.Join(dir, "missing"), fi); root && err == nil {
		t.Fatal("MatchOwner of a missing file succeeded as root")
	}
}
