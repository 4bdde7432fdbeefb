package main

import (
	"errors"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/maps"
)

// globals are the flags every subcommand shares.
type globals struct {
	pinDir  string
	output  string
	verbose bool
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ebpfnet",
		Short:         "ebpfnet: an eBPF pod-networking dataplane",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			if g.output != "table" && g.output != "json" {
				return usageError{errors.New(`-o must be "table" or "json"`)}
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.pinDir, "pin-dir", maps.DefaultPinDir, "where the datapath's maps and links are pinned")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", `output format: "table" or "json"`)
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	root.AddCommand(newDaemonCmd(g), newDatapathCmd(g), newMetricsCmd(g), newEndpointCmd(g), newNodeCmd(g), newPolicyCmd(g), newServiceCmd(g), newPrefilterCmd(g), newMonitorCmd(g), newCTCmd(g), newNATCmd(g), newBGPCmd(g), newIdentityCmd(g), newLabCmd(g), newEtcdCmd(), newCNICmd(), newImageCmd(), newUninstallCmd(g), newGenDocsCmd())
	return root
}

// usageError marks an error in how the command was called (exit 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}
