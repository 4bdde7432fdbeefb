package store

import (
	"context"
	"strings"
	"sync"
)

// Fanout hands changes to the watches registered on it, each under its prefix: the part of
// Watch that every backend shares. The zero value is ready to use.
type Fanout struct {
	mu      sync.Mutex
	watches map[*fanoutWatch]struct{}
}

type fanoutWatch struct {
	prefix string
	ch     chan Event
	ctx    context.Context
}

// Watch registers a watch under prefix until ctx ends. Its empty-keyed live event comes first
// when live is nil, or once live is closed (a backend still filling its caches).
func (f *Fanout) Watch(ctx context.Context, prefix string, live <-chan struct{}) <-chan Event {
	w := &fanoutWatch{prefix: prefix, ch: make(chan Event, 256), ctx: ctx}
	if live == nil {
		w.ch <- Event{} // live from here: registration below happens before any later change
	}
	f.mu.Lock()
	if f.watches == nil {
		f.watches = map[*fanoutWatch]struct{}{}
	}
	f.watches[w] = struct{}{}
	f.mu.Unlock()
	go func() {
		if live != nil {
			select {
			case <-live:
				f.send(w, Event{})
			case <-ctx.Done():
			}
		}
		<-ctx.Done()
		f.mu.Lock()
		delete(f.watches, w)
		close(w.ch)
		f.mu.Unlock()
	}()
	return w.ch
}

// Notify hands ev to every watch whose prefix it falls under. A full buffer already holds
// events that will make its reader look again, so ev is dropped there: watches coalesce.
func (f *Fanout) Notify(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watches {
		if strings.HasPrefix(ev.Key, w.prefix) && w.ctx.Err() == nil {
			f.sendLocked(w, ev)
		}
	}
}

func (f *Fanout) send(w *fanoutWatch, ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.ctx.Err() == nil {
		f.sendLocked(w, ev)
	}
}

func (f *Fanout) sendLocked(w *fanoutWatch, ev Event) {
	select {
	case w.ch <- ev:
	default:
	}
}
