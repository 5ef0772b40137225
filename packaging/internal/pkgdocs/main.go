// Command pkgdocs writes the documents that go into the gwenrelay packages,
// made from what was actually built. scripts/package.sh runs it; it is not
// installed. Into -out it writes:
//
//   - copyright.deb, copyright.rpm: packaging/copyright, then the license
//     (and NOTICE) of Go and of every module compiled into the binary, read
//     from its build information, the texts from the module cache. The
//     Debian one points to /usr/share/common-licenses/Apache-2.0 instead of
//     repeating that text (Debian policy 12.5); RHEL has no such directory,
//     so the RPM one has every text in full.
//   - changelog.gz (Debian layout, gzip -9n: the changelog of a native
//     package) and changelog (the same, plain, for the .rpm), from
//     packaging/changelog.yml with a generated top entry for a snapshot.
//   - gwenrelay.1.gz: a manual page made from the binary's own --help.
package main

import (
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

type changeNote struct {
	Note string `yaml:"note"`
}

// entry is one release, in the format of github.com/goreleaser/chglog.
type entry struct {
	Semver   string       `yaml:"semver"`
	Date     time.Time    `yaml:"date"`
	Packager string       `yaml:"packager"`
	Changes  []changeNote `yaml:"changes"`
}

func main() {
	var (
		binary     = flag.String("binary", "", "the built gwenrelay binary")
		version    = flag.String("version", "", "the package version")
		release    = flag.Bool("release", false, "the version is a clean release tag: packaging/changelog.yml must have its entry")
		commit     = flag.String("commit", "", "the commit built (for a snapshot's changelog entry)")
		date       = flag.String("date", "", "the commit time, RFC 3339")
		maintainer = flag.String("maintainer", "", "name <email> of the packager")
		changelog  = flag.String("changelog", "packaging/changelog.yml", "the release notes")
		copyright  = flag.String("copyright", "packaging/copyright", "the copyright header")
		out        = flag.String("out", "dist/build", "the directory to write to")
	)
	flag.Parse()
	if *binary == "" || *version == "" || *date == "" || *maintainer == "" {
		fmt.Fprintln(os.Stderr, "pkgdocs: -binary, -version, -date and -maintainer are required")
		os.Exit(2)
	}
	when, err := time.Parse(time.RFC3339, *date)
	if err != nil {
		fail(fmt.Errorf("-date: %w", err))
	}
	entries, err := changelogEntries(*changelog, *version, *release, *commit, when, *maintainer)
	if err != nil {
		fail(err)
	}
	text := changelogText(entries)
	if err := writeFile(*out, "changelog", []byte(text), false); err != nil {
		fail(err)
	}
	if err := writeFile(*out, "changelog.gz", []byte(text), true); err != nil {
		fail(err)
	}
	for _, debian := range []bool{true, false} {
		text, err := copyrightText(*copyright, *binary, debian)
		if err != nil {
			fail(err)
		}
		name := map[bool]string{true: "copyright.deb", false: "copyright.rpm"}[debian]
		if err := writeFile(*out, name, []byte(text), false); err != nil {
			fail(err)
		}
	}
	man, err := manPage(*binary, *version, when)
	if err != nil {
		fail(err)
	}
	if err := writeFile(*out, "gwenrelay.1.gz", []byte(man), true); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pkgdocs: %v\n", err)
	os.Exit(1)
}

// writeFile writes dir/name, gzipped at the best compression with no name
// and no time in the header (what lintian asks, and reproducible).
func writeFile(dir, name string, b []byte, gz bool) error {
	if gz {
		var buf bytes.Buffer
		w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		b = buf.Bytes()
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o644)
}

func changelogEntries(path, version string, release bool, commit string, when time.Time, maintainer string) ([]entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var entries []entry
	if err := yaml.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, e := range entries {
		if e.Semver == "" || e.Date.IsZero() || e.Packager == "" || len(e.Changes) == 0 {
			return nil, fmt.Errorf("%s: entry %d needs semver, date, packager and changes", path, i+1)
		}
	}
	if len(entries) > 0 && entries[0].Semver == version {
		return entries, nil
	}
	if release {
		return nil, fmt.Errorf("%s has no entry for the release %s: add one at the top before tagging", path, version)
	}
	snap := entry{
		Semver:   version,
		Date:     when.UTC(),
		Packager: maintainer,
		Changes:  []changeNote{{Note: "Snapshot built from commit " + commit + "."}},
	}
	return append([]entry{snap}, entries...), nil
}

// changelogText is the Debian changelog layout (Debian policy 4.4).
func changelogText(entries []entry) string {
	var sb strings.Builder
	for i, e := range entries {
		if i > 0 {
			sb.WriteString("\n")
		}
		fmt.Fprintf(&sb, "gwenrelay (%s) stable; urgency=medium\n\n", e.Semver)
		for _, c := range e.Changes {
			lines := strings.Split(strings.TrimSpace(c.Note), "\n")
			fmt.Fprintf(&sb, "  * %s\n", lines[0])
			for _, l := range lines[1:] {
				fmt.Fprintf(&sb, "    %s\n", l)
			}
		}
		fmt.Fprintf(&sb, "\n -- %s  %s\n", e.Packager, e.Date.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	}
	return sb.String()
}

// apacheTerms marks the full text of the Apache License 2.0.
const apacheTerms = "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"

func copyrightText(headerPath, binary string, debian bool) (string, error) {
	header, err := os.ReadFile(headerPath)
	if err != nil {
		return "", err
	}
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return "", fmt.Errorf("read the build information of %s: %w", binary, err)
	}
	goroot, err := goEnv("GOROOT")
	if err != nil {
		return "", err
	}
	modcache, err := goEnv("GOMODCACHE")
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	sb.WriteString(strings.TrimSpace(string(header)))
	sb.WriteString("\n\nThird-party software compiled into /usr/bin/gwenrelay\n")
	sb.WriteString("=====================================================\n")
	goLicense, err := os.ReadFile(filepath.Join(goroot, "LICENSE"))
	if err != nil {
		return "", fmt.Errorf("the Go license: %w", err)
	}
	section(&sb, "The Go standard library and runtime, "+bi.GoVersion, "https://go.dev", []string{string(goLicense)})
	for _, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		dir := filepath.Join(modcache, escapePath(m.Path)+"@"+escapePath(m.Version))
		texts, err := licenseIn(dir)
		if err != nil {
			return "", fmt.Errorf("the license of %s %s: %w (is the module in the cache? run go mod download)", m.Path, m.Version, err)
		}
		if debian {
			for i, t := range texts {
				if strings.Contains(t, apacheTerms) {
					texts[i] = "Licensed under the Apache License, Version 2.0.\n" +
						"On Debian systems, the complete text of the Apache License, Version 2.0\n" +
						"can be found in /usr/share/common-licenses/Apache-2.0."
				}
			}
		}
		section(&sb, m.Path+" "+m.Version, "https://pkg.go.dev/"+m.Path, texts)
	}
	return sb.String(), nil
}

