//go:build unix

package spool

import (
	"os"
	"syscall"
)

// chownLike gives path the owner and group of fi when running as root
// (gwenrelay compact run by root on a spool owned by the service user must
// not leave it a file the service cannot open). Other users cannot give a
// file away, and the copy is already theirs.
func chownLike(path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 {
		return nil
	}
	return os.Chown(path, int(st.Uid), int(st.Gid))
}
