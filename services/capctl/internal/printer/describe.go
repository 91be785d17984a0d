package printer

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Related is what a description shows besides the object itself. The
// command that fetches it decides what belongs to the object; Describe
// only renders it.
type Related struct {
	// Events about the object, in any order (they are shown oldest first).
	Events []*capstanv1.Event
	// Pods: for a Node, the pods bound to it; for a ReplicaSet, the pods it
	// controls.
	Pods []*capstanv1.Pod
	// ReplicaSets: for a Deployment, the ReplicaSets it controls.
	ReplicaSets []*capstanv1.ReplicaSet
	// NoEvents leaves the Events section out (describe --show-events=false).
	NoEvents bool
}

// DescribeOptions tune Describe.
type DescribeOptions struct {
	// Now is the clock ages are measured against; time.Now if nil.
	Now func() time.Time
	// Location is the time zone of printed timestamps; time.Local if nil.
	Location *time.Location
}

// Describe prints a multi-section, human-oriented description of obj, the
// way `kubectl describe` does: its metadata, the sections of its kind, and
// the events about it.
func Describe(out io.Writer, obj resource.Object, rel Related, opts DescribeOptions) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Location == nil {
		opts.Location = time.Local
	}
	var buf bytes.Buffer
	w := &describeWriter{buf: &buf, now: opts.Now(), loc: opts.Location}
	w.lines = &trimmedLines{out: &buf}
	// kubectl's layout: two spaces between a label and its value, and
	// every run of consecutive "Label:\tvalue" lines aligned as a block.
	w.tw = tabwriter.NewWriter(w.lines, 0, 8, 2, ' ', 0)

	switch o := obj.(type) {
	case *capstanv1.Pod:
		w.pod(o)
	case *capstanv1.Node:
		w.node(o, rel.Pods)
	case *capstanv1.ReplicaSet:
		w.replicaSet(o, rel.Pods)
	case *capstanv1.Deployment:
		w.deployment(o, rel.ReplicaSets)
	case *capstanv1.Lease:
		w.lease(o)
	case *capstanv1.ConfigMap:
		w.configMap(o)
	case *capstanv1.Event:
		w.event(o)
	default:
		w.metadata(obj)
	}
	if _, isEvent := obj.(*capstanv1.Event); !isEvent && !rel.NoEvents {
		w.events(rel.Events)
	}
	w.flush()
	if _, err := out.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	return nil
}

// describeWriter writes the lines of one description. Lines go through a
// tabwriter into buf, which never fails, so no method returns an error.
type describeWriter struct {
	buf   *bytes.Buffer
	lines *trimmedLines
	tw    *tabwriter.Writer
	now   time.Time
	loc   *time.Location
}

// write writes one line (format ends with "\n") at an indentation level.
func (w *describeWriter) write(level int, format string, args ...any) {
	fmt.Fprintf(w.tw, strings.Repeat("  ", level)+format, args...)
}

// field writes "Label:\tvalue" at level.
func (w *describeWriter) field(level int, label, value string) {
	w.write(level, "%s:\t%s\n", label, value)
}

// flush ends the current alignment block.
func (w *describeWriter) flush() {
	_ = w.tw.Flush()
	w.lines.flush()
}

// trimmedLines drops the spaces the tabwriter pads a line's empty last
// cells with, so no line ends in blanks.
type trimmedLines struct {
	out     *bytes.Buffer
	pending []byte
}

func (t *trimmedLines) Write(p []byte) (int, error) {
	t.pending = append(t.pending, p...)
	for {
		i := bytes.IndexByte(t.pending, '\n')
		if i < 0 {
			return len(p), nil
		}
		t.out.Write(bytes.TrimRight(t.pending[:i], " "))
		t.out.WriteByte('\n')
		t.pending = t.pending[i+1:]
	}
}

func (t *trimmedLines) flush() {
	t.out.Write(t.pending)
	t.pending = t.pending[:0]
}

// raw writes text as it is, outside any alignment (a ConfigMap's values
// may hold tabs, which the tabwriter would take for column breaks).
func (w *describeWriter) raw(text string) {
	w.flush()
	w.buf.WriteString(text)
}

// text keeps a value on its line and in its cell.
func text(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

// orNone is s, or "<none>" if it is empty.
func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return text(s)
}

// timestamp is t in kubectl's describe format (RFC 1123 with a numeric
// zone), or "<unknown>".
func (w *describeWriter) timestamp(t *timestamppb.Timestamp) string {
	if t == nil {
		return "<unknown>"
	}
	return t.AsTime().In(w.loc).Format(time.RFC1123Z)
}

// timestampAgo is a timestamp followed by how long ago it was.
func (w *describeWriter) timestampAgo(t *timestamppb.Timestamp) string {
	if t == nil {
		return "<unknown>"
	}
	return fmt.Sprintf("%s (%s)", w.timestamp(t), Ago(t, w.now))
}