func section(sb *strings.Builder, title, url string, texts []string) {
	fmt.Fprintf(sb, "\n%s\n%s\n%s\n", title, strings.Repeat("-", len(title)), url)
	for _, text := range texts {
		sb.WriteString("\n")
		// Indented, so the texts stand apart; tabs and trailing blanks go.
		for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
			l = strings.TrimRightFunc(strings.ReplaceAll(l, "\t", "    "), unicode.IsSpace)
			if l == "" {
				sb.WriteString("\n")
				continue
			}
			sb.WriteString("    " + l + "\n")
		}
	}
}

// licenseIn finds a module's license: a LICENSE, LICENCE or COPYING file
// (any case, any extension), else the License section of its README (as
// github.com/segmentio/backo-go has it); then its NOTICE, which the Apache
// License asks to pass on.
func licenseIn(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var license, notice, readme string
	for _, e := range ents {
		n := strings.ToLower(e.Name())
		switch {
		case e.IsDir():
		case license == "" && (strings.HasPrefix(n, "license") || strings.HasPrefix(n, "licence") || strings.HasPrefix(n, "copying")):
			license = e.Name()
		case notice == "" && strings.HasPrefix(n, "notice"):
			notice = e.Name()
		case readme == "" && strings.HasPrefix(n, "readme"):
			readme = e.Name()
		}
	}
	var texts []string
	switch {
	case license != "":
		b, err := os.ReadFile(filepath.Join(dir, license))
		if err != nil {
			return nil, err
		}
		texts = append(texts, string(b))
	case readme != "":
		b, err := os.ReadFile(filepath.Join(dir, readme))
		if err != nil {
			return nil, err
		}
		text := licenseSection(string(b))
		if text == "" {
			return nil, fmt.Errorf("no LICENSE, LICENCE or COPYING file, and no License section in %s, in %s", readme, dir)
		}
		texts = append(texts, "(from its "+readme+")\n\n"+text)
	default:
		return nil, fmt.Errorf("no LICENSE, LICENCE or COPYING file, nor a README, in %s", dir)
	}
	if notice != "" {
		b, err := os.ReadFile(filepath.Join(dir, notice))
		if err != nil {
			return nil, err
		}
		texts = append(texts, notice+":\n\n"+string(b))
	}
	return texts, nil
}

// licenseSection is what follows a "License" heading, up to the next heading.
func licenseSection(readme string) string {
	lines := strings.Split(readme, "\n")
	for i, l := range lines {
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(l, "# ")))
		if h != "license" && h != "licence" {
			continue
		}
		var body []string
		for _, m := range lines[i+1:] {
			t := strings.TrimSpace(m)
			if strings.HasPrefix(t, "#") {
				break
			}
			if strings.HasPrefix(t, "```") || (t != "" && strings.Trim(t, "-=") == "") {
				continue // code fences and heading underlines
			}
			body = append(body, m)
		}
		return strings.TrimSpace(strings.Join(body, "\n"))
	}
	return ""
}

