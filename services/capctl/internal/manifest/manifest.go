// Package manifest reads and writes Capstan objects as the YAML or JSON
// documents people keep in files: kind, apiVersion (capstan.dev/v1),
// metadata, then the kind's own fields (spec, data, ...), all in the
// lowerCamel JSON names of the proto fields.
//
// Decoding goes YAML → JSON (sigs.k8s.io/yaml) → a check of every field
// against the kind's message descriptor → protojson. The check exists so
// that a typo is reported with its path in the document ("unknown field
// spec.containers[0].imagee") rather than as a byte offset in an internal
// JSON text, and so that Kubernetes int-or-string fields accept a YAML
// number. Encoding is the reverse, with 64-bit integers written as numbers
// rather than protojson's quoted strings.
//
// The package has no state; every function is safe for concurrent use.
package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/capstan-dev/capstan/internal/resource"
)

// APIVersion is the apiVersion of every Capstan object.
const APIVersion = "capstan.dev/v1"

// ListKind is the kind of a document that holds several objects under items,
// as `capctl get -o yaml` prints them.
const ListKind = "List"

// Document is one object read from a manifest.
type Document struct {
	// Source names where the document came from (a file name, or "-").
	Source string
	// Index is the document's position in its source, from 1, counting
	// only non-empty documents.
	Index int
	// Item is the position within a List document, from 1; 0 otherwise.
	Item int
	// Line is the line of the source on which the document starts.
	Line int
	// Kind is the document's kind.
	Kind *resource.Kind
	// Object is the decoded object.
	Object resource.Object
}

// String names the document for messages: `web.yaml: document 2 (line 14)`.
func (d Document) String() string { return location(d.Source, d.Index, d.Item, d.Line) }

func location(source string, index, item, line int) string {
	s := fmt.Sprintf("%s: document %d", source, index)
	if item > 0 {
		s += fmt.Sprintf(", item %d", item)
	}
	return s + fmt.Sprintf(" (line %d)", line)
}

// DocumentError is a document that could not be decoded.
type DocumentError struct {
	Source      string
	Index, Item int
	Line        int
	// Kind and Name are what the document says, when it says it.
	Kind, Name string
	Err        error
}

func (e *DocumentError) Error() string {
	what := ""
	switch {
	case e.Kind != "" && e.Name != "":
		what = fmt.Sprintf(" %s %q", e.Kind, e.Name)
	case e.Kind != "":
		what = " " + e.Kind
	}
	return fmt.Sprintf("%s%s: %v", location(e.Source, e.Index, e.Item, e.Line), what, e.Err)
}

func (e *DocumentError) Unwrap() error { return e.Err }

// Decode reads every document of a multi-document YAML (or JSON) stream.
// Documents are separated by lines that start with "---"; empty documents
// are skipped and a List document contributes each of its items. If any
// document is bad, Decode returns the documents that were good together
// with an error that joins a *DocumentError for each bad one, so a caller
// can refuse to act on a half-valid file.
func Decode(r io.Reader, source string) ([]Document, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("manifest: read %s: %w", source, err)
	}
	var docs []Document
	var errs []error
	index := 0
	for _, raw := range split(data) {
		if isBlank(raw.text) {
			continue
		}
		index++
		d, err := decodeDocument(raw.text, source, index, raw.line)
		docs = append(docs, d...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return docs, errors.Join(errs...)
}

// DecodeOne decodes a single object of any kind from YAML or JSON.
func DecodeOne(data []byte, source string) (Document, error) {
	docs, err := Decode(bytes.NewReader(data), source)
	if err != nil {
		return Document{}, err
	}
	if len(docs) != 1 {
		return Document{}, fmt.Errorf("manifest: %s holds %d objects, want 1", source, len(docs))
	}
	return docs[0], nil
}

type rawDocument struct {
	line int
	text []byte
}

// separator is a YAML document marker line; a comment or content may follow
// it ("--- # web").
var separator = regexp.MustCompile(`^---(\s.*)?$`)

func split(data []byte) []rawDocument {
	var docs []rawDocument
	cur := rawDocument{line: 1}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), len(data)+1)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if separator.MatchString(strings.TrimRight(text, "\r")) {
			docs = append(docs, cur)
			cur = rawDocument{line: line + 1}
			// Content after the marker on the same line belongs to the
			// next document ("--- {kind: Pod}" is rare but legal).
			if rest := strings.TrimSpace(strings.TrimPrefix(text, "---")); rest != "" && !strings.HasPrefix(rest, "#") {
				cur.line = line
				cur.text = append(cur.text, rest+"\n"...)
			}
			continue
		}
		cur.text = append(cur.text, text+"\n"...)
	}
	return append(docs, cur)
}

