package agent

// Validate checks c as the agent does at start (defaults filled, every field checked), without
// starting anything: the error names the field, as `ebpfnet daemon` would print it.
func (c Config) Validate() error {
	_, err := c.validate()
	return err
}
