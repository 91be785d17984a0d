package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// checkpointSuffix ends the name of each pod's checkpoint file.
const checkpointSuffix = ".pod.pb"

// checkpointStore keeps one file per pod, <dir>/<uid>.pod.pb, holding the
// pod as the agent last saw it (protobuf). Writes go to a temporary file
// renamed over the old one, so a crash leaves the old or the new pod,
// never half of one. Safe for concurrent use on different pods; the agent
// never writes one pod from two goroutines (its work queue sees to that).
type checkpointStore struct {
	dir string
}

func newCheckpointStore(dir string) (*checkpointStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: pod checkpoints: %w", err)
	}
	return &checkpointStore{dir: dir}, nil
}

func (s *checkpointStore) path(uid string) string {
	return filepath.Join(s.dir, uid+checkpointSuffix)
}

func (s *checkpointStore) save(pod *capstanv1.Pod) error {
	uid := pod.GetMetadata().GetUid()
	if uid == "" || strings.ContainsAny(uid, `/\`) || uid == "." || uid == ".." {
		return fmt.Errorf("agent: checkpoint: pod %s has an unusable uid %q", podRef(pod), uid)
	}
	data, err := proto.Marshal(pod)
	if err != nil {
		return fmt.Errorf("agent: checkpoint pod %s: %w", podRef(pod), err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-"+uid+"-*")
	if err != nil {
		return fmt.Errorf("agent: checkpoint pod %s: %w", podRef(pod), err)
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("agent: checkpoint pod %s: %w", podRef(pod), err)
	}
	if err := os.Rename(tmp.Name(), s.path(uid)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("agent: checkpoint pod %s: %w", podRef(pod), err)
	}
	return nil
}

func (s *checkpointStore) remove(uid string) error {
	if err := os.Remove(s.path(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("agent: remove checkpoint of pod %s: %w", uid, err)
	}
	return nil
}

// load reads every checkpoint. A file that cannot be read is skipped and
// reported in the error, with the pods that could be read.
func (s *checkpointStore) load() ([]*capstanv1.Pod, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("agent: read pod checkpoints: %w", err)
	}
	var pods []*capstanv1.Pod
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			_ = os.Remove(filepath.Join(s.dir, name)) // a write that a crash cut short
			continue
		}
		if e.IsDir() || !strings.HasSuffix(name, checkpointSuffix) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pod := &capstanv1.Pod{}
		if err := proto.Unmarshal(data, pod); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if pod.GetMetadata().GetUid()+checkpointSuffix != name {
			errs = append(errs, fmt.Errorf("%s: holds pod uid %q", name, pod.GetMetadata().GetUid()))
			continue
		}
		pods = append(pods, pod)
	}
	if len(errs) > 0 {
		return pods, fmt.Errorf("agent: pod checkpoints: %w", errors.Join(errs...))
	}
	return pods, nil
}
