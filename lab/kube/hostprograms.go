package kube

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// hostPrograms are this host's programs as image files under the same paths, with every shared
// library each one loads (the dynamic loader included, copied: the image has no links between
// /lib and /usr/lib), so that they run in an image of their own.
func hostPrograms(paths ...string) ([]imageFile, error) {
	seen := map[string]bool{}
	var files []imageFile
	add := func(path string, mode int64) error {
		if seen[path] {
			return nil
		}
		seen[path] = true
		src, err := filepath.EvalSymlinks(path)
		if err != nil {
			return fmt.Errorf("host program: %w", err)
		}
		files = append(files, imageFile{name: strings.TrimPrefix(path, "/"), src: src, mode: mode})
		return nil
	}
	for _, p := range paths {
		if err := add(p, 0o755); err != nil {
			return nil, err
		}
		libs, err := sharedLibraries(p)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := add(l, 0o755); err != nil {
				return nil, err
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	return files, nil
}

// sharedLibraries lists the absolute paths ldd resolves for program; none for a static one.
func sharedLibraries(program string) ([]string, error) {
	if err := checkStatic(program); err == nil {
		return nil, nil
	}
	out, err := exec.Command("ldd", program).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", program, err)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
		for _, f := range strings.Fields(sc.Text()) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				break
			}
		}
		if strings.Contains(sc.Text(), "not found") {
			return nil, fmt.Errorf("ldd %s: %s", program, strings.TrimSpace(sc.Text()))
		}
	}
	return libs, nil
}

// busyboxApplets are links /bin/NAME -> busybox for every applet of the static busybox at
// path, but those a program in have already provides.
func busyboxApplets(path string, have []imageFile) ([]imageFile, error) {
	out, err := exec.Command(path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", path, err)
	}
	taken := map[string]bool{}
	for _, f := range have {
		taken[filepath.Base(f.name)] = true
	}
	var links []imageFile
	for _, a := range strings.Fields(string(out)) {
		if !taken[a] && a != "busybox" {
			links = append(links, imageFile{name: "bin/" + a, link: "busybox"})
		}
	}
	if len(links) == 0 {
		return nil, fmt.Errorf("%s lists no applets", path)
	}
	return links, nil
}
