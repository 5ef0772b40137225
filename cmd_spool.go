package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/spool"
)

// defaultAdminSocket is $RUNTIME_DIRECTORY/admin.sock under systemd, else
// the packaged location.
func defaultAdminSocket() string {
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" {
		first, _, _ := strings.Cut(d, ":")
		return filepath.Join(first, "admin.sock")
	}
	return "/run/gwenrelay/admin.sock"
}

func adminSocketFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "admin-socket", Value: defaultAdminSocket(), Usage: "Unix socket of the admin API (empty: none)", EnvVars: envVar("admin-socket")}
}

// spoolFlags are the flags every spool command takes.
func spoolFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "spool", Value: defaultSpoolPath(), Usage: "spool file, opened directly when no daemon answers on --admin-socket", EnvVars: envVar("spool")},
		adminSocketFlag(),
		&cli.BoolFlag{Name: "json", Usage: "machine-readable output (JSON; NDJSON for lists)"},
		&cli.DurationFlag{Name: "lock-timeout", Value: time.Second, Usage: "how long to wait for the spool file's lock when opening it directly"},
		&cli.StringFlag{Name: "config", Usage: "the daemon's YAML config, for its mapping overrides (show, offline)", EnvVars: envVar("config")},
		// Ages are computed by the CLI from absolute times; a fixed clock
		// makes a report reproducible.
		&cli.TimestampFlag{Name: "now", Layout: time.RFC3339, Hidden: true, Usage: "compute ages as of this time"},
	}
}

func spoolCommand() *cli.Command {
	cmd := func(name, usage, argsUsage string, flags []cli.Flag, action cli.ActionFunc) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage, ArgsUsage: argsUsage,
			Flags:  append(spoolFlags(), flags...),
			Action: action,
			OnUsageError: func(_ *cli.Context, err error, _ bool) error {
				return usageError{fmt.Errorf("%w (see gwenrelay spool %s --help)", err, name)}
			},
		}
	}
	yes := &cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "do not ask for confirmation"}
	return &cli.Command{
		Name:  "spool",
		Usage: "inspect and repair the spool, through the running daemon or in the file",
		Description: "Each command talks to the running daemon over --admin-socket; when no daemon answers there\n" +
			"it opens --spool itself (read-only for the commands that only look). compact and import\n" +
			"work on the file only and refuse a spool that a daemon is serving.",
		Subcommands: []*cli.Command{
			cmd("stats", "counts, sizes, the oldest pending event, attempts", "", []cli.Flag{
				&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "refresh until interrupted"},
				&cli.DurationFlag{Name: "interval", Value: 2 * time.Second, Usage: "refresh interval for --watch"},
			}, spoolStats),
			cmd("ls", "list records, oldest first", "", []cli.Flag{
				&cli.BoolFlag{Name: "dead", Usage: "list the dead-letter records instead of the pending ones"},
				&cli.StringFlag{Name: "type", Usage: "only events of this type"},
				&cli.StringFlag{Name: "user", Usage: "only events of this userId"},
				&cli.IntFlag{Name: "limit", Value: 100, Usage: "at most this many records (0: all)"},
				&cli.Uint64Flag{Name: "after", Usage: "only records with a larger id (the next page starts after the last id shown)"},
			}, spoolLs),
			cmd("show", "one record whole: event, Segment message, attempts, error", "ID", nil, spoolShow),
			cmd("retry", "move dead-letter records back to pending", "ID... | --all [--type T]", []cli.Flag{
				&cli.BoolFlag{Name: "all", Usage: "every dead-letter record (with --type: of that type)"},
				&cli.StringFlag{Name: "type", Usage: "with --all: only events of this type"},
			}, spoolRetry),
			cmd("rm", "delete records (pending or dead) for good", "ID...", []cli.Flag{yes}, spoolRm),
			cmd("purge", "delete dead-letter records for good", "--dead [--older-than 72h]", []cli.Flag{
				&cli.BoolFlag{Name: "dead", Usage: "purge the dead-letter bucket (required: pending records are never purged)"},
				&cli.DurationFlag{Name: "older-than", Usage: "only records dead-lettered longer ago than this"},
				yes,
			}, spoolPurge),
			cmd("export", "write records as NDJSON to stdout", "", []cli.Flag{
				&cli.BoolFlag{Name: "dead", Usage: "export the dead-letter records instead of the pending ones"},
				&cli.BoolFlag{Name: "all", Usage: "export pending and dead-letter records"},
			}, spoolExport),
			cmd("import", "read records from an export (stopped daemon only); dedup applies", "FILE|-", []cli.Flag{
				&cli.DurationFlag{Name: "dedup-window", Value: 24 * time.Hour, Usage: "the daemon's --dedup-window (0: no dedup)", EnvVars: envVar("dedup-window")},
			}, spoolImport),
			cmd("compact", "rewrite the file to give back free space (stopped daemon only)", "", nil, spoolCompact),
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("unknown spool command %q: try gwenrelay spool --help", c.Args().First())
			}
			return cli.ShowSubcommandHelp(c)
		},
	}
}

