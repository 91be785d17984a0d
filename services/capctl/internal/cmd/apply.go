package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/capctl/internal/manifest"
	"github.com/capstan-dev/capstan/services/capctl/internal/printer"
)

// applyConflictRetries bounds how often apply re-reads an object that
// someone else changed between its read and its update.
const applyConflictRetries = 5

func newApplyCommand(g *globals) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update objects from YAML or JSON manifests",
		Long: `Create each object of the manifests, or update it if it exists.

A manifest holds one or more documents separated by "---" lines, each with
kind, apiVersion (capstan.dev/v1, optional), metadata and the kind's fields
(spec, or data for a ConfigMap). FILE may be "-" for standard input, or a
directory (its *.yaml, *.yml and *.json files). Every document is checked
before anything is applied: one bad document applies nothing.

An update replaces labels and the spec with the manifest's; status,
annotations and owner references the manifest leaves out are kept, and so
is the node a pod is bound to, and the replicas of a deployment or
replicaset whose manifest has no spec.replicas (set by capctl scale).`,
		Example: `  capctl apply -f web.yaml
  capctl get deploy web -o yaml > web.yaml && $EDITOR web.yaml && capctl apply -f web.yaml
  cat <<EOF | capctl apply -f -
  kind: ConfigMap
  metadata: {name: settings}
  data: {level: debug}
  EOF`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef(cmd, "unexpected arguments %q: give manifests with -f", args)
			}
			if len(files) == 0 {
				return usagef(cmd, "give at least one manifest with -f FILE (- for standard input)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			docs, err := readManifests(g, files)
			if err != nil {
				return err
			}
			c, err := g.dial(0)
			if err != nil {
				return err
			}
			defer c.Close()
			failures := 0
			for _, d := range docs {
				if err := applyDocument(cmd.Context(), g, c, d); err != nil {
					g.writeErr(err)
					failures++
				}
			}
			if failures > 0 {
				return &alreadyReported{failures: failures}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file, directory, or - for standard input (repeatable)")
	return cmd
}

// readManifests decodes every document of every file and puts each object
// in its namespace. Any bad document fails the whole read.
func readManifests(g *globals, files []string) ([]manifest.Document, error) {
	var docs []manifest.Document
	var errs []error
	for _, f := range files {
		paths, err := expandManifestPath(f)
		if err != nil {
			return nil, err
		}
		for _, path := range paths {
			got, err := decodeFile(g, path)
			if err != nil {
				errs = append(errs, err)
			}
			docs = append(docs, got...)
		}
	}
	for _, d := range docs {
		if err := g.placeInNamespace(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("no objects in %s", strings.Join(files, ", "))
	}
	return docs, nil
}

func decodeFile(g *globals, path string) ([]manifest.Document, error) {
	if path == "-" {
		return manifest.Decode(g.streams.In, path)
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	defer file.Close()
	return manifest.Decode(file, path)
}

// expandManifestPath turns a directory into its manifest files, sorted.
func expandManifestPath(path string) ([]string, error) {
	if path == "-" {
		return []string{path}, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
			out = append(out, filepath.Join(path, e.Name()))
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("directory %s has no *.yaml, *.yml or *.json files", path)
	}
	return out, nil
}

// placeInNamespace gives a namespaced object the -n namespace when its
// manifest names none, and refuses a manifest whose namespace contradicts
// an explicit -n (kubectl's rule: a mistake either way, so say so).
func (g *globals) placeInNamespace(d manifest.Document) error {
	meta := resource.Meta(d.Object)
	if !d.Kind.Namespaced {
		meta.Namespace = ""
		return nil
	}
	switch {
	case meta.Namespace == "":
		meta.Namespace = g.namespace
	case g.namespaceSet && meta.Namespace != g.namespace:
		return fmt.Errorf("%s: the namespace from the manifest (%q) does not match the namespace %q given with -n: "+
			"pass -n %s, or drop -n", d, meta.Namespace, g.namespace, meta.Namespace)
	}
	return nil
}

// applyDocument creates the document's object, or updates it if it
// exists, and prints what happened.
func applyDocument(ctx context.Context, g *globals, c *client.Client, d manifest.Document) error {
	name := resource.Meta(d.Object).GetName()
	outcome, err := apply(ctx, c, d.Kind, d.Object)
	if err != nil {
		return &contextError{context: d.String() + " " + printer.KindName(d.Kind, name), err: objectError(d.Kind, name, err)}
	}
	fmt.Fprintf(g.streams.Out, "%s %s\n", printer.KindName(d.Kind, name), outcome)
	return nil
}

// apply returns "created", "configured" or "unchanged".
func apply(ctx context.Context, c *client.Client, kind *resource.Kind, desired resource.Object) (string, error) {
	meta := resource.Meta(desired)
	if _, err := c.Create(ctx, desired); err == nil {
		return "created", nil
	} else if !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	var err error
	for attempt := 0; attempt < applyConflictRetries; attempt++ {
		var current resource.Object
		current, err = c.Get(ctx, kind, meta.GetNamespace(), meta.GetName())
		if err != nil {
			return "", err
		}
		next := forUpdate(desired, current)
		if proto.Equal(next, current) {
			return "unchanged", nil
		}
		var updated resource.Object
		updated, err = c.Update(ctx, next)
		switch {
		case apierrors.IsConflict(err):
			continue // changed since we read it: read again
		case err != nil:
			return "", err
		case updated == nil, // the client settled a lost answer: it was applied
			updated.GetMetadata().GetResourceVersion() != current.GetMetadata().GetResourceVersion() && !sameButVersion(updated, current):
			return "configured", nil
		default:
			// Nothing changed: the server wrote nothing, or wrote back what
			// it had (a manifest that leaves out a field the server defaults).
			return "unchanged", nil
		}
	}
	return "", fmt.Errorf("gave up after %d conflicting updates: %w", applyConflictRetries, err)
}

// forUpdate is the object an update sends for desired: the manifest's
// labels and spec, over what the server and controllers own or add. It
// takes from current its uid and resource_version (the update is
// conditional on both: apply means "make the current object look like the
// manifest", which apply gets by reading again after a conflict, never by
// writing over a version it has not seen), the server-set metadata, the
// status (Update keeps it anyway; having it makes next comparable with
// current), owner references and annotations the manifest does not
// mention, the node of a bound pod, and replicas the manifest does not set.
func forUpdate(desired, current resource.Object) resource.Object {
	next := resource.Clone(desired)
	nm, cm := resource.Meta(next), resource.Meta(current)
	nm.Uid = cm.GetUid()
	nm.ResourceVersion = cm.GetResourceVersion()
	nm.Generation = cm.GetGeneration()
	nm.CreateTime = cm.GetCreateTime()
	nm.DeleteTime = cm.GetDeleteTime()
	nm.DeleteGracePeriodSeconds = cm.GetDeleteGracePeriodSeconds()
	if len(nm.OwnerReferences) == 0 {
		nm.OwnerReferences = cm.GetOwnerReferences()
	}
	if len(cm.GetAnnotations()) > 0 {
		merged := make(map[string]string, len(cm.GetAnnotations())+len(nm.Annotations))
		for k, v := range cm.GetAnnotations() {
			merged[k] = v
		}
		for k, v := range nm.Annotations {
			merged[k] = v
		}
		nm.Annotations = merged
	}
	copyStatus(current, next)
	keepReplicas(next, current)
	if pod, ok := next.(*capstanv1.Pod); ok && pod.GetSpec().GetNodeName() == "" {
		if bound := current.(*capstanv1.Pod).GetSpec().GetNodeName(); bound != "" {
			if pod.Spec == nil {
				pod.Spec = &capstanv1.PodSpec{}
			}
			pod.Spec.NodeName = bound
		}
	}
	return next
}

// keepReplicas gives a deployment or replicaset whose manifest leaves
// spec.replicas out the stored number: it was set by capctl scale (or
// another owner of the count), and kubectl apply leaves such a field alone
// too. A manifest that sets spec.replicas wins.
func keepReplicas(next, current resource.Object) {
	var replicas **int32
	var stored *int32
	switch n := next.(type) {
	case *capstanv1.Deployment:
		if n.Spec == nil {
			return
		}
		replicas = &n.Spec.Replicas
		if cs := current.(*capstanv1.Deployment).GetSpec(); cs != nil {
			stored = cs.Replicas
		}
	case *capstanv1.ReplicaSet:
		if n.Spec == nil {
			return
		}
		replicas = &n.Spec.Replicas
		if cs := current.(*capstanv1.ReplicaSet).GetSpec(); cs != nil {
			stored = cs.Replicas
		}
	default:
		return
	}
	if *replicas == nil && stored != nil {
		v := *stored
		*replicas = &v
	}
}

func copyStatus(from, to resource.Object) {
	fr, tr := from.ProtoReflect(), to.ProtoReflect()
	fd := tr.Descriptor().Fields().ByName("status")
	if fd == nil {
		return
	}
	if fr.Has(fd) {
		tr.Set(fd, fr.Get(fd))
	} else {
		tr.Clear(fd)
	}
}

// sameButVersion reports whether a and b differ in nothing but their
// resource_version.
func sameButVersion(a, b resource.Object) bool {
	a, b = resource.Clone(a), resource.Clone(b)
	resource.Meta(a).ResourceVersion = 0
	resource.Meta(b).ResourceVersion = 0
	return proto.Equal(a, b)
}
