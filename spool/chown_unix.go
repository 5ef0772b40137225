//go:build unix

package spool

import (
	"os"
	"syscall"
)

// MatchOwner gives path the owner and group of like when running as root,
// and does nothing otherwise (other users cannot give a file away, and a
// file they made is theirs already). gwenrelay run by root on a spool owned
// by the service user (compact, import creating it) must not leave a file
// the service cannot open.
func MatchOwner(path string, like os.FileInfo) error {
	st, ok := like.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 {
		return nil
	}
	return os.Chown(path, int(st.Uid), int(st.Gid))
}
