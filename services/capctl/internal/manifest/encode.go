package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/capstan-dev/capstan/internal/resource"
)

// Fields returns msg as a JSON value: protojson with lowerCamel names (as
// kubectl prints objects), unset fields left out, 64-bit integers as
// numbers.
func Fields(msg proto.Message) (map[string]any, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: false}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("manifest: encode %s: %w", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var out map[string]any
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("manifest: re-read %s: %w", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	if out == nil {
		out = map[string]any{}
	}
	numberize(out, msg.ProtoReflect().Descriptor())
	return out, nil
}

// Object returns obj as a manifest: its fields plus apiVersion and kind.
func Object(obj resource.Object) (map[string]any, error) {
	kind, ok := resource.ForMessage(obj)
	if !ok {
		return nil, fmt.Errorf("manifest: %s is not a Capstan kind", obj.ProtoReflect().Descriptor().FullName())
	}
	out, err := Fields(obj)
	if err != nil {
		return nil, err
	}
	out["apiVersion"] = APIVersion
	out["kind"] = kind.Name
	return out, nil
}

// List returns objs as one List manifest, which Decode reads back.
func List(objs []resource.Object) (map[string]any, error) {
	items := make([]any, 0, len(objs))
	for _, o := range objs {
		m, err := Object(o)
		if err != nil {
			return nil, err
		}
		items = append(items, m)
	}
	return map[string]any{"apiVersion": APIVersion, "kind": ListKind, "items": items}, nil
}

// YAML renders a JSON value (from Fields, Object or List) as YAML, keys
// sorted as kubectl prints them (apiVersion first).
func YAML(v any) ([]byte, error) {
	out, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("manifest: render YAML: %w", err)
	}
	return out, nil
}

// JSON renders a JSON value indented by four spaces, as kubectl does, with
// a final newline. "<", ">" and "&" stay as they are (commands and messages
// hold them), rather than the \u003c escapes meant for HTML.
func JSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "    ")
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("manifest: render JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// ToYAML is the manifest of obj as YAML: what Decode reads back.
func ToYAML(obj resource.Object) ([]byte, error) {
	m, err := Object(obj)
	if err != nil {
		return nil, err
	}
	return YAML(m)
}

// ToJSON is the manifest of obj as indented JSON.
func ToJSON(obj resource.Object) ([]byte, error) {
	m, err := Object(obj)
	if err != nil {
		return nil, err
	}
	return JSON(m)
}
