package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/maps"
)

// migration carries a pinned map whose layout or capacity differs from the new datapath's
// into a new map: made and filled before the new programs load, pinned in place of the old
// one only once every link runs the new programs. If anything fails before that, the new map
// is dropped and the old pin, and the programs using it, stay as they were.
type migration struct {
	name string
	path string
	old  *ebpf.Map
	new  *ebpf.Map
	// convert turns an old entry into a new one; nil: the map starts empty (its entries are
	// rewritten by the agent at start, or are counters and events).
	convert  func(k, v []byte) ([]byte, []byte)
	from, to string // the layouts, for logs and errors
	copied   int
}

// startEmpty are maps whose entries are not carried across a layout change: the ring buffer
// holds events in flight; a per-CPU map's counters (or scratch space) restart.
func startEmpty(ms *ebpf.MapSpec) bool {
	return ms.Type == ebpf.RingBuf || ms.Type == ebpf.PerCPUArray || ms.Type == ebpf.PerCPUHash
}

func describe(t ebpf.MapType, key, value, max, flags uint32) string {
	return fmt.Sprintf("%s key %d value %d max %d flags %#x", t, key, value, max, flags)
}

// planMigrations opens every pinned map whose layout differs from spec's and makes, and fills,
// its replacement. A map no known upgrade leads from is refused, nothing changed.
func planMigrations(spec *ebpf.CollectionSpec, pinDir string) (ms []*migration, err error) {
	defer func() {
		if err != nil {
			discard(ms)
			ms = nil
		}
	}()
	for _, name := range maps.Names {
		s := spec.Maps[name]
		path := maps.PinPath(pinDir, name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		old, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return ms, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		info, err := old.Info()
		if err != nil {
			old.Close()
			return ms, fmt.Errorf("read pinned map %s: %w", path, err)
		}
		if info.Type == s.Type && info.KeySize == s.KeySize && info.ValueSize == s.ValueSize &&
			info.MaxEntries == s.MaxEntries && info.Flags == s.Flags {
			old.Close()
			continue
		}
		m := &migration{name: name, path: path, old: old,
			from: describe(info.Type, info.KeySize, info.ValueSize, info.MaxEntries, info.Flags),
			to:   describe(s.Type, s.KeySize, s.ValueSize, s.MaxEntries, s.Flags)}
		ms = append(ms, m)
		if !startEmpty(s) {
			if info.Type != s.Type {
				return ms, fmt.Errorf("pinned map %s is a %s, the datapath wants a %s: no upgrade converts between map types; uninstall the old datapath or use another pin dir",
					path, info.Type, s.Type)
			}
			if m.convert, err = maps.Converter(name, info.KeySize, info.ValueSize, s.KeySize, s.ValueSize); err != nil {
				return ms, fmt.Errorf("pinned map %s: %w; uninstall the old datapath or use another pin dir", path, err)
			}
		}
		ns := s.Copy()
		ns.Pinning = ebpf.PinNone
		if m.new, err = ebpf.NewMap(ns); err != nil {
			return ms, fmt.Errorf("make %s of the new layout (%s): %w", name, m.to, err)
		}
		if m.convert != nil {
			if err := m.fill(false); err != nil {
				return ms, err
			}
		}
	}
	return ms, nil
}

// fill copies the old map's entries into the new one, converted; with missingOnly it adds only
// keys the new map lacks (a catch-up pass over what the old programs wrote since).
func (m *migration) fill(missingOnly bool) error {
	info, err := m.old.Info()
	if err != nil {
		return err
	}
	k, v := make([]byte, info.KeySize), make([]byte, info.ValueSize)
	probe := make([]byte, m.new.ValueSize())
	it := m.old.Iterate()
	for it.Next(&k, &v) {
		nk, nv := m.convert(k, v)
		if missingOnly && m.new.Lookup(nk, probe) == nil {
			continue
		}
		if err := m.new.Put(nk, nv); err != nil {
			return fmt.Errorf("carry %s into its new layout: entry %d of %d: %w (is the new size, %d, too small?)",
				m.name, m.copied+1, countKeys(m.old), err, m.new.MaxEntries())
		}
		m.copied++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned %s: %w", m.name, err)
	}
	return nil
}

func countKeys(m *ebpf.Map) int {
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	n := 0
	for it := m.Iterate(); it.Next(&k, &v); {
		n++
	}
	return n
}

// replacements are the new maps LoadAndAssign takes instead of opening the old pins.
func replacements(ms []*migration) map[string]*ebpf.Map {
	if len(ms) == 0 {
		return nil
	}
	out := map[string]*ebpf.Map{}
	for _, m := range ms {
		out[m.name] = m.new
	}
	return out
}

// commit finishes migrations once no program uses the old maps any more: entries the old
// programs added since the first copy are carried too, then the new map takes the old pin.
func commit(ms []*migration) error {
	var errs []error
	for _, m := range ms {
		if m.convert != nil {
			if err := m.fill(true); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := os.Remove(m.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s of the old layout: %w", m.path, err))
			continue
		}
		if err := m.new.Pin(m.path); err != nil {
			errs = append(errs, fmt.Errorf("pin %s of the new layout: %w", m.path, err))
			continue
		}
		slog.Info("migrated pinned map", "map", m.name, "entries", m.copied, "from", m.from, "to", m.to)
		m.old.Close()
		m.new.Close() // the datapath holds its own handle
		m.old, m.new = nil, nil
	}
	if len(errs) > 0 {
		return fmt.Errorf("finish map migrations: %w", errors.Join(errs...))
	}
	return nil
}

// discard drops migrations that will not happen: the new maps go, the old pins stay.
func discard(ms []*migration) {
	for _, m := range ms {
		if m.new != nil {
			m.new.Close()
		}
		if m.old != nil {
			m.old.Close()
		}
	}
}

func migrationNames(ms []*migration) string {
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	return strings.Join(names, ", ")
}
