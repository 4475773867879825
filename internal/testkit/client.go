package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/ids"
	"github.com/fasthttp/websocket"
)

// Workflow is EmptyImage -> ImageInvert -> SaveImage: one node that takes
// the simulator's Delay. color makes each prompt distinct, so no prompt is
// served from another's cache.
func Workflow(color int, prefix string) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": prefix}},
	}
}

// Session is one ComfyUI client as ComfyUI's websocket example and the
// SDKs behave: one /ws?clientId socket, prompts queued with POST /prompt
// under that client_id, and each prompt's end read from the socket. A
// dropped socket is dialled again with the same clientId (the gateway
// replays what it missed); after a reconnect, and while Wait waits on a
// silent socket or a long-quiet prompt, the prompts still open are looked
// up in /history/{id}, as robust clients do.
type Session struct {
	base, clientID string
	wsURLs         []string // the socket's addresses, in the order tried
	hc             *http.Client

	mu         sync.Mutex // guards the fields below
	wsNext     int        // index in wsURLs of the next dial
	conn       *websocket.Conn
	runs       map[string]*Run // prompt id -> run
	seen       map[string]bool // every prompt id named by an event
	reconnects int
	closed     bool
	checking   bool // a checkHistory pass runs
	lastEvent  time.Time
	readerDone chan struct{}
}

// Run is one prompt a Session submitted.
type Run struct {
	ID        string
	Submitted time.Time
	// Code and Body are POST /prompt's answer (Code 0: no answer, Err says
	// why), set by the time Submit returns.
	Code int
	Body []byte
	Err  error

	s    *Session
	done chan struct{} // closed once the end is known

	// Guarded by s.mu:
	end        string // execution_success, execution_error, execution_interrupted, or "history:<status_str>"
	endAt      time.Time
	errType    string // execution_error's exception_type
	errMsg     string // execution_error's exception_message
	successes  int    // execution_success events received
	events     []string
	lastEvent  time.Time
	historyEnd bool // the end was learnt from /history, not from the socket
}

// NewSession dials base's /ws with clientID (a fresh id when ""). hc is
// the HTTP client for the session's requests; nil means a fresh one with a
// 30 s timeout.
func NewSession(ctx context.Context, base, clientID string, hc *http.Client) (*Session, error) {
	return NewSplitSession(ctx, base, []string{base}, clientID, hc)
}

// NewSplitSession is NewSession with its socket on another gateway than
// its requests: a client of several replicas whose POST /prompt goes to
// one (base) while its /ws is on another (wsBases[0]). A dial of the
// socket that fails moves to the next of wsBases for the following dial,
// as a client-side balancer does; hc carries the requests (a Balancer's
// client moves them likewise).
func NewSplitSession(ctx context.Context, base string, wsBases []string, clientID string, hc *http.Client) (*Session, error) {
	if clientID == "" {
		clientID = ids.Hex()
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	s := &Session{
		base:       strings.TrimSuffix(base, "/"),
		clientID:   clientID,
		hc:         hc,
		runs:       map[string]*Run{},
		seen:       map[string]bool{},
		readerDone: make(chan struct{}),
	}
	for _, b := range wsBases {
		s.wsURLs = append(s.wsURLs, "ws"+strings.TrimPrefix(strings.TrimSuffix(b, "/"), "http")+"/ws?clientId="+url.QueryEscape(clientID))
	}
	var conn *websocket.Conn
	var err error
	for range s.wsURLs {
		if conn, err = s.dial(ctx); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	s.conn = conn
	go s.read()
	return s, nil
}

// ClientID is the session's clientId.
func (s *Session) ClientID() string { return s.clientID }

// dial dials the socket's current address; when that fails, the next
// dial tries the next address.
func (s *Session) dial(ctx context.Context) (*websocket.Conn, error) {
	s.mu.Lock()
	u := s.wsURLs[s.wsNext]
	s.mu.Unlock()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.DialContext(ctx, u, nil)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		s.mu.Lock()
		s.wsNext = (s.wsNext + 1) % len(s.wsURLs)
		s.mu.Unlock()
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	return conn, nil
}

// Close closes the socket and waits for the reader. Runs still open stay
// open.
func (s *Session) Close() {
	s.mu.Lock()
	s.closed = true
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
	<-s.readerDone
}

// Reconnects counts how often the socket was dialled again.
func (s *Session) Reconnects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconnects
}

// Foreign returns the prompt ids named by events on this socket that this
// session did not submit: another client's events.
func (s *Session) Foreign() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id := range s.seen {
		if s.runs[id] == nil {
			out = append(out, id)
		}
	}
	return out
}

