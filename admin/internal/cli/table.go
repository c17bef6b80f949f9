package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// table is a tabwriter that keeps its first write error, so that a table
// the output did not take fails the command, as printJSON does.
type table struct {
	tw  *tabwriter.Writer
	err error
}

func newTable(w io.Writer, flags uint) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', flags)}
}

// printf adds text; nothing more is written after an error.
func (t *table) printf(format string, a ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.tw, format, a...)
	}
}

// flush writes out the table and returns the first error.
func (t *table) flush() error {
	if t.err != nil {
		return t.err
	}
	return t.tw.Flush()
}
