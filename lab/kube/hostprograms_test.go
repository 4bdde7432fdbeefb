package kube

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// The tools the upstream suites run in their pods work from their image alone: the layer is
// unpacked into an empty directory and each tool runs chrooted there, so a library ldd missed
// or a link gone wrong fails here, not in a pod.
func TestE2EToolsRunInTheirImage(t *testing.T) {
	nstest.RequireRoot(t)
	files, err := toolFiles(hostCurl, hostDig, hostNetcat)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layerTar(files)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	untar(t, layer, root)
	// kubelet writes each pod's /etc/hosts; the DNS tests read it with getent.
	if err := os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte("10.1.2.3 pod-1.svc.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"/bin/sh", "-c", "echo shell ok"},
		{"/usr/bin/curl", "--version"},
		{"/usr/bin/dig", "-v"},
		{"/bin/sh", "-c", "nc -h 2>&1 | grep -q OpenBSD && nc -z -w 1 -v 127.0.0.1 1 2>&1 | grep -q refused"},
		{"/bin/seq", "1", "2"},
		{"/bin/sh", "-c", `test "$(getent hosts pod-1.svc.example)" = "10.1.2.3        pod-1.svc.example"`},
		{"/bin/sh", "-c", "! getent hosts not-in-hosts.invalid"},
	} {
		c := exec.Command("chroot", append([]string{root}, cmd...)...)
		c.Env = []string{"PATH=" + toolsPath}
		out, err := c.CombinedOutput()
		if err != nil {
			t.Errorf("%s in the image: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	// Without its libraries curl does not run: the check above can fail.
	os.Remove(filepath.Join(root, "lib64", "ld-linux-x86-64.so.2"))
	if out, err := exec.Command("chroot", root, "/usr/bin/curl", "--version").CombinedOutput(); err == nil {
		t.Errorf("curl ran without its dynamic loader: %s", out)
	}
}

// untar unpacks a layer as containerd would: parents made, links kept.
func untar(t *testing.T, layer []byte, root string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, h.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode))
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		default:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, os.FileMode(h.Mode))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
