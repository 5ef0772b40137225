//go:build linux

package systemd

// A throwaway Debian bookworm booted with systemd-nspawn, for driving the
// real unit under a real systemd (see nspawn_test.go). How and why, in
// ../../shared/docs/systemd-and-packaging.md: debootstrap a minbase tree with
// systemd, cache it as a tarball, boot it with --register=no --keep-unit,
// and run commands in it with nsenter into its PID 1. The container shares
// the host's network, so its services are reachable on 127.0.0.1 and it
// reaches servers the test runs there.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	debianSuite   = "bookworm"
	debianInclude = "systemd,systemd-sysv,dbus,procps,ca-certificates" // the package's dependencies: dpkg -i does not fetch them
	// treeRevision changes the cache key when the way a tree is made changes.
	treeRevision = "2"
)

// skipLoudly skips the test when systemd-nspawn cannot run on this machine,
// and says so where it cannot be missed: `go test ./...` shows a passing
// package's output only with -v, so the line also goes to the go command's
// own stderr. With GWENRELAY_REQUIRE_NSPAWN set (a CI where nspawn is known
// to work) it fails instead.
func skipLoudly(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := "SKIPPED: systemd-nspawn cannot run here: " + fmt.Sprintf(format, args...)
	if os.Getenv("GWENRELAY_REQUIRE_NSPAWN") != "" {
		t.Fatalf("%s (and GWENRELAY_REQUIRE_NSPAWN is set, so this is a failure)", msg)
	}
	bar := strings.Repeat("!", 100)
	text := fmt.Sprintf("\n%s\n!!! %s: %s\n!!! %s\n%s\n", bar, t.Name(), msg,
		"the service was NOT tested under a real systemd", bar)
	os.Stderr.WriteString(text)
	if f := parentGoStderr(); f != nil {
		f.WriteString(text)
		f.Close()
	}
	t.Skip(msg)
}

// parentGoStderr opens the stderr of the go command that runs this test
// binary, unless it is the test's own stderr already.
func parentGoStderr() *os.File {
	ppid := os.Getppid()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", ppid))
	if err != nil || strings.TrimSpace(string(comm)) != "go" {
		return nil
	}
	theirs := fmt.Sprintf("/proc/%d/fd/2", ppid)
	a, err1 := os.Stat(theirs)
	b, err2 := os.Stat("/proc/self/fd/2")
	if err1 != nil || (err2 == nil && os.SameFile(a, b)) {
		return nil
	}
	f, err := os.OpenFile(theirs, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil
	}
	return f
}

// preflight skips when nspawn cannot possibly run, and installs what is
// missing with apt-get.
func preflight(t *testing.T, ctx context.Context) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipLoudly(t, "not root (euid %d); systemd-nspawn needs root", os.Geteuid())
	}
	f, err := os.OpenFile("/proc/sys/kernel/hostname", os.O_WRONLY, 0)
	if err != nil {
		skipLoudly(t, "/proc/sys is not writable (%v)", err)
	}
	f.Close()
	var missing []string
	for bin, pkg := range map[string]string{"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap", "nsenter": "util-linux"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		skipLoudly(t, "%v not installed, and no apt-get to install them", missing)
	}
	t.Logf("installing %v with apt-get", missing)
	install := func() error {
		_, err := hostRun(ctx, 5*time.Minute, append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, missing...)...)
		return err
	}
	if err := install(); err != nil {
		t.Logf("apt-get install failed (%v); trying again after apt-get update", err)
		if _, err := hostRun(ctx, 5*time.Minute, "apt-get", "update", "-q"); err != nil {
			t.Fatalf("apt-get update: %v", err)
		}
		if err := install(); err != nil {
			t.Fatalf("apt-get install %v: %v", missing, err)
		}
	}
}

// hostRun runs a command on the host; the error carries its output.
func hostRun(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	return hostRunIn(ctx, "", timeout, args...)
}

// hostRunIn is hostRun in directory dir.
func hostRunIn(ctx context.Context, dir string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %v)", ctx.Err(), timeout)
		}
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 40))
	}
	return string(out), nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before ...]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// cacheDir holds the bootstrapped trees as tarballs, outside the repository:
// $GWENRELAY_NSPAWN_CACHE, else /var/cache/gwenrelay-nspawn.
func cacheDir() string {
	if d := os.Getenv("GWENRELAY_NSPAWN_CACHE"); d != "" {
		return d
	}
	return "/var/cache/gwenrelay-nspawn"
}

