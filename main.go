// Command gwenrelay takes GWEN webhooks, keeps each one in a bbolt spool
// (fsynced before it answers 2xx) and forwards them to Segment.
//
// main only wires the command line; the work is in relay/ and spool/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// argsKey holds the command line in the context, for reloads.
type argsKey struct{}

// usageError is a mistake in the command line or configuration: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "gwenrelay",
		Usage:     "durable relay from GWEN webhooks to Segment",
		Version:   buildVersion(),
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, by run, with the right exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("unknown command %q: try gwenrelay --help", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			serveCommand(),
			spoolCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintln(c.App.Writer, buildVersion())
					return err
				},
			},
		},
	}
}

// run executes the command line and returns the process exit code:
// 0 success, 1 runtime failure, 2 usage or configuration error.
func run(args []string, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdout, stderr)
}

// runContext is run with a context whose end stops serve as SIGTERM does.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// serve re-reads its configuration on SIGHUP from the same command line.
	ctx = context.WithValue(ctx, argsKey{}, args)
	err := newApp(stdout, stderr).RunContext(ctx, args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "gwenrelay: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}