// access says what a command needs of the spool.
type access int

const (
	readOnly  access = iota // look only: the daemon, or the file opened read-only
	readWrite               // change records: the daemon, or the file
	fileOnly                // rewrite the file: refuses a running daemon
)

// spoolSession is an open way to the spool.
type spoolSession struct {
	admin  relay.SpoolAdmin
	live   *relay.AdminClient // nil when working on the file
	file   *spool.Spool       // nil when live
	source string
}

// path is the spool the session reached.
func (s *spoolSession) path() string {
	if s.live != nil {
		return s.live.SpoolPath
	}
	return s.file.Path()
}

func (s *spoolSession) close() error {
	if s.file != nil {
		return s.file.Close()
	}
	return nil
}

// openSpool reaches the spool for c: through the daemon on --admin-socket
// when one answers there (and serves --spool), else by opening the file
// with a lock timeout. A file locked by a process that does not answer on
// the socket is an error that names both, within seconds.
func openSpool(c *cli.Context, mode access, opt spool.Options) (*spoolSession, error) {
	path, socket := c.String("spool"), c.String("admin-socket")
	var sockErr error
	if socket != "" {
		ac, err := relay.DialAdmin(c.Context, socket)
		switch {
		case err == nil && !sameSpool(c, ac.SpoolPath):
			sockErr = fmt.Errorf("the daemon on %s serves %s, not --spool %s", socket, ac.SpoolPath, path)
		case err == nil && mode == fileOnly:
			return nil, errLive(ac, socket)
		case err == nil:
			return &spoolSession{admin: ac, live: ac, source: "live, through " + socket}, nil
		default:
			sockErr = err
		}
	}
	opt.ReadOnly = mode == readOnly
	// Only import may create a spool; a repair of a mistyped --spool must
	// not leave an empty one behind.
	opt.MustExist = mode != fileOnly
	opt.LockTimeout = c.Duration("lock-timeout")
	sp, err := spool.Open(path, opt)
	if err != nil {
		switch {
		case errors.Is(err, spool.ErrLocked) && socket == "":
			return nil, fmt.Errorf("spool %s is locked by another process (a running gwenrelay?); reach it through the daemon with --admin-socket", path)
		case errors.Is(err, spool.ErrLocked):
			return nil, fmt.Errorf("spool %s is locked by another process (a running gwenrelay?), and the admin socket cannot be used: %v; point --admin-socket at the socket the daemon was started with", path, sockErr)
		case sockErr != nil && !errors.Is(sockErr, relay.ErrNoDaemon):
			// The socket is there but unusable (permission, no answer):
			// that, not the file, is what the operator must fix.
			return nil, fmt.Errorf("%v (and the spool file could not be opened directly either: %v)", sockErr, err)
		}
		return nil, err
	}
	mapping, err := buildMapping(c)
	if err != nil {
		sp.Close()
		return nil, err
	}
	in := relay.NewInspector(relay.InspectorConfig{Store: sp, Mapping: func() *relay.Mapping { return mapping }})
	return &spoolSession{admin: in, file: sp, source: "file (no daemon answering on " + orNone(socket) + ")"}, nil
}

