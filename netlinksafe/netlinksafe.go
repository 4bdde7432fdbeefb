//go:build linux

// Package netlinksafe runs netlink dumps again when the kernel interrupted them: a dump that
// raced a change (an address or route added meanwhile) comes back flagged NLM_F_DUMP_INTR,
// which vishvananda/netlink reports as netlink.ErrDumpInterrupted beside a possibly partial
// result. Dumps of links, addresses, routes and neighbours go through here instead.
package netlinksafe

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// maxAttempts bounds the retries: an interrupted dump means the table changed under it, which
// a busy node does often but never forever.
const maxAttempts = 10

// retry runs dump until the kernel does not interrupt it, at most maxAttempts times.
func retry[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range maxAttempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	var zero T
	return zero, fmt.Errorf("netlink dump interrupted %d times in a row: %w", maxAttempts, err)
}

// Handle is a netlink handle (of a namespace) whose dumps are retried.
type Handle struct{ *netlink.Handle }

// NewHandle wraps h.
func NewHandle(h *netlink.Handle) Handle { return Handle{h} }

// LinkList is netlink.LinkList, retried.
func LinkList() ([]netlink.Link, error) { return retry(netlink.LinkList) }

// AddrList is netlink.AddrList, retried.
func AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	return retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, family) })
}

// RouteList is netlink.RouteList, retried.
func RouteList(link netlink.Link, family int) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return netlink.RouteList(link, family) })
}

// RouteListFiltered is netlink.RouteListFiltered, retried.
func RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return netlink.RouteListFiltered(family, filter, mask) })
}

// NeighList is netlink.NeighList, retried.
func NeighList(linkIndex, family int) ([]netlink.Neigh, error) {
	return retry(func() ([]netlink.Neigh, error) { return netlink.NeighList(linkIndex, family) })
}

// LinkList is (*netlink.Handle).LinkList, retried.
func (h Handle) LinkList() ([]netlink.Link, error) { return retry(h.Handle.LinkList) }

// AddrList is (*netlink.Handle).AddrList, retried.
func (h Handle) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	return retry(func() ([]netlink.Addr, error) { return h.Handle.AddrList(link, family) })
}

// RouteList is (*netlink.Handle).RouteList, retried.
func (h Handle) RouteList(link netlink.Link, family int) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return h.Handle.RouteList(link, family) })
}

// RouteListFiltered is (*netlink.Handle).RouteListFiltered, retried.
func (h Handle) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return h.Handle.RouteListFiltered(family, filter, mask) })
}

// NeighList is (*netlink.Handle).NeighList, retried.
func (h Handle) NeighList(linkIndex, family int) ([]netlink.Neigh, error) {
	return retry(func() ([]netlink.Neigh, error) { return h.Handle.NeighList(linkIndex, family) })
}
