// Package packaging holds the checks of what ships: the systemd units, the
// example configuration, and the .deb and .rpm that scripts/package.sh
// builds. The tests run the real tools (systemd-analyze, dpkg, lintian, rpm)
// and install the .deb on this machine, so they need root; each one that
// cannot run says so loudly and skips, or fails when
// GWENRELAY_PACKAGING_STRICT=1 (CI sets it, having installed the tools).
package packaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// maxExposure is the highest `systemd-analyze security` score accepted.
const maxExposure = 2.0

// repoRoot is where scripts/package.sh runs (go test runs in packaging/).
var repoRoot = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Dir(wd)
}()

// skipOrFail skips with a message nobody can miss, or fails under
// GWENRELAY_PACKAGING_STRICT=1, where every check must run.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("GWENRELAY_PACKAGING_STRICT") == "1" {
		t.Fatalf("GWENRELAY_PACKAGING_STRICT=1 but: %s", msg)
	}
	t.Skipf("\n!!!!!!!!\n!!! SKIPPED, NOT CHECKED: %s\n!!!!!!!!", msg)
}

// needTools skips unless every tool is on PATH; apt names the package.
func needTools(t *testing.T, apt string, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s is not installed (apt-get install %s)", tool, apt)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "this check installs the .deb: run it as root")
	}
}

// run runs a command and returns its combined output; it fails the test if
// the command fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type builtPackages struct {
	deb, rpm, binary, version string
	err                       error
}

var (
	buildOnce sync.Once
	built     builtPackages
	// distDir is where scripts/package.sh builds for these tests: a
	// directory of their own, so that nothing else building into dist/ at
	// the same time changes the packages under them.
	distDir string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if distDir != "" {
		os.RemoveAll(distDir)
	}
	os.Exit(code)
}

