package rpc

// PendingCalls returns the number of calls and broadcasts waiting for responses.
func PendingCalls(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) + len(c.broadcasts)
}
