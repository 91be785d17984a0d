package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildBinaries builds services/<name> (or, for a workload such as echo,
// deploy/workloads/<name>) of this module for each name into dir, static
// like the release binaries, so a test runs the real programs without
// depending on `make build` having run. It runs `go build` from the
// module root, found by `go env GOMOD` from the working directory (a test's
// package directory). Cancelling ctx kills the build.
func BuildBinaries(ctx context.Context, dir string, names ...string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("localcluster: build: %w", err)
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("localcluster: build: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return errors.New("localcluster: build: not inside a Go module")
	}
	root := filepath.Dir(gomod)
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, name := range names {
		pkg := "./" + filepath.Join("services", name)
		if _, err := os.Stat(filepath.Join(root, pkg, "main.go")); err != nil {
			pkg = "./" + filepath.Join("deploy", "workloads", name)
			if _, wlErr := os.Stat(filepath.Join(root, pkg, "main.go")); wlErr != nil {
				return fmt.Errorf("localcluster: build %s: neither a service nor a workload: %w", name, err)
			}
		}
		args = append(args, pkg)
	}
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("localcluster: go build %s: %w\n%s", strings.Join(names, " "), err, out)
	}
	return nil
}

// BinDirEnv names a directory of prebuilt binaries for tests: `make test`
// sets it to bin/ after `make build`, so the tests run the very binaries
// the images are made from and need not build them again.
const BinDirEnv = "CAPSTAN_BIN_DIR"

// FindOrBuildBinaries returns a directory holding every named binary:
// $CAPSTAN_BIN_DIR when it has them all, else buildDir after building them
// there (BuildBinaries). A test passes t.TempDir() as buildDir and skips
// when this fails.
func FindOrBuildBinaries(ctx context.Context, buildDir string, names ...string) (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		found := true
		for _, name := range names {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				found = false
				break
			}
		}
		if found {
			return filepath.Abs(dir)
		}
	}
	if err := BuildBinaries(ctx, buildDir, names...); err != nil {
		return "", err
	}
	return buildDir, nil
}