// prepareTree fills root (an empty directory) with a Debian tree that has
// systemd: from the cached tarball, or by debootstrap (then cached).
func prepareTree(t *testing.T, ctx context.Context, root string) {
	t.Helper()
	mirror := os.Getenv("GWENRELAY_NSPAWN_MIRROR")
	if mirror == "" {
		mirror = "http://deb.debian.org/debian"
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{debianSuite, "minbase", debianInclude, treeRevision}, "\n")))
	dir := cacheDir()
	tarball := filepath.Join(dir, fmt.Sprintf("debian-%s-minbase-%s.tar", debianSuite, hex.EncodeToString(sum[:6])))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// One test at a time fills the cache.
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	start := time.Now()
	if _, err := os.Stat(tarball); err == nil {
		if _, err := hostRun(ctx, 5*time.Minute, "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C", root); err == nil {
			t.Logf("tree: restored %s in %v", tarball, time.Since(start).Round(time.Millisecond))
			return
		} else {
			t.Logf("tree: the cached %s does not extract (%v); bootstrapping again", tarball, err)
			os.Remove(tarball)
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				os.RemoveAll(filepath.Join(root, e.Name()))
			}
		}
	}
	t.Logf("tree: no cached tree in %s: debootstrap %s from %s (about a minute)", dir, debianSuite, mirror)
	if _, err := hostRun(ctx, 10*time.Minute, "debootstrap", "--variant=minbase", "--include="+debianInclude, debianSuite, root, mirror); err != nil {
		t.Fatalf("debootstrap: %v", err)
	}
	// Half the tree is not needed to boot and dpkg -i a package that only
	// depends on what is there: the downloaded .debs, apt's lists and
	// caches, documentation and translations. Smaller is faster to restore.
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
		"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"} {
		matches, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
	t.Logf("tree: bootstrapped in %v", time.Since(start).Round(time.Second))
	tmp := tarball + ".tmp"
	if _, err := hostRun(ctx, 5*time.Minute, "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", tmp, "-C", root, "."); err != nil {
		os.Remove(tmp)
		t.Logf("tree: could not cache it (%v); going on", err)
		return
	}
	if err := os.Rename(tmp, tarball); err != nil {
		t.Logf("tree: could not cache it (%v); going on", err)
		return
	}
	t.Logf("tree: cached as %s", tarball)
	// Trees made another way are stale now.
	old, _ := filepath.Glob(filepath.Join(dir, "debian-*.tar"))
	for _, o := range old {
		if o != tarball {
			os.Remove(o)
		}
	}
}

// container is a booted tree.
type container struct {
	t       *testing.T
	root    string
	name    string
	logPath string
	cmd     *exec.Cmd // systemd-nspawn
	done    chan struct{}
	waitErr error
	pid1    int // the container's PID 1, as the host sees it
}

