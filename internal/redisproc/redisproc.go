// Package redisproc owns a local redis-server process (Debian's package
// redis-server) as the tests, the demo's replicas and the bench run it:
// bound to 127.0.0.1 on a given or free port, without persistence, its log
// in a directory of the caller's; started, waited for until it answers
// PING, killed, and started again on the same port. Where the directory
// comes from and when the server stops are the caller's.
package redisproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultStartTimeout is how long redis-server may take to answer PING
// when Options.StartTimeout is zero.
const DefaultStartTimeout = 10 * time.Second

// LogName is the file in Options.Dir that redis-server logs to.
const LogName = "redis.log"

// freePortTries is how many free ports Start tries: a port found free may
// be taken by another process before redis-server binds it.
const freePortTries = 3

// pollInterval is how often Start sends PING while redis-server starts.
const pollInterval = 20 * time.Millisecond

// logTailBytes is how much of the end of redis-server's log an error
// carries.
const logTailBytes = 2000

// Options say which redis-server to run and where.
type Options struct {
	// Bin is the path of the redis-server binary.
	Bin string
	// Dir is redis-server's working directory (--dir) and holds its log,
	// LogName. It must exist; with persistence off nothing else is written.
	Dir string
	// Port is the loopback port to listen on. Zero picks a free one, and
	// another (up to three in all) when redis-server exits before it
	// answers, as it does when another process took the port meanwhile.
	Port int
	// StartTimeout bounds how long redis-server may take to answer PING;
	// zero means DefaultStartTimeout.
	StartTimeout time.Duration
	// SysProcAttr, when not nil, is the process's attributes (for example a
	// process group and a signal on the parent's death).
	SysProcAttr *syscall.SysProcAttr
	// Args are more redis-server arguments, after comfygate's own.
	Args []string
}

// Server is a redis-server on a fixed loopback address that can be killed
// and started again there, as a restarted Redis; with no persistence it
// comes back empty. Its methods are safe for concurrent use.
type Server struct {
	bin, dir string
	addr     string
	timeout  time.Duration
	attr     *syscall.SysProcAttr
	args     []string

	mu     sync.Mutex    // guards cmd and exited
	cmd    *exec.Cmd     // the running process; nil when not running
	exited chan struct{} // closed when cmd has been waited for
}

// Start runs redis-server as opts say and returns once it answers PING.
// The caller stops it with Kill.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Bin == "" || opts.Dir == "" {
		return nil, errors.New("redisproc: Options.Bin and Options.Dir are required")
	}
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	tries := 1
	if opts.Port == 0 {
		tries = freePortTries
	}
	var last error
	for range tries {
		port := opts.Port
		if port == 0 {
			var err error
			if port, err = freePort(); err != nil {
				return nil, err
			}
		}
		s := &Server{
			bin: opts.Bin, dir: opts.Dir, timeout: timeout, attr: opts.SysProcAttr, args: opts.Args,
			addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		}
		last = s.Start(ctx)
		if last == nil {
			return s, nil
		}
		if !errors.Is(last, errExited) {
			break // only an exit may be a port taken meanwhile
		}
	}
	return nil, fmt.Errorf("redis-server did not start: %w", last)
}

// errExited marks a redis-server that ended before it answered PING.
var errExited = errors.New("exited before answering PING")

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// URL is the server's redis:// URL, the form state.url takes.
func (s *Server) URL() string { return "redis://" + s.addr }

// Start runs redis-server on the server's address (again, after Kill) and
// returns once it answers PING; nothing when it is running. When it exits
// first, does not answer within the start timeout or ctx ends, the process
// is gone on return and the error carries the end of its log.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(s.addr)
	args := append([]string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, LogName), "--daemonize", "no"}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.SysProcAttr = s.attr
	// redis-server writes to stderr what goes wrong before its log is
	// open (a --dir that does not exist).
	stderr := &strings.Builder{}
	cmd.Stderr = &limitedWriter{w: stderr, n: logTailBytes}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()

	deadline := time.NewTimer(s.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if Ping(ctx, s.addr) == nil {
			s.cmd, s.exited = cmd, exited
			return nil
		}
		var why error
		select {
		case <-exited:
			why = fmt.Errorf("%w (%v)", errExited, waitErr)
		case <-deadline.C:
			why = fmt.Errorf("no PONG within %v", s.timeout)
		case <-ctx.Done():
			why = ctx.Err()
		case <-tick.C:
			continue
		}
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("redis-server on %s: %w%s", s.addr, why, s.logTail(stderr.String()))
	}
}

// Kill ends the server with SIGKILL and waits for it; nothing when it is
// not running.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// Ping sends one PING to the Redis server at addr, in the inline form of
// the protocol, and wants +PONG; one dial and one round trip, each bounded
// by a second. A client's connection pool would not do as a readiness
// probe: go-redis's retries a failed dial with a backoff, logs each
// failure and, after as many failures as it has connections, dials only
// once a second.
func Ping(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// logTail is the end of the server's log and what it wrote to stderr, as
// the tail of an error message.
func (s *Server) logTail(stderr string) string {
	log, _ := os.ReadFile(filepath.Join(s.dir, LogName))
	if len(log) > logTailBytes {
		log = log[len(log)-logTailBytes:]
		if i := strings.IndexByte(string(log), '\n'); i >= 0 {
			log = log[i+1:]
		}
	}
	var b strings.Builder
	if text := strings.TrimSpace(string(log)); text != "" {
		b.WriteString("; its log ends:\n" + text)
	}
	if text := strings.TrimSpace(stderr); text != "" {
		b.WriteString("; its stderr:\n" + text)
	}
	return b.String()
}

// limitedWriter keeps the first n bytes written to it and drops the rest.
type limitedWriter struct {
	w *strings.Builder
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// freePort is a loopback port nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
