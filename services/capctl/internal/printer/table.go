package printer

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// columnGap is the space between table columns, as kubectl has it.
const columnGap = 3

// table aligns rows in columns. Unlike text/tabwriter it remembers the
// widths of everything it has written, so rows flushed one at a time (a
// watch) line up with the header and rows flushed before them; a wider
// cell widens its column from then on.
type table struct {
	out     io.Writer
	widths  []int
	pending [][]string
}

func (t *table) add(cells []string) { t.pending = append(t.pending, cells) }

func (t *table) flush() error {
	for _, row := range t.pending {
		for i, c := range row {
			if i == len(t.widths) {
				t.widths = append(t.widths, 0)
			}
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, row := range t.pending {
		for i, c := range row {
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c)+columnGap))
			}
		}
		b.WriteByte('\n')
	}
	t.pending = t.pending[:0]
	if _, err := io.WriteString(t.out, b.String()); err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	return nil
}
