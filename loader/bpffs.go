package loader

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// bpffsRoot is where bpffs is mounted when it is not yet.
const bpffsRoot = "/sys/fs/bpf"

var mountMu sync.Mutex

// MountBPFFS mounts bpffs at /sys/fs/bpf unless it is there already.
func MountBPFFS() error {
	mountMu.Lock()
	defer mountMu.Unlock()
	if onBPFFS(bpffsRoot) {
		return nil
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", bpffsRoot, err)
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

// ensurePinDir mounts bpffs if needed and makes dir, which must be on bpffs.
func ensurePinDir(dir string) error {
	if err := MountBPFFS(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make pin dir %s: %w", dir, err)
	}
	if !onBPFFS(dir) {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount -t bpf bpf DIR)", dir)
	}
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}
