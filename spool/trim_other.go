//go:build !linux

package spool

// dropMapped does nothing where the relay is not built to run.
func dropMapped(addr, n uintptr) {}
