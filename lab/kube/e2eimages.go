package kube

import (
	"fmt"
	"path/filepath"
	"strings"
)

// E2EDir is where `build.sh e2e` puts the upstream e2e suite (e2e.test) and agnhost.
func E2EDir() string { return filepath.Join(CacheDir(), "kubernetes", Version, "e2e") }

// E2E image names, as e2e.test --list-images prints them, by what follows the registry.
const (
	e2eAgnhost   = "/e2e-test-images/agnhost:"
	e2eDNSUtils  = "/e2e-test-images/jessie-dnsutils:"
	e2eBusybox   = "/e2e-test-images/busybox:"
	e2ePauseName = "/pause:"
)

// Host programs the upstream images carry and the tests run in them (`sh -c`, curl, nc, dig):
// this host's, with their libraries, and a static busybox for the shell and the small tools.
const (
	hostBusybox = "/bin/busybox" // Debian's busybox-static
	hostCurl    = "/usr/bin/curl"
	hostDig     = "/usr/bin/dig" // Debian's bind9-dnsutils
	// hostGetent is glibc's getent (Debian's libc-bin): the DNS tests read names through the
	// resolver with `getent hosts`, /etc/hosts first. This glibc has its files and dns sources
	// built in, so getent needs no NSS module beside it, only nsswitch.conf.
	hostGetent = "/usr/bin/getent"
	// hostNetcat is OpenBSD's netcat, as upstream's agnhost has it: the tests run `nc -v -t -w 2`
	// and `nc -z`, which busybox's small nc refuses. The image calls it nc.
	hostNetcat = "/bin/nc.openbsd"
	// hostShell is the image's /bin/sh: busybox's own shell runs its applets before anything in
	// PATH (so its nc, whatever /bin/nc is), dash looks in PATH.
	hostShell = "/bin/dash"
)

// toolsPath is the PATH of the images with tools.
const toolsPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

// nsswitch is the tool images' /etc/nsswitch.conf: names from /etc/hosts (which kubelet writes)
// first, then DNS, as in upstream's Debian-based images.
var nsswitch = imageFile{name: "etc/nsswitch.conf", data: []byte("hosts: files dns\n"), mode: 0o644}

// toolNames are the names the images give some host programs.
var toolNames = map[string]string{hostNetcat: "bin/nc", hostShell: "bin/sh"}

// BuildE2EImages writes, into dir, the images among refs (e2e.test --list-images) that the
// sig-network suites run and no registry gives this machine, under the names the suite asks
// for: agnhost (from E2EDir, with a shell, curl, nc, dig and getent as upstream's has them),
// jessie-dnsutils (a shell, getent and dig), busybox, and pause (the lab's). It returns their
// archives, for ImportImages on every node.
func BuildE2EImages(dir string, refs []string) ([]string, error) {
	agnhost := filepath.Join(E2EDir(), "agnhost")
	if err := checkStatic(agnhost); err != nil {
		return nil, fmt.Errorf("%w: run lab/kube/build.sh e2e (make conformance does)", err)
	}
	pause, done, err := pauseIn(dir)
	if err != nil {
		return nil, err
	}
	defer done()
	var images []image
	for _, ref := range refs {
		var files []imageFile
		var entry []string
		switch {
		case strings.Contains(ref, e2eAgnhost):
			if files, err = toolFiles(hostCurl, hostDig, hostNetcat); err != nil {
				return nil, err
			}
			files, entry = append(files, imageFile{name: "agnhost", src: agnhost, mode: 0o755}), []string{"/agnhost"}
		case strings.Contains(ref, e2eDNSUtils):
			if files, err = toolFiles(hostDig); err != nil {
				return nil, err
			}
			entry = []string{"/bin/sh"}
		case strings.Contains(ref, e2eBusybox):
			if files, err = toolFiles(); err != nil {
				return nil, err
			}
			entry = []string{"/bin/sh"}
		case strings.Contains(ref, e2ePauseName):
			files, entry = []imageFile{{name: "pause", src: pause, mode: 0o755}}, []string{"/pause"}
		default:
			continue
		}
		img := image{ref: ref, entrypoint: entry, files: files}
		if len(files) > 1 {
			img.path = toolsPath
		}
		images = append(images, img)
	}
	if len(images) < 2 {
		return nil, fmt.Errorf("e2e images: found no agnhost or pause among %d images e2e.test named", len(refs))
	}
	return writeImages(dir, images)
}

// toolFiles are the files of an image with a shell, busybox's small tools, getent and programs,
// each host program with its libraries and under the name the image gives it.
func toolFiles(programs ...string) ([]imageFile, error) {
	files, err := hostPrograms(append([]string{hostBusybox, hostShell, hostGetent}, programs...)...)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if name, ok := toolNames["/"+f.name]; ok {
			files = append(files, imageFile{name: name, link: filepath.Base(f.name)})
		}
	}
	applets, err := busyboxApplets(hostBusybox, files)
	if err != nil {
		return nil, err
	}
	return append(append(files, applets...), nsswitch, imageFile{name: "tmp", mode: 0o1777}), nil
}
