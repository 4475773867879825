package jobs

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/config"
)

// Webhook limits that configuration does not expose.
const (
	// maxWebhookResponse is how much of a receiver's answer is read.
	maxWebhookResponse = 64 << 10
	// maxWebhookBackoff caps the delay between two attempts.
	maxWebhookBackoff = 5 * time.Minute
	// maxDeliveryLog bounds the attempts a job's status lists.
	maxDeliveryLog = 20
)

// outboundClient makes the requests whose address a caller chose
// (webhook deliveries, image parameters given as URLs) under the SSRF
// rules: only allowed hosts; loopback, link-local, private and other
// special addresses only when the host is listed literally; no redirects;
// short timeouts.
type outboundClient struct {
	key        string // the allowed_hosts key, for messages
	allowed    []string
	secret     []byte
	defaultURL string
	timeout    time.Duration
	retryFor   time.Duration
	attempts   int
	client     *http.Client
}

// ctxKeyLiteral marks a delivery whose host is listed literally in
// allowed_hosts (it may resolve to an internal address).
type ctxKeyLiteral struct{}

func newWebhookClient(c config.Webhooks) *outboundClient {
	w := &outboundClient{
		key:        "webhooks.allowed_hosts",
		allowed:    c.AllowedHosts,
		secret:     webhookSecret(c.Secret),
		defaultURL: c.DefaultURL,
		timeout:    c.Timeout,
		retryFor:   c.RetryFor,
		attempts:   c.MaxAttempts,
	}
	dialer := &net.Dialer{Timeout: c.Timeout}
	tr := &http.Transport{
		Proxy:                 nil, // never through an environment proxy: the address check is on the real peer
		MaxIdleConns:          16,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   c.Timeout,
		ResponseHeaderTimeout: c.Timeout,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := *dialer
			literal, _ := ctx.Value(ctxKeyLiteral{}).(bool)
			d.Control = func(_, address string, _ syscall.RawConn) error { return guardAddr(address, literal, w.key) }
			return d.DialContext(ctx, network, addr)
		},
	}
	w.client = &http.Client{
		Transport: tr,
		Timeout:   c.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return w
}

// guardAddr refuses to connect a webhook to an internal address unless
// its host was listed literally. It runs on the address actually dialled,
// after name resolution, so a name that resolves (or rebinds) to an
// internal address is caught.
func guardAddr(address string, literal bool, key string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("unexpected address %q", address)
	}
	if internalAddr(ap.Addr()) && !literal {
		return fmt.Errorf("%s is an internal address; list the host literally in %s to allow it", ap.Addr(), key)
	}
	return nil
}

// webhookSecret decodes a Standard Webhooks secret ("whsec_" + base64);
// any other string is used as its bytes.
func webhookSecret(s string) []byte {
	if rest, ok := strings.CutPrefix(s, "whsec_"); ok {
		if b, err := base64.StdEncoding.DecodeString(rest); err == nil {
			return b
		}
	}
	return []byte(s)
}

// internalAddr reports addresses a webhook may reach only when allowed
// literally: loopback, private, link-local, unspecified, multicast, CGNAT
// and the IPv4-mapped forms of those.
func internalAddr(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() ||
		netip.MustParsePrefix("100.64.0.0/10").Contains(a) || netip.MustParsePrefix("0.0.0.0/8").Contains(a)
}

// check validates a webhook URL at submission: http(s), an allowed host,
// no credentials; an internal IP literal only when listed literally.
func (w *outboundClient) check(raw string) error {
	_, err := w.allow(raw)
	return err
}

// allow checks raw and reports whether its host is listed literally.
func (w *outboundClient) allow(raw string) (literal bool, err error) {
	if len(w.allowed) == 0 {
		return false, fmt.Errorf("off: no %s configured", w.key)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false, fmt.Errorf("%q is not an http(s) URL", raw)
	}
	if u.User != nil {
		return false, errors.New("credentials in the URL are not allowed")
	}
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	matched := false
	for _, pat := range w.allowed {
		pat = strings.ToLower(pat)
		ph, pp := pat, ""
		if h, p, err := net.SplitHostPort(pat); err == nil {
			ph, pp = h, p
		}
		if pp != "" && pp != port {
			continue
		}
		if suffix, ok := strings.CutPrefix(ph, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				matched = true
			}
			continue
		}
		if strings.Trim(ph, "[]") == host {
			matched, literal = true, true
			break
		}
	}
	if !matched {
		return false, fmt.Errorf("host %q is not in %s", host, w.key)
	}
	if a, err := netip.ParseAddr(host); err == nil && internalAddr(a) && !literal {
		return false, fmt.Errorf("%s is an internal address", host)
	}
	return literal, nil
}

// webhookState is a job's webhook and its delivery log. Guarded by
// engine.jobsMu.
type webhookState struct {
	url       string
	progress  bool     // the non-terminal events go too (once each, newest first)
	id        string   // webhook-id of the delivery
	event     jobEvent // the terminal event being delivered
	started   bool
	delivered bool
	gaveUp    bool
	log       []deliveryView
}

// deliveryView is one delivery attempt in a job's status.
type deliveryView struct {
	Attempt    int       `json:"attempt"`
	At         time.Time `json:"at"`
	StatusCode int       `json:"status_code,omitempty"`
	Error      string    `json:"error,omitempty"`
	DurationMS int64     `json:"duration_ms"`
}

// webhookView is the webhook part of a job's status.
type webhookView struct {
	URL        string         `json:"url"`
	ID         string         `json:"webhook_id,omitempty"`
	Status     string         `json:"status"` // waiting, delivering, delivered, failed
	Deliveries []deliveryView `json:"deliveries"`
}

