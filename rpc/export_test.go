package rpc

// PendingCalls returns the number of calls and broadcasts waiting for responses.
func PendingCalls(c *Client) int { return c.conn.responses.pending(c) }
