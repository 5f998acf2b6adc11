package rpc

// PendingCalls returns the number of calls waiting for a response.
func PendingCalls(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}
