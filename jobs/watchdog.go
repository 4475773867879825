package jobs

import (
	"context"
	"time"
)

// watchdog expires finished jobs (sweep, with the engine) and settles the
// jobs at the instances whose end no event reported: a prompt the prompt
// table forgot, or one its instance's history says has ended.
type watchdog struct {
	eng *engine
	del *delivery // reads an instance's history
	be  backend
	ctx context.Context
	// staleAfter is how long an active job may go without an event before
	// the watchdog asks the prompt table whether its prompt ended unseen.
	staleAfter time.Duration
}
