//go:build !unix

package spool

import "os"

// chownLike is a no-op where files have no Unix owner.
func chownLike(string, os.FileInfo) error { return nil }
