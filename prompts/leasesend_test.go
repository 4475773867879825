package prompts

import (
	"testing"
	"time"
)

// TestMayStillSend: a prompt's first send is made only under the liveness
// lease its request arrived under, while it lasts by the clock; a prompt
// with a record is sent (first or again) only while a lease lasts; a
// prompt that arrived without a lease and has no record is sent.
func TestMayStillSend(t *testing.T) {
	t.Parallel()
	arrived, later := &incarnation{id: "a"}, &incarnation{id: "b"}
	k := &leaseKeeper{base: time.Now(), ttl: time.Minute}
	hold := func(inc *incarnation, lasting bool) {
		k.self.Store(inc)
		until := time.Since(k.base) + time.Minute
		if !lasting {
			until = time.Since(k.base) - time.Millisecond
		}
		k.until.Store(int64(until))
	}
	for _, tc := range []struct {
		name     string
		self     *incarnation
		lasting  bool
		lease    *incarnation
		recorded bool
		resubmit bool
		want     bool
	}{
		{"first send under the lease it arrived under", arrived, true, arrived, true, false, true},
		{"first send after that lease ran out by the clock", arrived, false, arrived, false, false, false},
		{"first send under a later lease (paused past the first)", later, true, arrived, false, false, false},
		{"first send, no lease then, no record", nil, false, nil, false, false, true},
		{"first send, no lease then, recorded, lease held now", later, true, nil, true, false, true},
		{"first send, no lease then, recorded, none held now", nil, false, nil, true, false, false},
		{"failover of a recorded prompt while a lease lasts", later, true, arrived, true, true, true},
		{"failover of a recorded prompt once the lease ran out", later, false, arrived, true, true, false},
		{"failover of a prompt never recorded, no lease", nil, false, arrived, false, true, true},
	} {
		hold(tc.self, tc.lasting)
		pr := &Prompt{lease: tc.lease}
		pr.recorded.Store(tc.recorded)
		if got := k.mayStillSend(pr, tc.resubmit); got != tc.want {
			t.Errorf("%s: mayStillSend = %v, want %v", tc.name, got, tc.want)
		}
	}
}