// packages runs scripts/package.sh once for all the tests.
func packages(t *testing.T) builtPackages {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gwenrelay-dist-")
		if err != nil {
			built.err = err
			return
		}
		distDir = dir
		start := time.Now()
		cmd := exec.Command("./scripts/package.sh")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "DIST="+distDir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			built.err = fmt.Errorf("scripts/package.sh: %v\n%s", err, out.String())
			return
		}
		t.Logf("scripts/package.sh took %s", time.Since(start).Round(100*time.Millisecond))
		// The last two lines name the packages.
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) < 2 {
			built.err = fmt.Errorf("scripts/package.sh did not name its packages:\n%s", out.String())
			return
		}
		built.deb, built.rpm = lines[len(lines)-2], lines[len(lines)-1]
		m := regexp.MustCompile(`^gwenrelay_(.+)_amd64\.deb$`).FindStringSubmatch(filepath.Base(built.deb))
		if filepath.Dir(built.deb) != distDir || m == nil {
			built.err = fmt.Errorf("the .deb is %s, want %s/gwenrelay_<version>_amd64.deb", built.deb, distDir)
			return
		}
		built.version = m[1]
		if want := filepath.Join(distDir, "gwenrelay-"+built.version+".x86_64.rpm"); built.rpm != want {
			built.err = fmt.Errorf("the .rpm is %s, want %s", built.rpm, want)
			return
		}
		built.binary = filepath.Join(distDir, "build", "gwenrelay")
		for _, f := range []string{built.deb, built.rpm, built.binary} {
			if _, err := os.Stat(f); err != nil {
				built.err = err
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built
}

// TestPackageVersion checks the version scheme: one that dpkg and rpm both
// accept, stamped into the binary.
func TestPackageVersion(t *testing.T) {
	p := packages(t)
	if !regexp.MustCompile(`^(0\.0\.0~git\d{14}\.[0-9a-f]{12}|\d+\.\d+\.\d+(~[A-Za-z0-9.]+)?(\+git\d{14}\.[0-9a-f]{12})?)(\.dirty)?$`).MatchString(p.version) {
		t.Errorf("version %q does not follow the scheme of scripts/package.sh", p.version)
	}
	if got := strings.TrimSpace(run(t, p.binary, "version")); got != p.version {
		t.Errorf("gwenrelay version = %q, want the package version %q", got, p.version)
	}
	t.Logf("version %s", p.version)
}

// TestUnitsVerify runs systemd-analyze verify on both units in a scratch
// root that holds what they execute; any output at all is a failure (it
// exits 0 on unknown keys and values it ignores).
func TestUnitsVerify(t *testing.T) {
	needTools(t, "systemd", "systemd-analyze")
	p := packages(t)
	root := scratchRoot(t, p.binary)
	for _, unit := range []string{"gwenrelay.service", "gwenrelay.socket"} {
		copyFile(t, filepath.Join(repoRoot, "systemd", unit), filepath.Join(root, "usr/lib/systemd/system", unit), 0o644)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "gwenrelay.service", "gwenrelay.socket").CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify gwenrelay.service gwenrelay.socket: %v\n%s", err, out)
	}

	// The check must be able to fail: a unit with a mistake in it.
	bad := scratchRoot(t, p.binary)
	unit, err := os.ReadFile(filepath.Join(repoRoot, "systemd", "gwenrelay.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit = bytes.Replace(unit, []byte("Restart=on-failure"), []byte("Restart=sometimes"), 1)
	if err := os.WriteFile(filepath.Join(bad, "usr/lib/systemd/system/gwenrelay.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("systemd-analyze", "verify", "--root="+bad, "gwenrelay.service").CombinedOutput()
	if !strings.Contains(string(out), "sometimes") {
		t.Errorf("systemd-analyze verify says nothing of a wrong Restart= value, so its silence proves nothing:\n%s", out)
	}
}

// scratchRoot is a root directory for systemd-analyze --root: the systemd
// units it depends on, the binary, and /bin/kill for ExecReload.
func scratchRoot(t *testing.T, binary string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/"))
	copyFile(t, binary, filepath.Join(root, "usr/bin/gwenrelay"), 0o755)
	kill, err := filepath.EvalSymlinks("/bin/kill")
	if err != nil {
		skipOrFail(t, "/bin/kill is missing (apt-get install procps)")
	}
	copyFile(t, kill, filepath.Join(root, "usr/bin/kill"), 0o755)
	return root
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// TestUnitsSecurity prints the service's exposure score and holds it to
// maxExposure.
func TestUnitsSecurity(t *testing.T) {
	needTools(t, "systemd", "systemd-analyze")
	unit := filepath.Join(repoRoot, "systemd", "gwenrelay.service")
	out, err := exec.Command("systemd-analyze", "security", "--no-pager", "--offline=yes", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=yes: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for gwenrelay\.service: (\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	var open []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "✗") {
			open = append(open, strings.Join(strings.Fields(l), " "))
		}
	}
	t.Logf("systemd-analyze security: exposure %.1f (at most %.1f); what remains open:\n  %s", score, maxExposure, strings.Join(open, "\n  "))
	if score > maxExposure {
		t.Errorf("exposure %.1f, want at most %.1f:\n%s", score, maxExposure, out)
	}
	// And the same judgement by systemd-analyze itself (tenths).
	if out, err := exec.Command("systemd-analyze", "security", "--no-pager", "--offline=yes",
		fmt.Sprintf("--threshold=%d", int(maxExposure*10)), unit).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security --threshold=%d: %v\n%s", int(maxExposure*10), err, out)
	}
}

// TestUnitSettings holds the unit to the settings that the binary and the
// operators rely on; systemd-analyze checks only that they parse.
func TestUnitSettings(t *testing.T) {
	want := map[string][]string{
		"gwenrelay.service": {
			"Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "Restart=on-failure",
			"User=gwenrelay", "Group=gwenrelay",
			"StateDirectory=gwenrelay", "StateDirectoryMode=0700",
			"RuntimeDirectory=gwenrelay", "RuntimeDirectoryMode=0750",
			"LoadCredential=write-key:/etc/gwenrelay/write-key",
			"EnvironmentFile=-/etc/default/gwenrelay",
			"ExecStart=/usr/bin/gwenrelay serve --config /etc/gwenrelay/gwenrelay.yaml $GWENRELAY_OPTS",
			"ExecReload=/bin/kill -HUP $MAINPID",
			// Above the binary's stop deadlines: 20 s for requests and
			// 10 s for deliveries, side by side (cmd_serve.go).
			"TimeoutStopSec=40s",
			"CapabilityBoundingSet=", "NoNewPrivileges=yes",
			"WantedBy=multi-user.target",
		},
		"gwenrelay.socket": {"ListenStream=8080", "WantedBy=sockets.target"},
	}
	for unit, settings := range want {
		b, err := os.ReadFile(filepath.Join(repoRoot, "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for _, s := range settings {
			if !slices.Contains(lines, s) {
				t.Errorf("%s: no line %q", unit, s)
			}
		}
	}
}

// TestSysusersLine: preinst creates the user before the sysusers file is
// unpacked, from a copy of its line; the two must not drift apart.
func TestSysusersLine(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "systemd", "gwenrelay.sysusers"))
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "u ") {
			line = l
		}
	}
	if line == "" {
		t.Fatal("systemd/gwenrelay.sysusers has no u line")
	}
	pre, err := os.ReadFile(filepath.Join(repoRoot, "packaging", "scripts", "preinstall.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pre), "SYSUSERS_LINE='"+line+"'") {
		t.Errorf("packaging/scripts/preinstall.sh does not carry the line of systemd/gwenrelay.sysusers:\n%s", line)
	}
}

// TestMaintainerScripts runs shellcheck on the maintainer scripts, which
// run as /bin/sh (dash on Debian).
func TestMaintainerScripts(t *testing.T) {
	needTools(t, "shellcheck", "shellcheck")
	scripts, err := filepath.Glob(filepath.Join(repoRoot, "packaging", "scripts", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no maintainer scripts: %v", err)
	}
	run(t, "shellcheck", append([]string{"--shell=sh", "--severity=style"}, scripts...)...)
	run(t, "shellcheck", "--severity=style", filepath.Join(repoRoot, "scripts", "package.sh"))
}

// TestExampleConfig starts the built binary on the shipped example
// configuration (with a token file, a spool and ports of the test's own,
// given in the environment, which wins over the file) and waits for
// /healthz; and checks that every key of the file is a flag of serve, since
// a misspelt key would be ignored without a word.
func TestExampleConfig(t *testing.T) {
	p := packages(t)
	config := filepath.Join(repoRoot, "packaging", "gwenrelay.yaml")
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := yaml.Unmarshal(b, &keys); err != nil {
		t.Fatalf("packaging/gwenrelay.yaml: %v", err)
	}
	help := run(t, p.binary, "serve", "--help")
	for k := range keys {
		if k == "mapping" {
			continue
		}
		if !strings.Contains(help, "--"+k+" ") {
			t.Errorf("packaging/gwenrelay.yaml: %q is not a flag of gwenrelay serve", k)
		}
	}

	dir := t.TempDir()
	tokens := filepath.Join(dir, "inbound-tokens")
	if err := os.WriteFile(tokens, []byte("# test\nsecret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.binary, "serve", "--config", config)
	cmd.Env = append(os.Environ(),
		"GWENRELAY_LISTEN="+addr,
		"GWENRELAY_ADMIN_LISTEN="+freeAddr(t),
		"GWENRELAY_ADMIN_SOCKET=",
		"GWENRELAY_SPOOL="+filepath.Join(dir, "spool.db"),
		"GWENRELAY_INBOUND_TOKEN_FILE="+tokens,
		"GWENRELAY_DRY_RUN=true",
		"GWENRELAY_DRY_RUN_FILE="+filepath.Join(dir, "dry-run.ndjson"),
	)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	healthy := false
	for !healthy {
		select {
		case err := <-exited:
			t.Fatalf("gwenrelay serve --config packaging/gwenrelay.yaml exited: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			healthy = resp.StatusCode == http.StatusOK
		}
		if ctx.Err() != nil {
			t.Fatalf("no /healthz within 30 s:\n%s", logs.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Errorf("gwenrelay serve after SIGTERM: %v\n%s", err, logs.String())
	}
	// log-format: json was taken from the file.
	if !strings.HasPrefix(strings.TrimSpace(logs.String()), "{") {
		t.Errorf("log-format: json in the example config, but the log is not JSON:\n%s", logs.String())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLintian: no error and no warning; each override in
// packaging/lintian-overrides says why.
func TestLintian(t *testing.T) {
	needTools(t, "lintian", "lintian")
	p := packages(t)
	start := time.Now()
	out, err := exec.Command("lintian", "--fail-on", "error,warning", "--display-level", ">=info", p.deb).CombinedOutput()
	if err != nil { // again, with the explanations
		out, _ = exec.Command("lintian", "--info", "--display-level", ">=info", p.deb).CombinedOutput()
	}
	var kept []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.Contains(l, "running with root privileges") {
			kept = append(kept, l)
		}
	}
	t.Logf("lintian took %s", time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Errorf("lintian %s: %v\n%s", filepath.Base(p.deb), err, strings.Join(kept, "\n"))
	} else if len(kept) > 0 {
		t.Logf("lintian (information only):\n%s", strings.Join(kept, "\n"))
	}
}

// TestRPM queries the .rpm: its files, modes and owners, its config files,
// its scripts, its digests.
func TestRPM(t *testing.T) {
	needTools(t, "rpm", "rpm")
	p := packages(t)
	files := map[string]string{ // path → mode owner:group [flags]
		"/usr/bin/gwenrelay":                        "-rwxr-xr-x root:root",
		"/usr/lib/systemd/system/gwenrelay.service": "-rw-r--r-- root:root",
		"/usr/lib/systemd/system/gwenrelay.socket":  "-rw-r--r-- root:root",
		"/usr/lib/sysusers.d/gwenrelay.conf":        "-rw-r--r-- root:root",
		"/etc/gwenrelay":                            "drwxr-x--- root:gwenrelay",
		"/etc/gwenrelay/gwenrelay.yaml":             "-rw-r----- root:gwenrelay cn",
		"/etc/default/gwenrelay":                    "-rw-r--r-- root:root cn",
		"/usr/share/doc/gwenrelay/README.md":        "-rw-r--r-- root:root d",
		"/usr/share/doc/gwenrelay/changelog":        "-rw-r--r-- root:root d",
		"/usr/share/licenses/gwenrelay/copyright":   "-rw-r--r-- root:root l",
		"/usr/share/man/man1/gwenrelay.1.gz":        "-rw-r--r-- root:root",
	}
	got := map[string]string{}
	out := run(t, "rpm", "-qp", "--qf", `[%{FILENAMES}\t%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]`, p.rpm)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		path, attrs, _ := strings.Cut(l, "\t")
		got[path] = strings.TrimSpace(attrs)
	}
	for path, attrs := range files {
		if got[path] != attrs {
			t.Errorf("rpm: %s is %q, want %q", path, got[path], attrs)
		}
	}
	for path := range got {
		if _, ok := files[path]; !ok {
			t.Errorf("rpm: unexpected file %s", path)
		}
	}

	list := strings.Fields(run(t, "rpm", "-qlp", p.rpm))
	if len(list) != len(files) {
		t.Errorf("rpm -qlp lists %d files, want %d: %v", len(list), len(files), list)
	}
	if config := strings.Fields(run(t, "rpm", "-qcp", p.rpm)); !slices.Equal(config, []string{"/etc/default/gwenrelay", "/etc/gwenrelay/gwenrelay.yaml"}) {
		t.Errorf("rpm -qcp = %v, want /etc/default/gwenrelay and /etc/gwenrelay/gwenrelay.yaml", config)
	}
	if info := run(t, "rpm", "-qp", "--qf", `%{NAME} %{VERSION} %{RELEASE} %{ARCH}`, p.rpm); info != "gwenrelay "+p.version+" 1 x86_64" {
		t.Errorf("rpm name, version, release, arch = %q, want gwenrelay %s 1 x86_64", info, p.version)
	}
	if req := run(t, "rpm", "-qp", "--requires", p.rpm); !strings.Contains(req, "/usr/bin/kill") || !strings.Contains(req, "ca-certificates") {
		t.Errorf("rpm does not require /usr/bin/kill (ExecReload) and ca-certificates (Segment's TLS):\n%s", req)
	}
	scripts := run(t, "rpm", "-qp", "--scripts", p.rpm)
	for _, s := range []string{"preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet",
		"# gwenrelay %postun for RPM"} {
		if !strings.Contains(scripts, s) {
			t.Errorf("rpm --scripts: no %q", s)
		}
	}
	if strings.Contains(scripts, "postrm for Debian") {
		t.Errorf("rpm --scripts: the Debian postrm is in the .rpm")
	}
	if out := run(t, "rpm", "-Kv", p.rpm); strings.Contains(out, "BAD") || !strings.Contains(out, "Payload SHA256 digest: OK") {
		t.Errorf("rpm -Kv:\n%s", out)
	}
}

// debFile is a path the .deb installs, with its mode and owner.
type debFile struct {
	path, mode, owner string
}

var debFiles = []debFile{
	{"/usr/bin/gwenrelay", "-rwxr-xr-x", "root:root"},
	{"/lib/systemd/system/gwenrelay.service", "-rw-r--r--", "root:root"},
	{"/lib/systemd/system/gwenrelay.socket", "-rw-r--r--", "root:root"},
	{"/usr/lib/sysusers.d/gwenrelay.conf", "-rw-r--r--", "root:root"},
	{"/etc/gwenrelay", "drwxr-x---", "root:gwenrelay"},
	{"/etc/gwenrelay/gwenrelay.yaml", "-rw-r-----", "root:gwenrelay"},
	{"/etc/default/gwenrelay", "-rw-r--r--", "root:root"},
	{"/usr/share/doc/gwenrelay/copyright", "-rw-r--r--", "root:root"},
	{"/usr/share/doc/gwenrelay/changelog.gz", "-rw-r--r--", "root:root"},
	{"/usr/share/doc/gwenrelay/README.md", "-rw-r--r--", "root:root"},
	{"/usr/share/man/man1/gwenrelay.1.gz", "-rw-r--r--", "root:root"},
	{"/usr/share/lintian/overrides/gwenrelay", "-rw-r--r--", "root:root"},
}

const (
	wantsLink   = "/etc/systemd/system/multi-user.target.wants/gwenrelay.service"
	stateDir    = "/var/lib/gwenrelay"
	spoolPath   = "/var/lib/gwenrelay/spool.db"
	notStarted  = "gwenrelay: not started: put the Segment write key in /etc/gwenrelay/write-key"
	keptOnPurge = "gwenrelay: kept /var/lib/gwenrelay"
)

// TestDeb installs the .deb on this machine, checks what it put where,
// removes it, reinstalls it, and purges it twice: once with an undelivered
// event in the spool (kept) and once with an empty spool (gone). It leaves
// the machine as it found it.
func TestDeb(t *testing.T) {
	needRoot(t)
	needTools(t, "dpkg, file, libc-bin", "dpkg", "dpkg-deb", "dpkg-query", "file", "ldd", "userdel")
	p := packages(t)
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "gwenrelay").Output(); len(out) > 0 && string(out) != "not-installed" {
		skipOrFail(t, "gwenrelay is on this machine already (%s): the test would remove it", out)
	}
	for _, path := range []string{"/etc/gwenrelay", stateDir, "/etc/default/gwenrelay", "/usr/bin/gwenrelay"} {
		if _, err := os.Lstat(path); err == nil {
			skipOrFail(t, "%s exists already: the test would remove it", path)
		}
	}
	_, userErr := user.Lookup("gwenrelay")
	userExisted := userErr == nil
	_, groupErr := user.LookupGroup("gwenrelay")
	groupExisted := groupErr == nil
	t.Cleanup(func() {
		if out, _ := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "gwenrelay").Output(); len(out) > 0 && string(out) != "not-installed" {
			if out, err := exec.Command("dpkg", "--purge", "gwenrelay").CombinedOutput(); err != nil {
				t.Errorf("cleanup: dpkg --purge gwenrelay: %v\n%s", err, out)
			}
		}
		for _, path := range []string{stateDir, "/etc/gwenrelay"} {
			if err := os.RemoveAll(path); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if !userExisted {
			if out, err := exec.Command("userdel", "gwenrelay").CombinedOutput(); err != nil {
				t.Errorf("cleanup: userdel gwenrelay: %v\n%s", err, out)
			}
		}
		if !groupExisted {
			if _, err := user.LookupGroup("gwenrelay"); err == nil {
				if out, err := exec.Command("groupdel", "gwenrelay").CombinedOutput(); err != nil {
					t.Errorf("cleanup: groupdel gwenrelay: %v\n%s", err, out)
				}
			}
		}
	})
	if v := run(t, "dpkg-deb", "--field", p.deb, "Version"); strings.TrimSpace(v) != p.version {
		t.Fatalf("the .deb's version is %q, want %q", v, p.version)
	}
	if postrm := run(t, "dpkg-deb", "--info", p.deb, "postrm"); !strings.Contains(postrm, "# gwenrelay postrm for Debian") {
		t.Errorf("the .deb's postrm is not packaging/scripts/postremove-deb.sh:\n%s", postrm)
	}

	// A first install, without a write key: enabled, not started, says why.
	out := dpkg(t, "--install", p.deb)
	if !strings.Contains(out, notStarted) {
		t.Errorf("dpkg --install without a write key does not say what to do (%q):\n%s", notStarted, out)
	}
	checkInstalled(t, p)

	// An upgrade (here: the same version again) keeps an edited config file
	// without asking (dpkg would fail on its closed stdin), and an operator's
	// `systemctl disable`.
	config, err := os.ReadFile("/etc/gwenrelay/gwenrelay.yaml")
	if err != nil {
		t.Fatal(err)
	}
	edited := append(config, []byte("\n# edited by the operator\n")...)
	if err := os.WriteFile("/etc/gwenrelay/gwenrelay.yaml", edited, 0o640); err != nil {
		t.Fatal(err)
	}
	run(t, "systemctl", "disable", "gwenrelay.service")
	dpkg(t, "--install", p.deb)
	if got, _ := os.ReadFile("/etc/gwenrelay/gwenrelay.yaml"); !bytes.Equal(got, edited) {
		t.Errorf("an upgrade replaced the edited /etc/gwenrelay/gwenrelay.yaml")
	}
	mustNotExist(t, "after an upgrade of a disabled service", wantsLink)
	run(t, "systemctl", "enable", "gwenrelay.service")

	// An undelivered event in the spool, and a write key; then a removal.
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "chown", "gwenrelay:gwenrelay", stateDir)
	recordsDir, err := os.MkdirTemp("", "gwenrelay-packaging-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(recordsDir) })
	if err := os.Chmod(recordsDir, 0o755); err != nil { // for the gwenrelay user
		t.Fatal(err)
	}
	records := filepath.Join(recordsDir, "records.ndjson")
	if err := os.WriteFile(records, []byte(`{"id":1,"message_id":"packaging-test-1","received_at":"2026-01-01T00:00:00Z","attempts":0,"last_error":"","event":{"type":"wallet","userId":"u1","timestamp":1717416000}}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	asService(t, "/usr/bin/gwenrelay", "spool", "import", "--spool", spoolPath, "--admin-socket", "", records)
	if err := os.WriteFile("/etc/gwenrelay/write-key", []byte("test-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = dpkg(t, "--remove", "gwenrelay")
	if !strings.Contains(out, "still holds undelivered events (pending: 1, dead letters: 0)") {
		t.Errorf("dpkg --remove does not say the spool holds an undelivered event:\n%s", out)
	}
	for _, f := range debFiles {
		conffile := f.path == "/etc/gwenrelay" || f.path == "/etc/gwenrelay/gwenrelay.yaml" || f.path == "/etc/default/gwenrelay"
		if _, err := os.Lstat(f.path); conffile != (err == nil) {
			t.Errorf("after dpkg --remove, %s: %v (conffiles stay until a purge, the rest goes)", f.path, err)
		}
	}
	mustNotExist(t, "after dpkg --remove", wantsLink)
	mustExist(t, "after dpkg --remove", spoolPath, "/etc/gwenrelay/write-key")

	// A reinstall enables what was enabled, and starts nothing here (no
	// running systemd) even though the key is in place.
	out = dpkg(t, "--install", p.deb)
	if strings.Contains(out, notStarted) || !strings.Contains(out, "gwenrelay: not started: systemd is not running here") {
		t.Errorf("dpkg --install with a write key in place, and no systemd running, does not say just that:\n%s", out)
	}
	mustExist(t, "after a reinstall", wantsLink)
	mustNotExist(t, "after a reinstall", "/etc/gwenrelay/.enabled-at-removal")

	// A purge with an undelivered event keeps the spool, and says so.
	out = dpkg(t, "--purge", "gwenrelay")
	if !strings.Contains(out, keptOnPurge) {
		t.Errorf("dpkg --purge with an undelivered event does not say the spool is kept:\n%s", out)
	}
	mustExist(t, "after a purge with an undelivered event", spoolPath)
	checkGone(t, "after dpkg --purge", false)

	// Installed again, the event delivered (here: deleted), purged: nothing left.
	dpkg(t, "--install", p.deb)
	if stats := asService(t, "/usr/bin/gwenrelay", "spool", "stats", "--json", "--spool", spoolPath, "--admin-socket", ""); !strings.Contains(stats, `"pending":1,`) {
		t.Errorf("the spool kept across a purge and a reinstall lost its event:\n%s", stats)
	}
	asService(t, "/usr/bin/gwenrelay", "spool", "rm", "--yes", "--spool", spoolPath, "--admin-socket", "", "1")
	out = dpkg(t, "--purge", "gwenrelay")
	if strings.Contains(out, keptOnPurge) || strings.Contains(out, "still holds") {
		t.Errorf("dpkg --purge of an empty spool keeps it:\n%s", out)
	}
	checkGone(t, "after dpkg --purge", true)
}

func dpkg(t *testing.T, args ...string) string {
	t.Helper()
	start := time.Now()
	out := run(t, "dpkg", args...)
	t.Logf("dpkg %s (%s):\n%s", args[0], time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(out))
	return out
}

// asService runs a command as the gwenrelay user, as the service would.
func asService(t *testing.T, name string, args ...string) string {
	t.Helper()
	u, err := user.Lookup("gwenrelay")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (as gwenrelay): %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func checkInstalled(t *testing.T, p builtPackages) {
	t.Helper()
	for _, f := range debFiles {
		got := run(t, "stat", "-c", "%A %U:%G", f.path)
		if want := f.mode + " " + f.owner; strings.TrimSpace(got) != want {
			t.Errorf("%s is %q, want %q", f.path, strings.TrimSpace(got), want)
		}
	}
	conffiles := run(t, "dpkg-query", "-W", "-f=${Conffiles}", "gwenrelay")
	for _, c := range []string{"/etc/gwenrelay/gwenrelay.yaml", "/etc/default/gwenrelay"} {
		if !strings.Contains(conffiles, " "+c+" ") {
			t.Errorf("%s is not a conffile: %q", c, conffiles)
		}
	}

	u, err := user.Lookup("gwenrelay")
	if err != nil {
		t.Fatalf("no gwenrelay user after dpkg --install: %v", err)
	}
	passwd := strings.Split(strings.TrimSpace(run(t, "getent", "passwd", "gwenrelay")), ":")
	if uid, _ := strconv.Atoi(u.Uid); uid == 0 || uid >= 1000 || passwd[5] != "/var/lib/gwenrelay" || passwd[6] != "/usr/sbin/nologin" {
		t.Errorf("gwenrelay user: %v, want a system uid, home /var/lib/gwenrelay, shell /usr/sbin/nologin", passwd)
	}
	if g, err := user.LookupGroupId(u.Gid); err != nil || g.Name != "gwenrelay" {
		t.Errorf("gwenrelay's primary group: %v %v", g, err)
	}
	if target, err := os.Readlink(wantsLink); err != nil || target != "/lib/systemd/system/gwenrelay.service" {
		t.Errorf("gwenrelay.service not enabled on install: %s → %q, %v", wantsLink, target, err)
	}
	mustNotExist(t, "after dpkg --install", stateDir) // systemd makes it (StateDirectory=)

	if v := strings.TrimSpace(run(t, "/usr/bin/gwenrelay", "version")); v != p.version {
		t.Errorf("/usr/bin/gwenrelay version = %q, want %q", v, p.version)
	}
	if out := run(t, "file", "-L", "/usr/bin/gwenrelay"); !strings.Contains(out, "statically linked") {
		t.Errorf("file /usr/bin/gwenrelay: not statically linked:\n%s", out)
	}
	if out, _ := exec.Command("ldd", "/usr/bin/gwenrelay").CombinedOutput(); !strings.Contains(string(out), "not a dynamic executable") {
		t.Errorf("ldd /usr/bin/gwenrelay:\n%s", out)
	}
	if out := run(t, "dpkg-deb", "--field", p.deb, "Depends"); !strings.Contains(out, "procps") || !strings.Contains(out, "ca-certificates") {
		t.Errorf("the .deb does not depend on procps (/bin/kill for ExecReload) and ca-certificates (Segment's TLS): %q", out)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command("systemd-analyze", "verify", "gwenrelay.service", "gwenrelay.socket").CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify of the installed units: %v\n%s", err, out)
		}
	}
}

func mustExist(t *testing.T, when string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("%s: %v", when, err)
		}
	}
}

func mustNotExist(t *testing.T, when string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %s is there", when, path)
		}
	}
}

// checkGone checks that a purge left nothing of the package behind (the
// spool too, when stateGone).
func checkGone(t *testing.T, when string, stateGone bool) {
	t.Helper()
	for _, f := range debFiles {
		mustNotExist(t, when, f.path)
	}
	mustNotExist(t, when, "/usr/share/doc/gwenrelay", "/etc/gwenrelay", wantsLink,
		"/etc/systemd/system/sockets.target.wants/gwenrelay.socket")
	if stateGone {
		mustNotExist(t, when, stateDir)
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "gwenrelay").Output(); len(out) > 0 && string(out) != "not-installed" {
		t.Errorf("%s: dpkg still knows gwenrelay: %s", when, out)
	}
}
