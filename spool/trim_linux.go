package spool

import "syscall"

// dropMapped unmaps the pages of [addr, addr+n) (MADV_DONTNEED); a failure
// only leaves them mapped.
func dropMapped(addr, n uintptr) {
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, addr, n, syscall.MADV_DONTNEED)
}