func errLive(ac *relay.AdminClient, socket string) error {
	return fmt.Errorf("spool %s is in use by the gwenrelay answering on %s; stop it first (systemctl stop gwenrelay), then run this again", ac.SpoolPath, socket)
}

func orNone(s string) string {
	if s == "" {
		return "--admin-socket"
	}
	return s
}

// sameSpool reports whether the daemon's spool is the one asked for: any,
// unless --spool was given.
func sameSpool(c *cli.Context, daemonPath string) bool {
	if !c.IsSet("spool") {
		return true
	}
	a, err1 := os.Stat(c.String("spool"))
	b, err2 := os.Stat(daemonPath)
	if err1 != nil || err2 != nil {
		return filepath.Clean(c.String("spool")) == filepath.Clean(daemonPath)
	}
	return os.SameFile(a, b)
}

// withSpool runs f on the spool and closes it.
func withSpool(c *cli.Context, mode access, opt spool.Options, f func(*spoolSession) error) error {
	s, err := openSpool(c, mode, opt)
	if err != nil {
		return err
	}
	ferr := f(s)
	if err := s.close(); err != nil && ferr == nil {
		ferr = fmt.Errorf("close spool: %w", err)
	}
	return ferr
}

func now(c *cli.Context) time.Time {
	if t := c.Timestamp("now"); t != nil {
		return *t
	}
	return time.Now()
}

func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("spool %s takes no arguments, got %q", c.Command.Name, c.Args().Slice())
	}
	return nil
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

func writerIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

func spoolStats(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if c.Bool("watch") && c.Duration("interval") <= 0 {
		return usagef("--interval %s: want a positive duration", c.Duration("interval"))
	}
	w := c.App.Writer
	tty := writerIsTerminal(w)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for first := true; ; first = false {
		// Each refresh reaches the spool anew: a watch must not keep the
		// file's lock (the daemon could not start) or stick to a daemon
		// that has gone.
		var v relay.StatsView
		var source string
		err := withSpool(c, readOnly, spool.Options{}, func(s *spoolSession) error {
			var err error
			v, err = s.admin.Stats(ctx)
			source = s.source
			return err
		})
		if err != nil {
			if !first && ctx.Err() != nil {
				return nil
			}
			return err
		}
		at := now(c)
		if c.IsSet("now") && !first {
			at = time.Now()
		}
		v.SetAge(at)
		if c.Bool("json") {
			err = writeJSONLine(w, v)
		} else {
			if c.Bool("watch") && tty {
				fmt.Fprint(w, "\x1b[H\x1b[2J") // home, clear: refresh in place
			} else if !first {
				fmt.Fprintln(w)
			}
			err = formatStats(w, v, source, at)
		}
		if err != nil || !c.Bool("watch") {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.Duration("interval")):
			// a refresh interval, not a wait for a condition
		}
	}
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func spoolLs(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if c.Int("limit") < 0 {
		return usagef("--limit %d: want 0 (all) or more", c.Int("limit"))
	}
	q := relay.ListQuery{Dead: c.Bool("dead"), Type: c.String("type"), User: c.String("user"), After: c.Uint64("after"), Limit: c.Int("limit")}
	return withSpool(c, readOnly, spool.Options{}, func(s *spoolSession) error {
		w := bufio.NewWriter(c.App.Writer)
		defer w.Flush()
		var last uint64
		n := 0
		var tw *recordTable
		if !c.Bool("json") {
			tw = newRecordTable(w, now(c))
		}
		err := s.admin.List(c.Context, q, func(v relay.RecordView) error {
			last = v.ID
			n++
			if tw == nil {
				line, err := relay.MarshalRecordLine(v)
				if err != nil {
					return err
				}
				_, err = w.Write(line)
				return err
			}
			tw.add(v)
			return nil
		})
		if err != nil {
			return err
		}
		if tw != nil {
			if err := tw.flush(); err != nil {
				return err
			}
		}
		if n == 0 && tw != nil {
			w.Flush()
			fmt.Fprintf(c.App.ErrWriter, "(no %s records match)\n", map[bool]string{false: "pending", true: "dead-letter"}[q.Dead])
		}
		if q.Limit > 0 && n == q.Limit {
			w.Flush()
			fmt.Fprintf(c.App.ErrWriter, "(first %d shown; next page: --after %d)\n", n, last)
		}
		return nil
	})
}

