package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/maps"
)

// Uninstall detaches every pinned link and removes every pin the datapath made under pinDir,
// then pinDir itself if nothing else is left in it; in the calling thread's network namespace
// it deletes the datapath's tc filters from pods' veths, and each veth's clsact qdisc when
// nothing else is left on it. It is idempotent.
func Uninstall(pinDir string) error {
	errs := []error{removeFilters(pinDir)}
	entries, err := os.ReadDir(LinksDir(pinDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list pinned links: %w", err))
	}
	for _, e := range entries {
		errs = append(errs, removeLink(filepath.Join(LinksDir(pinDir), e.Name())))
	}
	errs = append(errs, removeIfEmpty(LinksDir(pinDir)))
	for _, name := range maps.Names {
		if err := os.Remove(maps.PinPath(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pinned map %s: %w", name, err))
		}
	}
	errs = append(errs, removeIfEmpty(pinDir))
	return errors.Join(errs...)
}

func removeIfEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(entries) > 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}
