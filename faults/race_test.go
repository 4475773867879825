//go:build race

package faults

// raceEnabled: the race detector slows the whole stack about tenfold.
const raceEnabled = true