// flagsFirst refuses a flag given after the arguments, which the command
// line parser would otherwise take for an argument.
func flagsFirst(c *cli.Context) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") && a != "-" {
			return usagef("%s after the arguments: flags go first (gwenrelay spool %s %s ...)", a, c.Command.Name, a)
		}
	}
	return nil
}

func oneID(c *cli.Context) (uint64, error) {
	if err := flagsFirst(c); err != nil {
		return 0, err
	}
	if c.Args().Len() != 1 {
		return 0, usagef("spool show takes one record id (see spool ls), got %d arguments", c.Args().Len())
	}
	ids, err := relay.ParseIDs(c.Args().Slice())
	if err != nil {
		return 0, usageError{err}
	}
	return ids[0], nil
}

func spoolShow(c *cli.Context) error {
	id, err := oneID(c)
	if err != nil {
		return err
	}
	return withSpool(c, readOnly, spool.Options{}, func(s *spoolSession) error {
		v, err := s.admin.Show(c.Context, id)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSONLine(c.App.Writer, v)
		}
		return formatShow(c.App.Writer, v, now(c))
	})
}

func spoolRetry(c *cli.Context) error {
	req := relay.RetryRequest{All: c.Bool("all"), Type: c.String("type")}
	switch {
	case req.All && c.Args().Present():
		return usagef("spool retry takes ids or --all, not both")
	case !req.All && req.Type != "":
		return usagef("--type goes with --all")
	case !req.All:
		if err := flagsFirst(c); err != nil {
			return err
		}
		if !c.Args().Present() {
			return usagef("spool retry needs record ids (see spool ls --dead) or --all")
		}
		ids, err := relay.ParseIDs(c.Args().Slice())
		if err != nil {
			return usageError{err}
		}
		req.IDs = ids
	}
	return withSpool(c, readWrite, spool.Options{}, func(s *spoolSession) error {
		res, err := s.admin.Retry(c.Context, req)
		if err != nil {
			return err
		}
		return reportChange(c, res, "moved back to pending", "not dead-lettered (see spool ls --dead)")
	})
}

// reportChange prints what a repair did; ids it could not find make the
// command fail after the rest was done.
func reportChange(c *cli.Context, res relay.ChangeResult, did, missing string) error {
	if c.Bool("json") {
		if err := writeJSONLine(c.App.Writer, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.App.Writer, "%d %s %s\n", res.Changed, plural(res.Changed, "record", "records"), did)
	}
	if len(res.Missing) > 0 {
		return fmt.Errorf("%s %s", joinIDs(res.Missing), missing)
	}
	return nil
}

