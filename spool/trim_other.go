//go:build !linux

package spool

// dropMapped does nothing where the relay is not built to run.
func dropMapped(addr, n uintptr) {}

// mappingEnd cannot tell where the relay is not built to run: no trim.
func mappingEnd(addr uintptr, path string) (uintptr, bool) { return 0, false }
