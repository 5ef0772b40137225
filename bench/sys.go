package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user+system CPU time a process has used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces: fields
	// start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procMem is a process's resident memory from /proc/PID/status, in KiB.
type procMem struct {
	RSS, Anon, File, HWM int64
}

func readProcMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var m procMem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		*dst, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	}
	return m, sc.Err()
}

// selfCPU is this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// residency returns the fraction of path's pages in the page cache (mincore
// over a read-only mapping).
func residency(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	if size == 0 {
		return 0, nil
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mmap %s: %w", path, err)
	}
	defer syscall.Munmap(data)
	ps := int64(os.Getpagesize())
	vec := make([]byte, (size+ps-1)/ps)
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&data[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, fmt.Errorf("mincore %s: %w", path, e)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return float64(in) / float64(len(vec)), nil
}

// evict writes back and drops path's pages from the page cache
// (posix_fadvise DONTNEED), so the next reader goes to the disk. The
// hypervisor may still cache the virtual disk.
func evict(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	const fadvDontNeed = 4
	if _, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0); e != 0 {
		return fmt.Errorf("fadvise %s: %w", path, e)
	}
	return nil
}

// copyFile copies src to dst (in the kernel where it can) and fsyncs dst, so
// no writeback of the copy overlaps the measurement that follows.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("fsync %s: %w", dst, err)
	}
	return out.Close()
}

// fsType names the filesystem holding dir.
func fsType(dir string) (string, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown (" + err.Error() + ")", false
	}
	switch uint64(st.Type) {
	case 0xEF53:
		return "ext4", true
	case 0x58465342:
		return "xfs", true
	case 0x9123683E:
		return "btrfs", true
	case 0x01021994:
		return "tmpfs", false
	case 0x794c7630:
		return "overlayfs", true
	case 0x2fc12fc1:
		return "zfs", true
	}
	return fmt.Sprintf("fs magic %#x", uint64(st.Type)), true
}

// machine describes where the bench ran.
type machine struct {
	CPUs      int
	CPUModel  string
	Kernel    string
	MemGiB    float64
	GoVersion string
	Commit    string
	LoadAvg   string
	Virt      string // "virtual machine", "container (docker)", … or ""
	Disk      string // the block device under --dir, or ""
}

// describe is the one-line description of the machine.
func (m machine) describe() string {
	return fmt.Sprintf("%d CPUs (%s%s), %s, %.1f GiB RAM", m.CPUs, m.CPUModel, m.virtNote(), m.Kernel, m.MemGiB)
}

// short is the machine in a few words, for the plot.
func (m machine) short() string {
	return fmt.Sprintf("%d × %s%s, %.0f GiB RAM, %s", m.CPUs, m.CPUModel, m.virtNote(), m.MemGiB, m.GoVersion)
}

func (m machine) virtNote() string {
	if m.Virt == "" {
		return ""
	}
	return "; " + m.Virt
}

func (m machine) diskNote() string {
	if m.Disk == "" {
		return ""
	}
	return " on " + m.Disk
}

// detectVirt says whether this runs in a virtual machine (the CPU's
// hypervisor flag) and in a container (systemd-detect-virt --container, if
// installed).
func detectVirt() string {
	var out []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
				if slices.Contains(strings.Fields(v), "hypervisor") {
					out = append(out, "virtual machine")
				}
				break
			}
		}
	}
	if c, err := exec.Command("systemd-detect-virt", "--container").Output(); err == nil {
		if v := strings.TrimSpace(string(c)); v != "" && v != "none" {
			out = append(out, "in a container ("+v+")")
		}
	}
	return strings.Join(out, ", ")
}

// describeDisk names the block device holding dir, its size and whether the
// kernel takes it for rotational, from /proc/self/mountinfo and /sys/block.
func describeDisk(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	best, src := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if len(f) < 5 || i < 0 || i+2 >= len(f) {
			continue
		}
		mnt := f[4]
		if (abs == mnt || strings.HasPrefix(abs, strings.TrimSuffix(mnt, "/")+"/")) && len(mnt) >= len(best) {
			best, src = mnt, f[i+2]
		}
	}
	if !strings.HasPrefix(src, "/dev/") {
		return ""
	}
	dev := strings.TrimPrefix(src, "/dev/")
	sys := "/sys/class/block/" + dev
	desc := src
	var extra []string
	if v, err := os.ReadFile(sys + "/size"); err == nil {
		if sectors, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil && sectors > 0 {
			extra = append(extra, fmt.Sprintf("%.0f GiB", float64(sectors*512)/(1<<30)))
		}
	}
	if strings.HasPrefix(dev, "vd") {
		extra = append(extra, "virtio")
	}
	if v, err := os.ReadFile(sys + "/device/model"); err == nil && strings.TrimSpace(string(v)) != "" {
		extra = append(extra, strings.TrimSpace(string(v)))
	}
	if len(extra) > 0 {
		desc += " (" + strings.Join(extra, ", ") + ")"
	}
	return desc
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "unknown", Kernel: "unknown", Commit: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemGiB = float64(kb) / (1 << 20)
		}
	}
	m.LoadAvg = loadAvg()
	m.Virt = detectVirt()
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
			m.Commit += " + uncommitted or untracked changes"
		}
	}
	return m
}

// loadAvg is the 1/5/15-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// machineCPU returns the CPU time all processes have used so far (user,
// nice, system, irq, softirq) and the time stolen by the hypervisor, from
// /proc/stat.
func machineCPU() (busy, steal time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	v := make([]int64, 8)
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %v", err)
		}
	}
	// user nice system idle iowait irq softirq steal
	ticks := v[0] + v[1] + v[2] + v[5] + v[6]
	return time.Duration(ticks) * time.Second / clockTicks, time.Duration(v[7]) * time.Second / clockTicks, nil
}

// preciseSleep sleeps for d with the kernel's precision (nanosleep: tens of
// µs late) instead of the Go runtime's timers, which in a mostly idle
// process wake up to a millisecond late; it blocks the calling thread. An
// interrupted sleep returns early: callers loop on the deadline.
func preciseSleep(d time.Duration) {
	if d <= 0 {
		return
	}
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil)
}

// fsyncProbe appends 4 KiB and fdatasyncs n times in a scratch file in dir,
// and returns the median and worst latency: how busy the disk is right now.
func fsyncProbe(dir string, n int) (p50, worst time.Duration, err error) {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	page := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := f.Write(page); err != nil {
			return 0, 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t))
	}
	ps := percentiles(lat, 50, 100)
	return ps[0], ps[1], nil
}