func isBlank(text []byte) bool {
	for _, l := range strings.Split(string(text), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && l != "..." {
			return false
		}
	}
	return true
}

func decodeDocument(text []byte, source string, index, line int) ([]Document, error) {
	fail := func(kind, name string, err error) error {
		return &DocumentError{Source: source, Index: index, Line: line, Kind: kind, Name: name, Err: err}
	}
	js, err := yaml.YAMLToJSONStrict(text)
	if err != nil {
		return nil, fail("", "", fmt.Errorf("not valid YAML: %w", err))
	}
	fields, err := parseJSONObject(js)
	if err != nil {
		return nil, fail("", "", err)
	}
	kindName, _ := fields["kind"].(string)
	if kindName != ListKind {
		d, err := decodeObject(fields)
		if err != nil {
			return nil, fail(kindName, nameOf(fields), err)
		}
		d.Source, d.Index, d.Line = source, index, line
		return []Document{d}, nil
	}
	if err := checkAPIVersion(fields); err != nil {
		return nil, fail(kindName, "", err)
	}
	items, ok := fields["items"].([]any)
	if !ok && fields["items"] != nil {
		return nil, fail(kindName, "", errors.New("items: want a list of objects"))
	}
	var docs []Document
	var errs []error
	for i, it := range items {
		obj, ok := it.(map[string]any)
		var d Document
		err := errors.New("want an object (a mapping with kind and metadata)")
		if ok {
			d, err = decodeObject(obj)
		}
		if err != nil {
			k, _ := obj["kind"].(string)
			errs = append(errs, &DocumentError{Source: source, Index: index, Item: i + 1, Line: line, Kind: k, Name: nameOf(obj), Err: err})
			continue
		}
		d.Source, d.Index, d.Item, d.Line = source, index, i+1, line
		docs = append(docs, d)
	}
	return docs, errors.Join(errs...)
}

func parseJSONObject(js []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not valid YAML or JSON: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want an object (a mapping with kind and metadata), got %s", describe(v))
	}
	return obj, nil
}

func nameOf(fields map[string]any) string {
	meta, _ := fields["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	return name
}

func checkAPIVersion(fields map[string]any) error {
	v, present := fields["apiVersion"]
	if !present || v == nil {
		return nil
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("apiVersion: want the string %q, got %s", APIVersion, describe(v))
	}
	if s != APIVersion {
		return fmt.Errorf("apiVersion %q is not served: Capstan objects are %s", s, APIVersion)
	}
	return nil
}

// decodeObject turns one object's JSON fields into the kind's message. It
// takes kind and apiVersion out of fields.
func decodeObject(fields map[string]any) (Document, error) {
	kv, present := fields["kind"]
	if !present {
		return Document{}, errors.New("kind is missing (one of: " + strings.Join(kindNames(), ", ") + ")")
	}
	name, ok := kv.(string)
	if !ok {
		return Document{}, fmt.Errorf("kind: want a string, got %s", describe(kv))
	}
	kind, ok := resource.Lookup(name)
	if !ok {
		return Document{}, fmt.Errorf("unknown kind %q (one of: %s)", name, strings.Join(kindNames(), ", "))
	}
	if err := checkAPIVersion(fields); err != nil {
		return Document{}, err
	}
	rest := make(map[string]any, len(fields))
	for k, v := range fields {
		if k != "kind" && k != "apiVersion" {
			rest[k] = v
		}
	}
	if err := checkMessage("", rest, kind.Descriptor()); err != nil {
		return Document{}, err
	}
	js, err := json.Marshal(rest)
	if err != nil {
		return Document{}, fmt.Errorf("manifest: re-encode %s: %w", kind.Name, err)
	}
	obj := kind.New()
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, obj); err != nil {
		// The field check above catches what people get wrong; this is a
		// value protojson rejects (a malformed timestamp, say).
		return Document{}, cleanProtojsonError(err)
	}
	resource.Meta(obj)
	return Document{Kind: kind, Object: obj}, nil
}

// protojson starts its messages with "proto:" and a space or a no-break
// space (chosen at random, to discourage matching on the text).
var protojsonPosition = regexp.MustCompile(`^proto:[\s\x{00a0}]*|\(line \d+:\d+\): `)

// cleanProtojsonError drops protojson's position in the intermediate JSON,
// which means nothing to someone reading a YAML file. (protojson's errors
// carry no sentinel to wrap, so only the text is kept.)
func cleanProtojsonError(err error) error {
	msg := protojsonPosition.ReplaceAllString(err.Error(), "")
	return errors.New(msg)
}

func kindNames() []string {
	var out []string
	for _, k := range resource.All() {
		out = append(out, k.Name)
	}
	return out
}
