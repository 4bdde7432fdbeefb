// Package netnsfile handles network namespaces as files: open one by path, check that a
// descriptor is one, compare two. It needs nothing but x/sys/unix, so the CNI plugin, which
// opens the pod's namespace to pass it to the agent, can use it and stay small.
package netnsfile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Open opens the network namespace at path, refusing anything else (an unmounted bind target).
func Open(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	if err := Check(int(f.Fd())); err != nil {
		f.Close()
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return f, nil
}

// Check says why fd is not a network namespace, or nil when it is one.
func Check(fd int) error {
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	switch {
	case err != nil:
		return fmt.Errorf("not a namespace: %w", err)
	case typ != unix.CLONE_NEWNET:
		return errors.New("not a network namespace")
	}
	return nil
}

// Same says whether fd is the network namespace at path.
func Same(fd int, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat(path, &b); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Fstat(fd, &a); err != nil {
		return false, fmt.Errorf("stat netns: %w", err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}