// multiline writes label with the first entry on its line and the others
// aligned under it, or <none>.
func (w *describeWriter) multiline(level int, label string, entries []string) {
	if len(entries) == 0 {
		w.field(level, label, "<none>")
		return
	}
	w.field(level, label, text(entries[0]))
	for _, e := range entries[1:] {
		w.write(level, "\t%s\n", text(e))
	}
}

// keyValues is a map as sorted "key<sep>value" entries.
func keyValues(m map[string]string, sep string) []string {
	out := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, k+sep+m[k])
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// metadata writes what every object has: name, namespace, labels,
// annotations, creation, owners and a pending deletion.
func (w *describeWriter) metadata(obj resource.Object) {
	m := obj.GetMetadata()
	w.field(0, "Name", text(m.GetName()))
	if m.GetNamespace() != "" {
		w.field(0, "Namespace", text(m.GetNamespace()))
	}
	w.multiline(0, "Labels", keyValues(m.GetLabels(), "="))
	w.multiline(0, "Annotations", keyValues(m.GetAnnotations(), ": "))
	w.field(0, "CreationTimestamp", w.timestamp(m.GetCreateTime()))
	var owners []string
	for _, ref := range m.GetOwnerReferences() {
		if ref.GetController() {
			w.field(0, "Controlled By", text(ref.GetKind()+"/"+ref.GetName()))
		} else {
			owners = append(owners, ref.GetKind()+"/"+ref.GetName())
		}
	}
	if len(owners) > 0 {
		w.multiline(0, "Owned By", owners)
	}
	if m.GetDeleteTime() != nil {
		w.field(0, "DeletionTimestamp", w.timestamp(m.GetDeleteTime()))
		w.field(0, "DeletionGracePeriodSeconds", fmt.Sprint(m.GetDeleteGracePeriodSeconds()))
	}
}

// conditionTable writes conditions as a Type/Status/Reason/Message table
// (with the heartbeat and transition times if withTimes).
func (w *describeWriter) conditionTable(conditions []*capstanv1.Condition, withTimes bool) {
	if len(conditions) == 0 {
		return
	}
	w.write(0, "Conditions:\n")
	if withTimes {
		w.write(1, "Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n")
		w.write(1, "----\t------\t-----------------\t------------------\t------\t-------\n")
	} else {
		w.write(1, "Type\tStatus\tReason\tMessage\n")
		w.write(1, "----\t------\t------\t-------\n")
	}
	for _, c := range conditions {
		if withTimes {
			w.write(1, "%s\t%s\t%s\t%s\t%s\t%s\n", orNone(c.GetType()), orNone(c.GetStatus()),
				w.timestamp(c.GetLastHeartbeatTime()), w.timestamp(c.GetLastTransitionTime()), text(c.GetReason()), text(c.GetMessage()))
		} else {
			w.write(1, "%s\t%s\t%s\t%s\n", orNone(c.GetType()), orNone(c.GetStatus()), text(c.GetReason()), text(c.GetMessage()))
		}
	}
	w.flush()
}

// events writes the Events table, oldest first, as kubectl does.
func (w *describeWriter) events(events []*capstanv1.Event) {
	w.flush()
	if len(events) == 0 {
		w.field(0, "Events", "<none>")
		return
	}
	sorted := slices.Clone(events)
	slices.SortStableFunc(sorted, compareEvents)
	w.write(0, "Events:\n")
	w.write(1, "Type\tReason\tAge\tFrom\tMessage\n")
	w.write(1, "----\t------\t----\t----\t-------\n")
	for _, e := range sorted {
		first := e.GetFirstTime()
		if first == nil {
			first = eventLastSeen(e)
		}
		age := Age(first, w.now)
		if e.GetCount() > 1 {
			age = fmt.Sprintf("%s (x%d over %s)", Age(eventLastSeen(e), w.now), e.GetCount(), Age(first, w.now))
		}
		w.write(1, "%s\t%s\t%s\t%s\t%s\n", orNone(e.GetType()), orNone(e.GetReason()), age,
			orNone(e.GetSource().GetComponent()), text(strings.TrimSpace(e.GetMessage())))
	}
}

// compareEvents orders events by when they last happened, then by name.
func compareEvents(a, b *capstanv1.Event) int {
	ta, tb := eventLastSeen(a), eventLastSeen(b)
	switch {
	case ta == nil && tb != nil:
		return -1
	case ta != nil && tb == nil:
		return 1
	case ta != nil && tb != nil:
		if c := ta.AsTime().Compare(tb.AsTime()); c != 0 {
			return c
		}
	}
	return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
}

// SortEvents orders Event objects by when they last happened (oldest
// first), as `get events` lists them; other objects keep their place
// after the events.
func SortEvents(objs []resource.Object) {
	slices.SortStableFunc(objs, func(a, b resource.Object) int {
		ea, okA := a.(*capstanv1.Event)
		eb, okB := b.(*capstanv1.Event)
		switch {
		case okA && okB:
			return compareEvents(ea, eb)
		case okA:
			return -1
		case okB:
			return 1
		}
		return 0
	})
}
