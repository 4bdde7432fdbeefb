package maps

import (
	"bytes"
	"testing"
)

// The config map's value only grows at its end: an older entry is carried with zeros after
// it, whatever its size; a smaller one (a downgrade) is not.
func TestConfigCarriedByAppendingZeros(t *testing.T) {
	old := bytes.Repeat([]byte{7}, 44)
	conv, err := Converter(ConfigName, 4, 44, 4, 60)
	if err != nil {
		t.Fatal(err)
	}
	k, v := conv([]byte{0, 0, 0, 0}, old)
	if want := append(bytes.Repeat([]byte{7}, 44), make([]byte, 16)...); !bytes.Equal(v, want) || len(k) != 4 {
		t.Fatalf("carried as key %v value %v, want value %v", k, v, want)
	}
	if _, err := Converter(ConfigName, 4, 60, 4, 44); err == nil {
		t.Fatal("a config value shrinking from 60 to 44 bytes was carried")
	}
}