func (w *webhookState) view() *webhookView {
	if w == nil {
		return nil
	}
	v := &webhookView{URL: w.url, Status: "waiting", Deliveries: append([]deliveryView{}, w.log...)}
	switch {
	case w.delivered:
		v.Status = "delivered"
	case w.gaveUp:
		v.Status = "failed"
	case w.started:
		v.Status = "delivering"
	}
	if w.started {
		v.ID = w.id
	}
	return v
}

// webhookID is the stable id of an event's delivery: the same on every
// attempt, so the receiver can drop duplicates.
func webhookID(jobID string, ev jobEvent) string {
	return "msg_" + jobID + "_" + strconv.Itoa(ev.id)
}

// webhookPayload is what a receiver gets: Standard Webhooks' envelope
// with the event as data.
func webhookPayload(ev jobEvent) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"type":"job.%s","timestamp":%q,"data":%s}`, ev.typ, ev.at.UTC().Format(time.RFC3339Nano), ev.data)
	return b.Bytes()
}

// sign returns the webhook-signature header value for a delivery.
func (w *outboundClient) sign(id string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, w.secret)
	fmt.Fprintf(m, "%s.%d.", id, ts)
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// deliver sends a job's terminal event to its webhook until a 2xx answer,
// retrying with exponential backoff and full jitter for at most
// webhooks.max_attempts attempts within webhooks.retry_for. Runs on its
// own goroutine (Service.goLocked).
func (s *delivery) deliver(j *job, ev jobEvent) {
	w := s.hooks
	s.eng.lock()
	target := j.webhook.url
	s.eng.unlock()
	id := webhookID(j.id, ev)
	body := webhookPayload(ev)
	deadline := s.eng.timeNow().Add(w.retryFor)
	for attempt := 1; ; attempt++ {
		start := s.eng.timeNow()
		code, err := w.post(s.ctx, target, id, body)
		d := deliveryView{Attempt: attempt, At: start.UTC(), StatusCode: code, DurationMS: s.eng.timeNow().Sub(start).Milliseconds()}
		ok := err == nil && code >= 200 && code < 300
		if err != nil {
			d.Error = err.Error()
		} else if !ok {
			d.Error = fmt.Sprintf("status %d", code)
		}
		backoff := min(s.webhookBackoff<<min(attempt-1, 20), maxWebhookBackoff)
		backoff = backoff/2 + rand.N(backoff/2+1) // jitter: half fixed, half random
		last := ok || attempt >= w.attempts || s.eng.timeNow().Add(backoff).After(deadline) || s.ctx.Err() != nil
		switch {
		case ok:
			s.m.WebhookAttempt("delivered")
		case last:
			s.m.WebhookAttempt("gave_up")
		default:
			s.m.WebhookAttempt("retry")
		}
		s.eng.lock()
		if len(j.webhook.log) >= maxDeliveryLog {
			j.webhook.log = append(j.webhook.log[:0], j.webhook.log[1:]...)
		}
		j.webhook.log = append(j.webhook.log, d)
		j.webhook.delivered = ok
		j.webhook.gaveUp = !ok && last
		j.notifyLocked()
		s.eng.unlock()
		if ok {
			return
		}
		if last {
			s.log.Warn("webhook delivery failed", "job_id", j.id, "attempts", attempt, "err", d.Error)
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return
		}
	}
}

// post makes one delivery attempt and returns the receiver's status.
func (w *outboundClient) post(ctx context.Context, target, id string, body []byte) (int, error) {
	literal, err := w.allow(target)
	if err != nil {
		return 0, err
	}
	ctx = context.WithValue(ctx, ctxKeyLiteral{}, literal)
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "comfygate-webhook")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", w.sign(id, ts, body))
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxWebhookResponse))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// newImageClient returns the client that downloads image parameters given
// as URLs, under the same rules as webhooks with image_urls' hosts.
func newImageClient(c config.ImageURLs) *outboundClient {
	w := newWebhookClient(config.Webhooks{AllowedHosts: c.AllowedHosts, Timeout: c.Timeout})
	w.key = "image_urls.allowed_hosts"
	return w
}

// get downloads raw (an allowed URL), at most limit bytes.
func (w *outboundClient) get(ctx context.Context, raw string, limit int64) ([]byte, error) {
	literal, err := w.allow(raw)
	if err != nil {
		return nil, err
	}
	ctx = context.WithValue(ctx, ctxKeyLiteral{}, literal)
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "comfygate")
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// streamHook sends a job's non-terminal events to its webhook as they
// happen, then delivers the terminal one (deliver), all from this one
// goroutine so the receiver sees them in order. A progress event is sent
// once, without retries, and one the receiver was too slow for is skipped
// for the newest: progress is a hint, the terminal event is the contract.
func (s *delivery) streamHook(j *job) {
	sent := 0
	for {
		s.eng.lock()
		var next *jobEvent
		for i := len(j.events) - 1; i >= sent && i >= 0; i-- {
			if j.events[i].terminal() {
				ev := j.events[i]
				s.eng.unlock()
				s.deliver(j, ev)
				return
			}
		}
		if len(j.events) > sent {
			ev := j.events[len(j.events)-1]
			next, sent = &ev, len(j.events)
		}
		if j.changed == nil {
			j.changed = make(chan struct{})
		}
		ch := j.changed
		target := j.webhook.url
		s.eng.unlock()
		if next != nil {
			body := webhookPayload(*next)
			s.m.WebhookAttempt("progress")
			if _, err := s.hooks.post(s.ctx, target, webhookID(j.id, *next), body); err != nil {
				s.log.Debug("webhook progress not delivered", "job_id", j.id, "err", err)
			}
			continue
		}
		select {
		case <-ch:
		case <-s.ctx.Done():
			return
		}
	}
}
