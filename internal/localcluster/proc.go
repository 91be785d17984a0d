package localcluster

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procStat is what the runner reads from /proc/<pid>/stat (or a thread's
// /proc/<pid>/task/<tid>/stat).
type procStat struct {
	comm  string
	state byte
	pgid  int
	// startTicks is the start time in clock ticks after boot: with the pid
	// it identifies a process, as a later one with the same pid starts
	// later.
	startTicks uint64
}

// readProcStat parses a stat file of /proc.
func readProcStat(path string) (procStat, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may itself hold spaces and
	// parentheses: the other fields follow the last ')'.
	open, closing := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || closing < open {
		return procStat{}, fmt.Errorf("%s: no command name", path)
	}
	fields := strings.Fields(string(data[closing+1:]))
	// fields[0] is field 3 (state); pgrp is field 5, starttime field 22.
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("%s: %d fields", path, len(fields))
	}
	pgid, err := strconv.Atoi(fields[2])
	if err != nil {
		return procStat{}, fmt.Errorf("%s: pgrp: %w", path, err)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("%s: starttime: %w", path, err)
	}
	return procStat{comm: string(data[open+1 : closing]), state: fields[0][0], pgid: pgid, startTicks: ticks}, nil
}

// dead reports whether a process in this state has ended: a zombie (or
// one being reaped).
func (s procStat) dead() bool { return s.state == 'Z' || s.state == 'X' }

// CheckStopped reports whether every thread of the named process is
// stopped (state T in /proc): the effect of a SIGSTOP, which kill(2) only
// queues. nil means it is; the error says which thread is not, or that the
// process does not run (ErrNotRunning, wrapped).
func (c *Cluster) CheckStopped(name string) error {
	pid, err := c.Pid(name)
	if err != nil {
		return err
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("localcluster: %s: no threads of pid %d: %v", name, pid, err)
	}
	for _, task := range tasks {
		st, err := readProcStat(task)
		if err != nil {
			return fmt.Errorf("localcluster: %s: %w", name, err)
		}
		if st.state != 'T' {
			return fmt.Errorf("localcluster: %s: thread %s is in state %c, not stopped", name, task, st.state)
		}
	}
	return nil
}
