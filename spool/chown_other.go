//go:build !unix

package spool

import "os"

// MatchOwner does nothing where files have no Unix owner.
func MatchOwner(string, os.FileInfo) error { return nil }