// read reads the socket until Close, dialling again when it drops.
func (s *Session) read() {
	defer close(s.readerDone)
	backoff := 20 * time.Millisecond
	for {
		s.mu.Lock()
		conn, closed := s.conn, s.closed
		s.mu.Unlock()
		if closed {
			return
		}
		if conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := s.dial(ctx)
			cancel()
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				if c != nil {
					_ = c.Close()
				}
				return
			}
			if err != nil {
				s.mu.Unlock()
				time.Sleep(backoff)
				backoff = min(backoff*2, 500*time.Millisecond)
				continue
			}
			s.conn, s.reconnects = c, s.reconnects+1
			s.mu.Unlock()
			backoff = 20 * time.Millisecond
			go s.checkHistory()
			continue
		}
		mt, data, err := conn.ReadMessage()
		if err != nil {
			_ = conn.Close()
			s.mu.Lock()
			s.conn = nil
			s.mu.Unlock()
			continue
		}
		if mt == websocket.TextMessage {
			s.event(data)
		}
	}
}

func (s *Session) event(data []byte) {
	var msg struct {
		Type string `json:"type"`
		Data struct {
			Node             *string `json:"node"`
			PromptID         *string `json:"prompt_id"`
			ExceptionType    string  `json:"exception_type"`
			ExceptionMessage string  `json:"exception_message"`
		} `json:"data"`
	}
	if json.Unmarshal(data, &msg) != nil || msg.Data.PromptID == nil {
		return
	}
	id := *msg.Data.PromptID
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[id] = true
	s.lastEvent = time.Now()
	r := s.runs[id]
	if r == nil {
		return // checked by Foreign (its POST may not be answered yet)
	}
	r.events = append(r.events, msg.Type)
	r.lastEvent = time.Now()
	switch msg.Type {
	case "execution_success":
		r.successes++
		r.finishLocked(msg.Type, "", "", false)
	case "execution_error":
		r.finishLocked(msg.Type, msg.Data.ExceptionType, msg.Data.ExceptionMessage, false)
	case "execution_interrupted":
		r.finishLocked(msg.Type, "", "", false)
	}
}

func (r *Run) finishLocked(end, typ, msg string, viaHistory bool) {
	if r.end != "" {
		return
	}
	r.end, r.errType, r.errMsg, r.historyEnd, r.endAt = end, typ, msg, viaHistory, time.Now()
	close(r.done)
}

// checkHistory looks every open prompt up in /history/{id}, one pass at a
// time.
func (s *Session) checkHistory() {
	s.mu.Lock()
	if s.checking {
		s.mu.Unlock()
		return
	}
	s.checking = true
	var open []*Run
	for _, r := range s.runs {
		if r.end == "" && r.Code == http.StatusOK {
			open = append(open, r)
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.checking = false
		s.mu.Unlock()
	}()
	for _, r := range open {
		r.checkHistory()
	}
}

// checkHistory ends r if /history/{id} has it.
func (r *Run) checkHistory() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	st, err := r.History(ctx)
	cancel()
	if err != nil || st.Status == "" {
		return
	}
	r.s.mu.Lock()
	r.finishLocked("history:"+st.Status, "", "", true)
	r.s.mu.Unlock()
}

// RunTag is the extra_data key under which Submit tags each prompt with its
// id: comfysim's RunsByExtra(RunTag) counts a prompt's runs even when the
// gateway sent it to an instance under another prompt id.
const RunTag = "testkit_prompt"

// Submit queues workflow under a prompt id the client chooses (as SDKs do),
// with the session's client_id, tagged with RunTag. The Run records the
// answer; a transport error is in Run.Err.
func (s *Session) Submit(ctx context.Context, workflow map[string]any) *Run {
	r := &Run{ID: ids.UUID(), s: s, done: make(chan struct{}), Submitted: time.Now()}
	s.mu.Lock()
	s.runs[r.ID] = r
	s.mu.Unlock()
	body, _ := json.Marshal(map[string]any{"prompt": workflow, "client_id": s.clientID, "prompt_id": r.ID,
		"extra_data": map[string]any{RunTag: r.ID}})
	code, answer, err := s.do(ctx, http.MethodPost, "/prompt", body)
	if err == nil && code == http.StatusOK {
		var a struct {
			PromptID string `json:"prompt_id"`
		}
		if jerr := json.Unmarshal(answer, &a); jerr != nil || a.PromptID != r.ID {
			err = fmt.Errorf("POST /prompt answered %s for prompt id %s", answer, r.ID)
		}
	}
	s.mu.Lock()
	r.Code, r.Body, r.Err = code, answer, err
	if code != http.StatusOK {
		r.finishLocked("rejected", "", "", false)
	}
	s.mu.Unlock()
	return r
}

