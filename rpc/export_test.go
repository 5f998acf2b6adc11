package rpc

// PendingCalls returns the number of calls and broadcasts waiting for responses.
func PendingCalls(c *Client) int { return c.conn.responses.pending(c) }

// WithCreditWaitHook makes f hear when a stream's Send on the server is
// about to wait for credit, with the number of the message it waits to
// send.
func WithCreditWaitHook(f func(seq int64)) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.onCreditWait = f })
}
