// Package printer renders Capstan objects for people and scripts, the way
// kubectl does: tables with kind-specific columns (and more of them with
// -o wide), YAML and JSON manifests that `capctl apply` reads back,
// kind/name lines, the multi-section descriptions of `capctl describe`
// (Describe) and the control plane's status (ClusterStatus). It knows
// nothing of the API or of flags; the commands hand it objects, and the
// related objects a description shows.
//
// A Printer writes to one io.Writer and remembers what it has printed (the
// table header, the first YAML document), so one Printer serves a whole
// `get -w`. It is not safe for concurrent use. The package's functions
// (Describe, ClusterStatus, ...) keep no state and are safe for concurrent
// use.
package printer

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/capctl/internal/manifest"
)

// Format is an output format, as given to -o.
type Format string

// The formats.
const (
	Table Format = ""
	Wide  Format = "wide"
	YAML  Format = "yaml"
	JSON  Format = "json"
	Name  Format = "name"
)

var formats = []Format{JSON, Name, Wide, YAML}

// ParseFormat checks an -o value.
func ParseFormat(s string) (Format, error) {
	f := Format(strings.ToLower(s))
	if f == Table || slices.Contains(formats, f) {
		return f, nil
	}
	var names []string
	for _, f := range formats {
		names = append(names, string(f))
	}
	return "", fmt.Errorf("unable to match a printer suitable for the output format %q, allowed formats are: %s", s, strings.Join(names, ","))
}

// Options tune a Printer.
type Options struct {
	Format Format
	// AllNamespaces adds the NAMESPACE column (namespaced kinds only).
	AllNamespaces bool
	// NoHeaders leaves out the table header.
	NoHeaders bool
	// WatchEvents shows each watch event's type: an EVENT column in
	// tables, {type, object} documents in YAML and JSON.
	WatchEvents bool
	// Now is the clock ages are measured against; time.Now if nil.
	Now func() time.Time
}

// Printer prints objects of one kind.
type Printer struct {
	out     io.Writer
	kind    *resource.Kind
	opts    Options
	columns []column
	// table holds rows not yet flushed; headerDone: the header is out.
	table      *table
	headerDone bool
	// documents counts YAML/JSON documents printed so far (YAML needs a
	// separator before every one but the first).
	documents int
}

// New returns a Printer of objects of kind to out.
func New(out io.Writer, kind *resource.Kind, opts Options) *Printer {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Printer{out: out, kind: kind, opts: opts}
	if opts.Format == Table || opts.Format == Wide {
		p.columns = columnsFor(kind, opts.Format == Wide, opts.AllNamespaces && kind.Namespaced)
		p.table = &table{out: out}
	}
	return p
}

// PrintObject prints one object: a table with one row, or the object's
// manifest.
func (p *Printer) PrintObject(obj resource.Object) error {
	switch p.opts.Format {
	case YAML, JSON:
		m, err := manifest.Object(obj)
		if err != nil {
			return err
		}
		return p.document(m)
	default:
		return p.PrintList([]resource.Object{obj})
	}
}

// PrintList prints objects as a table, as one List manifest, or as names.
func (p *Printer) PrintList(objs []resource.Object) error {
	switch p.opts.Format {
	case YAML, JSON:
		m, err := manifest.List(objs)
		if err != nil {
			return err
		}
		return p.document(m)
	case Name:
		for _, o := range objs {
			if _, err := fmt.Fprintln(p.out, NameOf(o)); err != nil {
				return fmt.Errorf("printer: %w", err)
			}
		}
		return nil
	default:
		for _, o := range objs {
			p.row(o, "")
		}
		return p.Flush()
	}
}

// PrintEvent prints one watch event: a table row (the header first, if it
// is not out yet), a manifest, or a name. Call Flush to push table rows out.
func (p *Printer) PrintEvent(typ capstanv1.WatchEventType, obj resource.Object) error {
	event := strings.TrimPrefix(typ.String(), "WATCH_EVENT_TYPE_")
	switch p.opts.Format {
	case YAML, JSON:
		m, err := manifest.Object(obj)
		if err != nil {
			return err
		}
		if p.opts.WatchEvents {
			return p.document(map[string]any{"type": event, "object": m})
		}
		return p.document(m)
	case Name:
		line := NameOf(obj)
		if p.opts.WatchEvents {
			line = event + " " + line
		}
		_, err := fmt.Fprintln(p.out, line)
		return err
	default:
		p.row(obj, event)
		return nil
	}
}

// Flush writes out the table rows printed since the last Flush, aligned
// with each other and with every row flushed before (so the rows of a
// watch stay under their header).
func (p *Printer) Flush() error {
	if p.table == nil {
		return nil
	}
	return p.table.flush()
}

func (p *Printer) row(obj resource.Object, event string) {
	withEvent := p.opts.WatchEvents
	if !p.headerDone && !p.opts.NoHeaders {
		var cells []string
		if withEvent {
			cells = append(cells, "EVENT")
		}
		for _, c := range p.columns {
			cells = append(cells, c.header)
		}
		p.table.add(cells)
	}
	p.headerDone = true
	now := p.opts.Now()
	var cells []string
	if withEvent {
		cells = append(cells, event)
	}
	for _, c := range p.columns {
		cells = append(cells, cell(c.value(obj, now)))
	}
	p.table.add(cells)
}

// cell keeps a value on one line and in its column.
func cell(s string) string {
	s = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
	if s == "" {
		return "<none>"
	}
	return s
}

func (p *Printer) document(v any) error {
	var out []byte
	var err error
	if p.opts.Format == YAML {
		out, err = manifest.YAML(v)
		if err == nil && p.documents > 0 {
			out = append([]byte("---\n"), out...)
		}
	} else {
		out, err = manifest.JSON(v)
	}
	if err != nil {
		return err
	}
	p.documents++
	if _, err := p.out.Write(out); err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	return nil
}

// NameOf is an object's kind/name, as kubectl prints it ("pod/web").
func NameOf(obj resource.Object) string {
	kind, ok := resource.ForMessage(obj)
	if !ok {
		return obj.GetMetadata().GetName()
	}
	return KindName(kind, obj.GetMetadata().GetName())
}

// KindName is kind/name in kubectl's style ("replicaset/web").
func KindName(kind *resource.Kind, name string) string {
	return strings.ToLower(kind.Name) + "/" + name
}

// Message prints any message (one that is not a resource object, such as a
// cluster status) as YAML or JSON.
func Message(out io.Writer, msg proto.Message, format Format) error {
	fields, err := manifest.Fields(msg)
	if err != nil {
		return err
	}
	var b []byte
	switch format {
	case YAML:
		b, err = manifest.YAML(fields)
	case JSON:
		b, err = manifest.JSON(fields)
	default:
		return fmt.Errorf("printer: format %q is not yaml or json", format)
	}
	if err != nil {
		return err
	}
	if _, err := out.Write(b); err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	return nil
}