func (s *Session) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Result is what a client knows about a prompt once it ended.
type Result struct {
	// End is execution_success, execution_error, execution_interrupted,
	// "history:success" / "history:error" (learnt from /history), "rejected"
	// (POST /prompt was not answered 200), or "" (no end before ctx ended).
	End string
	// ErrorType and ErrorMessage are an execution_error's.
	ErrorType, ErrorMessage string
	// Successes counts execution_success events delivered for the prompt.
	Successes int
	// ViaHistory: the socket never told the end.
	ViaHistory bool
	// Took is from submission to the end.
	Took time.Duration
}

// Succeeded reports whether the prompt ran to success.
func (r Result) Succeeded() bool { return r.End == "execution_success" || r.End == "history:success" }

// Wait returns once the prompt's end is known or ctx ends. When its socket
// has been silent for 3 s, or nothing was heard of this prompt for a while
// (10 s, doubling up to 30 s: a queue can be long), it looks the prompt up
// in /history, so an end whose event was lost is still found.
func (r *Run) Wait(ctx context.Context) Result {
	const silent = 3 * time.Second
	t := time.NewTicker(time.Second)
	defer t.Stop()
	quiet, polled := 10*time.Second, r.Submitted
wait:
	for {
		select {
		case <-r.done:
			break wait
		case <-ctx.Done():
			break wait
		case <-t.C:
			r.s.mu.Lock()
			last, sockLast := r.lastEvent, r.s.lastEvent
			r.s.mu.Unlock()
			last = maxTime(last, polled)
			if time.Since(maxTime(sockLast, polled)) > silent || time.Since(last) > quiet {
				r.checkHistory()
				polled = time.Now()
				quiet = min(2*quiet, 30*time.Second)
			}
		}
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	res := Result{End: r.end, ErrorType: r.errType, ErrorMessage: r.errMsg, Successes: r.successes, ViaHistory: r.historyEnd}
	if r.end != "" {
		res.Took = r.endAt.Sub(r.Submitted)
	}
	return res
}

// HistoryStatus is what /history/{id} says about a prompt.
type HistoryStatus struct {
	Status string    // status_str: "success" or "error"; "" while not in history
	Images []FileRef // its output images
}

// FileRef names an output file as /view takes it.
type FileRef struct {
	Filename, Subfolder, Type string
}

// History asks /history/{id}.
func (r *Run) History(ctx context.Context) (HistoryStatus, error) {
	code, b, err := r.s.do(ctx, http.MethodGet, "/history/"+r.ID, nil)
	if err != nil {
		return HistoryStatus{}, err
	}
	if code != http.StatusOK {
		return HistoryStatus{}, fmt.Errorf("GET /history/%s: %d %s", r.ID, code, b)
	}
	var h map[string]struct {
		Status struct {
			StatusStr string `json:"status_str"`
		} `json:"status"`
		Outputs map[string]struct {
			Images []FileRef `json:"images"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return HistoryStatus{}, fmt.Errorf("GET /history/%s: %w: %s", r.ID, err, b)
	}
	e, ok := h[r.ID]
	if !ok {
		return HistoryStatus{}, nil
	}
	st := HistoryStatus{Status: e.Status.StatusStr}
	for _, o := range e.Outputs {
		st.Images = append(st.Images, o.Images...)
	}
	return st, nil
}

// CheckOutputs fetches /history/{id} and every output image through /view,
// as the websocket example does after a prompt ended.
func (r *Run) CheckOutputs(ctx context.Context) error {
	st, err := r.History(ctx)
	if err != nil {
		return err
	}
	if st.Status != "success" || len(st.Images) == 0 {
		return fmt.Errorf("GET /history/%s: status %q with %d images", r.ID, st.Status, len(st.Images))
	}
	for _, img := range st.Images {
		q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
		code, b, err := r.s.do(ctx, http.MethodGet, "/view?"+q.Encode(), nil)
		if err != nil {
			return fmt.Errorf("GET /view %s: %w", img.Filename, err)
		}
		if code != http.StatusOK || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			return fmt.Errorf("GET /view %s: %d, %d bytes", img.Filename, code, len(b))
		}
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
