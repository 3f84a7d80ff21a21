package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/pkg/control"
)

// requestTimeout bounds one call to the agent's control socket, and the
// wait for the first of an answer written as it is made (`ztdns table`).
const requestTimeout = 10 * time.Second

// streamTimeout bounds reading an answer written as it is made: the table
// of a million names is read in well under a minute.
const streamTimeout = 10 * time.Minute

// client returns a client of the agent's control socket.
func client(socket string) *control.Client { return control.NewClient(socket, requestTimeout) }

// callContext bounds one call to the agent.
func callContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), requestTimeout)
}

// readCommand completes cmd as a command that reads the agent's state: it
// takes --socket and -o, asks the agent with get (a method expression of
// control.Client fits) and prints what it got with show in the format
// asked for.
func readCommand[T any](cmd *cobra.Command, get func(*control.Client, context.Context) (T, error),
	show func(w io.Writer, format string, v T) error) *cobra.Command {
	socket := socketFlag(cmd)
	output := outputFlag(cmd, outputTable, readFormats...)
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, cancel := callContext(cmd)
		defer cancel()
		v, err := get(client(*socket), ctx)
		if err != nil {
			return err
		}
		return show(cmd.OutOrStdout(), output.value, v)
	}
	return cmd
}

// socketFlag adds --socket, the agent's control socket, to a command that
// talks to the agent.
func socketFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("socket", control.DefaultSocket, "the agent's control socket `PATH`")
}

// The output formats of -o, as kubectl names them.
const (
	outputTable = "table" // columns for people
	outputWide  = "wide"  // the same with every column and value
	outputJSON  = "json"
	outputYAML  = "yaml"
)

// choice is a flag whose value is one of a few words; anything else is a
// usage error when the command line is parsed.
type choice struct {
	value   string
	allowed []string
}

func (c *choice) String() string { return c.value }
func (c *choice) Type() string   { return "string" }

func (c *choice) Set(v string) error {
	if !slices.Contains(c.allowed, v) {
		return fmt.Errorf("want %s", orList(c.allowed))
	}
	c.value = v
	return nil
}

// outputFlag adds -o/--output to a command, with the formats it takes and
// their shell completion. The value is def until the flag is given; def ""
// stands for the command's own plain form.
func outputFlag(cmd *cobra.Command, def string, formats ...string) *choice {
	c := &choice{value: def, allowed: formats}
	cmd.Flags().VarP(c, "output", "o", "`FORMAT` of the output: "+orList(formats))
	if err := cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp)); err != nil {
		panic(err) // the flag was added just above
	}
	return c
}

// readFormats are the formats of the commands that read the agent's state.
var readFormats = []string{outputTable, outputWide, outputJSON, outputYAML}

// printOutput writes v as JSON or YAML (its JSON form, so the fields are
// named alike), or hands a tab-separated writer to table for the table and
// wide formats.
func printOutput(w io.Writer, format string, v any, table func(w io.Writer, wide bool)) error {
	switch format {
	case outputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case outputYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw, format == outputWide)
	return tw.Flush()
}

// column is one column of a list; a wide column shows only with -o wide.
type column[T any] struct {
	header string
	wide   bool
	value  func(row T, wide bool) string
}

// listPrinter prints rows in the format -o asked for: a list (empty, not
// null, when there are no rows) or a table of cols.
func listPrinter[T any](cols []column[T]) func(w io.Writer, format string, rows []T) error {
	return func(w io.Writer, format string, rows []T) error {
		return printList(w, format, rows, cols)
	}
}

// printList prints rows as one block: the columns as wide as their widest
// value, JSON and YAML the same list a stream prints.
func printList[T any](w io.Writer, format string, rows []T, cols []column[T]) error {
	s := newListStream(w, format, cols, 0)
	for _, r := range rows {
		if err := s.Row(r); err != nil {
			return err
		}
	}
	return s.Close()
}