func joinIDs(ids []uint64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	if len(s) == 1 {
		return "record " + s[0] + " is"
	}
	return "records " + strings.Join(s, ", ") + " are"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// confirm asks on the terminal before a deletion. Without a terminal to
// ask on it refuses unless --yes was given: a script must say it means it.
func confirm(c *cli.Context, question string) error {
	if c.Bool("yes") {
		return nil
	}
	if !isTerminal(os.Stdin) {
		return usagef("%s: not asking without a terminal; pass --yes to confirm", question)
	}
	fmt.Fprintf(c.App.ErrWriter, "%s [y/N] ", question)
	answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return errors.New("not confirmed; nothing was deleted")
}

func spoolRm(c *cli.Context) error {
	if !c.Args().Present() {
		return usagef("spool rm needs record ids (see spool ls)")
	}
	if err := flagsFirst(c); err != nil {
		return err
	}
	ids, err := relay.ParseIDs(c.Args().Slice())
	if err != nil {
		return usageError{err}
	}
	return withSpool(c, readWrite, spool.Options{}, func(s *spoolSession) error {
		if err := confirm(c, fmt.Sprintf("Delete %d %s from %s for good?", len(ids), plural(len(ids), "record", "records"), s.path())); err != nil {
			return err
		}
		res, err := s.admin.Delete(c.Context, ids)
		if err != nil {
			return err
		}
		return reportChange(c, res, "deleted", "neither pending nor dead")
	})
}

func spoolPurge(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if !c.Bool("dead") {
		return usagef("spool purge removes dead-letter records only: pass --dead (to drop a pending record, use spool rm ID)")
	}
	older := c.Duration("older-than")
	if older < 0 {
		return usagef("--older-than %s: want a positive duration such as 72h", older)
	}
	what := "every dead-letter record"
	if older > 0 {
		what = "dead-letter records older than " + older.String()
	}
	return withSpool(c, readWrite, spool.Options{}, func(s *spoolSession) error {
		if err := confirm(c, fmt.Sprintf("Delete %s from %s for good?", what, s.path())); err != nil {
			return err
		}
		res, err := s.admin.Purge(c.Context, older)
		if err != nil {
			return err
		}
		return reportChange(c, res, "purged", "")
	})
}

func exportStates(c *cli.Context) ([]spool.State, error) {
	switch {
	case c.Bool("all") && c.Bool("dead"):
		return nil, usagef("--all already includes --dead")
	case c.Bool("all"):
		return relay.ParseStates("all")
	case c.Bool("dead"):
		return relay.ParseStates("dead")
	}
	return relay.ParseStates("pending")
}

func spoolExport(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	states, err := exportStates(c)
	if err != nil {
		return err
	}
	return withSpool(c, readOnly, spool.Options{}, func(s *spoolSession) error {
		var p *progress
		if writerIsTerminal(c.App.ErrWriter) {
			st, err := s.admin.Stats(c.Context)
			if err != nil {
				return err
			}
			var total int64
			for _, s := range states {
				if s == spool.StateDead {
					total += st.Dead
				} else {
					total += st.Pending
				}
			}
			p = newProgress(c.App.ErrWriter, "exported", total)
		}
		w := bufio.NewWriterSize(c.App.Writer, 256<<10)
		n := int64(0)
		err := s.admin.Export(c.Context, states, func(line []byte) error {
			n++
			p.update(n)
			_, err := w.Write(line)
			return err
		})
		p.done(n)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		return err
	})
}

func spoolImport(c *cli.Context) error {
	if err := flagsFirst(c); err != nil {
		return err
	}
	if c.Args().Len() != 1 {
		return usagef("spool import takes one file (an export), or - for stdin")
	}
	name := c.Args().First()
	var in *os.File
	if name == "-" {
		// Read stdin into a temporary file first: the whole input is
		// checked before anything is written.
		tmp, err := os.CreateTemp("", "gwenrelay-import-*.ndjson")
		if err != nil {
			return fmt.Errorf("import: buffer stdin: %w", err)
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if _, err := io.Copy(tmp, os.Stdin); err != nil {
			return fmt.Errorf("import: read stdin: %w", err)
		}
		in = tmp
	} else {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		defer f.Close()
		in = f
	}
	// First pass: every line must be a record before one is written.
	total := 0
	if err := readExport(in, func(int, spool.State, spool.Record) error { total++; return nil }); err != nil {
		return fmt.Errorf("import %s: %w; nothing was imported", name, err)
	}
	_, statErr := os.Stat(c.String("spool"))
	created := errors.Is(statErr, fs.ErrNotExist)
	opt := spool.Options{DedupWindow: c.Duration("dedup-window")}
	err := withSpool(c, fileOnly, opt, func(s *spoolSession) error {
		// Records already in the spool are known by messageId (one scan):
		// the dedup index alone forgets them after its window, or with
		// --dedup-window 0.
		stored := map[string]bool{}
		err := s.file.Scan([]spool.State{spool.StatePending, spool.StateDead}, 0, func(_ spool.State, r spool.Record) (bool, error) {
			if r.MessageID != "" {
				stored[r.MessageID] = true
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("read spool %s: %w", s.file.Path(), err)
		}
		var res importCount
		var p *progress
		if writerIsTerminal(c.App.ErrWriter) {
			p = newProgress(c.App.ErrWriter, "imported", int64(total))
		}
		var batch [2][]spool.Record
		flush := func() error {
			for st := range batch {
				if len(batch[st]) == 0 {
					continue
				}
				r, err := s.file.Import(spool.State(st), batch[st])
				if err != nil {
					return err
				}
				res.Imported += r.Imported
				res.Repeats += r.Duplicates
				for i, rec := range batch[st] {
					if !r.Duplicate[i] {
						stored[rec.MessageID] = true
					}
				}
				batch[st] = batch[st][:0]
			}
			p.update(int64(res.Imported + res.Repeats + res.Present))
			return nil
		}
		err = readExport(in, func(_ int, st spool.State, r spool.Record) error {
			if stored[r.MessageID] {
				res.Present++
				return nil
			}
			batch[st] = append(batch[st], r)
			if len(batch[0])+len(batch[1]) >= 1000 {
				return flush()
			}
			return nil
		})
		if err == nil {
			err = flush()
		}
		p.done(int64(res.Imported + res.Repeats + res.Present))
		if err != nil {
			return fmt.Errorf("import %s: %w (%d records were imported before it)", name, err, res.Imported)
		}
		if c.Bool("json") {
			return writeJSONLine(c.App.Writer, res)
		}
		fmt.Fprintf(c.App.Writer, "%d %s imported, %d already in the spool, %d seen within the dedup window (delivered or deleted since; --dedup-window 0 imports them)\n",
			res.Imported, plural(res.Imported, "record", "records"), res.Present, res.Repeats)
		return nil
	})
	if err == nil && created {
		// A spool that import created as root goes to the owner of its
		// directory (the service user), which could not open it otherwise.
		if dir, serr := os.Stat(filepath.Dir(c.String("spool"))); serr == nil {
			if oerr := spool.MatchOwner(c.String("spool"), dir); oerr != nil {
				return fmt.Errorf("import: the spool was written, but giving it its directory's owner failed: %w", oerr)
			}
		}
	}
	return err
}

type importCount struct {
	Imported int `json:"imported"`
	Present  int `json:"already_present"` // same messageId already in the spool
	Repeats  int `json:"within_dedup_window"`
}

// readExport reads an export from the start of f and calls fn for each
// record, with its line number.
func readExport(f *os.File, fn func(line int, st spool.State, r spool.Record) error) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(f, 256<<10)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var v relay.RecordView
			if jerr := json.Unmarshal(line, &v); jerr != nil {
				return fmt.Errorf("line %d is not an exported record: %v", n, jerr)
			}
			r, st, rerr := v.Record()
			if rerr != nil {
				return fmt.Errorf("line %d: %v", n, rerr)
			}
			if ferr := fn(n, st, r); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func spoolCompact(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	// Refuse a live daemon's spool before touching the file.
	if s := c.String("admin-socket"); s != "" {
		if ac, err := relay.DialAdmin(c.Context, s); err == nil && sameSpool(c, ac.SpoolPath) {
			return errLive(ac, s)
		}
	}
	path := c.String("spool")
	before, after, err := spool.Compact(path, spool.Options{LockTimeout: c.Duration("lock-timeout")})
	if errors.Is(err, spool.ErrLocked) {
		return fmt.Errorf("spool %s is locked by another process (a running gwenrelay?); compact needs it stopped: systemctl stop gwenrelay", path)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSONLine(c.App.Writer, map[string]any{"spool": path, "size_before": before, "size_after": after})
	}
	fmt.Fprintf(c.App.Writer, "compacted %s: %s -> %s\n", path, formatBytes(before), formatBytes(after))
	return nil
}
