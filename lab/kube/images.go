package kube

import (
	"archive/tar"
	"bytes"
	"cmp"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// imageFile is one file or directory of an image's single layer.
type imageFile struct {
	name string // path inside the image, without the leading slash
	src  string // host file to copy; "" makes a directory (or, with link or data, a link or a file)
	link string // the target of a symbolic link
	data []byte // the contents of a file written from memory
	mode int64
}

// image is what BuildImages writes as one archive.
type image struct {
	ref        string // normalized name, as the CRI looks it up
	entrypoint []string
	files      []imageFile
	path       string // the containers' PATH; "" is /
}

// BuildImages writes the pause (PauseImage), echo (EchoImage, exe as /ebpfnet) and cluster DNS
// (CoreDNSImage, from the cached CoreDNS binary) images as
// docker archives `ctr images import` loads, into dir, reusing archives already built from the
// same content, and returns their paths. exe must be statically linked (CGO_ENABLED=0).
func BuildImages(dir, exe string) ([]string, error) {
	if err := checkStatic(exe); err != nil {
		return nil, err
	}
	pause, done, err := pauseIn(dir)
	if err != nil {
		return nil, err
	}
	defer done()
	dns, err := coreDNSImage()
	if err != nil {
		return nil, err
	}
	images := []image{
		dns,
		{ref: PauseImage, entrypoint: []string{"/pause"}, files: []imageFile{{name: "pause", src: pause, mode: 0o755}}},
		{ref: EchoImage, entrypoint: []string{"/ebpfnet"}, files: []imageFile{
			{name: "ebpfnet", src: exe, mode: 0o755},
			{name: "tmp", mode: 0o1777}, // for `lab serve --ready /tmp/ready`
		}},
	}
	return writeImages(dir, images)
}

// pauseIn makes dir and builds the pause program in a temporary directory inside it; done
// removes that directory.
func pauseIn(dir string) (pause string, done func(), err error) {
	if err := ensureDir(dir); err != nil {
		return "", nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".pause-")
	if err != nil {
		return "", nil, err
	}
	done = func() { os.RemoveAll(tmp) }
	pause = filepath.Join(tmp, "pause")
	if err := buildPause(pause); err != nil {
		done()
		return "", nil, err
	}
	return pause, done, nil
}

// checkStatic fails when exe is dynamically linked: a scratch image has no libc.
func checkStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("image: %s is dynamically linked: build it with CGO_ENABLED=0", exe)
		}
	}
	return nil
}

// writeImages writes each image's archive into dir and returns their paths.
func writeImages(dir string, images []image) ([]string, error) {
	var paths []string
	for _, img := range images {
		p, err := writeImage(dir, img)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.ref, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// writeImage writes img's archive as dir/<name>-<content hash>.tar unless that exists.
func writeImage(dir string, img image) (string, error) {
	layer, err := layerTar(img.files)
	if err != nil {
		return "", err
	}
	layerSum := sha256.Sum256(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config":       map[string]any{"Entrypoint": img.entrypoint, "Env": []string{"PATH=" + cmp.Or(img.path, "/")}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])}},
	})
	if err != nil {
		return "", err
	}
	configSum := sha256.Sum256(config)
	name := strings.NewReplacer("docker.io/", "", "/", "-", ":", "-").Replace(img.ref)
	path := filepath.Join(dir, name+"-"+hex.EncodeToString(configSum[:])[:16]+".tar")
	if _, err := os.Stat(path); err == nil {
		return path, nil // the config names the layer's hash: same config, same image
	}
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{img.ref}, "Layers": []string{layerName}}})
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, e := range []struct {
		name string
		data []byte
	}{{layerName, layer}, {configName, config}, {"manifest.json", manifest}} {
		if err := addFile(tw, e.name, 0o644, e.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// layerTar is the single layer holding files, reproducibly (fixed times and owners).
func layerTar(files []imageFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if f.link != "" {
			h := &tar.Header{Typeflag: tar.TypeSymlink, Name: f.name, Linkname: f.link, Mode: 0o777, ModTime: time.Unix(0, 0)}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		if f.data != nil {
			if err := addFile(tw, f.name, f.mode, f.data); err != nil {
				return nil, err
			}
			continue
		}
		if f.src == "" {
			h := &tar.Header{Typeflag: tar.TypeDir, Name: f.name + "/", Mode: f.mode, ModTime: time.Unix(0, 0)}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		if err := addFile(tw, f.name, f.mode, data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := io.Copy(tw, bytes.NewReader(data))
	return err
}

// errNoSource says the pause program's source was not found.
var errNoSource = errors.New("cannot find the ebpfnet source tree (lab/kube/pause) to build the pause image: run from the repository")