// shown is a value from the agent (a file's name in an error, a pod's
// name, a netns path) as a table shows it: a character that is not
// printable (a control character, a tab, a line break, a terminal escape)
// is written as Go escapes it (\x1b, \t, \n, \u202e), and an octet that is
// not UTF-8 as \xff. No value then splits a line or a column, moves the
// cursor or rewrites what the terminal shows: a file named
// "evil\n\x1b[1AReady:\tyes.yaml" cannot forge a "Ready:" line. -o json
// and -o yaml escape what they must themselves.
func shown(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// shortList joins values with commas; in a table (not wide) it shows the
// first few and how many more there are, as kubectl shows endpoints.
func shortList(values []string, wide bool) string {
	const shown = 3
	if wide || len(values) <= shown+1 {
		return strings.Join(values, ",")
	}
	return fmt.Sprintf("%s + %d more...", strings.Join(values[:shown], ","), len(values)-shown)
}

// orList spells words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// listStream prints rows as they come, in the format -o asked for: JSON
// and YAML a row at a time, a table in blocks of blockLines lines (all in
// one when 0) whose columns are as wide as the widest value seen so far,
// laid out as text/tabwriter would with printOutput's settings; no more
// than a block is held.
type listStream[T any] struct {
	w          io.Writer
	format     string
	cols       []column[T]
	blockLines int
	widths     []int      // of each column but the last, in runes
	block      [][]string // the table's lines not yet written
	n          int        // rows printed
	err        error
}

// streamBlock is how many rows of a table are laid out together.
const streamBlock = 1000

func newListStream[T any](w io.Writer, format string, cols []column[T], blockLines int) *listStream[T] {
	wide := format == outputWide
	s := &listStream[T]{w: w, format: format, blockLines: blockLines}
	s.cols = slices.DeleteFunc(slices.Clone(cols), func(c column[T]) bool { return c.wide && !wide })
	if s.tabular() {
		header := make([]string, len(s.cols))
		for i, c := range s.cols {
			header[i] = c.header
		}
		s.widths = make([]int, len(s.cols)-1)
		s.add(header)
	}
	return s
}

func (s *listStream[T]) tabular() bool { return s.format != outputJSON && s.format != outputYAML }

// Row prints r, or holds it for the table's next block.
func (s *listStream[T]) Row(r T) error {
	if s.err != nil {
		return s.err
	}
	s.n++
	switch s.format {
	case outputJSON:
		b, err := json.MarshalIndent(r, "  ", "  ")
		if err != nil {
			return err
		}
		sep := ",\n  "
		if s.n == 1 {
			sep = "[\n  "
		}
		_, s.err = fmt.Fprintf(s.w, "%s%s", sep, b)
		return s.err
	case outputYAML:
		b, err := yaml.Marshal([]T{r})
		if err != nil {
			return err
		}
		_, s.err = s.w.Write(b)
		return s.err
	}
	cells := make([]string, len(s.cols))
	for i, c := range s.cols {
		cells[i] = shown(c.value(r, s.format == outputWide))
	}
	s.add(cells)
	if s.blockLines > 0 && len(s.block) >= s.blockLines {
		s.flush()
	}
	return s.err
}

// add holds a table's line, widening the columns to fit it.
func (s *listStream[T]) add(cells []string) {
	for i := range s.widths {
		s.widths[i] = max(s.widths[i], utf8.RuneCountInString(cells[i]))
	}
	s.block = append(s.block, cells)
}

// flush writes the table's lines held, as text/tabwriter would lay them
// out with printOutput's settings (two spaces between columns).
func (s *listStream[T]) flush() {
	var b strings.Builder
	for _, cells := range s.block {
		for i, c := range cells[:len(cells)-1] {
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", s.widths[i]-utf8.RuneCountInString(c)+2))
		}
		b.WriteString(cells[len(cells)-1])
		b.WriteByte('\n')
	}
	s.block = s.block[:0]
	if s.err == nil {
		_, s.err = io.WriteString(s.w, b.String())
	}
}

// Rows is how many rows were printed or held.
func (s *listStream[T]) Rows() int { return s.n }

// Close ends the list: what a table holds is written, a JSON list closed.
func (s *listStream[T]) Close() error {
	switch {
	case s.tabular():
		s.flush()
	case s.err != nil:
	case s.n == 0:
		_, s.err = io.WriteString(s.w, "[]\n")
	case s.format == outputJSON:
		_, s.err = io.WriteString(s.w, "\n]\n")
	}
	return s.err
}
