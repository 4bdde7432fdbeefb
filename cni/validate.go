package cni

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// MaxConfBytes bounds the network configuration on stdin: a conflist's plugin entry, with the
// runtime's additions (runtimeConfig, prevResult, the attachments GC keeps), is a few KiB.
const MaxConfBytes = 1 << 20

// ReadConf reads the network configuration from r, refusing one over MaxConfBytes (code 7)
// without reading further.
func ReadConf(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxConfBytes+1))
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("read the network configuration: %v", err), "")
	}
	if len(data) > MaxConfBytes {
		return nil, tooLarge()
	}
	return data, nil
}

func tooLarge() error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("the network configuration is over %d KiB", MaxConfBytes>>10), "")
}

// checkArgs applies the CNI spec's rules to the runtime's variables before the agent is asked
// anything: code 4 (invalid environment variables), one line naming the variable. ADD and
// CHECK need CNI_NETNS to be a network namespace's file; DEL takes a namespace that is gone.
func checkArgs(args *skel.CmdArgs, netnsRequired bool) error {
	bad := func(name string, err error) error {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("%s %v", name, err), "")
	}
	if err := agentapi.CheckContainerID(args.ContainerID); err != nil {
		return bad("CNI_CONTAINERID", err)
	}
	if err := agentapi.CheckIfName(args.IfName); err != nil {
		return bad("CNI_IFNAME", err)
	}
	if args.Netns == "" && !netnsRequired {
		return nil
	}
	if err := agentapi.CheckNetnsPath(args.Netns); err != nil {
		return bad("CNI_NETNS", err)
	}
	// A namespace is an nsfs file, which stat calls regular; anything else (a pipe, a device, a
	// directory) is refused before it is opened, as opening a pipe would wait for a writer.
	fi, err := os.Stat(args.Netns)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !netnsRequired:
		return nil
	case err != nil:
		return bad("CNI_NETNS", err)
	case !fi.Mode().IsRegular():
		return bad("CNI_NETNS", fmt.Errorf("%s is a %s, not a network namespace", args.Netns, fileKind(fi.Mode())))
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}