// boot starts systemd-nspawn on root in the background and waits until the
// container's systemd has finished booting. It skips (loudly) when nspawn
// cannot boot here. Cleanup shuts the container down.
func boot(t *testing.T, ctx context.Context, root, logPath string) *container {
	t.Helper()
	c := &container{t: t, root: root, name: fmt.Sprintf("gwenrelay-test-%d", os.Getpid()), logPath: logPath, done: make(chan struct{})}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c.cmd = exec.Command("systemd-nspawn", "--quiet",
		"--register=no", // no machined here
		"--keep-unit",   // without it nspawn wants a system bus
		"--machine="+c.name, "--directory="+root, "--boot",
		"--link-journal=no", "--console=read-only")
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "LISTEN_") || k == "WATCHDOG_USEC" || k == "WATCHDOG_PID" {
			continue
		}
		env = append(env, kv)
	}
	c.cmd.Env = env
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// If the test binary dies, nspawn gets SIGTERM and halts the container.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	if err := c.cmd.Start(); err != nil {
		skipLoudly(t, "starting systemd-nspawn: %v", err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(c.shutdown)

	// PID 1 is nspawn's child, in a PID namespace of its own, running systemd.
	deadline := time.Now().Add(30 * time.Second)
	for c.pid1 == 0 {
		select {
		case <-c.done:
			skipLoudly(t, "systemd-nspawn exited while booting (%v):\n%s", c.waitErr, c.bootLog(30))
		case <-ctx.Done():
			t.Fatalf("booting: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		c.pid1 = findPID1(c.cmd.Process.Pid)
		if c.pid1 == 0 && time.Now().After(deadline) {
			skipLoudly(t, "no systemd in a new PID namespace under systemd-nspawn after 30 s:\n%s", c.bootLog(30))
		}
	}

	// Then wait for the boot to finish.
	deadline = time.Now().Add(90 * time.Second)
	last := ""
	for {
		out, _ := c.run(ctx, 10*time.Second, "systemctl", "is-system-running")
		last = strings.TrimSpace(out)
		if last == "running" || last == "degraded" {
			break
		}
		select {
		case <-c.done:
			skipLoudly(t, "systemd-nspawn exited while booting (%v):\n%s", c.waitErr, c.bootLog(30))
		case <-ctx.Done():
			t.Fatalf("booting: %v", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			jobs, _ := c.run(ctx, 10*time.Second, "systemctl", "list-jobs", "--no-pager")
			t.Fatalf("the container's systemd did not finish booting in 90 s (is-system-running: %q)\njobs:\n%s\nconsole:\n%s", last, jobs, c.bootLog(40))
		}
	}
	t.Logf("container: booted (%s) in %v; PID 1 is host pid %d", last, time.Since(start).Round(time.Millisecond), c.pid1)
	if last == "degraded" {
		failed, _ := c.run(ctx, 10*time.Second, "systemctl", "--failed", "--no-pager", "--plain")
		t.Logf("container: failed units (not ours):\n%s", failed)
	}
	return c
}

// findPID1 finds the child of nspawn that is systemd in a new PID namespace.
func findPID1(nspawn int) int {
	self, _ := os.Readlink("/proc/self/ns/pid")
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(nspawn) {
			continue
		}
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if ns != "" && ns != self && strings.TrimSpace(string(comm)) == "systemd" {
			return pid
		}
	}
	return 0
}

// bootLog is the tail of nspawn's output (the container's console).
func (c *container) bootLog(n int) string {
	b, _ := os.ReadFile(c.logPath)
	return tail(string(b), n)
}

// run runs a command in the container (all of PID 1's namespaces, as root,
// with a clean environment) and returns its combined output.
func (c *container) run(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	return c.runIn(ctx, timeout, nil, args...)
}

func (c *container) runIn(ctx context.Context, timeout time.Duration, stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	full := append([]string{"-t", strconv.Itoa(c.pid1), "-a", "--",
		"/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "DEBIAN_FRONTEND=noninteractive"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %v)", ctx.Err(), timeout)
		}
		return string(out), fmt.Errorf("in the container, %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 30))
	}
	return string(out), nil
}

// must runs a command in the container and fails the test if it fails.
func (c *container) must(ctx context.Context, args ...string) string {
	c.t.Helper()
	out, err := c.run(ctx, 2*time.Minute, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// show returns `systemctl show` properties of a unit.
func (c *container) show(ctx context.Context, unit string, props ...string) map[string]string {
	c.t.Helper()
	out := c.must(ctx, "systemctl", "show", "--property="+strings.Join(props, ","), unit)
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// writeFile writes a file of the container (through the tree on the host,
// which the container sees), then gives it mode and owner ("user:group" as
// the container names them).
func (c *container) writeFile(ctx context.Context, path string, data []byte, mode os.FileMode, owner string) {
	c.t.Helper()
	host := filepath.Join(c.root, path)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(host, data, mode); err != nil {
		c.t.Fatal(err)
	}
	c.must(ctx, "chown", owner, path)
	c.must(ctx, "chmod", fmt.Sprintf("%04o", mode.Perm()), path)
}

// shutdown powers the container off, and kills it if it does not go.
func (c *container) shutdown() {
	select {
	case <-c.done:
		return
	default:
	}
	start := time.Now()
	wait := func(d time.Duration) bool {
		select {
		case <-c.done:
			return true
		case <-time.After(d):
			return false
		}
	}
	if c.pid1 != 0 {
		if _, err := c.run(context.Background(), 10*time.Second, "systemctl", "poweroff", "--no-block"); err != nil {
			c.t.Logf("container: poweroff: %v", err)
		}
	}
	if wait(30 * time.Second) {
		c.t.Logf("container: powered off in %v", time.Since(start).Round(time.Millisecond))
		return
	}
	c.t.Errorf("container: still up 30 s after poweroff; sending SIGTERM to nspawn")
	c.cmd.Process.Signal(syscall.SIGTERM)
	if wait(15 * time.Second) {
		return
	}
	// SIGKILL on PID 1 takes down its whole PID namespace.
	if c.pid1 != 0 {
		syscall.Kill(c.pid1, syscall.SIGKILL)
	}
	c.cmd.Process.Kill()
	if !wait(15 * time.Second) {
		c.t.Errorf("container: systemd-nspawn (pid %d) would not die", c.cmd.Process.Pid)
	}
}
