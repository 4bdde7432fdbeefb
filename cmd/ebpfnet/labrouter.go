package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/lab"
)

// newLabBirdcCmd is `lab birdc -- ARGS…`: birdc on the control socket of the lab's BGP router.
func newLabBirdcCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "birdc -- ARGS...",
		Short: "run birdc against the lab's BGP router (e.g. -- show protocols, -- show route)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			out, err := st.Birdc(cmd.Context(), args...)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
}

// printRouter tells where a lab's BGP router is, if it has one.
func printRouter(w io.Writer, st *lab.State) {
	r := st.Router
	if r == nil {
		return
	}
	var legs []string
	for _, l := range r.Legs {
		legs = append(legs, fmt.Sprintf("%s on %s", l.Address.Addr(), l.Bridge))
	}
	fmt.Fprintf(w, "\nrouter: BIRD in %s (%s), socket %s: ebpfnet lab birdc --name %s -- show protocols\n",
		r.Netns, strings.Join(legs, ", "), r.Socket, st.Name)
}
