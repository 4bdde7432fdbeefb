// Package namespace makes, enters and removes named network namespaces.
package namespace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn with the calling goroutine's thread in the network namespace at path, then
// returns the thread to where it was. An empty path runs fn where the caller already is.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	return DoHandle(target, fn)
}

// DoHandle is Do for an open namespace handle.
func DoHandle(target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	defer func() {
		// A thread we cannot move back is left locked, so the runtime retires it.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Dir is where named namespaces are bound, as `ip netns` does.
const Dir = "/var/run/netns"

// Path is where the namespace called name is bound.
func Path(name string) string { return filepath.Join(Dir, name) }

var prepareOnce sync.Once

// prepareDir makes /run/netns a shared bind mount of itself, as `ip netns add` does before its
// first namespace. Done first, a later `ip netns add` finds it ready and does not bind over it,
// which would hide (and strand) the namespaces made before.
func prepareDir() error {
	var err error
	prepareOnce.Do(func() {
		if err = os.MkdirAll(Dir, 0o755); err != nil {
			return
		}
		if unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "") == nil {
			return
		}
		if err = unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			err = fmt.Errorf("bind %s: %w", Dir, err)
			return
		}
		if err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			err = fmt.Errorf("make %s shared: %w", Dir, err)
		}
	})
	return err
}

// Create makes a named network namespace with loopback up, without moving the caller into it.
func Create(name string) (string, error) {
	if err := prepareDir(); err != nil {
		return "", err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		// NewNamed may fail after moving this thread into the new namespace: move it back
		// before the thread serves anything else, or retire it.
		if netns.Set(orig) != nil {
			runtime.LockOSThread()
		}
		return "", fmt.Errorf("make network namespace %s: %w", name, err)
	}
	defer h.Close()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if serr := netns.Set(orig); serr != nil {
		// This thread stays locked and is retired by the runtime.
		runtime.LockOSThread()
		return "", fmt.Errorf("leave network namespace %s: %w", name, serr)
	}
	if err != nil {
		return "", fmt.Errorf("bring up lo in %s: %w", name, err)
	}
	return Path(name), nil
}

// Delete removes a named namespace; one that does not exist is not an error.
func Delete(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete network namespace %s: %w", name, err)
	}
	return nil
}
