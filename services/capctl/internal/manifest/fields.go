package manifest

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// intOrString lists the string fields that Kubernetes declares as
// IntOrString: a manifest may give them as a YAML number ("maxSurge: 1"),
// which is converted to its decimal string before protojson sees it.
var intOrString = map[protoreflect.FullName]bool{
	"capstan.v1.RollingUpdateDeployment.max_surge":       true,
	"capstan.v1.RollingUpdateDeployment.max_unavailable": true,
}

// checkMessage checks every field of obj (JSON, as decoded with UseNumber)
// against md: the field must exist and its value must have the right JSON
// shape. Int-or-string numbers are rewritten in place as strings. path is
// the dotted path of obj in the document, "" for the top.
func checkMessage(path string, obj map[string]any, md protoreflect.MessageDescriptor) error {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		p := joinPath(path, key)
		fd := fieldByName(md, key)
		if fd == nil {
			return unknownField(p, key, md)
		}
		v := obj[key]
		if v == nil {
			continue // null: the field is unset, as protojson reads it
		}
		var err error
		switch {
		case fd.IsMap():
			m, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: want a mapping, got %s", p, describe(v))
			}
			for _, k := range sortedKeys(m) {
				if m[k] == nil {
					continue
				}
				if m[k], err = checkValue(mapPath(p, k), m[k], fd.MapValue()); err != nil {
					return err
				}
			}
		case fd.IsList():
			list, ok := v.([]any)
			if !ok {
				return fmt.Errorf("%s: want a list, got %s", p, describe(v))
			}
			for i := range list {
				if list[i], err = checkValue(fmt.Sprintf("%s[%d]", p, i), list[i], fd); err != nil {
					return err
				}
			}
		default:
			if obj[key], err = checkValue(p, v, fd); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkValue checks one singular value (or one element of a list or map)
// of field fd and returns it, converted if it is an int-or-string number.
func checkValue(path string, v any, fd protoreflect.FieldDescriptor) (any, error) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		switch name := fd.Message().FullName(); {
		case name == "google.protobuf.Timestamp":
			str, ok := v.(string)
			if _, err := time.Parse(time.RFC3339Nano, str); !ok || err != nil {
				return nil, fmt.Errorf("%s: want a time such as \"2025-01-02T15:04:05Z\" (RFC 3339), got %s", path, describe(v))
			}
			return v, nil
		case strings.HasPrefix(string(name), "google.protobuf."):
			return v, nil // other well-known types have their own JSON forms; protojson checks them
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: want a mapping, got %s", path, describe(v))
		}
		return m, checkMessage(path, m, fd.Message())
	case protoreflect.StringKind:
		switch x := v.(type) {
		case string:
			return x, nil
		case json.Number:
			if intOrString[fd.FullName()] {
				return x.String(), nil
			}
		}
		hint := ""
		if _, ok := v.(bool); ok {
			hint = ` (YAML reads unquoted yes/no/true/false/on/off as booleans: quote the value)`
		} else if _, ok := v.(json.Number); ok {
			hint = ` (quote the value)`
		}
		return nil, fmt.Errorf("%s: want a string, got %s%s", path, describe(v), hint)
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			return nil, fmt.Errorf("%s: want true or false, got %s", path, describe(v))
		}
		return v, nil
	case protoreflect.EnumKind:
		switch v.(type) {
		case string, json.Number:
			return v, nil
		}
		return nil, fmt.Errorf("%s: want an enum name, got %s", path, describe(v))
	case protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			return nil, fmt.Errorf("%s: want base64 text, got %s", path, describe(v))
		}
		return v, nil
	default: // numbers; protojson also accepts them quoted
		switch x := v.(type) {
		case json.Number:
			return v, nil
		case string:
			if _, err := strconv.ParseFloat(x, 64); err == nil || x == "NaN" || x == "Infinity" || x == "-Infinity" {
				return v, nil
			}
		}
		return nil, fmt.Errorf("%s: want a number, got %s", path, describe(v))
	}
}

// fieldByName finds a field by its JSON name ("nodeName") or proto name
// ("node_name"), the two spellings protojson accepts.
func fieldByName(md protoreflect.MessageDescriptor, name string) protoreflect.FieldDescriptor {
	if fd := md.Fields().ByJSONName(name); fd != nil {
		return fd
	}
	return md.Fields().ByName(protoreflect.Name(name))
}

func unknownField(path, key string, md protoreflect.MessageDescriptor) error {
	msg := fmt.Sprintf("unknown field %q", path)
	if s := suggest(key, md); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return fmt.Errorf("%s", msg)
}

// suggest returns the field of md whose JSON name is closest to key, if it
// is close enough to be a likely typo.
func suggest(key string, md protoreflect.MessageDescriptor) string {
	best, bestDist := "", 3
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		name := fields.Get(i).JSONName()
		if strings.EqualFold(name, key) {
			return name
		}
		if d := editDistance(strings.ToLower(key), strings.ToLower(name)); d < bestDist {
			best, bestDist = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// mapPath is the path of a map entry: labels.app, or labels["app.kubernetes.io/name"].
func mapPath(path, key string) string {
	if plainKey.MatchString(key) {
		return path + "." + key
	}
	return fmt.Sprintf("%s[%q]", path, key)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// describe names a JSON value's type and value for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("the string %q", x)
	case json.Number:
		return "the number " + x.String()
	case bool:
		return fmt.Sprintf("the boolean %t", x)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	default:
		return fmt.Sprintf("%v", x)
	}
}

// numberize rewrites, in place, the 64-bit integer fields of obj (the
// protojson form of a message of type md) from protojson's quoted strings
// to JSON numbers, so YAML shows "resourceVersion: 42" and not "'42'".
func numberize(obj map[string]any, md protoreflect.MessageDescriptor) {
	for key, v := range obj {
		fd := fieldByName(md, key)
		if fd == nil || v == nil {
			continue
		}
		switch {
		case fd.IsMap():
			if m, ok := v.(map[string]any); ok {
				for k, mv := range m {
					m[k] = numberizeValue(mv, fd.MapValue())
				}
			}
		case fd.IsList():
			if list, ok := v.([]any); ok {
				for i := range list {
					list[i] = numberizeValue(list[i], fd)
				}
			}
		default:
			obj[key] = numberizeValue(v, fd)
		}
	}
}

func numberizeValue(v any, fd protoreflect.FieldDescriptor) any {
	switch fd.Kind() {
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		if s, ok := v.(string); ok {
			return json.Number(s)
		}
	case protoreflect.MessageKind:
		if m, ok := v.(map[string]any); ok && !strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			numberize(m, fd.Message())
		}
	}
	return v
}