// escapePath is the module cache's case encoding: an upper-case letter
// becomes ! and its lower case (golang.org/x/mod/module.EscapePath).
func escapePath(p string) string {
	var sb strings.Builder
	for _, r := range p {
		if unicode.IsUpper(r) {
			sb.WriteByte('!')
			r = unicode.ToLower(r)
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go env %s is empty", name)
	}
	return v, nil
}

// helpLine is one option or command of urfave/cli's help: the name, two or
// more spaces, what it does.
var helpLine = regexp.MustCompile(`^\s+(\S.*?)\s{2,}(\S.*)$`)

// helpItems reads the lines of a help section ("OPTIONS:", "COMMANDS:").
func helpItems(help, heading string) [][2]string {
	var items [][2]string
	in := false
	for _, l := range strings.Split(help, "\n") {
		if strings.TrimSpace(l) == heading {
			in = true
			continue
		}
		if !in {
			continue
		}
		if l != "" && !unicode.IsSpace(rune(l[0])) {
			break // the next section
		}
		if m := helpLine.FindStringSubmatch(l); m != nil {
			items = append(items, [2]string{m[1], m[2]})
		}
	}
	return items
}

// roff escapes text for a man page line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func run(binary string, args ...string) (string, error) {
	out, err := exec.Command(binary, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", binary, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// manPage is gwenrelay(1), from the binary's own help, so it cannot drift.
func manPage(binary, version string, when time.Time) (string, error) {
	serveHelp, err := run(binary, "serve", "--help")
	if err != nil {
		return "", err
	}
	spoolHelp, err := run(binary, "spool", "--help")
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".TH GWENRELAY 1 %q %q \"User Commands\"\n", when.UTC().Format("2006-01-02"), "gwenrelay "+version)
	b.WriteString(`.SH NAME
gwenrelay \- durable relay from GWEN webhooks to Segment
.SH SYNOPSIS
.B gwenrelay serve
.RI [ options ]
.br
.B gwenrelay spool
.I command
.RI [ options ]
.br
.B gwenrelay version
.SH DESCRIPTION
.B gwenrelay serve
takes the webhooks of the GWEN gamification platform, writes each one to a
bbolt spool and fsyncs it before it answers 2xx, and forwards the spooled
events to Segment at a bounded rate.
It runs as the systemd service
.BR gwenrelay.service .
.PP
.B gwenrelay spool
inspects and repairs the spool, through the running daemon's admin socket or
in the file when the daemon is stopped.
.SH "SERVE OPTIONS"
Each option is also read from the environment variable shown, and from the
YAML file given with
.BR \-\-config ,
under the option's name. The command line wins over the environment, which
wins over the file.
`)
	items := helpItems(serveHelp, "OPTIONS:")
	if len(items) == 0 {
		return "", fmt.Errorf("no OPTIONS in %s serve --help", binary)
	}
	for _, it := range items {
		// --name value: the name bold, the placeholder italic.
		name := strings.ReplaceAll(roff(it[0]), " value", ` \fIvalue\fB`)
		fmt.Fprintf(&b, ".TP\n\\fB%s\\fR\n%s\n", name, roff(it[1]))
	}
	b.WriteString(".SH \"SPOOL COMMANDS\"\n")
	b.WriteString("Each takes \\fB\\-\\-help\\fR for its options.\n")
	cmds := helpItems(spoolHelp, "COMMANDS:")
	if len(cmds) == 0 {
		return "", fmt.Errorf("no COMMANDS in %s spool --help", binary)
	}
	for _, it := range cmds {
		if strings.HasPrefix(it[0], "help") {
			continue
		}
		fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roff(it[0]), roff(it[1]))
	}
	b.WriteString(`.SH "EXIT STATUS"
0 success, 1 runtime failure, 2 usage or configuration error.
.SH SIGNALS
SIGTERM and SIGINT stop the service gracefully; SIGHUP reloads the inbound
tokens, the rate, the mapping and the TLS certificate
.RB ( "systemctl reload gwenrelay" ).
.SH FILES
.TP
.I /etc/gwenrelay/gwenrelay.yaml
the configuration
.TP
.I /etc/gwenrelay/write\-key
the Segment write key, handed to the service as a systemd credential
.TP
.I /etc/gwenrelay/inbound\-tokens
the senders' tokens, one a line
.TP
.I /etc/default/gwenrelay
the service's environment
.TP
.I /var/lib/gwenrelay/spool.db
the spool: events not yet delivered, and dead letters
.TP
.I /run/gwenrelay/admin.sock
the admin socket, for members of the gwenrelay group
.SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1),
.I /usr/share/doc/gwenrelay/README.md
`)
	return b.String(), nil
}
