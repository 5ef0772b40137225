package spool

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// dropMapped unmaps the pages of [addr, addr+n) (MADV_DONTNEED); a failure
// only leaves them mapped.
func dropMapped(addr, n uintptr) {
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, addr, n, syscall.MADV_DONTNEED)
}

// mappingEnd returns the end of the mapping that holds addr, and whether
// that mapping is of the file at path, from /proc/self/maps.
func mappingEnd(addr uintptr, path string) (end uintptr, ok bool) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 6 {
			continue
		}
		lo, hi, found := bytes.Cut(fields[0], []byte("-"))
		if !found {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		stop, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || uint64(addr) < start || uint64(addr) >= stop {
			continue
		}
		return uintptr(stop), string(bytes.Join(fields[5:], []byte(" "))) == path
	}
	return 0, false
}
