package maps

import (
	"fmt"
)

// Layout is one version of a map's key and value layout.
type Layout struct {
	KeySize, ValueSize uint32
	// Next converts an entry of this layout into the next version's; nil for the newest.
	Next func(key, value []byte) (newKey, newValue []byte)
}

// Layouts lists, per map, every layout the datapath has had that an upgrade can carry entries
// from, oldest first; the last is the current one. A map not listed has had one layout.
var Layouts = map[string][]Layout{
	// conntrack: version 2 added created (the first packet's time) after flags and pad;
	// version 3 added the reply direction's packets and bytes.
	ConntrackName: {
		{KeySize: 40, ValueSize: 32, Next: appendZeros(8)},
		{KeySize: 40, ValueSize: 40, Next: appendZeros(16)},
		{KeySize: 40, ValueSize: 56},
	},
}

// appendOnly are maps whose value only ever grows by fields added at its end, zero meaning
// unset: an entry of any older layout is carried by appending zeros. The config map is one
// (struct node_config: new fields go last), so the programs an upgrade switches to read the
// node's config from the first packet on, before the agent writes it again.
var appendOnly = map[string]bool{ConfigName: true}

// appendZeros converts a value by appending n zero bytes: for fields added at the end, whose
// zero means unknown.
func appendZeros(n int) func(k, v []byte) ([]byte, []byte) {
	return func(k, v []byte) ([]byte, []byte) {
		return k, append(append(make([]byte, 0, len(v)+n), v...), make([]byte, n)...)
	}
}

// Converter returns what turns an entry of map name, pinned with the given key and value
// sizes, into one of the current layout (keySize, valueSize): the identity when the layouts are
// the same (only the capacity or flags differ), a chain of Next steps from an older version, or
// an error when no upgrade path is known.
func Converter(name string, fromKey, fromValue, toKey, toValue uint32) (func(k, v []byte) ([]byte, []byte), error) {
	if fromKey == toKey && fromValue == toValue {
		return func(k, v []byte) ([]byte, []byte) { return k, v }, nil
	}
	if appendOnly[name] && fromKey == toKey && fromValue < toValue {
		return appendZeros(int(toValue - fromValue)), nil
	}
	versions := Layouts[name]
	for i, l := range versions {
		if l.KeySize != fromKey || l.ValueSize != fromValue {
			continue
		}
		steps := versions[i:]
		if last := steps[len(steps)-1]; last.KeySize != toKey || last.ValueSize != toValue {
			return nil, fmt.Errorf("map %s: the newest known layout (key %d, value %d bytes) is not the datapath's (key %d, value %d)",
				name, last.KeySize, last.ValueSize, toKey, toValue)
		}
		return func(k, v []byte) ([]byte, []byte) {
			for _, s := range steps[:len(steps)-1] {
				k, v = s.Next(k, v)
			}
			return k, v
		}, nil
	}
	return nil, fmt.Errorf("map %s: no known upgrade from a layout of key %d, value %d bytes to key %d, value %d",
		name, fromKey, fromValue, toKey, toValue)
}
