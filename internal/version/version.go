// Package version holds the version every Capstan binary reports.
package version

// Version is stamped by `make build` (-ldflags -X ...Version=$(git describe));
// "dev" in a plain `go build`.
var Version = "dev"
