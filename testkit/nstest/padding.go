package nstest

import "io"

// YAMLPadding is size bytes of YAML comment lines, made as they are read: a huge document that
// costs its reader nothing to produce.
func YAMLPadding(size int) io.Reader { return &padding{left: size} }

type padding struct{ left int }

func (p *padding) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := min(len(b), p.left)
	for i := range n {
		b[i] = "# padding\n"[(p.left-i)%10]
	}
	p.left -= n
	return n, nil
}
