package clock

import (
	"testing"
	"time"
)

func TestRealTimerFires(t *testing.T) {
	t.Parallel()
	before := Real.Now()
	tm := Real.NewTimer(time.Millisecond)
	got := <-tm.C()
	if got.Before(before) {
		t.Fatalf("timer fired at %v, before it was made (%v)", got, before)
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer reported it stopped a pending timer")
	}
	fired := make(chan struct{})
	af := Real.AfterFunc(time.Millisecond, func() { close(fired) })
	<-fired
	if af.C() != nil {
		t.Fatal("an AfterFunc timer has a channel")
	}
	<-Real.After(time.Millisecond)
}
