package runtime

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// The state directory:
//
//	<StateDir>/pods/<uid>/pod.json                    podCheckpoint
//	<StateDir>/pods/<uid>/<container>.checkpoint.json containerCheckpoint
//	<StateDir>/pods/<uid>/<container>.released        the run id its shim was released with
//	<StateDir>/pods/<uid>/<container>.log[.1]         the current run's output
//	<StateDir>/pods/<uid>/<container>.previous.log[.1] the run before it
//	<StateDir>/pods/<uid>/work/                       default working directory
//
// Checkpoints are written whole to a temporary file and renamed, so a
// reader sees the old or the new one, never a torn one.
const (
	podCheckpointFile       = "pod.json"
	containerCheckpointExt  = ".checkpoint.json"
	releaseMarkerExt        = ".released"
	podWorkDir              = "work"
	checkpointFormatVersion = 1
)

// podCheckpoint is what a restarted runtime needs to keep running a pod
// before the agent calls SyncPod again: the spec it last saw.
type podCheckpoint struct {
	Version   int             `json:"version"`
	StartTime time.Time       `json:"startTime"`
	Pod       json.RawMessage `json:"pod"`             // protojson: metadata (uid, name, namespace) and spec
	Ports     map[int32]int32 `json:"ports,omitempty"` // declared container port → node port
}

// containerCheckpoint is written when a container starts and when it ends.
type containerCheckpoint struct {
	Version   int    `json:"version"`
	Container string `json:"container"`
	// SpecHash is processSpecHash of the spec the process was started with:
	// a later spec with another hash restarts the container.
	SpecHash string   `json:"specHash"`
	Command  []string `json:"command,omitempty"`
	// Running: PID was alive when this was written. A process is adopted
	// only if BootID, PID and StartTicks all match.
	Running    bool      `json:"running"`
	BootID     string    `json:"bootID,omitempty"`
	PID        int       `json:"pid,omitempty"`
	StartTicks uint64    `json:"startTicks,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	// Ready: the readiness probe passed (last written on its change).
	Ready bool `json:"ready,omitempty"`
	// RunID names the run; its shim writes it into the release marker.
	RunID string `json:"runID,omitempty"`
	// Held: written while the process was a holding shim not yet known
	// to be released. It ran the command only if the release marker holds
	// RunID; otherwise it never ran anything.
	Held bool `json:"held,omitempty"`

	RestartCount     int32        `json:"restartCount"`
	LastTermination  *termination `json:"lastTermination,omitempty"`
	PriorTermination *termination `json:"priorTermination,omitempty"`
}

// termination is how one run of a container ended.
type termination struct {
	ExitCode   int32     `json:"exitCode"`
	Signal     int32     `json:"signal,omitempty"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// StartError: the process never ran (the command could not be executed).
	StartError bool `json:"startError,omitempty"`
}

// failed is what OnFailure restarts on: a non-zero or unknown exit, a
// signal, or a failure to start.
func (t *termination) failed() bool {
	return t.ExitCode != 0 || t.Signal != 0 || t.StartError
}

func (t *termination) proto() *capstanv1.ContainerStateTerminated {
	if t == nil {
		return nil
	}
	return &capstanv1.ContainerStateTerminated{
		ExitCode:   t.ExitCode,
		Signal:     t.Signal,
		Reason:     t.Reason,
		Message:    t.Message,
		StartedAt:  timestampOrNil(t.StartedAt),
		FinishedAt: timestampOrNil(t.FinishedAt),
	}
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

func writePodCheckpoint(dir string, startTime time.Time, pod *capstanv1.Pod, ports map[int32]int32) error {
	saved := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{
			Uid:       pod.GetMetadata().GetUid(),
			Name:      pod.GetMetadata().GetName(),
			Namespace: pod.GetMetadata().GetNamespace(),
		},
		Spec: pod.GetSpec(),
	}
	raw, err := protojson.Marshal(saved)
	if err != nil {
		return fmt.Errorf("encode pod checkpoint: %w", err)
	}
	data, err := json.MarshalIndent(podCheckpoint{Version: checkpointFormatVersion, StartTime: startTime, Pod: raw, Ports: ports}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode pod checkpoint: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, podCheckpointFile), data); err != nil {
		return fmt.Errorf("write pod checkpoint: %w", err)
	}
	return nil
}

func readPodCheckpoint(dir string) (time.Time, *capstanv1.Pod, map[int32]int32, error) {
	data, err := os.ReadFile(filepath.Join(dir, podCheckpointFile))
	if err != nil {
		return time.Time{}, nil, nil, err
	}
	var cp podCheckpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return time.Time{}, nil, nil, fmt.Errorf("decode %s: %w", podCheckpointFile, err)
	}
	if cp.Version != checkpointFormatVersion {
		return time.Time{}, nil, nil, fmt.Errorf("%s: format version %d, want %d", podCheckpointFile, cp.Version, checkpointFormatVersion)
	}
	pod := &capstanv1.Pod{}
	if err := protojson.Unmarshal(cp.Pod, pod); err != nil {
		return time.Time{}, nil, nil, fmt.Errorf("decode pod in %s: %w", podCheckpointFile, err)
	}
	return cp.StartTime, pod, cp.Ports, nil
}

func containerCheckpointPath(podDir, container string) string {
	return filepath.Join(podDir, container+containerCheckpointExt)
}

func writeContainerCheckpoint(path string, cp *containerCheckpoint) error {
	cp.Version = checkpointFormatVersion
	data, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return fmt.Errorf("encode container checkpoint: %w", err)
	}
	if err := writeFileAtomic(path, data); err != nil {
		return fmt.Errorf("write container checkpoint: %w", err)
	}
	return nil
}

// readContainerCheckpoint returns nil, nil if there is none.
func readContainerCheckpoint(path string) (*containerCheckpoint, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var cp containerCheckpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	if cp.Version != checkpointFormatVersion {
		return nil, fmt.Errorf("%s: format version %d, want %d", filepath.Base(path), cp.Version, checkpointFormatVersion)
	}
	return &cp, nil
}
