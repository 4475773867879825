package testkit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ClientBalancer is a client-side balancer over the addresses (host:port)
// of several gateway replicas, as a client configured with all of them
// (Balancer is a load balancer in front of them instead): a request goes
// to the address its URL names, and when that attempt fails (no
// connection, a reset, no whole answer within the attempt timeout) it is
// sent again to the next address. An address that failed is tried last
// for a while (cool), so the client does not wait on a dead or stopped
// replica for every request. A request is sent again only when its body
// can be read again (http.NewRequest with a bytes.Reader sets GetBody).
//
// It is an http.RoundTripper; Client wraps it.
type ClientBalancer struct {
	addrs   []string
	attempt time.Duration
	cool    time.Duration
	tr      *http.Transport

	failovers atomic.Int64

	mu     sync.Mutex           // guards failed
	failed map[string]time.Time // address -> its last failed attempt
}

// NewClientBalancer balances over addrs; attempt bounds one attempt, its
// answer's body included (0: no bound).
func NewClientBalancer(addrs []string, attempt time.Duration) *ClientBalancer {
	return &ClientBalancer{addrs: addrs, attempt: attempt, cool: 2 * time.Second,
		tr: &http.Transport{MaxIdleConnsPerHost: 64}, failed: map[string]time.Time{}}
}

// Client is an http.Client over the balancer with an overall timeout.
func (b *ClientBalancer) Client(timeout time.Duration) *http.Client {
	return &http.Client{Transport: b, Timeout: timeout}
}

// Failovers counts the attempts sent again to another address.
func (b *ClientBalancer) Failovers() int { return int(b.failovers.Load()) }

// CloseIdleConnections closes the idle connections of every address.
func (b *ClientBalancer) CloseIdleConnections() { b.tr.CloseIdleConnections() }

// order is host first, then the other addresses, with those that failed
// within cool moved to the end.
func (b *ClientBalancer) order(host string) []string {
	out := []string{host}
	for _, a := range b.addrs {
		if a != host {
			out = append(out, a)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	bad := func(a string) bool { t, ok := b.failed[a]; return ok && now.Sub(t) < b.cool }
	slices.SortStableFunc(out, func(x, y string) int {
		bx, by := bad(x), bad(y)
		switch {
		case bx == by:
			return 0
		case bx:
			return 1
		default:
			return -1
		}
	})
	return out
}

// RoundTrip sends req to its address, and on failure to the others.
func (b *ClientBalancer) RoundTrip(req *http.Request) (*http.Response, error) {
	var last error
	for i, addr := range b.order(req.URL.Host) {
		if i > 0 {
			if req.Body != nil && req.GetBody == nil {
				break
			}
			b.failovers.Add(1)
		}
		r := req.Clone(req.Context())
		r.URL.Host, r.Host = addr, ""
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			r.Body = body
		}
		ctx, cancel := req.Context(), context.CancelFunc(func() {})
		if b.attempt > 0 {
			ctx, cancel = context.WithTimeout(ctx, b.attempt)
		}
		resp, err := b.tr.RoundTrip(r.WithContext(ctx))
		if err == nil {
			resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
			return resp, nil
		}
		cancel()
		if req.Context().Err() != nil {
			return nil, err
		}
		last = fmt.Errorf("%s: %w", addr, err)
		b.mu.Lock()
		b.failed[addr] = time.Now()
		b.mu.Unlock()
	}
	return nil, last
}

// cancelBody ends its attempt's context once the body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
